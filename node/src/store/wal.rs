//! The write-ahead log: every write is appended here before it is acknowledged, so the
//! storage engine behind the write buffer can be updated later, at its own pace.
//!
//! Appends go to an in-memory buffer (a memcpy under a short lock); [`Wal::sync`] writes
//! the buffer to the current segment file and syncs it. Entries carry a sequence number
//! and a CRC; replay after a crash stops at the first torn or corrupt entry, which can
//! only be one that was never acknowledged as durable. Segments are deleted once every
//! entry in them has reached the engine and the engine has been flushed ([`Wal::checkpoint`]).
//!
//! Segment layout: the 8-byte [`MAGIC`] (format version in the last byte), then entries
//! `[len u32 LE][crc32 u32 LE][seq u64 LE][count u32 LE]{[key len u32 LE][key][record len u32 LE][record]}*`
//! where `len` and `crc32` cover everything after the crc.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::StoreError;
use crate::record::Record;

/// First bytes of every segment; the last byte is the format version.
pub const MAGIC: &[u8; 8] = b"OCWAL\0\0\x01";
/// Largest entry replay accepts: a corrupt length must not make it allocate gigabytes.
const MAX_ENTRY: usize = 1 << 30;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("write-ahead log {}: {what}: {e}", path.display()))
}

struct Pending {
    buf: Vec<u8>,
    last_seq: u64,
}

struct Segment {
    file: File,
    path: PathBuf,
    bytes: u64,
    /// The file's pages before this offset are synced and dropped from the page cache.
    dropped: u64,
    /// Older segments still needed: (first seq, path), oldest first.
    closed: Vec<(u64, PathBuf)>,
    first_seq: u64,
}

pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    buffer_bytes: usize,
    pending: Mutex<Pending>,
    segment: Mutex<Segment>,
    synced: AtomicU64,
    disk_bytes: AtomicU64,
}

/// Records recovered from the log at open, in the order they were written.
pub type Replayed = Vec<(Bytes, Record)>;

impl Segment {
    /// Closes this segment (it joins `closed`) and goes on in a new one whose first entry
    /// will be `first_seq`.
    fn start_next(&mut self, dir: &Path, first_seq: u64) -> Result<(), StoreError> {
        let (file, path) = create_segment(dir, first_seq)?;
        let old = std::mem::replace(&mut self.path, path);
        let old_first = std::mem::replace(&mut self.first_seq, first_seq);
        self.closed.push((old_first, old));
        self.file = file;
        self.bytes = MAGIC.len() as u64;
        self.dropped = 0;
        Ok(())
    }

    /// Drops the pages of the file that are synced from the page cache: the log is read
    /// only by a replay after a crash, and in a container the page cache counts against
    /// its memory limit, where these pages would crowd out the engine's (a sustained
    /// write load writes the log at the rate of the writes). The last, partly written
    /// page stays: the next append would read it back first.
    #[allow(unsafe_code)]
    fn drop_synced_pages(&mut self) {
        use std::os::fd::AsRawFd;
        const PAGE: u64 = 4096;
        let end = self.bytes / PAGE * PAGE;
        if end <= self.dropped {
            return;
        }
        // SAFETY: posix_fadvise only advises the kernel about the file's cached pages; it
        // takes no pointers and changes no file content. The pages are clean (just synced).
        let result = unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                self.dropped as libc::off_t,
                (end - self.dropped) as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if result == 0 {
            self.dropped = end;
        }
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("wal-{first_seq:020}.log"))
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), StoreError> {
    let path = segment_path(dir, first_seq);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, "create", e))?;
    file.write_all(MAGIC).map_err(|e| io_err(&path, "write", e))?;
    file.sync_all().map_err(|e| io_err(&path, "sync", e))?;
    // The new file's name must survive a crash too.
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(|e| io_err(dir, "sync directory", e))?;
    }
    Ok((file, path))
}

impl Wal {
    /// Opens the log in `dir`, returning what earlier runs wrote and a fresh segment for
    /// new writes. Holds the whole log in memory: tests only; a node replays with
    /// [`Wal::open_replaying`].
    #[cfg(test)]
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        buffer_bytes: usize,
    ) -> Result<(Arc<Wal>, Replayed), StoreError> {
        let mut replayed = Vec::new();
        let wal = Wal::open_replaying(dir, segment_bytes, buffer_bytes, &mut |records| {
            replayed.extend(records);
            Ok(())
        })?;
        Ok((wal, replayed))
    }

    /// Opens the log in `dir`, handing what earlier runs wrote to `each`, one entry's
    /// records at a time in the order they were written (to be applied to the engine,
    /// which then calls [`Wal::checkpoint`]), and starts a fresh segment for new writes.
    /// Segments are read as a stream: replay holds one entry in memory, however large the
    /// log (a whole segment in memory once got a node OOM-killed at start in a 64 MiB
    /// container).
    pub fn open_replaying(
        dir: &Path,
        segment_bytes: u64,
        buffer_bytes: usize,
        each: &mut dyn FnMut(Replayed) -> Result<(), StoreError>,
    ) -> Result<Arc<Wal>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create directory", e))?;
        let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, "list", e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        segments.sort();
        let mut last_seq = 0;
        for (i, (_, path)) in segments.iter().enumerate() {
            let last_segment = i + 1 == segments.len();
            last_seq = last_seq.max(read_segment(path, last_segment, each)?);
        }
        // The new segment is named above every existing one, even an empty one whose name
        // is not yet used by an entry: reusing a name would truncate that file, and the
        // checkpoint after replay would delete the segment being written.
        let last_seq = last_seq.max(segments.last().map_or(0, |(first, _)| *first));
        let first_seq = last_seq + 1;
        let (file, path) = create_segment(dir, first_seq)?;
        let disk: u64 = segments.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            buffer_bytes,
            pending: Mutex::new(Pending { buf: Vec::new(), last_seq }),
            segment: Mutex::new(Segment {
                file,
                path,
                bytes: MAGIC.len() as u64,
                dropped: 0,
                closed: segments,
                first_seq,
            }),
            synced: AtomicU64::new(last_seq),
            disk_bytes: AtomicU64::new(disk + MAGIC.len() as u64),
        };
        Ok(Arc::new(wal))
    }

    /// Appends one entry holding `records` (replayed all together or not at all) and
    /// returns its sequence number. Writes the buffer out when it passes its size limit.
    pub fn append(&self, records: &[(&[u8], &Record)]) -> Result<u64, StoreError> {
        let (seq, over) = {
            let mut p = lock(&self.pending);
            // Write-outs are failing (a full disk) and kept what they could not write:
            // refuse rather than hold ever more in memory.
            if p.buf.len() >= self.buffer_bytes.saturating_mul(4) {
                return Err(StoreError::Io(format!(
                    "write-ahead log in {}: {} bytes could not be written out (is the disk full?)",
                    self.dir.display(),
                    p.buf.len()
                )));
            }
            p.last_seq += 1;
            let seq = p.last_seq;
            let start = p.buf.len();
            p.buf.extend_from_slice(&[0; 8]);
            p.buf.extend_from_slice(&seq.to_le_bytes());
            p.buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
            for (key, record) in records {
                p.buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                p.buf.extend_from_slice(key);
                p.buf.extend_from_slice(&(record.encoded_len() as u32).to_le_bytes());
                record.encode_into(&mut p.buf);
            }
            let body = start + 8;
            let len = (p.buf.len() - body) as u32;
            let crc = crc32fast::hash(&p.buf[body..]);
            p.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            p.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            (seq, p.buf.len() >= self.buffer_bytes)
        };
        if over {
            self.write_out(false)?;
        }
        Ok(seq)
    }

    /// Bytes in the segment being written.
    pub fn current_segment_bytes(&self) -> u64 {
        lock(&self.segment).bytes
    }

    /// The sequence number of the last appended entry.
    pub fn last_seq(&self) -> u64 {
        lock(&self.pending).last_seq
    }

    /// Writes everything appended so far to disk and syncs it. Returns the last sequence
    /// number now durable.
    pub fn sync(&self) -> Result<u64, StoreError> {
        self.write_out(true)
    }

    fn write_out(&self, sync: bool) -> Result<u64, StoreError> {
        // The segment lock is taken first and held while writing, so buffers reach the
        // file in the order they were taken from `pending`.
        let mut seg = lock(&self.segment);
        let (buf, last) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.buf), p.last_seq)
        };
        if !buf.is_empty() {
            if let Err(e) = seg.file.write_all(&buf) {
                // A full disk writes part of the buffer: cut the file back to where it
                // was, so no torn entry sits in the middle of the log (a replay stops at
                // the first bad entry), and keep the bytes, ahead of newer ones, for the
                // next attempt. The writers waiting on this sync get the error.
                let err = io_err(&seg.path, "write", e);
                let at = seg.bytes;
                seg.file
                    .set_len(at)
                    .and_then(|()| seg.file.seek(std::io::SeekFrom::Start(at)).map(|_| ()))
                    .map_err(|e| io_err(&seg.path, "cut back after a failed write", e))?;
                let mut p = lock(&self.pending);
                let newer = std::mem::replace(&mut p.buf, buf);
                p.buf.extend_from_slice(&newer);
                return Err(err);
            }
            seg.bytes += buf.len() as u64;
            self.disk_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        if sync && self.synced.load(Ordering::Acquire) < last {
            seg.file.sync_data().map_err(|e| io_err(&seg.path, "sync", e))?;
            self.synced.store(last, Ordering::Release);
            seg.drop_synced_pages();
        }
        if seg.bytes >= self.segment_bytes {
            seg.file.sync_data().map_err(|e| io_err(&seg.path, "sync", e))?;
            self.synced.fetch_max(last, Ordering::AcqRel);
            seg.drop_synced_pages();
            seg.start_next(&self.dir, last + 1)?;
            self.disk_bytes.fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
        }
        Ok(self.synced.load(Ordering::Acquire))
    }

    /// Every entry up to `seq` has reached the engine and the engine is flushed: delete the
    /// closed segments that hold nothing newer.
    pub fn checkpoint(&self, seq: u64) -> Result<(), StoreError> {
        let mut seg = lock(&self.segment);
        let current_first = seg.first_seq;
        let closed = std::mem::take(&mut seg.closed);
        let mut keep = Vec::new();
        for (i, (first, path)) in closed.iter().enumerate() {
            let next_first = closed.get(i + 1).map_or(current_first, |(f, _)| *f);
            if next_first <= seq + 1 {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(path).map_err(|e| io_err(path, "remove", e))?;
                self.disk_bytes
                    .fetch_sub(len.min(self.disk_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
            } else {
                keep.push((*first, path.clone()));
            }
        }
        seg.closed = keep;
        Ok(())
    }

    /// Starts a new segment so that everything written so far can be checkpointed.
    pub fn roll(&self) -> Result<(), StoreError> {
        self.write_out(true)?;
        let mut seg = lock(&self.segment);
        let next = self.synced.load(Ordering::Acquire) + 1;
        if seg.first_seq == next {
            return Ok(());
        }
        seg.start_next(&self.dir, next)?;
        self.disk_bytes.fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }
}

/// Reads as many bytes as `buf` holds, fewer only at the end of the file; returns how many.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Hands one segment's entries to `each`, reading the file as a stream; returns the last
/// sequence number read. A torn or corrupt entry ends the segment: in the newest segment
/// that is the unsynced tail of a crash, in an older one it is reported.
fn read_segment(
    path: &Path,
    newest: bool,
    each: &mut dyn FnMut(Replayed) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let read_err = |e| io_err(path, "read", e);
    let file = File::open(path).map_err(read_err)?;
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut r = std::io::BufReader::with_capacity(64 << 10, file);
    let mut magic = [0u8; MAGIC.len()];
    let got = read_up_to(&mut r, &mut magic).map_err(read_err)?;
    if got < MAGIC.len() || &magic != MAGIC {
        if got < MAGIC.len() && newest {
            return Ok(0);
        }
        return Err(StoreError::Io(format!(
            "write-ahead log {}: not a version-1 log segment (unknown header)",
            path.display()
        )));
    }
    let mut at = MAGIC.len();
    let mut last = 0;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 8];
        let got = read_up_to(&mut r, &mut head).map_err(read_err)?;
        if got == 0 {
            break;
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        // A length running past the end of the file is a torn entry: no buffer is made
        // for it (a corrupt length must not make replay allocate up to `MAX_ENTRY`).
        let entry = if got < head.len() || len > MAX_ENTRY || (at + head.len() + len) as u64 > file_len {
            None
        } else {
            body.resize(len, 0);
            let complete = read_up_to(&mut r, &mut body).map_err(read_err)? == len;
            (complete && crc32fast::hash(&body) == crc).then(|| parse_body(&body)).flatten()
        };
        match entry {
            Some((seq, records)) => {
                last = seq;
                each(records)?;
                at += head.len() + len;
            }
            None => {
                let what = if newest { "an unfinished entry from a crash" } else { "a corrupt entry" };
                tracing::warn!(path = %path.display(), offset = at, "write-ahead log ends with {what}; ignoring the rest");
                break;
            }
        }
    }
    Ok(last)
}

/// An entry's body (after its length and CRC): its sequence number and records.
fn parse_body(body: &[u8]) -> Option<(u64, Replayed)> {
    let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?) as usize;
    let mut at = 12;
    let mut records = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let klen = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let key = body.get(at + 4..at + 4 + klen)?;
        at += 4 + klen;
        let rlen = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let rec = body.get(at + 4..at + 4 + rlen)?;
        at += 4 + rlen;
        let record = Record::decode(rec, |dc| Arc::from(dc)).ok()?;
        records.push((Bytes::copy_from_slice(key), record));
    }
    Some((seq, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::record::Origin;

    fn rec(v: &'static [u8], hlc: u64) -> Record {
        Record {
            value: Some(Bytes::from_static(v)),
            hlc: Hlc(hlc),
            origin: Origin { datacenter: "dc1".into(), node: 1 },
            expires_at_ms: None,
        }
    }

    /// Writes entries "a" and "b" and syncs them; returns the segment's path.
    fn two_synced_entries(dir: &Path) -> PathBuf {
        let (wal, _) = Wal::open(dir, 1 << 20, 1 << 20).unwrap();
        wal.append(&[(b"a", &rec(b"1", 1))]).unwrap();
        wal.append(&[(b"b", &rec(b"2", 2))]).unwrap();
        wal.sync().unwrap();
        lock(&wal.segment).path.clone()
    }

    /// How many of the file's pages are in the page cache.
    #[allow(unsafe_code)]
    fn cached_pages(path: &Path) -> usize {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let mut resident = vec![0u8; len.div_ceil(4096)];
        // SAFETY: a read-only mapping of a file nothing truncates meanwhile, unmapped
        // before returning; mincore writes one byte per page of it into `resident`.
        unsafe {
            let map =
                libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
        }
        resident.iter().filter(|page| **page & 1 == 1).count()
    }

    #[test]
    fn synced_pages_leave_the_page_cache_and_still_replay() {
        static VALUE: [u8; 1000] = [7; 1000];
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let (wal, _) = Wal::open(dir.path(), 64 << 20, 1 << 20).unwrap();
            for i in 0..2000u64 {
                wal.append(&[(format!("k{i}").as_bytes(), &rec(&VALUE, i))]).unwrap();
            }
            wal.sync().unwrap();
            lock(&wal.segment).path.clone()
        };
        let pages = std::fs::metadata(&path).unwrap().len().div_ceil(4096);
        assert!(pages > 500, "{pages} pages written");
        let cached = cached_pages(&path);
        assert!(cached <= 1, "{cached} of {pages} synced pages still cached");
        let (_, replayed) = Wal::open(dir.path(), 64 << 20, 1 << 20).unwrap();
        assert_eq!(replayed.len(), 2000);
        assert_eq!(replayed[1999].1, rec(&VALUE, 1999));
    }

    #[test]
    fn synced_entries_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, replayed) = Wal::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            assert!(replayed.is_empty());
            wal.append(&[(b"a", &rec(b"1", 1))]).unwrap();
            wal.append(&[(b"b", &rec(b"2", 2)), (b"c", &rec(b"3", 3))]).unwrap();
            assert_eq!(wal.sync().unwrap(), 2);
        }
        let (wal, replayed) = Wal::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let keys: Vec<&[u8]> = replayed.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(keys, vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(replayed[2].1, rec(b"3", 3));
        // Sequence numbers continue after the replayed ones.
        assert_eq!(wal.append(&[(b"d", &rec(b"4", 4))]).unwrap(), 3);
    }

    #[test]
    fn reopening_an_empty_log_never_reuses_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        drop(Wal::open(dir.path(), 1 << 20, 1 << 20).unwrap());
        let (wal, replayed) = Wal::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert!(replayed.is_empty());
        wal.checkpoint(wal.last_seq()).unwrap();
        wal.append(&[(b"a", &rec(b"1", 1))]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, replayed) = Wal::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(replayed.len(), 1, "the entry written after the second open survives");
    }

    #[test]
    fn a_torn_tail_is_ignored_and_earlier_entries_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = two_synced_entries(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of writing the second entry.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        let (_, replayed) = Wal::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(&replayed[0].0[..], b"a");
    }

    #[test]
    fn corrupt_bytes_stop_replay_at_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = two_synced_entries(dir.path());
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 2] ^= 0xff;
        std::fs::write(&path, data).unwrap();
        let (_, replayed) = Wal::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(replayed.len(), 1);
    }

    #[test]
    fn segments_rotate_and_checkpoint_deletes_only_applied_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 256, 64).unwrap();
        for i in 0..40u64 {
            wal.append(&[(b"key", &rec(b"value", i + 1))]).unwrap();
        }
        wal.sync().unwrap();
        let count = || std::fs::read_dir(dir.path()).unwrap().count();
        let before = count();
        assert!(before > 2, "expected rotation, have {before} segments");
        wal.checkpoint(10).unwrap();
        let after_partial = count();
        assert!(after_partial < before && after_partial > 1);
        wal.roll().unwrap();
        wal.checkpoint(40).unwrap();
        assert_eq!(count(), 1);
        drop(wal);
        let (_, replayed) = Wal::open(dir.path(), 256, 64).unwrap();
        assert!(replayed.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_replay() {
        use proptest::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal-00000000000000000001.log");
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..200))| {
            let _ = parse_body(&bytes);
            // As the newest segment's tail after a crash: whatever the bytes, the read
            // ends without error and hands over only whole, checked entries.
            std::fs::write(&path, [&MAGIC[..], &bytes].concat()).unwrap();
            let mut seen = 0;
            let read = read_segment(&path, true, &mut |r| {
                seen += r.len();
                Ok(())
            });
            prop_assert!(read.is_ok());
            prop_assert!(seen <= bytes.len());
        });
    }
}
