//! Load for the storage study (`tests/bench/storage-study`): fills a keyspace, or runs a
//! mixed GET/SET load with uniform or skewed keys, and prints one line:
//! `ops_per_sec p50_ms p99_ms p999_ms errors`.
//!
//!   storage-load fill  PORT KEYS VALUE_BYTES CONNECTIONS PIPELINE [SECONDS]
//!   storage-load mixed PORT KEYS VALUE_BYTES CONNECTIONS SECONDS GET_PERCENT uniform|hot|first:N
//!
//! `fill` writes every key once, `PIPELINE` SETs per round trip, and times round trips;
//! given `SECONDS`, it stops there (for an engine too slow to fill the keyspace in time).
//! `mixed` sends one command per round trip on each connection and times each; `hot`
//! sends 90% of the commands to 10% of the keys (uniform within each part); `first:N`
//! sends every command to the first N keys (a working set of N keys). Keys are
//! `k:<n>`; values are the key's number padded to VALUE_BYTES, so a GET can be checked.

use std::time::{Duration, Instant};

use opencluster_tests::rng::Rng;

fn value(n: u64, bytes: usize) -> Vec<u8> {
    let mut v = format!("{n:020}").into_bytes();
    v.resize(bytes.max(20), b'.');
    v
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage()) };
    let mode = args.get(1).cloned().unwrap_or_default();
    let port = arg(2);
    let keys = arg(3);
    let value_bytes = arg(4) as usize;
    let connections = arg(5);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
    let started = Instant::now();
    let mut tasks = Vec::new();
    match mode.as_str() {
        "fill" => {
            let pipeline = arg(6);
            let end = args.get(7).map(|_| started + Duration::from_secs(arg(7)));
            for c in 0..connections {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut con = connect(&client).await;
                    let (mut lat, mut errors, mut ops) = (Vec::new(), 0u64, 0u64);
                    let mut n = c * pipeline;
                    while n < keys && end.is_none_or(|end| Instant::now() < end) {
                        let mut pipe = redis::pipe();
                        for k in n..(n + pipeline).min(keys) {
                            pipe.cmd("SET").arg(format!("k:{k}")).arg(value(k, value_bytes));
                        }
                        let t = Instant::now();
                        match pipe.query_async::<Vec<redis::Value>>(&mut con).await {
                            Ok(r) => ops += r.len() as u64,
                            Err(e) => {
                                if errors == 0 {
                                    eprintln!("storage-load fill: {e}");
                                }
                                errors += 1;
                            }
                        }
                        lat.push(t.elapsed().as_micros() as u32);
                        n += connections * pipeline;
                    }
                    (lat, errors, ops)
                }));
            }
        }
        "mixed" => {
            let seconds = arg(6);
            let get_percent = arg(7);
            let spread = args.get(8).map(String::as_str).unwrap_or("uniform");
            let hot = spread == "hot";
            let keys = match spread.strip_prefix("first:") {
                Some(n) => n.parse::<u64>().unwrap_or_else(|_| usage()).min(keys),
                None if hot || spread == "uniform" => keys,
                None => usage(),
            };
            let end = started + Duration::from_secs(seconds);
            for c in 0..connections {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut con = connect(&client).await;
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c + 1).wrapping_mul(0x1234_5678_9abc_def1));
                    let (mut lat, mut errors, mut ops) = (Vec::new(), 0u64, 0u64);
                    let hot_keys = (keys / 10).max(1);
                    while Instant::now() < end {
                        let k = if hot && rng.below(100) < 90 {
                            rng.below(hot_keys)
                        } else if hot {
                            hot_keys + rng.below(keys - hot_keys)
                        } else {
                            rng.below(keys)
                        };
                        let key = format!("k:{k}");
                        let t = Instant::now();
                        let ok = if rng.below(100) < get_percent {
                            match redis::cmd("GET").arg(&key).query_async::<Option<Vec<u8>>>(&mut con).await {
                                // A key that was never written (fill refused it) reads as nil.
                                Ok(Some(v)) => v == value(k, value_bytes),
                                Ok(None) => true,
                                Err(_) => false,
                            }
                        } else {
                            redis::cmd("SET")
                                .arg(&key)
                                .arg(value(k, value_bytes))
                                .query_async::<()>(&mut con)
                                .await
                                .is_ok()
                        };
                        lat.push(t.elapsed().as_micros() as u32);
                        if ok {
                            ops += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    (lat, errors, ops)
                }));
            }
        }
        _ => usage(),
    }
    let (mut lat, mut errors, mut ops) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, o) = t.await.expect("load task");
        lat.extend(l);
        errors += e;
        ops += o;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "{:.0} {:.3} {:.3} {:.3} {errors}",
        ops as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999)
    );
}

/// A connection whose replies may take up to 60 s: a stall is measured, not cut short.
async fn connect(client: &redis::Client) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    client.get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

fn usage() -> ! {
    eprintln!("usage: storage-load fill PORT KEYS VALUE_BYTES CONNECTIONS PIPELINE [SECONDS]");
    eprintln!(
        "       storage-load mixed PORT KEYS VALUE_BYTES CONNECTIONS SECONDS GET_PERCENT uniform|hot|first:N"
    );
    std::process::exit(2)
}
