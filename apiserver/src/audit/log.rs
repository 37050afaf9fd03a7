//! The audit log backend (`--audit-log-path`, `-` for stdout): one JSON event per line, written
//! by a thread of its own so requests never wait on the disk, and rotated as kube-apiserver's
//! (lumberjack) rotates: past `--audit-log-maxsize` MB the file is renamed
//! `<name>-<timestamp>.<ext>` and a new one begun; backups beyond `--audit-log-maxbackup` or
//! older than `--audit-log-maxage` days are removed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

/// Rotation settings (0 = no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rotation {
    /// Megabytes before a rotation.
    pub max_size_mb: u64,
    /// Old files kept.
    pub max_backups: usize,
    /// Days an old file is kept.
    pub max_age_days: u64,
}

/// Where events go.
pub struct LogBackend {
    /// Events not written yet; the writer thread takes them every few milliseconds, so a
    /// request never wakes it.
    queue: Arc<Mutex<Vec<u8>>>,
    /// Events dropped because the queue was over [`MAX_QUEUED`] bytes (a stuck disk).
    dropped: AtomicU64,
}

/// Bytes of events queued before new ones are dropped (and counted).
const MAX_QUEUED: usize = 64 << 20;

struct Writer {
    path: Option<PathBuf>,
    out: Box<dyn Write + Send>,
    size: u64,
    rotation: Rotation,
}

impl Writer {
    fn open(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = f.metadata()?.len();
        Ok((f, size))
    }

    fn write(&mut self, line: &[u8]) {
        if let Some(path) = self.path.clone() {
            let max = self.rotation.max_size_mb * 1024 * 1024;
            if max > 0 && self.size + line.len() as u64 > max && self.size > 0 {
                let _ = self.out.flush();
                if let Err(e) = self.rotate(&path) {
                    tracing::error!(path = %path.display(), error = %e, "cannot rotate the audit log");
                }
            }
        }
        if let Err(e) = self.out.write_all(line) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        self.size += line.len() as u64;
    }

    fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        let stamp = jiff::Zoned::now()
            .strftime("%Y-%m-%dT%H-%M-%S%.3f")
            .to_string();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match path.extension() {
            Some(ext) => format!("{stem}-{stamp}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{stamp}"),
        };
        std::fs::rename(path, path.with_file_name(name))?;
        let (f, size) = Self::open(path)?;
        self.out = Box::new(std::io::BufWriter::new(f));
        self.size = size;
        self.prune(path);
        Ok(())
    }

    /// Removes backups beyond the count or age limits, oldest first.
    fn prune(&self, path: &Path) {
        let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}-", stem.to_string_lossy());
        let suffix = path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        // Only our backups: `<stem>-YYYY-MM-DDTHH-MM-SS.mmm<.ext>`.
        let ours = |name: &str| {
            name.strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(&suffix))
                .is_some_and(|stamp| {
                    stamp.len() == 23
                        && stamp
                            .chars()
                            .all(|c| c.is_ascii_digit() || matches!(c, '-' | 'T' | '.'))
                })
        };
        let mut backups: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| ours(&e.file_name().to_string_lossy()) && e.path() != path)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        backups.sort();
        let too_old = |t: &SystemTime| {
            self.rotation.max_age_days > 0
                && t.elapsed().unwrap_or_default()
                    > Duration::from_secs(self.rotation.max_age_days * 86_400)
        };
        let excess = if self.rotation.max_backups > 0 {
            backups.len().saturating_sub(self.rotation.max_backups)
        } else {
            0
        };
        for (i, (t, p)) in backups.iter().enumerate() {
            if i < excess || too_old(t) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl LogBackend {
    /// Writes to `path` (`-` for stdout), rotated by `rotation`.
    pub fn open(path: &str, rotation: Rotation) -> Result<LogBackend, String> {
        let mut writer = if path == "-" {
            Writer {
                path: None,
                out: Box::new(std::io::stdout()),
                size: 0,
                rotation,
            }
        } else {
            let p = PathBuf::from(path);
            let (f, size) =
                Writer::open(&p).map_err(|e| format!("--audit-log-path {path}: {e}"))?;
            Writer {
                path: Some(p),
                out: Box::new(std::io::BufWriter::new(f)),
                size,
                rotation,
            }
        };
        let queue: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let taken = queue.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                // Every 10 ms: write what was queued, line by line (for rotation), and flush.
                loop {
                    std::thread::sleep(Duration::from_millis(10));
                    let batch = std::mem::take(&mut *taken.lock());
                    if batch.is_empty() {
                        if Arc::strong_count(&taken) == 1 {
                            return;
                        }
                        continue;
                    }
                    for line in batch.split_inclusive(|b| *b == b'\n') {
                        writer.write(line);
                    }
                    let _ = writer.out.flush();
                }
            })
            .map_err(|e| format!("starting the audit log writer: {e}"))?;
        Ok(LogBackend {
            queue,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues one event.
    pub fn write(&self, event: &serde_json::Value) {
        let mut q = self.queue.lock();
        if q.len() > MAX_QUEUED {
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!("the audit log is not keeping up: events are being dropped");
            }
            return;
        }
        if serde_json::to_writer(&mut *q, event).is_ok() {
            q.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = Writer {
            path: Some(path.clone()),
            out: Box::new(std::io::BufWriter::new(Writer::open(&path).unwrap().0)),
            size: 0,
            rotation: Rotation {
                max_size_mb: 1,
                max_backups: 2,
                max_age_days: 0,
            },
        };
        std::fs::write(dir.path().join("audit-notes.log"), "mine").unwrap();
        let line = vec![b'x'; 300 * 1024];
        for _ in 0..14 {
            w.write(&line);
            // Distinct millisecond stamps for the rotated names.
            std::thread::sleep(Duration::from_millis(3));
        }
        w.out.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.contains(&"audit-notes.log".to_string()), "{names:?}");
        assert!(names.contains(&"audit.log".to_string()));
        assert!(
            names
                .iter()
                .filter(|n| *n != "audit.log" && *n != "audit-notes.log")
                .all(|n| n.starts_with("audit-") && n.ends_with(".log")),
            "{names:?}"
        );
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 1024 * 1024, "{n}: {len}");
        }
    }
}
