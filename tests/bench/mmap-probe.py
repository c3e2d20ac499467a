#!/usr/bin/env python3
"""What happens when a process maps files larger than its memory limit plus swap.

Run inside a memory cgroup (tests/bench/storage-study does, under 64 MiB with no swap):

    mmap-probe.py DIR FILES FILE_MIB SECONDS [ANON_MIB]

Creates FILES sparse-then-filled files of FILE_MIB each in DIR, maps them all, then for
SECONDS each: reads random pages (clean), then writes random pages (dirty), then reads
pages in a small hot set; then, with ANON_MIB, allocates and fills that much anonymous
memory (which only swap can take beyond the limit) and reads random mapped pages again
while holding it. Prints one CSV line per phase:
phase,mapped_mib,pages_per_sec,p99_us,vm_rss_mib,rss_file_mib,rss_anon_mib,major_faults,vm_swap_mib
"""
import mmap
import os
import random
import sys
import time

PAGE = 4096


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


def majflt():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[9])


def main():
    directory, files, file_mib, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    anon_mib = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    maps = []
    chunk = b"x" * (1 << 20)
    for n in range(files):
        path = os.path.join(directory, f"mapped-{n}")
        with open(path, "wb") as f:
            for _ in range(file_mib):
                f.write(chunk)
        fd = os.open(path, os.O_RDWR)
        maps.append(mmap.mmap(fd, file_mib << 20))
        os.close(fd)
    pages = (file_mib << 20) // PAGE
    mapped = files * file_mib
    rng = random.Random(7)

    def phase(name, touch):
        faults0 = majflt()
        lat = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            m = maps[rng.randrange(files)]
            t = time.perf_counter_ns()
            touch(m)
            lat.append(time.perf_counter_ns() - t)
        lat.sort()
        p99 = lat[int(len(lat) * 0.99)] / 1000 if lat else 0
        print(f"{name},{mapped},{len(lat) / seconds:.0f},{p99:.0f},{status('VmRSS')},{status('RssFile')},"
              f"{status('RssAnon')},{majflt() - faults0},{status('VmSwap')}", flush=True)

    def read_random(m):
        _ = m[rng.randrange(pages) * PAGE]

    def write_random(m):
        m[rng.randrange(pages) * PAGE] = 121

    hot = max(1, pages // 64)

    def read_hot(m):
        _ = m[rng.randrange(hot) * PAGE]

    phase("read_random", read_random)
    phase("write_random", write_random)
    phase("read_hot", read_hot)
    if anon_mib:
        held = []
        for _ in range(anon_mib):
            held.append(bytearray(b"a" * (1 << 20)))
        phase(f"read_random_holding_{anon_mib}MiB_anonymous", read_random)


if __name__ == "__main__":
    main()
