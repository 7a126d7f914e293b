//! The audit log (`audit` in the configuration, off by default): one JSON
//! line per redirected connection, written by one task to stdout or to a
//! file rotated by size.
//!
//! Bounded so that no pod can fill a disk or slow connections down: at
//! most `maxLinesPerSecond` lines a second and a queue of [`QUEUE`] lines;
//! beyond either a line is dropped and counted (and the count written in
//! the next line that gets through); a file never grows past
//! `maxFileBytes`, and at most `maxFiles` rotated files are kept. A line
//! never holds a credential: proxies are written without theirs.
pub mod line;

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::mpsc;

use crate::config::{Audit, AuditOutput};
pub use line::Entry;

/// Lines waiting for the writer.
pub const QUEUE: usize = 4096;

/// The connections' side: hands lines to the writer, never waits.
pub struct AuditLog {
    tx: mpsc::Sender<String>,
    node: Option<String>,
    limit: u32,
    window: Mutex<(Instant, u32)>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Starts the writer task for `config`; `node` names this node in
    /// every line.
    pub fn start(config: &Audit, node: Option<String>) -> io::Result<Self> {
        let sink = Sink::open(config)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, sink));
        Ok(Self {
            tx,
            node,
            limit: config.max_lines_per_second,
            window: Mutex::new((Instant::now(), 0)),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues one connection's line, or drops it over the rate or when the
    /// writer is behind.
    pub fn record(&self, entry: &Entry<'_>) {
        let allowed = {
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            if window.0.elapsed().as_secs() >= 1 {
                *window = (Instant::now(), 0);
            }
            window.1 += 1;
            window.1 <= self.limit
        };
        if !allowed {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if self
            .tx
            .try_send(entry.to_json(self.node.as_deref(), dropped))
            .is_err()
        {
            self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
        }
    }
}

/// Where lines are written.
enum Sink {
    Stdout,
    File(RotatingFile),
}

impl Sink {
    fn open(config: &Audit) -> io::Result<Self> {
        Ok(match &config.output {
            AuditOutput::Stdout => Sink::Stdout,
            AuditOutput::File(path) => Sink::File(RotatingFile::open(
                path,
                config.max_file_bytes,
                config.max_files,
            )?),
        })
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")
            }
            Sink::File(file) => file.write_line(line),
        }
    }
}

async fn write_lines(mut rx: mpsc::Receiver<String>, mut sink: Sink) {
    let mut failed = false;
    while let Some(line) = rx.recv().await {
        // Blocking writes of one short line; the file is local.
        match sink.write_line(&line) {
            Ok(()) => failed = false,
            Err(e) if !failed => {
                failed = true;
                tracing::warn!(error = %e, "audit log: cannot write; lines are lost until it can");
            }
            Err(_) => {}
        }
    }
}

/// A file rotated when a line would take it past `max_bytes`: `FILE` is
/// renamed `FILE.1`, `FILE.1` `FILE.2`, ..., the oldest beyond `keep`
/// removed.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            max_bytes,
            keep,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let add = line.len() as u64 + 1;
        if self.len > 0 && self.len + add > self.max_bytes {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.len = 0;
        }
        // One write per line: a reader never sees half of one.
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.len += add;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_files_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut file = RotatingFile::open(&path, 100, 2).unwrap();
        let line = "x".repeat(39); // 40 bytes with the newline
        for _ in 0..20 {
            file.write_line(&line).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100);
        assert_eq!(size(&dir.path().join("audit.log.1")), 80);
        assert_eq!(size(&dir.path().join("audit.log.2")), 80);
        assert!(!dir.path().join("audit.log.3").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l == line));
    }

    #[tokio::test]
    async fn lines_over_the_rate_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(
            &Audit {
                output: AuditOutput::File(path.clone()),
                max_file_bytes: 1 << 20,
                max_files: 1,
                max_lines_per_second: 3,
            },
            None,
        )
        .unwrap();
        let entry = line::tests::sample();
        for _ in 0..10 {
            log.record(&entry);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(log.dropped.load(Ordering::Relaxed), 7);
    }
}
