//! Container logs in the CRI format (`<RFC3339Nano> <stream> <F|P> <text>`), one file per
//! container instance, rotated at a size limit with a bounded number of rotated files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest line written as one record; longer lines are split into partial (`P`) records.
const MAX_LINE: usize = 16 * 1024;

/// One container instance's log file.
pub struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    max_size: u64,
    max_files: usize,
}

impl LogFile {
    /// Opens (appending) the log file.
    pub fn open(path: PathBuf, max_size: u64, max_files: usize) -> std::io::Result<Self> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file: Some(file),
            size,
            max_size,
            max_files: max_files.max(1),
        })
    }

    fn rotate(&mut self) {
        self.file = None;
        // <name>.1 is the newest rotated file; the oldest beyond the limit goes.
        let rotated = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(rotated(self.max_files.saturating_sub(1).max(1)));
        for n in (1..self.max_files.saturating_sub(1).max(1)).rev() {
            let _ = std::fs::rename(rotated(n), rotated(n + 1));
        }
        if self.max_files > 1 {
            let _ = std::fs::rename(&self.path, rotated(1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }

    /// Writes one record.
    pub fn write(&mut self, stream: &str, partial: bool, text: &[u8]) {
        let ts = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            .to_string();
        let mut rec = Vec::with_capacity(text.len() + 48);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_bytes());
        rec.extend_from_slice(if partial { b" P " } else { b" F " });
        rec.extend_from_slice(text);
        rec.push(b'\n');
        if self.size + rec.len() as u64 > self.max_size && self.size > 0 {
            self.rotate();
        }
        if let Some(f) = &mut self.file
            && f.write_all(&rec).is_ok()
        {
            self.size += rec.len() as u64;
        }
    }
}

/// Live output of a container for attach: (channel 1 stdout or 2 stderr, bytes).
pub type Live = tokio::sync::broadcast::Sender<(u8, Vec<u8>)>;

/// Copies a stream into the log, line by line, until it ends or `stop` is cancelled (a last
/// unfinished line is still written); raw chunks also go to `live`.
pub async fn pump(
    mut r: impl AsyncRead + Unpin,
    stream: &'static str,
    log: Arc<Mutex<LogFile>>,
    live: Live,
    stop: tokio_util::sync::CancellationToken,
) {
    let chan = if stream == "stdout" { 1 } else { 2 };
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = tokio::select! {
            read = r.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.cancelled() => break,
        };
        if live.receiver_count() > 0 {
            let _ = live.send((chan, buf[..n].to_vec()));
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                log.lock().write(stream, false, &line);
                line.clear();
            } else {
                line.push(b);
                if line.len() >= MAX_LINE {
                    log.lock().write(stream, true, &line);
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        log.lock().write(stream, false, &line);
    }
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When it was written.
    pub time: jiff::Timestamp,
    /// The raw timestamp text.
    pub stamp: String,
    /// Whether the record ends a line.
    pub full: bool,
    /// The text.
    pub text: Vec<u8>,
}

/// Parses one CRI log line.
pub fn parse(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let stamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(&[]);
    Some(Record {
        time: stamp.parse().ok()?,
        stamp: stamp.to_string(),
        full: tag != b"P",
        text: text.to_vec(),
    })
}

/// The log files of one instance, oldest first.
pub fn files(current: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut n = 1;
    loop {
        let p = PathBuf::from(format!("{}.{n}", current.display()));
        if !p.exists() {
            break;
        }
        out.push(p);
        n += 1;
    }
    out.reverse();
    if current.exists() {
        out.push(current.to_path_buf());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = LogFile::open(path.clone(), 200, 3).unwrap();
        for i in 0..40 {
            f.write("stdout", false, format!("line {i}").as_bytes());
        }
        let fs = files(&path);
        assert_eq!(fs.len(), 3, "current plus two rotated: {fs:?}");
        let all: Vec<Record> = fs
            .iter()
            .flat_map(|p| {
                std::fs::read(p)
                    .unwrap()
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| parse(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(all.last().unwrap().text, b"line 39");
        let nums: Vec<usize> = all
            .iter()
            .map(|r| String::from_utf8_lossy(&r.text[5..]).parse().unwrap())
            .collect();
        assert!(
            nums.windows(2).all(|w| w[1] == w[0] + 1),
            "in order: {nums:?}"
        );
    }
}
