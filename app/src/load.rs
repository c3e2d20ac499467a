//! The load: distinct keys at a steady rate through one connection, each acknowledged
//! write recorded in the [`Ledger`] and checked later, so that no write the node said `OK`
//! to can go missing unnoticed. Keys are distinct, so a later write can never hide the
//! loss of an earlier one.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::acked::Ledger;
use crate::latency::LatencyLog;
use crate::target::NodeTarget;
use crate::verify::{self, Tally};

/// Write errors named in the report; the rest are only counted.
const SHOWN_ERRORS: usize = 5;

pub struct Settings {
    pub rate: u32,
    /// `None`: until stopped.
    pub duration: Option<Duration>,
    pub prefix: String,
    pub value_bytes: usize,
    pub verify_every: Option<Duration>,
}

/// What a load did.
pub struct Report {
    pub attempted: u64,
    pub acknowledged: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub elapsed: Duration,
    pub tally: Tally,
}

impl Report {
    pub fn print(&self) {
        for e in &self.first_errors {
            eprintln!("load: error: {e}");
        }
        let secs = self.elapsed.as_secs_f64().max(0.001);
        eprintln!(
            "load: attempted={} acknowledged={} errors={} in {:.1}s ({:.0} acknowledged/s)",
            self.attempted,
            self.acknowledged,
            self.errors,
            secs,
            self.acknowledged as f64 / secs
        );
        self.tally.print("verify");
    }
}

/// The value of write `n`: its number, padded to `bytes`.
pub fn value(n: u64, bytes: usize) -> String {
    let mut v = format!("{n}-");
    while v.len() < bytes {
        v.push('x');
    }
    v
}

/// Writes until the duration is over or `stop` turns true, then checks what is pending.
pub async fn run(
    target: &NodeTarget,
    s: &Settings,
    mut ledger: Ledger,
    mut latencies: Option<LatencyLog>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<Report> {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(s.rate)));
    // Behind schedule (a slow node), write as fast as answers come rather than in bursts.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report = Report {
        attempted: 0,
        acknowledged: 0,
        errors: 0,
        first_errors: Vec::new(),
        elapsed: Duration::ZERO,
        tally: Tally::default(),
    };
    let mut conn: Option<MultiplexedConnection> = None;
    let mut next_check = s.verify_every.map(|d| Instant::now() + d);
    let error = |report: &mut Report, e: String| {
        report.errors += 1;
        if report.first_errors.len() < SHOWN_ERRORS {
            report.first_errors.push(e);
        }
    };
    loop {
        let due = tokio::select! {
            due = ticker.tick() => due.into_std(),
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        if s.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if conn.is_none() {
            match target.connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    error(&mut report, format!("connect: {e}"));
                    if let Some(log) = &mut latencies {
                        log.record(due, Instant::now(), false)?;
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        report.attempted += 1;
        let key = format!("{}:{}", s.prefix, report.attempted);
        let val = value(report.attempted, s.value_bytes);
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(&val);
        let answer = tokio::time::timeout(target.timeout(), set.query_async::<()>(c)).await;
        if let Some(log) = &mut latencies {
            log.record(due, Instant::now(), matches!(answer, Ok(Ok(()))))?;
        }
        match answer {
            Ok(Ok(())) => {
                report.acknowledged += 1;
                ledger.acknowledged(key, val)?;
            }
            Ok(Err(e)) => {
                // A refused write (CLUSTERDOWN...) keeps the connection; a broken one does not.
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    conn = None;
                }
                error(&mut report, format!("SET {key}: {e}"));
            }
            Err(_) => {
                conn = None;
                error(&mut report, format!("SET {key}: no answer within {:?}", target.timeout()));
            }
        }
        if let (Some(at), Some(every)) = (next_check, s.verify_every)
            && Instant::now() >= at
        {
            let round = check(target, &mut conn, ledger.take_pending()).await;
            round.print("verify (periodic)");
            report.tally.add(round);
            next_check = Some(Instant::now() + every);
        }
    }
    report.elapsed = started.elapsed();
    ledger.finish()?;
    if let Some(log) = &mut latencies {
        log.finish()?;
    }
    let last = check(target, &mut conn, ledger.take_pending()).await;
    report.tally.add(last);
    Ok(report)
}

/// Checks `entries` through the connection, reconnecting when there is none.
async fn check(
    target: &NodeTarget,
    conn: &mut Option<MultiplexedConnection>,
    entries: Vec<(String, String)>,
) -> Tally {
    if entries.is_empty() {
        return Tally::default();
    }
    if conn.is_none() {
        match target.connect().await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                return Tally {
                    first_error: Some(format!("connect: {e}")),
                    ..Tally::unverified(entries.len() as u64)
                };
            }
        }
    }
    verify::check(conn.as_mut().expect("connected above"), &entries, target.timeout()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_number_and_have_the_asked_size() {
        assert_eq!(value(7, 0), "7-");
        assert_eq!(value(7, 6), "7-xxxx");
        assert_eq!(value(123, 4), "123-");
    }
}
