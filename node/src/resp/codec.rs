//! RESP codec: turns a client's bytes into [`Request`]s and appends replies to an output
//! buffer.
//!
//! Requests are decoded the way redis-server's `processMultibulkBuffer` and
//! `processInlineBuffer` do (same limits, same error texts), but incrementally: the
//! [`Decoder`] keeps its place across reads, so a request that trickles in byte by byte
//! costs O(n), and arguments are zero-copy slices of the read buffer. A bulk string
//! larger than the node accepts is dropped as it arrives instead of being buffered, so a
//! client cannot make the node hold a value it is going to refuse.
//!
//! Replies are written with the `write_*` functions, which know where RESP2 and RESP3
//! differ. [`Frame`] is a whole RESP2/RESP3 value for tests and tools; the server's hot
//! path never builds one.

use std::fmt::{self, Write as _};
use std::mem;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Redis's default `proto-max-bulk-len`.
const REDIS_PROTO_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Redis's historical cap on the element count of a request array.
const REDIS_MAX_MULTIBULK_LEN: usize = 1024 * 1024;
/// Redis's `PROTO_INLINE_MAX_SIZE`.
const REDIS_INLINE_MAX_SIZE: usize = 64 * 1024;
/// Most argument slots reserved before the arguments arrive: the declared count is
/// untrusted (Redis caps its preallocation the same way).
const MAX_ARGS_PREALLOC: usize = 1024;
/// Most elements reserved for one aggregate in [`Frame::parse`]. Smaller than for
/// requests because up to [`MAX_FRAME_DEPTH`] nested aggregates reserve at once.
const MAX_FRAME_PREALLOC: usize = 64;
/// Deepest aggregate nesting [`Frame::parse`] accepts; bounds its recursion.
const MAX_FRAME_DEPTH: usize = 64;
/// Smallest encoded RESP value (`_\r\n`, `+\r\n`): lets [`Frame::parse`] see that a
/// declared element count cannot fit in the input without parsing the elements.
const MIN_FRAME_BYTES: usize = 3;

/// Limits for decoding client requests.
#[derive(Clone, Debug)]
pub struct DecodeLimits {
    /// Bulk strings longer than this are not buffered: their bytes are consumed and
    /// discarded as they arrive, and the request is returned with `oversized = Some(len)`
    /// so the server can answer an error and keep the connection usable.
    pub max_bulk_bytes: usize,
    /// Declared bulk lengths above this are a protocol error (connection closes), like
    /// Redis's proto-max-bulk-len (512 MiB).
    pub max_protocol_bulk_bytes: usize,
    /// Max number of elements in a request array (Redis: 1024*1024); more is a protocol
    /// error.
    pub max_args: usize,
    /// Max length of an inline command line (no '*' prefix, e.g. telnet "PING\r\n");
    /// longer is a protocol error. Redis uses 64 KiB.
    pub max_inline_bytes: usize,
}

impl Default for DecodeLimits {
    /// Redis's own limits; `max_bulk_bytes` equals the protocol limit, so nothing is
    /// reported as oversized until a smaller value limit is configured.
    fn default() -> Self {
        DecodeLimits {
            max_bulk_bytes: REDIS_PROTO_MAX_BULK_LEN,
            max_protocol_bulk_bytes: REDIS_PROTO_MAX_BULK_LEN,
            max_args: REDIS_MAX_MULTIBULK_LEN,
            max_inline_bytes: REDIS_INLINE_MAX_SIZE,
        }
    }
}

/// One client request: a command name and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Zero-copy slices of the read buffer (inline arguments with quotes or escapes are
    /// the exception: they are unescaped into their own buffers).
    pub args: Vec<Bytes>,
    /// `Some(declared length)` of the first bulk that exceeded `max_bulk_bytes`; that
    /// argument is replaced by an empty `Bytes`.
    pub oversized: Option<usize>,
}

/// A request or frame that breaks the protocol. The connection cannot be resynchronised
/// after one: answer `-ERR <Display text>` and close it.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A `*` header that is not a valid count, or more elements than allowed.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$` header that is not a valid length, negative, or above the protocol limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An element of a request array that does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.got))]
    ExpectedBulk {
        /// The byte found instead.
        got: u8,
    },
    /// An inline command line longer than `max_inline_bytes`.
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// An inline command line whose quotes do not close (or close mid-word).
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// Bulk payload not followed by `\r\n` (redis-server does not check this; we do, so
    /// a client that miscounts a length fails fast instead of desynchronising).
    #[error("Protocol error: bulk string not terminated by CRLF")]
    MissingBulkCrlf,
    /// A frame's header line not terminated by `\r\n`.
    #[error("Protocol error: line not terminated by CRLF")]
    MissingLineCrlf,
    /// A frame that starts with a byte no RESP type uses.
    #[error("Protocol error: unexpected type byte '{}'", char::from(*.got))]
    UnexpectedType {
        /// The byte found.
        got: u8,
    },
    /// An integer frame (`:`) that is not a valid 64-bit signed integer.
    #[error("Protocol error: invalid integer")]
    InvalidInteger,
    /// A double frame (`,`) that is not a number, `inf`, `-inf` or `nan`.
    #[error("Protocol error: invalid double")]
    InvalidDouble,
    /// A boolean frame (`#`) other than `t` or `f`.
    #[error("Protocol error: invalid boolean")]
    InvalidBoolean,
    /// A big number frame (`(`) that is not an optionally signed run of digits.
    #[error("Protocol error: invalid big number")]
    InvalidBigNumber,
    /// A null frame (`_`) with content.
    #[error("Protocol error: invalid null")]
    InvalidNull,
    /// A verbatim string (`=`) without its three-byte format and `:`.
    #[error("Protocol error: invalid verbatim string")]
    InvalidVerbatim,
    /// Aggregates nested deeper than [`Frame::parse`] follows.
    #[error("Protocol error: frame nested deeper than {MAX_FRAME_DEPTH} levels")]
    TooDeep,
}

/// Where the decoder is inside the request it is assembling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between requests: the next byte starts a `*N` header or an inline line.
    Idle,
    /// Inside a request array, expecting the next `$len` header.
    BulkHeader,
    /// Expecting this many payload bytes, then CRLF.
    BulkPayload(usize),
    /// Dropping an oversized payload; this many bytes are still to come.
    Skipping(usize),
    /// Oversized payload dropped; its CRLF is still to come.
    SkippedCrlf,
}

/// Incremental decoder of client requests; one per connection.
///
/// Bytes of a request array are taken out of the buffer as each argument completes, so
/// `buf` only ever holds the unparsed tail. After an error the decoder starts afresh,
/// but the connection should be closed: the stream cannot be resynchronised.
#[derive(Debug)]
pub struct Decoder {
    limits: DecodeLimits,
    state: State,
    /// Element count declared by the current request array.
    expected: usize,
    /// Arguments of the current request array received so far.
    args: Vec<Bytes>,
    /// Declared length of the first oversized bulk of the current request.
    oversized: Option<usize>,
    /// Length of the front of `buf` already searched for the end of an incomplete
    /// inline line, so a line arriving in pieces is scanned once.
    inline_scanned: usize,
    /// Bytes held in `args`: with what is still in the read buffer, the size of the
    /// request being received.
    held: usize,
}

impl Decoder {
    pub fn new(limits: DecodeLimits) -> Self {
        Decoder {
            limits,
            state: State::Idle,
            expected: 0,
            args: Vec::new(),
            oversized: None,
            inline_scanned: 0,
            held: 0,
        }
    }

    /// Bytes of the request in progress already taken out of the read buffer. A server
    /// bounding request size adds this to what its buffer still holds.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Parses the next complete request from the front of `buf`, consuming its bytes.
    /// `Ok(None)` = need more bytes (partial input stays in buf, or is consumed if it
    /// belongs to an argument already complete or an oversized bulk being skipped).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let result = self.decode_step(buf);
        if result.is_err() {
            *self = Decoder::new(self.limits.clone());
        }
        result
    }

    fn decode_step(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            match self.state {
                State::Idle => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        match self.decode_inline(buf)? {
                            None => return Ok(None),
                            // Redis skips empty lines (telnet users hitting enter).
                            Some(request) if request.args.is_empty() => continue,
                            Some(request) => return Ok(Some(request)),
                        }
                    }
                    let (negative, count, consumed) = match parse_len_line(buf) {
                        LenLine::Incomplete => return Ok(None),
                        LenLine::Invalid => return Err(ProtocolError::InvalidMultibulkLength),
                        LenLine::Value { negative, value, consumed } => (negative, value, consumed),
                    };
                    buf.advance(consumed);
                    // `*0` and `*-N` are no request at all in Redis: skip them.
                    if negative || count == 0 {
                        continue;
                    }
                    let count = usize::try_from(count)
                        .ok()
                        .filter(|&n| n <= self.limits.max_args)
                        .ok_or(ProtocolError::InvalidMultibulkLength)?;
                    self.expected = count;
                    self.args = Vec::with_capacity(count.min(MAX_ARGS_PREALLOC));
                    self.state = State::BulkHeader;
                }
                State::BulkHeader => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedBulk { got: first });
                    }
                    let (len, consumed) = match parse_len_line(buf) {
                        LenLine::Incomplete => return Ok(None),
                        LenLine::Value { negative: false, value, consumed } => match usize::try_from(value) {
                            Ok(len) if len <= self.limits.max_protocol_bulk_bytes => (len, consumed),
                            _ => return Err(ProtocolError::InvalidBulkLength),
                        },
                        _ => return Err(ProtocolError::InvalidBulkLength),
                    };
                    buf.advance(consumed);
                    if len > self.limits.max_bulk_bytes {
                        self.oversized.get_or_insert(len);
                        self.state = State::Skipping(len);
                    } else {
                        self.state = State::BulkPayload(len);
                    }
                }
                State::BulkPayload(len) => {
                    if buf.len() < len.saturating_add(2) {
                        return Ok(None);
                    }
                    if buf[len..len + 2] != *b"\r\n" {
                        return Err(ProtocolError::MissingBulkCrlf);
                    }
                    let arg = buf.split_to(len).freeze();
                    buf.advance(2);
                    if let Some(request) = self.push_arg(arg) {
                        return Ok(Some(request));
                    }
                }
                State::Skipping(remaining) => {
                    let dropped = remaining.min(buf.len());
                    buf.advance(dropped);
                    if dropped < remaining {
                        self.state = State::Skipping(remaining - dropped);
                        return Ok(None);
                    }
                    self.state = State::SkippedCrlf;
                }
                State::SkippedCrlf => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if buf[..2] != *b"\r\n" {
                        return Err(ProtocolError::MissingBulkCrlf);
                    }
                    buf.advance(2);
                    if let Some(request) = self.push_arg(Bytes::new()) {
                        return Ok(Some(request));
                    }
                }
            }
        }
    }

    /// Adds a completed argument; returns the request once it has all of them.
    fn push_arg(&mut self, arg: Bytes) -> Option<Request> {
        self.held += arg.len();
        self.args.push(arg);
        if self.args.len() < self.expected {
            self.state = State::BulkHeader;
            return None;
        }
        self.state = State::Idle;
        self.held = 0;
        Some(Request { args: mem::take(&mut self.args), oversized: self.oversized.take() })
    }

    /// Decodes one inline line (`SET k "v"\r\n`); `Some` with no args for a blank line.
    fn decode_inline(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let from = self.inline_scanned.min(buf.len());
        let Some(offset) = memchr::memchr(b'\n', &buf[from..]) else {
            self.inline_scanned = buf.len();
            if buf.len() > self.limits.max_inline_bytes {
                return Err(ProtocolError::TooBigInline);
            }
            return Ok(None);
        };
        let newline = from + offset;
        self.inline_scanned = 0;
        // Redis only checks the limit while the newline is missing, which makes the
        // outcome depend on how the line was split into reads; checking the line itself
        // gives the same answer however it arrives.
        if newline > self.limits.max_inline_bytes {
            return Err(ProtocolError::TooBigInline);
        }
        let mut line = buf.split_to(newline + 1).freeze();
        line.truncate(newline);
        if line.last() == Some(&b'\r') {
            line.truncate(newline - 1);
        }
        // Redis splits the line as a C string: a NUL byte ends it.
        if let Some(nul) = memchr::memchr(0, &line) {
            line.truncate(nul);
        }
        let mut args = split_inline(&line)?;
        let mut oversized = None;
        for arg in &mut args {
            if arg.len() > self.limits.max_bulk_bytes {
                oversized.get_or_insert(arg.len());
                *arg = Bytes::new();
            }
        }
        Ok(Some(Request { args, oversized }))
    }
}

/// Outcome of parsing a `<type byte><decimal>\r\n` header line.
enum LenLine {
    Incomplete,
    Invalid,
    /// The number is `-value` if `negative`; `consumed` counts the type byte and CRLF.
    Value {
        negative: bool,
        value: u64,
        consumed: usize,
    },
}

/// Parses the header line at the front of `buf` (`buf[0]` is its type byte).
///
/// The number follows Redis's `string2ll`: an optional `-`, no `+`, no leading zeros,
/// no `-0`, within `i64`. Digits are parsed as they are scanned, so an invalid line is
/// reported as soon as its first bad byte is seen and a line never costs more than the
/// 20 digits an `i64` can have.
fn parse_len_line(buf: &[u8]) -> LenLine {
    let negative = buf.get(1) == Some(&b'-');
    let digits_start = if negative { 2 } else { 1 };
    let max = if negative { i64::MIN.unsigned_abs() } else { i64::MAX.unsigned_abs() };
    let mut value: u64 = 0;
    let mut i = digits_start;
    loop {
        match buf.get(i) {
            None => return LenLine::Incomplete,
            Some(&b'\r') => break,
            Some(&digit @ b'0'..=b'9') => {
                if i > digits_start && value == 0 {
                    return LenLine::Invalid; // leading zero
                }
                match value.checked_mul(10).and_then(|v| v.checked_add(u64::from(digit - b'0'))) {
                    Some(v) if v <= max => value = v,
                    _ => return LenLine::Invalid,
                }
                i += 1;
            }
            Some(_) => return LenLine::Invalid,
        }
    }
    if i == digits_start || (negative && value == 0) {
        return LenLine::Invalid;
    }
    match buf.get(i + 1) {
        None => LenLine::Incomplete,
        Some(&b'\n') => LenLine::Value { negative, value, consumed: i + 2 },
        Some(_) => LenLine::Invalid,
    }
}

/// C's `isspace`, which Redis uses to skip blanks between inline arguments.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits an inline line into arguments with Redis's `sdssplitargs` rules. Plain words
/// are slices of `line`; words with quotes are unescaped into their own buffers.
fn split_inline(line: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let s: &[u8] = line;
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < s.len() && is_c_space(s[i]) {
            i += 1;
        }
        if i == s.len() {
            return Ok(args);
        }
        let start = i;
        while i < s.len() && !matches!(s[i], b' ' | b'\n' | b'\r' | b'\t' | b'"' | b'\'') {
            i += 1;
        }
        if i == s.len() || !matches!(s[i], b'"' | b'\'') {
            args.push(line.slice(start..i));
            continue;
        }
        let mut word = s[start..i].to_vec();
        i = read_quoted_word(s, i, &mut word)?;
        args.push(Bytes::from(word));
    }
}

/// Continues an inline word at `s[i]`, its first quote, appending the unescaped bytes to
/// `word`; returns the index just past the word.
fn read_quoted_word(s: &[u8], mut i: usize, word: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    #[derive(Clone, Copy)]
    enum Quote {
        None,
        Double,
        Single,
    }
    // A closing quote must end the word: what follows is a blank or nothing.
    let closes_word = |at: usize| match s.get(at + 1) {
        Some(&next) if !is_c_space(next) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(at + 1),
    };
    let mut quote = Quote::None;
    loop {
        let Some(&c) = s.get(i) else {
            return match quote {
                Quote::None => Ok(i),
                Quote::Double | Quote::Single => Err(ProtocolError::UnbalancedQuotes),
            };
        };
        match quote {
            Quote::None => match c {
                b' ' | b'\n' | b'\r' | b'\t' => return Ok(i + 1),
                b'"' => quote = Quote::Double,
                b'\'' => quote = Quote::Single,
                _ => word.push(c),
            },
            Quote::Double => match c {
                b'\\' if s.get(i + 1) == Some(&b'x') => {
                    let hex = s
                        .get(i + 2)
                        .and_then(|&h| hex_value(h))
                        .zip(s.get(i + 3).and_then(|&l| hex_value(l)));
                    match hex {
                        Some((high, low)) => {
                            word.push(high << 4 | low);
                            i += 3;
                        }
                        None => {
                            word.push(b'x');
                            i += 1;
                        }
                    }
                }
                b'\\' if i + 1 < s.len() => {
                    i += 1;
                    word.push(match s[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                }
                b'"' => return closes_word(i),
                _ => word.push(c),
            },
            Quote::Single => match c {
                b'\\' if s.get(i + 1) == Some(&b'\'') => {
                    i += 1;
                    word.push(b'\'');
                }
                b'\'' => return closes_word(i),
                _ => word.push(c),
            },
        }
        i += 1;
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The reply protocol a connection negotiated (`HELLO 3` switches to RESP3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// `+s`. A CR or LF in `s` would end the line early, so each becomes a space.
pub fn write_simple(out: &mut BytesMut, s: &str) {
    write_line(out, b'+', s.as_bytes());
}

/// `-msg`; `msg` includes its code prefix (`"ERR "`, `"NOAUTH "`, `"WRONGPASS "`). Any CR
/// or LF in `msg` becomes a space, as Redis does, so an error quoting client input cannot
/// break the reply stream.
pub fn write_error(out: &mut BytesMut, msg: &str) {
    write_line(out, b'-', msg.as_bytes());
}

/// `:n`.
pub fn write_integer(out: &mut BytesMut, n: i64) {
    out.reserve(24);
    out.put_u8(b':');
    if n < 0 {
        out.put_u8(b'-');
    }
    put_decimal(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

/// `$len` and the bytes.
pub fn write_bulk(out: &mut BytesMut, b: &[u8]) {
    out.reserve(b.len() + 26);
    write_header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// The null reply: RESP2 `$-1`, RESP3 `_`.
pub fn write_null(out: &mut BytesMut, p: Protocol) {
    out.extend_from_slice(match p {
        Protocol::Resp2 => b"$-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// The null array reply: RESP2 `*-1`, RESP3 `_`.
pub fn write_null_array(out: &mut BytesMut, p: Protocol) {
    out.extend_from_slice(match p {
        Protocol::Resp2 => b"*-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// `*n`; the `n` elements follow.
pub fn write_array_len(out: &mut BytesMut, n: usize) {
    write_header(out, b'*', n);
}

/// RESP3 `%n`; RESP2 `*2n` (a flat key, value, key, value array). `n` pairs follow.
pub fn write_map_len(out: &mut BytesMut, p: Protocol, n: usize) {
    match p {
        Protocol::Resp2 => write_header(out, b'*', n.saturating_mul(2)),
        Protocol::Resp3 => write_header(out, b'%', n),
    }
}

/// RESP3 `~n`; RESP2 `*n`. The `n` members follow.
pub fn write_set_len(out: &mut BytesMut, p: Protocol, n: usize) {
    match p {
        Protocol::Resp2 => write_header(out, b'*', n),
        Protocol::Resp3 => write_header(out, b'~', n),
    }
}

/// RESP3 `>n` (out-of-band data such as pub/sub messages); RESP2 connections get a plain
/// array instead, written with [`write_array_len`].
pub fn write_push_len(out: &mut BytesMut, n: usize) {
    write_header(out, b'>', n);
}

/// RESP3 `,d`; RESP2 a bulk string of the same text. The text is Redis's: `inf`, `-inf`,
/// `nan`, integral values as integers, otherwise the shortest decimal that parses back
/// to `d`, laid out as Redis's `fpconv_dtoa` does (`0.0001`, `1.5e-7`, `1e+300`).
pub fn write_double(out: &mut BytesMut, p: Protocol, d: f64) {
    let text = DoubleText::new(d);
    match p {
        Protocol::Resp2 => write_bulk(out, text.as_bytes()),
        Protocol::Resp3 => {
            out.reserve(text.len + 3);
            out.put_u8(b',');
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// RESP3 `#t` / `#f`; RESP2 `:1` / `:0`.
pub fn write_bool(out: &mut BytesMut, p: Protocol, b: bool) {
    out.extend_from_slice(match (p, b) {
        (Protocol::Resp2, true) => b":1\r\n",
        (Protocol::Resp2, false) => b":0\r\n",
        (Protocol::Resp3, true) => b"#t\r\n",
        (Protocol::Resp3, false) => b"#f\r\n",
    });
}

/// RESP3 `=len` and `format:text` (`format` is three bytes such as `"txt"` or `"mkd"`;
/// anything else is written as `"txt"`); RESP2 a bulk string of `text` alone.
pub fn write_verbatim(out: &mut BytesMut, p: Protocol, format: &str, text: &[u8]) {
    match p {
        Protocol::Resp2 => write_bulk(out, text),
        Protocol::Resp3 => {
            debug_assert_eq!(format.len(), 3, "verbatim format must be three bytes");
            let format = if format.len() == 3 { format } else { "txt" };
            out.reserve(text.len() + 30);
            write_header(out, b'=', text.len() + 4);
            out.extend_from_slice(format.as_bytes());
            out.put_u8(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// RESP3 `(digits`; RESP2 a bulk string of the digits (as Redis replies to RESP2).
pub fn write_big_number(out: &mut BytesMut, p: Protocol, digits: &str) {
    match p {
        Protocol::Resp2 => write_bulk(out, digits.as_bytes()),
        Protocol::Resp3 => write_line(out, b'(', digits.as_bytes()),
    }
}

/// `<kind><line>\r\n`, with CR and LF in `line` replaced by spaces.
fn write_line(out: &mut BytesMut, kind: u8, line: &[u8]) {
    out.reserve(line.len() + 3);
    out.put_u8(kind);
    let start = out.len();
    out.extend_from_slice(line);
    if memchr::memchr2(b'\r', b'\n', line).is_some() {
        for b in &mut out[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `<kind><n>\r\n`.
fn write_header(out: &mut BytesMut, kind: u8, n: usize) {
    out.reserve(24);
    out.put_u8(kind);
    put_decimal(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// Two ASCII digits for each value 0..100: halves the divisions when formatting.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Appends `n` in decimal, without allocating.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// A double spelled as Redis's `d2string` spells it, in a stack buffer.
struct DoubleText {
    bytes: [u8; 32],
    len: usize,
}

impl DoubleText {
    fn new(d: f64) -> Self {
        let mut text = DoubleText { bytes: [0; 32], len: 0 };
        if d.is_nan() {
            text.push(b"nan");
        } else if d.is_infinite() {
            text.push(if d > 0.0 { b"inf" } else { b"-inf" });
        } else if d == 0.0 {
            text.push(if d.is_sign_negative() { b"-0" } else { b"0" });
        } else if d.fract() == 0.0 && d.abs() <= (i64::MAX / 2) as f64 {
            // Redis prints doubles that are exact integers of this range as integers.
            if d < 0.0 {
                text.push(b"-");
            }
            text.push_decimal((d.abs()) as u64);
        } else {
            text.push_shortest(d);
        }
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, s: &[u8]) {
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }

    fn push_decimal(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    /// Shortest round-trip digits (from Rust's formatter) in `fpconv_dtoa`'s layout.
    fn push_shortest(&mut self, d: f64) {
        let mut sci = DoubleText { bytes: [0; 32], len: 0 };
        // `{:e}` yields the shortest digits that round-trip, as `d[.ddd]e[-]x`; it fits
        // easily (at most 23 bytes), so the write cannot fail.
        let written = write!(sci, "{:e}", d.abs());
        debug_assert!(written.is_ok());
        let sci = sci.as_bytes();
        let e_at = sci.iter().position(|&b| b == b'e').unwrap_or(sci.len());
        let mut digits = [0u8; 24];
        let mut ndigits = 0usize;
        for &b in &sci[..e_at] {
            if b.is_ascii_digit() {
                digits[ndigits] = b;
                ndigits += 1;
            }
        }
        let exp10: i32 = std::str::from_utf8(&sci[(e_at + 1).min(sci.len())..])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let digits = &digits[..ndigits];
        let n = ndigits as i32;
        // The value is digits × 10^k.
        let k = exp10 - (n - 1);
        let exp = exp10.abs();
        if d < 0.0 {
            self.push(b"-");
        }
        if k >= 0 && exp < n + 7 {
            self.push(digits);
            for _ in 0..k {
                self.push(b"0");
            }
        } else if k < 0 && (k > -7 || exp < 4) {
            let offset = n + k;
            if offset <= 0 {
                self.push(b"0.");
                for _ in 0..-offset {
                    self.push(b"0");
                }
                self.push(digits);
            } else {
                let (int, frac) = digits.split_at(offset as usize);
                self.push(int);
                self.push(b".");
                self.push(frac);
            }
        } else {
            self.push(&digits[..1]);
            if digits.len() > 1 {
                self.push(b".");
                self.push(&digits[1..]);
            }
            self.push(if exp10 < 0 { b"e-" } else { b"e+" });
            self.push_decimal(exp.unsigned_abs().into());
        }
    }
}

impl fmt::Write for DoubleText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.len + s.len() > self.bytes.len() {
            return Err(fmt::Error);
        }
        self.push(s.as_bytes());
        Ok(())
    }
}

/// A complete RESP2 or RESP3 value.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// RESP2 null bulk string (`$-1`) or RESP3 null (`_`).
    Null,
    /// RESP2 null array (`*-1`); RESP3 writes it as `_`, which parses back as `Null`.
    NullArray,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    Push(Vec<Frame>),
    Double(f64),
    Boolean(bool),
    BigNumber(String),
    Verbatim {
        format: String,
        text: Bytes,
    },
}

impl Frame {
    /// Appends the frame as `p` spells it (RESP3-only types degrade as the `write_*`
    /// functions describe).
    pub fn encode(&self, p: Protocol, out: &mut BytesMut) {
        match self {
            Frame::Simple(s) => write_simple(out, s),
            Frame::Error(msg) => write_error(out, msg),
            Frame::Integer(n) => write_integer(out, *n),
            Frame::Bulk(b) => write_bulk(out, b),
            Frame::Null => write_null(out, p),
            Frame::NullArray => write_null_array(out, p),
            Frame::Array(items) => {
                write_array_len(out, items.len());
                items.iter().for_each(|item| item.encode(p, out));
            }
            Frame::Map(pairs) => {
                write_map_len(out, p, pairs.len());
                for (key, value) in pairs {
                    key.encode(p, out);
                    value.encode(p, out);
                }
            }
            Frame::Set(items) => {
                write_set_len(out, p, items.len());
                items.iter().for_each(|item| item.encode(p, out));
            }
            Frame::Push(items) => {
                match p {
                    Protocol::Resp2 => write_array_len(out, items.len()),
                    Protocol::Resp3 => write_push_len(out, items.len()),
                }
                items.iter().for_each(|item| item.encode(p, out));
            }
            Frame::Double(d) => write_double(out, p, *d),
            Frame::Boolean(b) => write_bool(out, p, *b),
            Frame::BigNumber(digits) => write_big_number(out, p, digits),
            Frame::Verbatim { format, text } => write_verbatim(out, p, format, text),
        }
    }

    /// Parses one complete frame from the start of `input`; `Ok(None)` if incomplete;
    /// `Ok(Some((frame, bytes_consumed)))`.
    ///
    /// Nesting is limited to 64 levels and no allocation is sized by a declared length
    /// beyond a small cap, so hostile input cannot exhaust memory or stack. RESP3
    /// attributes (`|`) are parsed and dropped; blob errors (`!`) become `Error`; text
    /// that is not UTF-8 is converted lossily. Each call starts from scratch: callers
    /// that retry on every read are quadratic, which suits tests and tools, not servers.
    pub fn parse(input: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let mut parser = FrameParser { input, pos: 0 };
        match parser.frame(0) {
            Ok(frame) => Ok(Some((frame, parser.pos))),
            Err(ParseStop::Incomplete) => Ok(None),
            Err(ParseStop::Invalid(e)) => Err(e),
        }
    }
}

/// Why [`FrameParser`] stopped short of a frame.
enum ParseStop {
    Incomplete,
    Invalid(ProtocolError),
}

impl From<ProtocolError> for ParseStop {
    fn from(e: ProtocolError) -> Self {
        ParseStop::Invalid(e)
    }
}

struct FrameParser<'a> {
    input: &'a [u8],
    /// Start of the next unparsed byte.
    pos: usize,
}

impl<'a> FrameParser<'a> {
    fn frame(&mut self, depth: usize) -> Result<Frame, ParseStop> {
        if depth > MAX_FRAME_DEPTH {
            return Err(ProtocolError::TooDeep.into());
        }
        let Some(&kind) = self.input.get(self.pos) else {
            return Err(ParseStop::Incomplete);
        };
        Ok(match kind {
            b'+' => Frame::Simple(String::from_utf8_lossy(self.line()?).into_owned()),
            b'-' => Frame::Error(String::from_utf8_lossy(self.line()?).into_owned()),
            b':' => Frame::Integer(self.integer()?),
            b'$' => match self.blob(true)? {
                Some(bytes) => Frame::Bulk(Bytes::copy_from_slice(bytes)),
                None => Frame::Null,
            },
            b'!' => match self.blob(false)? {
                Some(bytes) => Frame::Error(String::from_utf8_lossy(bytes).into_owned()),
                None => Frame::Null,
            },
            b'=' => {
                let blob = self.blob(false)?.unwrap_or_default();
                let format = blob
                    .get(..3)
                    .filter(|_| blob.get(3) == Some(&b':'))
                    .and_then(|f| std::str::from_utf8(f).ok())
                    .ok_or(ProtocolError::InvalidVerbatim)?;
                Frame::Verbatim { format: format.to_owned(), text: Bytes::copy_from_slice(&blob[4..]) }
            }
            b'*' => match self.count(true, 1)? {
                Some(n) => Frame::Array(self.items(n, depth)?),
                None => Frame::NullArray,
            },
            b'~' => {
                let n = self.count(false, 1)?.unwrap_or_default();
                Frame::Set(self.items(n, depth)?)
            }
            b'>' => {
                let n = self.count(false, 1)?.unwrap_or_default();
                Frame::Push(self.items(n, depth)?)
            }
            b'%' => {
                let n = self.count(false, 2)?.unwrap_or_default();
                Frame::Map(self.pairs(n, depth)?)
            }
            b'|' => {
                // Attributes annotate the frame that follows; no caller here wants them.
                let n = self.count(false, 2)?.unwrap_or_default();
                self.pairs(n, depth)?;
                return self.frame(depth + 1);
            }
            b'_' => {
                if !self.line()?.is_empty() {
                    return Err(ProtocolError::InvalidNull.into());
                }
                Frame::Null
            }
            b',' => {
                let line = self.line()?;
                let d = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or(ProtocolError::InvalidDouble)?;
                Frame::Double(d)
            }
            b'#' => match self.line()? {
                b"t" => Frame::Boolean(true),
                b"f" => Frame::Boolean(false),
                _ => return Err(ProtocolError::InvalidBoolean.into()),
            },
            b'(' => {
                let line = self.line()?;
                let digits = line.strip_prefix(b"-").unwrap_or(line);
                let digits = digits.strip_prefix(b"+").unwrap_or(digits);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(ProtocolError::InvalidBigNumber.into());
                }
                // All ASCII, checked above.
                Frame::BigNumber(String::from_utf8_lossy(line).into_owned())
            }
            got => return Err(ProtocolError::UnexpectedType { got }.into()),
        })
    }

    /// The rest of the current line after its type byte; moves past its CRLF.
    fn line(&mut self) -> Result<&'a [u8], ParseStop> {
        let start = self.pos + 1;
        let rest = &self.input[start..];
        let Some(end) = memchr::memchr2(b'\r', b'\n', rest) else {
            return Err(ParseStop::Incomplete);
        };
        match (rest[end], rest.get(end + 1)) {
            (b'\r', None) => Err(ParseStop::Incomplete),
            (b'\r', Some(&b'\n')) => {
                self.pos = start + end + 2;
                Ok(&rest[..end])
            }
            _ => Err(ProtocolError::MissingLineCrlf.into()),
        }
    }

    /// The header number of the current line, moving past it; `invalid` if malformed.
    fn number(&mut self, invalid: ProtocolError) -> Result<(bool, u64), ParseStop> {
        match parse_len_line(&self.input[self.pos..]) {
            LenLine::Incomplete => Err(ParseStop::Incomplete),
            LenLine::Invalid => Err(invalid.into()),
            LenLine::Value { negative, value, consumed } => {
                self.pos += consumed;
                Ok((negative, value))
            }
        }
    }

    fn integer(&mut self) -> Result<i64, ParseStop> {
        let (negative, value) = self.number(ProtocolError::InvalidInteger)?;
        // `parse_len_line` keeps the magnitude within i64's range for its sign.
        let n = if negative { 0i64.checked_sub_unsigned(value) } else { i64::try_from(value).ok() };
        Ok(n.ok_or(ProtocolError::InvalidInteger)?)
    }

    /// A length-prefixed payload; `None` for `-1` when `nullable`.
    fn blob(&mut self, nullable: bool) -> Result<Option<&'a [u8]>, ParseStop> {
        let (negative, value) = self.number(ProtocolError::InvalidBulkLength)?;
        if negative {
            return if nullable && value == 1 {
                Ok(None)
            } else {
                Err(ProtocolError::InvalidBulkLength.into())
            };
        }
        let len = usize::try_from(value)
            .ok()
            .filter(|&len| len <= REDIS_PROTO_MAX_BULK_LEN)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        let start = self.pos;
        let end = start + len;
        if self.input.len() < end + 2 {
            return Err(ParseStop::Incomplete);
        }
        if self.input[end..end + 2] != *b"\r\n" {
            return Err(ProtocolError::MissingBulkCrlf.into());
        }
        self.pos = end + 2;
        Ok(Some(&self.input[start..end]))
    }

    /// An aggregate's element count (`values_per_element` frames each); `None` for `-1`
    /// when `nullable`.
    fn count(&mut self, nullable: bool, values_per_element: usize) -> Result<Option<usize>, ParseStop> {
        let (negative, value) = self.number(ProtocolError::InvalidMultibulkLength)?;
        if negative {
            return if nullable && value == 1 {
                Ok(None)
            } else {
                Err(ProtocolError::InvalidMultibulkLength.into())
            };
        }
        let n = usize::try_from(value).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
        let needed = n.saturating_mul(values_per_element * MIN_FRAME_BYTES);
        if needed > self.input.len() - self.pos {
            return Err(ParseStop::Incomplete);
        }
        Ok(Some(n))
    }

    fn items(&mut self, n: usize, depth: usize) -> Result<Vec<Frame>, ParseStop> {
        let mut items = Vec::with_capacity(n.min(MAX_FRAME_PREALLOC));
        for _ in 0..n {
            items.push(self.frame(depth + 1)?);
        }
        Ok(items)
    }

    fn pairs(&mut self, n: usize, depth: usize) -> Result<Vec<(Frame, Frame)>, ParseStop> {
        let mut pairs = Vec::with_capacity(n.min(MAX_FRAME_PREALLOC));
        for _ in 0..n {
            let key = self.frame(depth + 1)?;
            let value = self.frame(depth + 1)?;
            pairs.push((key, value));
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Encodes `args` as a client would send them.
    fn request_bytes(args: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_array_len(&mut out, args.len());
        for arg in args {
            write_bulk(&mut out, arg);
        }
        out.to_vec()
    }

    fn args_of(request: &Request) -> Vec<&[u8]> {
        request.args.iter().map(|a| &a[..]).collect()
    }

    /// Everything a connection would see: the requests, then the error that ended it.
    type Outcome = (Vec<Request>, Option<ProtocolError>);

    /// Feeds `input` in chunks of the given sizes (cycled), decoding after each read.
    fn decode_chunked(input: &[u8], chunks: &[usize], limits: DecodeLimits) -> Outcome {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::new();
        let mut requests = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(usize::MAX).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(request)) => requests.push(request),
                    Ok(None) => break,
                    Err(e) => return (requests, Some(e)),
                }
            }
        }
        (requests, None)
    }

    fn decode_whole(input: &[u8], limits: DecodeLimits) -> Outcome {
        decode_chunked(input, &[usize::MAX], limits)
    }

    fn decode_one(input: &[u8]) -> Result<Option<Request>, ProtocolError> {
        Decoder::new(DecodeLimits::default()).decode(&mut BytesMut::from(input))
    }

    fn decode_err(input: &[u8]) -> String {
        match decode_whole(input, DecodeLimits::default()) {
            (_, Some(e)) => e.to_string(),
            (requests, None) => panic!("expected an error, got {requests:?}"),
        }
    }

    fn inline_args(line: &str) -> Vec<Vec<u8>> {
        let (requests, error) = decode_whole(line.as_bytes(), DecodeLimits::default());
        assert_eq!(error, None, "{line:?}");
        assert_eq!(requests.len(), 1, "{line:?}");
        requests[0].args.iter().map(|a| a.to_vec()).collect()
    }

    fn small_limits() -> DecodeLimits {
        DecodeLimits {
            max_bulk_bytes: 16,
            max_protocol_bulk_bytes: 64 * 1024 * 1024,
            max_args: 8,
            max_inline_bytes: 32,
        }
    }

    #[test]
    fn decodes_a_request_without_copying_its_payload() {
        let mut buf = BytesMut::from(&request_bytes(&[b"SET", b"key", b"value"])[..]);
        let payload_range = buf.as_ptr_range();
        let request = Decoder::new(DecodeLimits::default()).decode(&mut buf).unwrap().unwrap();
        assert_eq!(args_of(&request), [&b"SET"[..], b"key", b"value"]);
        assert_eq!(request.oversized, None);
        assert!(buf.is_empty());
        for arg in &request.args {
            assert!(payload_range.contains(&arg.as_ptr()), "arg was copied");
        }
    }

    #[test]
    fn decodes_pipelined_requests_from_one_buffer() {
        let mut input = request_bytes(&[b"SET", b"k", b""]);
        input.extend_from_slice(b"PING\r\n");
        input.extend_from_slice(&request_bytes(&[b"GET", b"k"]));
        input.extend_from_slice(b"*1\r\n$4\r\nPI");
        let mut buf = BytesMut::from(&input[..]);
        let mut decoder = Decoder::new(DecodeLimits::default());
        let mut got = Vec::new();
        while let Some(request) = decoder.decode(&mut buf).unwrap() {
            got.push(request.args);
        }
        assert_eq!(
            got,
            [
                vec![Bytes::from("SET"), Bytes::from("k"), Bytes::new()],
                vec![Bytes::from("PING")],
                vec![Bytes::from("GET"), Bytes::from("k")],
            ]
        );
        buf.extend_from_slice(b"NG\r\n");
        let last = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(args_of(&last), [&b"PING"[..]]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn any_split_point_gives_the_same_requests() {
        let mut input = request_bytes(&[b"SET", b"key", b"0123456789abcdef0123"]);
        input.extend_from_slice(b"*0\r\n*-1\r\n\r\n  \r\n");
        input.extend_from_slice(b"set \"a b\" 'c\\'d' \"\\x41\\n\"\r\n");
        input.extend_from_slice(&request_bytes(&[b"GET", b""]));
        input.extend_from_slice(b"ECHO x\n");
        let expected = decode_whole(&input, small_limits());
        assert_eq!(expected.0.len(), 4);
        assert_eq!(expected.0[0].oversized, Some(20));
        assert_eq!(expected.1, None);
        for split in 0..=input.len() {
            let first = split.max(1);
            assert_eq!(
                decode_chunked(&input, &[first, usize::MAX], small_limits()),
                expected,
                "split at {split}"
            );
        }
        assert_eq!(decode_chunked(&input, &[1], small_limits()), expected);
    }

    #[test]
    fn skips_empty_arrays_and_blank_inline_lines() {
        let (requests, error) =
            decode_whole(b"*0\r\n*-1\r\n*-7\r\n\r\n\n   \t\r\n*1\r\n$4\r\nPING\r\n", DecodeLimits::default());
        assert_eq!(error, None);
        assert_eq!(requests.len(), 1);
        assert_eq!(args_of(&requests[0]), [&b"PING"[..]]);
    }

    #[test]
    fn splits_inline_commands_on_blanks() {
        assert_eq!(inline_args("PING\r\n"), [b"PING"]);
        assert_eq!(inline_args("PING\n"), [b"PING"]);
        assert_eq!(inline_args("  SET\tkey   value \r\n"), [&b"SET"[..], b"key", b"value"]);
        // \v and \f are skipped between words but are not word separators.
        assert_eq!(inline_args("\x0bA\x0bB\r\n"), [&b"A\x0bB"[..]]);
        // A CR inside the line separates words; only a CR just before LF is the ending.
        assert_eq!(inline_args("a\rb\r\r\n"), [b"a", b"b"]);
        // Redis reads the line as a C string.
        assert_eq!(inline_args("ECHO ab\0cd\r\n"), [&b"ECHO"[..], b"ab"]);
    }

    #[test]
    fn inline_quoting_follows_redis() {
        assert_eq!(
            inline_args("SET \"a key\" \"x\\n\\r\\t\\b\\a\\\\\\\"\\q\\x41\\x6a\"\r\n"),
            [&b"SET"[..], b"a key", b"x\n\r\t\x08\x07\\\"qAj"]
        );
        // \x needs two hex digits, otherwise the backslash just escapes the 'x'.
        assert_eq!(inline_args("\"\\x4g\\xZZ\"\n"), [b"x4gxZZ"]);
        assert_eq!(inline_args("'it\\'s' 'a\\nb' '\"'\n"), [&b"it's"[..], b"a\\nb", b"\""]);
        assert_eq!(inline_args("\"\" ''\n"), [b"", b""]);
        // Quotes may start mid-word and join what precedes them.
        assert_eq!(inline_args("foo\"bar baz\" x'y z'\n"), [&b"foobar baz"[..], b"xy z"]);
        // A backslash outside quotes is an ordinary byte.
        assert_eq!(inline_args("a\\nb\n"), [b"a\\nb"]);
        // A closing quote may be followed by any C blank.
        assert_eq!(inline_args("\"a\"\x0b'b'\tc\n"), [b"a", b"b", b"c"]);
    }

    #[test]
    fn inline_quoting_errors() {
        for line in [
            "SET \"abc\r\n",
            "SET 'abc\r\n",
            "\"a\"b\r\n",
            "'a'b\r\n",
            "\"abc\\\"\r\n",
            "'abc\\'\r\n",
            "\"ab\0\"\r\n",
        ] {
            assert_eq!(
                decode_err(line.as_bytes()),
                "Protocol error: unbalanced quotes in request",
                "{line:?}"
            );
        }
    }

    #[test]
    fn protocol_errors_use_redis_texts() {
        let cases: &[(&[u8], &str)] = &[
            (b"*abc\r\n", "Protocol error: invalid multibulk length"),
            (b"*1x\r\n", "Protocol error: invalid multibulk length"),
            (b"*01\r\n", "Protocol error: invalid multibulk length"),
            (b"*-0\r\n", "Protocol error: invalid multibulk length"),
            (b"*+1\r\n", "Protocol error: invalid multibulk length"),
            (b"*\r\n", "Protocol error: invalid multibulk length"),
            (b"*1\rx", "Protocol error: invalid multibulk length"),
            (b"*99999999999999999999\r\n", "Protocol error: invalid multibulk length"),
            (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$00\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$536870913\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\nx", "Protocol error: expected '$', got 'x'"),
            (b"*2\r\n$1\r\na\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
            (b"*1\r\n$3\r\nabcd\r\n", "Protocol error: bulk string not terminated by CRLF"),
            (b"*1\r\n$3\r\nabc\n\r", "Protocol error: bulk string not terminated by CRLF"),
        ];
        for &(input, text) in cases {
            assert_eq!(decode_err(input), text, "{:?}", String::from_utf8_lossy(input));
            // The error is the same however the bytes arrive.
            assert_eq!(
                decode_chunked(input, &[1], DecodeLimits::default()).1.map(|e| e.to_string()),
                Some(text.to_owned()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn incomplete_input_waits_for_more() {
        for input in [
            &b"*"[..],
            b"*1",
            b"*1\r",
            b"*1\r\n$",
            b"*1\r\n$-",
            b"*1\r\n$3\r",
            b"*1\r\n$3\r\nab",
            b"*1\r\n$3\r\nabc\r",
            b"PING",
            b"PING\r",
            b"SET \"unterminated",
        ] {
            assert_eq!(decode_one(input), Ok(None), "{input:?}");
        }
    }

    #[test]
    fn request_array_length_is_limited() {
        let limits = small_limits();
        let args: Vec<&[u8]> = vec![b"x"; limits.max_args];
        let at_limit = request_bytes(&args);
        assert_eq!(decode_whole(&at_limit, limits.clone()).0.len(), 1);
        assert_eq!(decode_whole(b"*9\r\n", limits).1, Some(ProtocolError::InvalidMultibulkLength));
        assert_eq!(decode_err(b"*1048577\r\n"), "Protocol error: invalid multibulk length");
    }

    #[test]
    fn inline_line_length_is_limited() {
        let limits = small_limits();
        let at_limit = format!("{}\r\n", "a".repeat(limits.max_inline_bytes - 1));
        let (requests, error) = decode_whole(at_limit.as_bytes(), limits.clone());
        assert_eq!((requests.len(), error), (1, None));
        let over = format!("{}\r\n", "a".repeat(limits.max_inline_bytes));
        for chunks in [&[usize::MAX][..], &[1], &[limits.max_inline_bytes + 1]] {
            assert_eq!(
                decode_chunked(over.as_bytes(), chunks, limits.clone()).1,
                Some(ProtocolError::TooBigInline)
            );
        }
        // Without a newline, Redis's own limit and text.
        let unterminated = vec![b'a'; REDIS_INLINE_MAX_SIZE + 1];
        assert_eq!(decode_err(&unterminated), "Protocol error: too big inline request");
        assert_eq!(decode_one(&unterminated[1..]), Ok(None));
    }

    #[test]
    fn bulk_at_the_limit_is_kept_and_longer_is_oversized() {
        let limits = small_limits();
        let at_limit = vec![b'v'; limits.max_bulk_bytes];
        let over = vec![b'w'; limits.max_bulk_bytes + 1];
        let input = [
            request_bytes(&[b"SET", b"k", &at_limit]),
            request_bytes(&[b"SET", &over, &over, b"x", &[0; 100]]),
            format!("SET k {}\r\n", "y".repeat(17)).into_bytes(),
        ]
        .concat();
        let (requests, error) = decode_whole(&input, limits);
        assert_eq!(error, None);
        assert_eq!(requests[0].oversized, None);
        assert_eq!(requests[0].args[2], at_limit);
        assert_eq!(requests[1].oversized, Some(17), "the first oversized bulk");
        assert_eq!(
            args_of(&requests[1]),
            [&b"SET"[..], b"", b"", b"x", b""],
            "oversized args are replaced by empty ones"
        );
        assert_eq!(requests[2].oversized, Some(17));
        assert_eq!(args_of(&requests[2]), [&b"SET"[..], b"k", b""]);
    }

    #[test]
    fn oversized_bulk_is_dropped_as_it_arrives() {
        const CHUNK: usize = 4096;
        const BULK: usize = 10 * 1024 * 1024;
        let mut decoder = Decoder::new(small_limits());
        let mut buf = BytesMut::with_capacity(CHUNK);
        let read = |buf: &mut BytesMut, bytes: &[u8]| {
            buf.reserve(bytes.len());
            buf.extend_from_slice(bytes);
        };
        read(&mut buf, format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${BULK}\r\n").as_bytes());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let filler = [b'x'; CHUNK];
        let mut max_capacity = buf.capacity();
        for _ in 0..BULK / CHUNK {
            read(&mut buf, &filler);
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            assert!(buf.is_empty(), "skipped bytes are not retained");
            max_capacity = max_capacity.max(buf.capacity());
        }
        assert!(max_capacity <= 4 * CHUNK, "buffer grew to {max_capacity} bytes");
        read(&mut buf, b"\r");
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        read(&mut buf, b"\n*1\r\n$4\r\nPING\r\n");
        let request = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(request.oversized, Some(BULK));
        assert_eq!(args_of(&request), [&b"SET"[..], b"k", b""]);
        let next = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!((args_of(&next), next.oversized), (vec![&b"PING"[..]], None));
        assert!(buf.is_empty());
    }

    #[test]
    fn bulk_arriving_byte_by_byte_is_linear() {
        // Rescanning the pending payload on every call would take ~10^12 steps here.
        const BULK: usize = 1024 * 1024;
        let mut decoder = Decoder::new(DecodeLimits::default());
        let mut buf = BytesMut::from(&format!("*1\r\n${BULK}\r\n")[..]);
        for _ in 0..BULK {
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            buf.extend_from_slice(b"z");
        }
        buf.extend_from_slice(b"\r\n");
        let request = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(request.args[0].len(), BULK);
    }

    #[test]
    fn decoder_starts_afresh_after_an_error() {
        let mut decoder = Decoder::new(DecodeLimits::default());
        let mut buf = BytesMut::from(&b"*2\r\n$1\r\na\r\nx"[..]);
        assert_eq!(decoder.decode(&mut buf), Err(ProtocolError::ExpectedBulk { got: b'x' }));
        let mut fresh = BytesMut::from(&b"PING\r\n"[..]);
        let request = decoder.decode(&mut fresh).unwrap().unwrap();
        assert_eq!(args_of(&request), [&b"PING"[..]]);
    }

    fn written(write: impl FnOnce(&mut BytesMut)) -> String {
        let mut out = BytesMut::new();
        write(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn writes_scalars() {
        assert_eq!(written(|o| write_simple(o, "OK")), "+OK\r\n");
        assert_eq!(
            written(|o| write_error(o, "ERR unknown command 'a\r\nb'")),
            "-ERR unknown command 'a  b'\r\n"
        );
        assert_eq!(written(|o| write_simple(o, "a\nb")), "+a b\r\n");
        assert_eq!(written(|o| write_integer(o, 0)), ":0\r\n");
        assert_eq!(written(|o| write_integer(o, -1)), ":-1\r\n");
        assert_eq!(written(|o| write_integer(o, 1234567)), ":1234567\r\n");
        assert_eq!(written(|o| write_integer(o, i64::MIN)), ":-9223372036854775808\r\n");
        assert_eq!(written(|o| write_integer(o, i64::MAX)), ":9223372036854775807\r\n");
        assert_eq!(written(|o| write_bulk(o, b"")), "$0\r\n\r\n");
        assert_eq!(written(|o| write_bulk(o, b"a\r\nb")), "$4\r\na\r\nb\r\n");
        for (p, null, null_array, t, f) in [
            (Protocol::Resp2, "$-1\r\n", "*-1\r\n", ":1\r\n", ":0\r\n"),
            (Protocol::Resp3, "_\r\n", "_\r\n", "#t\r\n", "#f\r\n"),
        ] {
            assert_eq!(written(|o| write_null(o, p)), null);
            assert_eq!(written(|o| write_null_array(o, p)), null_array);
            assert_eq!(written(|o| write_bool(o, p, true)), t);
            assert_eq!(written(|o| write_bool(o, p, false)), f);
        }
        assert_eq!(written(|o| write_verbatim(o, Protocol::Resp3, "txt", b"hi")), "=6\r\ntxt:hi\r\n");
        assert_eq!(written(|o| write_verbatim(o, Protocol::Resp2, "txt", b"hi")), "$2\r\nhi\r\n");
        assert_eq!(written(|o| write_big_number(o, Protocol::Resp3, "-123")), "(-123\r\n");
        assert_eq!(written(|o| write_big_number(o, Protocol::Resp2, "-123")), "$4\r\n-123\r\n");
    }

    #[test]
    fn writes_aggregate_headers() {
        assert_eq!(written(|o| write_array_len(o, 0)), "*0\r\n");
        assert_eq!(written(|o| write_array_len(o, 1000)), "*1000\r\n");
        assert_eq!(written(|o| write_map_len(o, Protocol::Resp3, 3)), "%3\r\n");
        assert_eq!(written(|o| write_map_len(o, Protocol::Resp2, 3)), "*6\r\n");
        assert_eq!(written(|o| write_set_len(o, Protocol::Resp3, 3)), "~3\r\n");
        assert_eq!(written(|o| write_set_len(o, Protocol::Resp2, 3)), "*3\r\n");
        assert_eq!(written(|o| write_push_len(o, 3)), ">3\r\n");
    }

    #[test]
    fn writes_doubles_as_redis_spells_them() {
        let cases: &[(f64, &str)] = &[
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1.5, "1.5"),
            (-2.75, "-2.75"),
            (0.1, "0.1"),
            (100.0, "100"),
            (1e8, "100000000"),
            (-4611686018427387904.0, "-4611686018427387904"),
            (5e18, "5e+18"),
            (1.5e20, "1.5e+20"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e300, "1e+300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (12345678.9, "12345678.9"),
            (1.23456789, "1.23456789"),
            (0.0001, "0.0001"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (0.000123, "0.000123"),
            (0.00012345678, "1.2345678e-4"),
            (5e-324, "5e-324"),
        ];
        for &(d, text) in cases {
            assert_eq!(written(|o| write_double(o, Protocol::Resp3, d)), format!(",{text}\r\n"));
            assert_eq!(
                written(|o| write_double(o, Protocol::Resp2, d)),
                format!("${}\r\n{text}\r\n", text.len())
            );
        }
    }

    #[test]
    fn encodes_frames_in_both_protocols() {
        let frame = Frame::Map(vec![
            (Frame::Simple("a".into()), Frame::Set(vec![Frame::Boolean(true), Frame::Double(2.5)])),
            (Frame::Bulk(Bytes::from("b")), Frame::Push(vec![Frame::Null, Frame::BigNumber("7".into())])),
        ]);
        let resp3 = written(|o| frame.encode(Protocol::Resp3, o));
        assert_eq!(resp3, "%2\r\n+a\r\n~2\r\n#t\r\n,2.5\r\n$1\r\nb\r\n>2\r\n_\r\n(7\r\n");
        let resp2 = written(|o| frame.encode(Protocol::Resp2, o));
        assert_eq!(resp2, "*4\r\n+a\r\n*2\r\n:1\r\n$3\r\n2.5\r\n$1\r\nb\r\n*2\r\n$-1\r\n$1\r\n7\r\n");
    }

    #[test]
    fn parses_every_frame_type() {
        let cases: Vec<(&[u8], Frame)> = vec![
            (b"+OK\r\n", Frame::Simple("OK".into())),
            (b"-ERR x\r\n", Frame::Error("ERR x".into())),
            (b"!5\r\nERR x\r\n", Frame::Error("ERR x".into())),
            (b":-42\r\n", Frame::Integer(-42)),
            (b"$3\r\na\rb\r\n", Frame::Bulk(Bytes::from("a\rb"))),
            (b"$-1\r\n", Frame::Null),
            (b"_\r\n", Frame::Null),
            (b"*-1\r\n", Frame::NullArray),
            (b"*0\r\n", Frame::Array(vec![])),
            (b",-inf\r\n", Frame::Double(f64::NEG_INFINITY)),
            (b",1.5e-7\r\n", Frame::Double(1.5e-7)),
            (b"#f\r\n", Frame::Boolean(false)),
            (
                b"(-123456789012345678901234567890\r\n",
                Frame::BigNumber("-123456789012345678901234567890".into()),
            ),
            (b"=7\r\nmkd:a b\r\n", Frame::Verbatim { format: "mkd".into(), text: Bytes::from("a b") }),
            (
                b"|1\r\n+ttl\r\n:3\r\n*2\r\n:1\r\n%1\r\n+k\r\n~1\r\n>0\r\n",
                Frame::Array(vec![
                    Frame::Integer(1),
                    Frame::Map(vec![(Frame::Simple("k".into()), Frame::Set(vec![Frame::Push(vec![])]))]),
                ]),
            ),
        ];
        for (input, frame) in cases {
            assert_eq!(
                Frame::parse(input),
                Ok(Some((frame.clone(), input.len()))),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            let mut trailing = input.to_vec();
            trailing.extend_from_slice(b"+next\r\n");
            assert_eq!(Frame::parse(&trailing), Ok(Some((frame, input.len()))));
            for end in 0..input.len() {
                assert_eq!(Frame::parse(&input[..end]), Ok(None), "prefix {end}");
            }
        }
    }

    #[test]
    fn rejects_malformed_frames() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"?\r\n", ProtocolError::UnexpectedType { got: b'?' }),
            (b"+a\nb\r\n", ProtocolError::MissingLineCrlf),
            (b"+a\rb\r\n", ProtocolError::MissingLineCrlf),
            (b":1.5\r\n", ProtocolError::InvalidInteger),
            (b":9223372036854775808\r\n", ProtocolError::InvalidInteger),
            (b"$-2\r\n", ProtocolError::InvalidBulkLength),
            (b"$1\r\nab\r\n", ProtocolError::MissingBulkCrlf),
            (b"*-2\r\n", ProtocolError::InvalidMultibulkLength),
            (b"%-1\r\n", ProtocolError::InvalidMultibulkLength),
            (b",x\r\n", ProtocolError::InvalidDouble),
            (b"#x\r\n", ProtocolError::InvalidBoolean),
            (b"(1a\r\n", ProtocolError::InvalidBigNumber),
            (b"_x\r\n", ProtocolError::InvalidNull),
            (b"=3\r\ntxt\r\n", ProtocolError::InvalidVerbatim),
            (b"=4\r\ntxt;\r\n", ProtocolError::InvalidVerbatim),
        ];
        for (input, error) in cases {
            assert_eq!(Frame::parse(input).as_ref(), Err(error), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn frame_nesting_is_limited() {
        let nested = |depth: usize| {
            let mut input = b"*1\r\n".repeat(depth);
            input.extend_from_slice(b":1\r\n");
            input
        };
        assert!(matches!(Frame::parse(&nested(MAX_FRAME_DEPTH)), Ok(Some(_))));
        assert_eq!(Frame::parse(&nested(MAX_FRAME_DEPTH + 1)), Err(ProtocolError::TooDeep));
        // Deep input stops at the limit rather than overflowing the stack.
        assert_eq!(Frame::parse(&b"*1\r\n".repeat(1_000_000)), Err(ProtocolError::TooDeep));
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        assert_eq!(Frame::parse(b"*9223372036854775807\r\n:1\r\n"), Ok(None));
        assert_eq!(Frame::parse(b"%4611686018427387904\r\n"), Ok(None));
        assert_eq!(Frame::parse(b"$536870912\r\nabc"), Ok(None));
        assert_eq!(Frame::parse(b"$536870913\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(decode_one(b"*1048576\r\n$536870912\r\n"), Ok(None));
    }

    /// Byte soup made of RESP fragments, so random input reaches the deep states.
    fn resp_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"*".to_vec()),
            Just(b"$".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"-1".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"'".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\\x4".to_vec()),
            Just(b"PING".to_vec()),
            (0u32..40).prop_map(|n| n.to_string().into_bytes()),
            vec(any::<u8>(), 0..4),
        ];
        vec(piece, 0..48).prop_map(|pieces| pieces.concat())
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let text = "[^\r\n]{0,12}";
        let leaf = prop_oneof![
            text.prop_map(Frame::Simple),
            text.prop_map(Frame::Error),
            any::<i64>().prop_map(Frame::Integer),
            vec(any::<u8>(), 0..24).prop_map(|b| Frame::Bulk(Bytes::from(b))),
            Just(Frame::Null),
            any::<f64>().prop_filter("NaN never equals itself", |d| !d.is_nan()).prop_map(Frame::Double),
            any::<bool>().prop_map(Frame::Boolean),
            "0|-?[1-9][0-9]{0,40}".prop_map(Frame::BigNumber),
            ("[a-z]{3}", vec(any::<u8>(), 0..24))
                .prop_map(|(format, text)| Frame::Verbatim { format, text: Bytes::from(text) }),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Frame::Array),
                vec((inner.clone(), inner.clone()), 0..4).prop_map(Frame::Map),
                vec(inner.clone(), 0..6).prop_map(Frame::Set),
                vec(inner, 0..6).prop_map(Frame::Push),
            ]
        })
    }

    /// Frames RESP2 can express exactly.
    fn arb_resp2_frame() -> impl Strategy<Value = Frame> {
        let leaf = prop_oneof![
            "[^\r\n]{0,12}".prop_map(Frame::Simple),
            "[^\r\n]{0,12}".prop_map(Frame::Error),
            any::<i64>().prop_map(Frame::Integer),
            vec(any::<u8>(), 0..24).prop_map(|b| Frame::Bulk(Bytes::from(b))),
            Just(Frame::Null),
            Just(Frame::NullArray),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| vec(inner, 0..6).prop_map(Frame::Array))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_alike_in_any_chunking(
            input in prop_oneof![vec(any::<u8>(), 0..256), resp_like_bytes()],
            chunks in vec(1usize..16, 1..8),
            small in any::<bool>(),
        ) {
            let limits = if small { small_limits() } else { DecodeLimits::default() };
            let whole = decode_whole(&input, limits.clone());
            prop_assert_eq!(decode_chunked(&input, &chunks, limits), whole);
        }

        #[test]
        fn encoded_requests_decode_to_their_args(
            requests in vec(vec(vec(any::<u8>(), 0..40), 1..6), 1..4),
            chunks in vec(1usize..24, 1..8),
        ) {
            let input: Vec<u8> = requests
                .iter()
                .flat_map(|args| {
                    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    request_bytes(&args)
                })
                .collect();
            let (decoded, error) = decode_chunked(&input, &chunks, DecodeLimits::default());
            prop_assert_eq!(error, None);
            let decoded: Vec<Vec<Vec<u8>>> = decoded
                .iter()
                .map(|r| {
                    assert_eq!(r.oversized, None);
                    r.args.iter().map(|a| a.to_vec()).collect()
                })
                .collect();
            prop_assert_eq!(decoded, requests);
        }

        #[test]
        fn frames_round_trip_through_resp3(frame in arb_frame()) {
            let mut out = BytesMut::new();
            frame.encode(Protocol::Resp3, &mut out);
            prop_assert_eq!(Frame::parse(&out), Ok(Some((frame, out.len()))));
        }

        #[test]
        fn resp2_frames_round_trip_through_resp2(frame in arb_resp2_frame()) {
            let mut out = BytesMut::new();
            frame.encode(Protocol::Resp2, &mut out);
            prop_assert_eq!(Frame::parse(&out), Ok(Some((frame, out.len()))));
        }

        #[test]
        fn frame_parse_never_panics(
            input in prop_oneof![vec(any::<u8>(), 0..256), resp_like_bytes()],
        ) {
            if let Ok(Some((_, used))) = Frame::parse(&input) {
                prop_assert!(used <= input.len());
            }
        }
    }
}
