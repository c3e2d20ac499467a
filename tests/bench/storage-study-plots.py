#!/usr/bin/env python3
"""Plots of a storage-study run: reads results.csv, writes PNGs (needs matplotlib).

    python3 tests/bench/storage-study-plots.py docs/storage-study/results.csv docs/storage-study/

Made by hand after a run (CI does not need it): one figure per measure, a group of bars
per memory limit, one bar per engine and mode.
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def num(v):
    try:
        return float(v)
    except ValueError:
        return 0.0


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rows = list(csv.DictReader(open(src)))
    limits = sorted({int(r["limit_mib"]) for r in rows})
    series = []
    for r in rows:
        label = r["engine"] if r["engine"] == "redis" else f'{r["engine"]} {r["mode"]}'
        if label not in series:
            series.append(label)

    def value(label, limit, col):
        for r in rows:
            lab = r["engine"] if r["engine"] == "redis" else f'{r["engine"]} {r["mode"]}'
            if lab == label and int(r["limit_mib"]) == limit:
                return num(r.get(col, ""))
        return 0.0

    def killed(label, limit):
        for r in rows:
            lab = r["engine"] if r["engine"] == "redis" else f'{r["engine"]} {r["mode"]}'
            if lab == label and int(r["limit_mib"]) == limit:
                return r.get("alive") == "0"
        return False

    data = sorted({r["data_mib"] for r in rows})

    def bars(name, title, cols, ylabel, log=False):
        fig, axes = plt.subplots(1, len(cols), figsize=(6 * len(cols), 4.2), squeeze=False)
        for ax, (col, sub) in zip(axes[0], cols):
            width = 0.8 / max(1, len(series))
            for i, label in enumerate(series):
                xs = [j + i * width for j in range(len(limits))]
                bars_ = ax.bar(xs, [value(label, l, col) for l in limits], width, label=label)
                # An OOM-killed server: hatched, its figure is until the kill.
                for b, l in zip(bars_, limits):
                    if killed(label, l):
                        b.set_hatch("//")
                        b.set_alpha(0.5)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(limits))])
            ax.set_xticklabels([f"{l} MiB limit" for l in limits])
            ax.set_title(sub)
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=7, ncol=2)
        fig.suptitle(title + "; hatched: OOM-killed, figures until the kill")
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)

    bars("throughput.png", f"Throughput, {' / '.join(data)} MiB of data (higher is better)",
         [("fill_ops", "sustained SET (fill)"), ("uni_ops", "90% GET, uniform keys"),
          ("hot_ops", "90% GET, 10% of keys take 90%"), ("cold_ops", "uniform, after a cold restart")], "ops/s")
    bars("latency.png", "Latency of the mixed loads (lower is better, log scale)",
         [("uni_p99", "p99, uniform"), ("uni_p999", "p999, uniform"), ("hot_p99", "p99, skewed"),
          ("ws_p99", "GET p99, working set fits the page cache")], "ms", log=True)
    bars("memory.png", "Memory (the limit is the x axis label)",
         [("peak_rss_mib", "peak RSS"), ("page_cache_mib", "page cache charged at the end"),
          ("majflt", "major faults in the mixed loads")], "MiB or count")
    bars("disk.png", "Disk", [("disk_written_per_byte", "bytes written per byte stored (fill)"),
                              ("disk_mib", "data directory size, MiB"),
                              ("restart_ms", "cold restart to PONG, ms")], "")


if __name__ == "__main__":
    main()
