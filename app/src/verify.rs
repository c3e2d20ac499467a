//! Checking acknowledged writes: each key must read back with the value written. A key
//! that reads back empty or different is **lost**; one that could not be read (an error,
//! a timeout) is **unverified**: nothing is known about it.

use std::process::ExitCode;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// Keys asked for in one MGET.
const BATCH: usize = 100;
/// Lost keys named in the report; the rest are only counted.
const SHOWN: usize = 10;

/// The outcome of checks, added up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub lost: u64,
    pub unverified: u64,
    /// The first lost keys, with what was read instead.
    pub lost_keys: Vec<String>,
    /// The first read error.
    pub first_error: Option<String>,
}

impl Tally {
    pub fn unverified(n: u64) -> Tally {
        Tally { unverified: n, ..Tally::default() }
    }

    pub fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.lost += other.lost;
        self.unverified += other.unverified;
        for k in other.lost_keys {
            if self.lost_keys.len() < SHOWN {
                self.lost_keys.push(k);
            }
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Compares what was written with what one read returned, key by key.
    pub fn compare(expected: &[(String, String)], got: &[Option<String>]) -> Tally {
        let mut t = Tally::default();
        for (i, (key, want)) in expected.iter().enumerate() {
            match got.get(i) {
                Some(Some(v)) if v == want => t.ok += 1,
                Some(other) => {
                    t.lost += 1;
                    if t.lost_keys.len() < SHOWN {
                        t.lost_keys.push(format!("{key}: wrote {want:?}, read {other:?}"));
                    }
                }
                None => t.unverified += 1,
            }
        }
        t
    }

    /// 0 when every write was found, 1 when one was lost, 3 when some could not be checked.
    pub fn exit_status(&self) -> ExitCode {
        if self.lost > 0 {
            ExitCode::from(1)
        } else if self.unverified > 0 {
            ExitCode::from(3)
        } else {
            ExitCode::SUCCESS
        }
    }

    /// The report on stderr; the last line is the one scripts read.
    pub fn print(&self, what: &str) {
        for k in &self.lost_keys {
            eprintln!("{what}: LOST {k}");
        }
        if let Some(e) = &self.first_error {
            eprintln!("{what}: first read error: {e}");
        }
        let verdict = match (self.lost, self.unverified) {
            (0, 0) => "every acknowledged write reads back",
            (0, _) => "INCOMPLETE: some writes could not be read",
            _ => "FAILED: acknowledged writes are lost",
        };
        eprintln!("{what}: ok={} lost={} unverified={}: {verdict}", self.ok, self.lost, self.unverified);
    }
}

/// Reads every key of `entries` through `conn` and compares.
pub async fn check(
    conn: &mut MultiplexedConnection,
    entries: &[(String, String)],
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    for chunk in entries.chunks(BATCH) {
        let mut mget = redis::cmd("MGET");
        for (key, _) in chunk {
            mget.arg(key);
        }
        match tokio::time::timeout(timeout, mget.query_async::<Vec<Option<String>>>(conn)).await {
            Ok(Ok(values)) => tally.add(Tally::compare(chunk, &values)),
            Ok(Err(e)) => {
                tally.add(Tally { first_error: Some(e.to_string()), ..Tally::unverified(chunk.len() as u64) })
            }
            Err(_) => tally.add(Tally {
                first_error: Some(format!("no answer within {timeout:?}")),
                ..Tally::unverified(chunk.len() as u64)
            }),
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn missing_and_changed_values_are_lost_and_short_answers_unverified() {
        let written = [w("a", "1"), w("b", "2"), w("c", "3"), w("d", "4")];
        let read = [Some("1".to_string()), None, Some("x".to_string())];
        let t = Tally::compare(&written, &read);
        assert_eq!((t.ok, t.lost, t.unverified), (1, 2, 1));
        assert_eq!(t.lost_keys, ["b: wrote \"2\", read None", "c: wrote \"3\", read Some(\"x\")"]);
        assert_eq!(t.exit_status(), ExitCode::from(1));
    }

    #[test]
    fn tallies_add_up_and_decide_the_exit_status() {
        let mut t = Tally::default();
        t.add(Tally::compare(&[w("a", "1")], &[Some("1".into())]));
        assert_eq!(t.exit_status(), ExitCode::SUCCESS);
        t.add(Tally::unverified(5));
        assert_eq!((t.ok, t.unverified), (1, 5));
        assert_eq!(t.exit_status(), ExitCode::from(3));
    }
}
