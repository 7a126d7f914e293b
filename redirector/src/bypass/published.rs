//! The bypass sources as the daemon publishes them, for `redirector status`
//! and `redirector explain`, which do not run inside the daemon: the kernel
//! tries hold bare prefixes, so where each came from is only known here.
//!
//! The daemon writes `bypass.json` in its `--handover-dir` (a new file renamed
//! over the old, so a reader never sees half of one) whenever the set
//! changes. A daemon that cannot write it logs that once and carries on:
//! the file explains, it decides nothing. While an old instance drains
//! after a hand-over, both run: a writer leaves alone a file written by an
//! instance that started after it.
use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Sources;

/// The file's name in the run directory.
pub const FILE_NAME: &str = "bypass.json";

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The daemon that wrote it.
    pub pid: u32,
    /// When that daemon started publishing, in milliseconds since the
    /// epoch: a newer instance's file is never overwritten by an older one.
    #[serde(default)]
    pub started_unix_ms: u64,
    /// When, in seconds since the epoch.
    pub written_unix_secs: u64,
    /// Every source with its prefixes, in display order.
    pub sources: Vec<PublishedSource>,
    /// The prefixes the daemon put in the kernel (the sources, aggregated).
    pub kernel: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedSource {
    /// The source's name, as `status` shows it.
    pub source: String,
    /// Whether it comes from the Kubernetes API (`explain` cannot know it
    /// on its own).
    pub from_api: bool,
    pub prefixes: Vec<PublishedEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEntry {
    pub prefix: IpNet,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Published {
    /// What `sources` and `kernel` say now, from this process.
    pub fn of(sources: &Sources, kernel: &[IpNet]) -> Self {
        Self {
            pid: std::process::id(),
            started_unix_ms: 0,
            written_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sources: sources
                .iter()
                .map(|(source, entries)| PublishedSource {
                    source: source.to_string(),
                    from_api: source.from_api(),
                    prefixes: entries
                        .iter()
                        .map(|e| PublishedEntry {
                            prefix: e.net,
                            detail: e.detail.clone(),
                        })
                        .collect(),
                })
                .collect(),
            kernel: kernel.to_vec(),
        }
    }

    /// Reads a published file.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Every published prefix, aggregated as the daemon does for the kernel.
    pub fn aggregated(&self) -> Vec<IpNet> {
        let all: Vec<IpNet> = self
            .sources
            .iter()
            .flat_map(|s| s.prefixes.iter().map(|p| p.prefix))
            .collect();
        IpNet::aggregate(&all)
    }
}

/// Writes the file on every change.
pub struct Publisher {
    path: PathBuf,
    /// When this publisher started (see [`Published::started_unix_ms`]).
    started_unix_ms: u64,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
    /// A newer instance publishes now: this one writes no more.
    superseded: bool,
}

impl Publisher {
    /// Publishes into `run_dir`, created if missing.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            path: run_dir.join(FILE_NAME),
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            failing: false,
            superseded: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, sources: &Sources, kernel: &[IpNet]) {
        if self.superseded {
            return;
        }
        if let Ok(there) = Published::read(&self.path)
            && there.pid != std::process::id()
            && there.started_unix_ms > self.started_unix_ms
        {
            self.superseded = true;
            tracing::info!(
                file = %self.path.display(),
                pid = there.pid,
                "a newer instance publishes the bypass sources now"
            );
            return;
        }
        let published = Published {
            started_unix_ms: self.started_unix_ms,
            ..Published::of(sources, kernel)
        };
        match self.try_write(&published) {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(file = %self.path.display(), "publishing the bypass sources again");
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "cannot publish the bypass sources: `status` and `explain` will not say \
                     where each bypassed prefix came from (the kernel is not affected)"
                );
            }
            Err(_) => {}
        }
    }

    fn try_write(&self, published: &Published) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(published)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bypass::{Entry, Source};

    #[test]
    fn written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut sources = Sources::default();
        sources.set(
            Source::PodCidrs,
            vec![Entry::new("10.244.1.0/24".parse().unwrap(), "node n1")],
        );
        sources.set(
            Source::NoProxy,
            vec![Entry::new("10.244.0.0/24".parse().unwrap(), "")],
        );
        let mut publisher = Publisher::new(&dir.path().join("run"));
        publisher.write(&sources, &sources.kernel_prefixes());
        let read = Published::read(publisher.path()).unwrap();
        assert_eq!(read.pid, std::process::id());
        let names: Vec<&str> = read.sources.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(names, ["noProxy", "pod CIDRs (Node.spec.podCIDRs)"]);
        assert!(read.sources[1].from_api && !read.sources[0].from_api);
        assert_eq!(read.sources[1].prefixes[0].detail, "node n1");
        assert_eq!(read.kernel, ["10.244.0.0/23".parse::<IpNet>().unwrap()]);
        assert_eq!(read.aggregated(), read.kernel);
    }

    /// An older instance (draining after a hand-over) leaves the newer
    /// one's file alone; the newer one writes over the older one's.
    #[test]
    fn the_newer_instance_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut older = Publisher::new(dir.path());
        older.started_unix_ms -= 1000;
        let newer_file = Published {
            pid: std::process::id() + 1,
            started_unix_ms: older.started_unix_ms + 500,
            ..Published::of(&Sources::default(), &[])
        };
        std::fs::write(older.path(), serde_json::to_string(&newer_file).unwrap()).unwrap();
        older.write(&Sources::default(), &["10.0.0.0/8".parse().unwrap()]);
        assert!(older.superseded);
        assert_eq!(Published::read(older.path()).unwrap(), newer_file);
        // The other way round: an older file is replaced.
        let mut newest = Publisher::new(dir.path());
        newest.started_unix_ms = newer_file.started_unix_ms + 1;
        newest.write(&Sources::default(), &[]);
        assert_eq!(
            Published::read(newest.path()).unwrap().pid,
            std::process::id()
        );
    }

    #[test]
    fn an_unwritable_directory_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let mut publisher = Publisher::new(&file);
        publisher.write(&Sources::default(), &[]);
        assert!(publisher.failing);
    }
}
