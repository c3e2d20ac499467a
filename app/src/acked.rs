//! The ledger of acknowledged writes: what the node answered `OK` to, and so must be able
//! to read back. Kept in memory until checked, and optionally saved as text (one
//! `key TAB value` line per write) so that another process can check it later, through
//! another node, after a fault.

use std::io::{BufRead, Write};
use std::path::Path;

/// Acknowledged writes not yet checked, and where to save every acknowledged write.
pub struct Ledger {
    pending: Vec<(String, String)>,
    sink: Option<Box<dyn Write>>,
}

impl Ledger {
    pub fn new(sink: Option<Box<dyn Write>>) -> Ledger {
        Ledger { pending: Vec::new(), sink }
    }

    /// Records an acknowledged write.
    pub fn acknowledged(&mut self, key: String, value: String) -> std::io::Result<()> {
        if let Some(sink) = &mut self.sink {
            sink.write_all(line(&key, &value).as_bytes())?;
        }
        self.pending.push((key, value));
        Ok(())
    }

    /// The writes not checked yet; the ledger forgets them.
    pub fn take_pending(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.pending)
    }

    /// Flushes the saved list.
    pub fn finish(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Some(sink) => sink.flush(),
            None => Ok(()),
        }
    }
}

/// One saved write. Keys and values are the load's own, without tabs or newlines.
pub fn line(key: &str, value: &str) -> String {
    format!("{key}\t{value}\n")
}

/// A saved list that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} line {line}: expected `key<TAB>value`")]
    Malformed { path: String, line: usize },
}

/// Reads a saved list from a file, or from stdin for `-`.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, ReadError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| ReadError::Io { path: shown.clone(), message: e.to_string() };
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        for l in std::io::stdin().lock().lines() {
            text.push_str(&l.map_err(io)?);
            text.push('\n');
        }
        text
    } else {
        std::fs::read_to_string(path).map_err(io)?
    };
    parse(&shown, &text)
}

/// Parses a saved list; blank lines are skipped.
pub fn parse(path: &str, text: &str) -> Result<Vec<(String, String)>, ReadError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match l.split_once('\t') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ReadError::Malformed { path: path.to_string(), line: i + 1 }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_lines_parse_back() {
        let text = [line("a:1", "v1"), line("a:2", ""), "\n".to_string()].concat();
        let entries = parse("f", &text).unwrap();
        assert_eq!(entries, [("a:1".to_string(), "v1".to_string()), ("a:2".to_string(), String::new())]);
        assert_eq!(parse("f", "a:1 v1\n"), Err(ReadError::Malformed { path: "f".into(), line: 1 }));
    }

    #[test]
    fn the_ledger_saves_and_hands_out_pending_writes_once() {
        let mut ledger = Ledger::new(None);
        ledger.acknowledged("k1".into(), "v1".into()).unwrap();
        ledger.acknowledged("k2".into(), "v2".into()).unwrap();
        assert_eq!(ledger.take_pending().len(), 2);
        assert!(ledger.take_pending().is_empty());
    }
}
