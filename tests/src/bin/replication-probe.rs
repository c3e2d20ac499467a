//! Load and lag probes for the replication benchmark (`tests/bench/replication-lag.sh`),
//! the same for OpenCluster datacenters and for a Redis primary and its replica.
//!
//!   replication-probe lag --write ADDR[,ADDR..] --read ADDR [--samples 1000]
//!       [--probe-every-ms 10] [--load-rate 2000] [--value-bytes 256] [--run ID]
//!   replication-probe write --write ADDR[,ADDR..] --prefix P --rate R (--seconds S | --count N)
//!       [--value-bytes 256]
//!   replication-probe check --read ADDR --prefix P --count N [--allow-missing M] [--timeout-s 120]
//!
//! `lag`: while a background load SETs random keys at `--load-rate` writes/s through the
//! `--write` addresses, a probe SETs a distinct key every `--probe-every-ms` through the
//! first of them, notes when the write was acknowledged, and polls `--read` (MGET of every
//! probe not seen yet, about every millisecond) for it; the lag of a probe is from its
//! acknowledgement to the reply of the first MGET that returned it. Prints
//! `samples N p50_ms X p90_ms X p99_ms X max_ms X missing N load_ops_per_sec X errors N`.
//!
//! `write`: SETs distinct keys `P:<i>` at `--rate` per second for `--seconds` (or until
//! `--count` keys), over one connection per `--write` address (repeat one for more); prints
//! `keys N bytes B` (keys and values of the acknowledged writes) and exits 1 on errors.
//! `check`: waits until every key `P:0` .. `P:<N-1>` reads back through `--read` (all
//! but `--allow-missing`: the writes that were not acknowledged); prints `present N after
//! S s`, or exits 1 naming how many are missing.
//!
//! Values are a small JSON-like record (a counter, a name, a time) padded with random
//! hexadecimal to `--value-bytes`: partly compressible, like much application data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opencluster_tests::rng::Rng;
use opencluster_tests::{RawConn, Reply, encode_command};

/// How long a probe may take to appear before it counts as missing.
const PROBE_DEADLINE: Duration = Duration::from_secs(60);
/// The pacing tick of the writers: each sends a tick's share of its rate in one pipeline.
const TICK: Duration = Duration::from_millis(10);
/// Most SETs in one pipeline: a writer behind its rate sends pipelines of this size back
/// to back.
const MAX_PIPELINE: usize = 500;

fn value(rng: &mut Rng, n: u64, bytes: usize) -> Vec<u8> {
    let u = rng.next_u64() % 100_000;
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut v = format!(r#"{{"n":{n},"user":"user-{u}","email":"user-{u}@example.com","at":{ms},"data":""#)
        .into_bytes();
    while v.len() + 2 < bytes {
        v.extend_from_slice(format!("{:016x}", rng.next_u64()).as_bytes());
    }
    v.truncate(bytes.saturating_sub(2).max(1));
    v.extend_from_slice(b"\"}");
    v
}

struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, String> {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a.strip_prefix("--").ok_or_else(|| format!("unexpected argument {a:?}"))?;
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            m.insert(name.to_string(), v.clone());
        }
        Ok(Flags(m))
    }

    fn str(&self, name: &str) -> Result<&str, String> {
        self.0.get(name).map(String::as_str).ok_or_else(|| format!("--{name} is required"))
    }

    fn num(&self, name: &str, default: Option<u64>) -> Result<u64, String> {
        match self.0.get(name) {
            Some(v) => v.parse().map_err(|_| format!("--{name} {v:?} is not a whole number")),
            None => default.ok_or_else(|| format!("--{name} is required")),
        }
    }

    fn addrs(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        self.str(name)?
            .split(',')
            .map(|a| a.parse().map_err(|_| format!("--{name} {a:?} is not an address like 127.0.0.1:6379")))
            .collect()
    }
}

fn connect(addr: SocketAddr) -> Result<RawConn, String> {
    RawConn::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))
}

/// How one writer paces its SETs.
struct Pace {
    /// SETs per second.
    rate: u64,
    value_bytes: usize,
    seed: u64,
    /// Stop after this many SETs.
    limit: Option<u64>,
}

/// Acknowledged writes and the bytes of their keys and values, shared by the writers.
#[derive(Default)]
struct Acked {
    writes: AtomicU64,
    bytes: AtomicU64,
}

/// SETs at `pace` through `conn` until `stop` (or the limit), keys from `key(i)`; counts
/// acknowledged writes in `acked`; returns the errors seen.
fn paced_writes(
    conn: &mut RawConn,
    pace: Pace,
    key: impl Fn(u64, &mut Rng) -> String,
    stop: &AtomicBool,
    acked: &Acked,
) -> u64 {
    let Pace { rate, value_bytes, seed, limit } = pace;
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let (mut sent, mut errors, mut ticks) = (0u64, 0u64, 0u32);
    while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| sent < l) {
        ticks += 1;
        // Catch up to where the rate says we should be by the end of this tick.
        let due = (rate as f64 * (TICK * ticks).as_secs_f64()) as u64;
        let due = limit.map_or(due, |l| due.min(l));
        let mut batch = Vec::new();
        let mut sizes = Vec::new();
        while sent < due && sizes.len() < MAX_PIPELINE {
            let k = key(sent, &mut rng);
            let v = value(&mut rng, sent, value_bytes);
            sizes.push((k.len() + v.len()) as u64);
            batch.extend_from_slice(&encode_command(&[b"SET".as_slice(), k.as_bytes(), &v]));
            sent += 1;
        }
        if !batch.is_empty() {
            if let Err(e) = conn.send_raw(&batch) {
                eprintln!("replication-probe: write: {e}");
                return errors + sizes.len() as u64;
            }
            for size in sizes {
                match conn.read_reply() {
                    Ok(Reply::Simple(s)) if s == "OK" => {
                        acked.writes.fetch_add(1, Ordering::Relaxed);
                        acked.bytes.fetch_add(size, Ordering::Relaxed);
                    }
                    Ok(other) => {
                        if errors == 0 {
                            eprintln!("replication-probe: SET answered {other:?}");
                        }
                        errors += 1;
                    }
                    Err(e) => {
                        eprintln!("replication-probe: write: {e}");
                        return errors + 1;
                    }
                }
            }
        }
        let next = started + TICK * ticks;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    errors
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn lag(f: &Flags) -> Result<(), String> {
    let writes = f.addrs("write")?;
    let read = f.addrs("read")?[0];
    let samples = f.num("samples", Some(1000))?;
    let every = Duration::from_millis(f.num("probe-every-ms", Some(10))?);
    let load_rate = f.num("load-rate", Some(2000))?;
    let value_bytes = f.num("value-bytes", Some(256))? as usize;
    let run = f.0.get("run").cloned().unwrap_or_else(|| std::process::id().to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let load_acked = Arc::new(Acked::default());
    let load_started = Instant::now();
    let mut loaders = Vec::new();
    if load_rate > 0 {
        for (i, addr) in writes.iter().enumerate() {
            let mut conn = connect(*addr)?;
            let (stop, acked) = (stop.clone(), load_acked.clone());
            let pace =
                Pace { rate: load_rate / writes.len() as u64, value_bytes, seed: 7 + i as u64, limit: None };
            loaders.push(std::thread::spawn(move || {
                let key = |_: u64, rng: &mut Rng| format!("load:{}", rng.next_u64() % 10_000_000);
                paced_writes(&mut conn, pace, key, &stop, &acked)
            }));
        }
    }

    // Probes acknowledged and not seen yet: index -> when acknowledged.
    let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let lags: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let writing_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (pending, lags, writing_done) = (pending.clone(), lags.clone(), writing_done.clone());
        let mut conn = connect(read)?;
        let run = run.clone();
        std::thread::spawn(move || -> u64 {
            let mut last_progress = Instant::now();
            loop {
                let now_pending: Vec<(u64, Instant)> =
                    pending.lock().unwrap().iter().map(|(&i, &t)| (i, t)).collect();
                if now_pending.is_empty() {
                    if writing_done.load(Ordering::SeqCst) {
                        return 0;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let mut args = vec!["MGET".to_string()];
                args.extend(now_pending.iter().map(|(i, _)| format!("probe:{run}:{i}")));
                let reply = conn.try_cmd(&args);
                let seen_at = Instant::now();
                let Ok(Reply::Array(values)) = reply else {
                    eprintln!("replication-probe: MGET answered {reply:?}");
                    return now_pending.len() as u64;
                };
                let mut p = pending.lock().unwrap();
                for ((i, acked), v) in now_pending.iter().zip(values) {
                    if !v.is_null() {
                        p.remove(i);
                        lags.lock().unwrap().push(seen_at - *acked);
                        last_progress = seen_at;
                    }
                }
                // Probes that never arrive: given up on once nothing arrived for the deadline.
                if writing_done.load(Ordering::SeqCst) && last_progress.elapsed() > PROBE_DEADLINE {
                    return p.len() as u64;
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let mut conn = connect(writes[0])?;
    let mut rng = Rng(0x5eed);
    let mut errors = 0u64;
    let started = Instant::now();
    for i in 0..samples {
        let due = started + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = format!("probe:{run}:{i}");
        let v = value(&mut rng, i, value_bytes);
        match conn.try_cmd(&[b"SET".as_slice(), key.as_bytes(), &v]) {
            Ok(Reply::Simple(s)) if s == "OK" => {
                pending.lock().unwrap().insert(i, Instant::now());
            }
            other => {
                if errors == 0 {
                    eprintln!("replication-probe: probe SET answered {other:?}");
                }
                errors += 1;
            }
        }
    }
    writing_done.store(true, Ordering::SeqCst);
    let missing = reader.join().map_err(|_| "the reader panicked")?;
    let load_secs = load_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        errors += l.join().map_err(|_| "a load thread panicked")?;
    }
    let mut lags = lags.lock().unwrap().clone();
    lags.sort();
    println!(
        "samples {} p50_ms {:.1} p90_ms {:.1} p99_ms {:.1} max_ms {:.1} missing {missing} load_ops_per_sec {:.0} errors {errors}",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        percentile(&lags, 0.99),
        lags.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        load_acked.writes.load(Ordering::Relaxed) as f64 / load_secs,
    );
    Ok(())
}

fn write(f: &Flags) -> Result<bool, String> {
    let writes = f.addrs("write")?;
    let prefix = f.str("prefix")?.to_string();
    let rate = f.num("rate", None)?;
    let total = match f.0.get("count") {
        Some(_) => f.num("count", None)?,
        None => f.num("seconds", None)? * rate,
    };
    let value_bytes = f.num("value-bytes", Some(256))? as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Acked::default());
    let n = writes.len() as u64;
    let mut threads = Vec::new();
    for (i, addr) in writes.iter().enumerate() {
        let mut conn = connect(*addr)?;
        let (stop, acked, prefix) = (stop.clone(), acked.clone(), prefix.clone());
        let i = i as u64;
        threads.push(std::thread::spawn(move || {
            // Thread i writes keys i, i+n, i+2n, ...: together every key once.
            let key = move |j: u64, _: &mut Rng| format!("{prefix}:{}", j * n + i);
            let count = total.saturating_sub(i).div_ceil(n);
            let pace = Pace { rate: rate / n, value_bytes, seed: 11 + i, limit: Some(count) };
            paced_writes(&mut conn, pace, key, &stop, &acked)
        }));
    }
    let mut errors = 0;
    for t in threads {
        errors += t.join().map_err(|_| "a writer panicked")?;
    }
    println!(
        "keys {} bytes {} errors {errors}",
        acked.writes.load(Ordering::Relaxed),
        acked.bytes.load(Ordering::Relaxed)
    );
    Ok(errors == 0)
}

fn check(f: &Flags) -> Result<bool, String> {
    let read = f.addrs("read")?[0];
    let prefix = f.str("prefix")?;
    let count = f.num("count", None)?;
    let allowed = f.num("allow-missing", Some(0))? as usize;
    let timeout = Duration::from_secs(f.num("timeout-s", Some(120))?);
    let mut conn = connect(read)?;
    let started = Instant::now();
    let mut missing: Vec<u64> = (0..count).collect();
    while missing.len() > allowed {
        let mut still = Vec::new();
        for chunk in missing.chunks(500) {
            let mut args = vec!["MGET".to_string()];
            args.extend(chunk.iter().map(|i| format!("{prefix}:{i}")));
            match conn.try_cmd(&args) {
                Ok(Reply::Array(values)) => {
                    still.extend(chunk.iter().zip(values).filter(|(_, v)| v.is_null()).map(|(i, _)| *i))
                }
                other => return Err(format!("MGET answered {other:?}")),
            }
        }
        missing = still;
        if missing.len() <= allowed {
            break;
        }
        if started.elapsed() > timeout {
            println!(
                "missing {} of {count} after {:.1} s, e.g. {prefix}:{}",
                missing.len(),
                timeout.as_secs_f64(),
                missing[0]
            );
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("present {} after {:.2} s", count as usize - missing.len(), started.elapsed().as_secs_f64());
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(mode @ ("lag" | "write" | "check")) => Flags::parse(&args[1..]).and_then(|f| match mode {
            "lag" => lag(&f).map(|_| true),
            "write" => write(&f),
            _ => check(&f),
        }),
        _ => {
            Err("usage: replication-probe lag|write|check --flag value ... (see the source's header)".into())
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("replication-probe: {e}");
            ExitCode::from(2)
        }
    }
}
