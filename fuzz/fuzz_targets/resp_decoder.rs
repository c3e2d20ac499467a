//! Fuzzes the RESP codec with hostile bytes.
//!
//! The first input byte picks the decode limits and how the rest is split into reads;
//! the rest is fed to a `Decoder` (whole, then in chunks) and to `Frame::parse`.
//! Checked: nothing panics; the requests and the error are the same however the bytes
//! were split; decoded requests respect the limits; a parsed frame re-encodes to bytes
//! that parse again to the same encoding; and the heap used while decoding or parsing
//! stays proportional to the input (a declared length alone must not allocate).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use opencluster_node::resp::codec::{DecodeLimits, Decoder, Frame, Protocol, ProtocolError, Request};

/// Heap a decode or parse may use regardless of input size (argument and element
/// preallocation caps).
const HEAP_SLACK: usize = 1 << 20;
/// Heap a decode or parse may use per input byte (frames are larger than their
/// encoding, vectors double as they grow).
const HEAP_PER_INPUT_BYTE: usize = 64;

/// Counts the Rust heap in use, and its peak, so the target can bound it.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the most heap it added at any moment.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

fn assert_heap_bounded(what: &str, peak: usize, input_len: usize) {
    let bound = HEAP_SLACK + HEAP_PER_INPUT_BYTE * input_len;
    assert!(peak <= bound, "{what} used {peak} heap bytes for {input_len} input bytes");
}

/// Chunk sizes from a small xorshift generator, so a run is reproducible from its input.
struct ChunkSizes {
    state: u64,
    max: u64,
}

impl Iterator for ChunkSizes {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        Some((1 + self.state % self.max) as usize)
    }
}

type Outcome = (Vec<Request>, Option<ProtocolError>);

/// Decodes `input` read in chunks of the given sizes, as a connection would.
fn decode(input: &[u8], chunk_sizes: &mut dyn Iterator<Item = usize>, limits: &DecodeLimits) -> Outcome {
    let mut decoder = Decoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = chunk_sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.reserve(n);
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => {
                    check_request(&request, limits);
                    requests.push(request);
                }
                Ok(None) => break,
                Err(e) => return (requests, Some(e)),
            }
        }
        assert!(buf.len() <= input.len() - rest.len());
    }
    (requests, None)
}

fn check_request(request: &Request, limits: &DecodeLimits) {
    assert!(!request.args.is_empty(), "empty requests are skipped");
    assert!(request.args.len() <= limits.max_args.max(limits.max_inline_bytes));
    assert!(
        request.args.iter().all(|arg| arg.len() <= limits.max_bulk_bytes),
        "an oversized argument was kept"
    );
    if let Some(len) = request.oversized {
        assert!(len > limits.max_bulk_bytes);
    }
}

fn check_frame(input: &[u8]) {
    let (parsed, peak) = measured(|| Frame::parse(input));
    assert_heap_bounded("Frame::parse", peak, input.len());
    let Ok(Some((frame, used))) = parsed else {
        return;
    };
    assert!(used > 0 && used <= input.len());
    let mut first = BytesMut::new();
    frame.encode(Protocol::Resp3, &mut first);
    let (again, again_used) =
        Frame::parse(&first).expect("a re-encoded frame parses").expect("a re-encoded frame is complete");
    assert_eq!(again_used, first.len());
    let mut second = BytesMut::new();
    again.encode(Protocol::Resp3, &mut second);
    assert_eq!(first, second, "encoding is not stable");
    let mut resp2 = BytesMut::new();
    frame.encode(Protocol::Resp2, &mut resp2);
    assert!(matches!(Frame::parse(&resp2), Ok(Some((_, n))) if n == resp2.len()));
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let limits = if control & 1 == 0 {
        // Small enough that fuzzed lengths cross every limit.
        DecodeLimits {
            max_bulk_bytes: 8,
            max_protocol_bulk_bytes: 1 << 20,
            max_args: 16,
            max_inline_bytes: 64,
        }
    } else {
        DecodeLimits::default()
    };

    let (whole, peak) = measured(|| decode(input, &mut std::iter::repeat(usize::MAX), &limits));
    assert_heap_bounded("Decoder (one read)", peak, input.len());

    let mut chunks = ChunkSizes {
        state: u64::from(control) << 32 | input.len() as u64 | 1,
        max: [1, 3, 16, 256][usize::from(control >> 1 & 3)],
    };
    let (chunked, peak) = measured(|| decode(input, &mut chunks, &limits));
    assert_heap_bounded("Decoder (chunked reads)", peak, input.len());
    assert_eq!(whole, chunked, "decoding depends on how the input is split");

    check_frame(input);
});
