//! A raw RESP2/RESP3 client over a plain `TcpStream` (or `UnixStream`).
//!
//! The `redis` crate normalises replies (it folds `+OK`, `$-1` and `_` into friendlier
//! values and turns errors into `RedisError`), which hides exactly what these tests must
//! check: the reply type on the wire, the exact error text, and what happens to the
//! connection after a bad frame. So protocol-level tests talk through `RawConn`, which
//! keeps every reply as the server sent it.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a single read may block before the test fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// One reply exactly as it came off the wire.
#[derive(Clone, PartialEq)]
pub enum Reply {
    /// `+text`
    Simple(String),
    /// `-text` (RESP2 and RESP3) or `!len` blob error (RESP3).
    Error(String),
    /// `:n`
    Int(i64),
    /// `$len` with data.
    Bulk(Vec<u8>),
    /// `$-1`: the RESP2 null.
    NullBulk,
    /// `*-1`: the RESP2 null array.
    NullArray,
    /// `_`: the RESP3 null.
    Null,
    /// `*n`
    Array(Vec<Reply>),
    /// `%n` (RESP3)
    Map(Vec<(Reply, Reply)>),
    /// `~n` (RESP3)
    Set(Vec<Reply>),
    /// `,text` (RESP3), kept as text so the formatting can be asserted.
    Double(String),
    /// `#t` / `#f` (RESP3)
    Bool(bool),
    /// `=len` (RESP3): format (e.g. `txt`) and data.
    Verbatim(String, Vec<u8>),
    /// `(digits` (RESP3)
    BigNumber(String),
    /// `>n` (RESP3)
    Push(Vec<Reply>),
}

impl Reply {
    /// The text of a bulk, simple or verbatim string reply; panics on anything else.
    pub fn text(&self) -> String {
        match self {
            Reply::Bulk(b) | Reply::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
            Reply::Simple(s) => s.clone(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// The integer of an `:n` reply; panics on anything else.
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The elements of an array (or set/push) reply; panics on anything else.
    pub fn array(&self) -> &[Reply] {
        match self {
            Reply::Array(a) | Reply::Set(a) | Reply::Push(a) => a,
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    /// The error text of an error reply; panics on anything else.
    pub fn error(&self) -> &str {
        match self {
            Reply::Error(e) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Any of the null encodings (`$-1`, `*-1`, `_`).
    pub fn is_null(&self) -> bool {
        matches!(self, Reply::NullBulk | Reply::NullArray | Reply::Null)
    }

    /// Looks up `key` in a RESP3 map, or in a RESP2 flat `[k, v, k, v, ...]` array.
    pub fn field(&self, key: &str) -> Option<&Reply> {
        match self {
            Reply::Map(pairs) => {
                pairs.iter().find(|(k, _)| k.text_opt().as_deref() == Some(key)).map(|(_, v)| v)
            }
            Reply::Array(items) => items
                .chunks(2)
                .find(|kv| kv.len() == 2 && kv[0].text_opt().as_deref() == Some(key))
                .map(|kv| &kv[1]),
            _ => None,
        }
    }

    /// The keys of a RESP3 map, or of a RESP2 flat `[k, v, ...]` array.
    pub fn field_names(&self) -> Vec<String> {
        match self {
            Reply::Map(pairs) => pairs.iter().filter_map(|(k, _)| k.text_opt()).collect(),
            Reply::Array(items) => items.chunks(2).filter_map(|kv| kv[0].text_opt()).collect(),
            other => panic!("expected a map reply, got {other:?}"),
        }
    }

    fn text_opt(&self) -> Option<String> {
        match self {
            Reply::Bulk(b) | Reply::Verbatim(_, b) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Shorthands for building expected replies in assertions.
pub fn ok() -> Reply {
    Reply::Simple("OK".into())
}
pub fn simple(s: &str) -> Reply {
    Reply::Simple(s.into())
}
pub fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(s.as_ref().to_vec())
}
pub fn int(n: i64) -> Reply {
    Reply::Int(n)
}
pub fn err(s: &str) -> Reply {
    Reply::Error(s.into())
}
pub fn nil() -> Reply {
    Reply::NullBulk
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn show(b: &[u8]) -> String {
            if b.len() > 200 {
                format!("{:?}... ({} bytes)", String::from_utf8_lossy(&b[..200]), b.len())
            } else {
                format!("{:?}", String::from_utf8_lossy(b))
            }
        }
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(s) => write!(f, "-{s}"),
            Reply::Int(n) => write!(f, ":{n}"),
            Reply::Bulk(b) => write!(f, "${}", show(b)),
            Reply::NullBulk => write!(f, "$-1"),
            Reply::NullArray => write!(f, "*-1"),
            Reply::Null => write!(f, "_"),
            Reply::Array(a) => f.debug_list().entries(a).finish(),
            Reply::Map(m) => f.debug_map().entries(m.iter().map(|(k, v)| (k, v))).finish(),
            Reply::Set(a) => write!(f, "~{a:?}"),
            Reply::Double(d) => write!(f, ",{d}"),
            Reply::Bool(b) => write!(f, "#{}", if *b { 't' } else { 'f' }),
            Reply::Verbatim(fmt_, b) => write!(f, "={fmt_}:{}", show(b)),
            Reply::BigNumber(n) => write!(f, "({n}"),
            Reply::Push(a) => write!(f, ">{a:?}"),
        }
    }
}

/// Encodes a command as a RESP array of bulk strings, as clients send it.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

trait Stream: Read + Write + Send {
    fn shutdown_write(&self) -> io::Result<()>;
}
impl Stream for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}
impl Stream for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// A connection that sends commands and reads replies verbatim.
pub struct RawConn {
    reader: BufReader<Box<dyn Stream>>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawConn { reader: BufReader::new(Box::new(stream)) })
    }

    /// Like [`RawConn::connect`], with `timeout` for the connect and for every read and
    /// write: for clients that must give up on a stopped server and count it, not hang.
    pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RawConn { reader: BufReader::new(Box::new(stream)) })
    }

    pub fn connect_unix(path: &Path) -> io::Result<RawConn> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(RawConn { reader: BufReader::new(Box::new(stream)) })
    }

    /// Sends one command and returns its reply; panics on I/O errors.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        let printable: Vec<String> =
            args.iter().map(|a| String::from_utf8_lossy(a.as_ref()).chars().take(60).collect()).collect();
        self.try_cmd(args).unwrap_or_else(|e| panic!("command {printable:?} failed on the connection: {e}"))
    }

    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Reply> {
        self.send_raw(&encode_command(args))?;
        self.read_reply()
    }

    /// Writes bytes as they are (pipelines, inline commands, malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.reader.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    /// Reads one complete reply; `UnexpectedEof` when the server closed the connection.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(1);
        let rest = rest.to_string();
        let reply = match kind {
            "+" => Reply::Simple(rest),
            "-" => Reply::Error(rest),
            ":" => Reply::Int(parse_num(&rest)?),
            "$" => match parse_num(&rest)? {
                -1 => Reply::NullBulk,
                n => Reply::Bulk(self.read_blob(n)?),
            },
            "*" => match parse_num(&rest)? {
                -1 => Reply::NullArray,
                n => Reply::Array(self.read_many(n)?),
            },
            "_" => Reply::Null,
            "," => Reply::Double(rest),
            "#" => Reply::Bool(rest == "t"),
            "(" => Reply::BigNumber(rest),
            "!" => {
                let n = parse_num(&rest)?;
                Reply::Error(String::from_utf8_lossy(&self.read_blob(n)?).into_owned())
            }
            "=" => {
                let n = parse_num(&rest)?;
                let data = self.read_blob(n)?;
                if data.len() < 4 || data[3] != b':' {
                    return Err(bad_data(format!("verbatim string without format: {data:?}")));
                }
                Reply::Verbatim(String::from_utf8_lossy(&data[..3]).into_owned(), data[4..].to_vec())
            }
            "%" => {
                let n = parse_num(&rest)?;
                let flat = self.read_many(n * 2)?;
                let mut it = flat.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Reply::Map(pairs)
            }
            "~" => Reply::Set(self.read_many(parse_num(&rest)?)?),
            ">" => Reply::Push(self.read_many(parse_num(&rest)?)?),
            "|" => {
                // Attributes precede the reply they describe; tests only want the reply.
                let n = parse_num(&rest)?;
                self.read_many(n * 2)?;
                return self.read_reply();
            }
            _ => return Err(bad_data(format!("unknown reply type in line {line:?}"))),
        };
        Ok(reply)
    }

    /// Reads until the server closes the connection, returning any replies sent before
    /// the close. Fails if the connection stays open past the read timeout.
    pub fn read_until_closed(&mut self) -> io::Result<Vec<Reply>> {
        let mut replies = Vec::new();
        loop {
            match self.read_reply() {
                Ok(r) => replies.push(r),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(replies),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(replies),
                Err(e) => return Err(e),
            }
        }
    }

    /// Half-closes the write side (the server then sees EOF).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.reader.get_ref().shutdown_write()
    }

    fn read_many(&mut self, n: i64) -> io::Result<Vec<Reply>> {
        (0..n).map(|_| self.read_reply()).collect()
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        if !buf.ends_with(b"\r\n") || buf.len() < 3 {
            return Err(bad_data(format!("bad reply line {:?}", String::from_utf8_lossy(&buf))));
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|e| bad_data(format!("reply line is not UTF-8: {e}")))
    }

    fn read_blob(&mut self, n: i64) -> io::Result<Vec<u8>> {
        let n = usize::try_from(n).map_err(|_| bad_data(format!("bad length {n}")))?;
        let mut data = vec![0; n + 2];
        self.reader.read_exact(&mut data)?;
        if !data.ends_with(b"\r\n") {
            return Err(bad_data("blob not terminated by CRLF".into()));
        }
        data.truncate(n);
        Ok(data)
    }
}

fn parse_num(s: &str) -> io::Result<i64> {
    s.parse().map_err(|_| bad_data(format!("bad number {s:?}")))
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
