//! The `containerLogs` query (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `previous`,
//! `timestamps`, `limitBytes`) applied to CRI log files.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::process::logs::{Record, parse};

/// A parsed query.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Keep streaming.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
    /// The previous instance.
    pub previous: bool,
    /// Prefix each line with its RFC3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// What rendering the existing files gave.
pub struct Rendered {
    /// The text.
    pub text: Vec<u8>,
    /// Where the last file was read up to.
    pub offset: u64,
    /// Bytes left under limitBytes.
    pub budget: Option<usize>,
}

fn flag(q: &HashMap<String, String>, k: &str) -> Result<bool, String> {
    match q.get(k).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(format!("invalid value {v:?} for {k}")),
    }
}

fn number(q: &HashMap<String, String>, k: &str) -> Result<Option<i64>, String> {
    q.get(k)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| format!("invalid value {v:?} for {k}"))
        })
        .transpose()
}

impl LogQuery {
    /// Parses the query string's parameters.
    pub fn parse(q: &HashMap<String, String>) -> Result<Self, String> {
        let tail = number(q, "tailLines")?;
        let since_s = number(q, "sinceSeconds")?;
        let limit = number(q, "limitBytes")?;
        if tail.is_some_and(|t| t < 0) {
            return Err("tailLines must be non-negative".into());
        }
        if since_s.is_some_and(|s| s < 1) {
            return Err("sinceSeconds must be greater than 0".into());
        }
        if limit.is_some_and(|l| l < 1) {
            return Err("limitBytes must be greater than 0".into());
        }
        let since_time = q
            .get("sinceTime")
            .map(|t| {
                t.parse::<Timestamp>()
                    .map_err(|_| format!("invalid sinceTime {t:?}"))
            })
            .transpose()?;
        if since_s.is_some() && since_time.is_some() {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        let since = since_time
            .or_else(|| since_s.map(|s| Timestamp::now() - jiff::SignedDuration::from_secs(s)));
        Ok(Self {
            follow: flag(q, "follow")?,
            tail_lines: tail.map(|t| t as usize),
            since,
            previous: flag(q, "previous")?,
            timestamps: flag(q, "timestamps")?,
            limit_bytes: limit.map(|l| l as usize),
        })
    }

    /// The kept records of the complete lines of `data`, and where those lines end.
    fn records(&self, data: &[u8]) -> (Vec<Record>, usize) {
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let recs = data[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(parse)
            .filter(|r| self.keep(r))
            .collect();
        (recs, complete)
    }

    fn keep(&self, r: &Record) -> bool {
        self.since.is_none_or(|s| r.time >= s)
    }

    fn format(&self, r: &Record, out: &mut Vec<u8>, line_start: &mut bool) {
        if self.timestamps && *line_start {
            out.extend_from_slice(r.stamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&r.text);
        if r.full {
            out.push(b'\n');
        }
        *line_start = r.full;
    }

    /// Renders the files (oldest first) as the query asks.
    pub fn render(&self, files: &[PathBuf]) -> Rendered {
        let mut records: Vec<Record> = Vec::new();
        let mut offset = 0;
        for (i, f) in files.iter().enumerate() {
            let data = std::fs::read(f).unwrap_or_default();
            let (recs, complete) = self.records(&data);
            if i + 1 == files.len() {
                offset = complete as u64;
            }
            records.extend(recs);
        }
        if let Some(n) = self.tail_lines {
            // Keep the records of the last n lines (a line may span partial records).
            let mut lines = 0;
            let mut start = records.len();
            for (i, r) in records.iter().enumerate().rev() {
                if r.full {
                    if lines == n {
                        break;
                    }
                    lines += 1;
                }
                start = i;
            }
            records.drain(..start);
        }
        let mut text = Vec::new();
        let mut line_start = true;
        for r in &records {
            self.format(r, &mut text, &mut line_start);
        }
        let mut budget = self.limit_bytes;
        if let Some(l) = budget {
            text.truncate(l);
            budget = Some(l - text.len());
        }
        Rendered {
            text,
            offset,
            budget,
        }
    }

    /// New complete records of `path` after `offset`; returns the text and the new offset.
    pub fn read_from(&self, path: &Path, offset: u64, budget: Option<usize>) -> (Vec<u8>, u64) {
        let Ok(mut f) = std::fs::File::open(path) else {
            return (Vec::new(), offset);
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        // A rotation started the file again.
        let offset = if len < offset { 0 } else { offset };
        let mut data = Vec::new();
        if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_end(&mut data).is_err() {
            return (Vec::new(), offset);
        }
        let (records, complete) = self.records(&data);
        let mut text = Vec::new();
        let mut line_start = true;
        for r in &records {
            self.format(r, &mut text, &mut line_start);
        }
        if let Some(b) = budget {
            text.truncate(b);
        }
        (text, offset + complete as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::logs::LogFile;

    #[test]
    fn tail_timestamps_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = LogFile::open(path.clone(), 1 << 20, 2).unwrap();
        f.write("stdout", false, b"one");
        f.write("stderr", true, b"tw");
        f.write("stderr", false, b"o");
        f.write("stdout", false, b"three");
        let q = |pairs: &[(&str, &str)]| {
            LogQuery::parse(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .unwrap()
        };
        let all = q(&[]).render(std::slice::from_ref(&path));
        assert_eq!(all.text, b"one\ntwo\nthree\n");
        assert_eq!(
            q(&[("tailLines", "2")])
                .render(std::slice::from_ref(&path))
                .text,
            b"two\nthree\n"
        );
        assert_eq!(
            q(&[("limitBytes", "5")])
                .render(std::slice::from_ref(&path))
                .text,
            b"one\nt"
        );
        let ts =
            q(&[("timestamps", "true"), ("tailLines", "1")]).render(std::slice::from_ref(&path));
        let line = String::from_utf8(ts.text).unwrap();
        assert!(line.ends_with("Z three\n") && line.len() > 20, "{line}");
        f.write("stdout", false, b"four");
        let (more, _) = q(&[]).read_from(&path, all.offset, None);
        assert_eq!(more, b"four\n");
        assert!(LogQuery::parse(&[("tailLines".to_string(), "x".to_string())].into()).is_err());
    }
}
