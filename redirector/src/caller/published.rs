//! Each namespace's profile label as the daemon knows it, published for
//! `redirector explain --namespace` and `redirector status`, which run
//! outside the daemon and have no API watch of their own.
//!
//! `profiles.json` in the `--handover-dir`, written (a new file renamed
//! over the old) within a quarter of a second of a label's change. It
//! explains; it decides nothing.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::PodDirectory;

/// The file's name in the run directory.
pub const FILE_NAME: &str = "profiles.json";

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedProfiles {
    /// The daemon that wrote it.
    pub pid: u32,
    /// When, in seconds since the epoch.
    pub written_unix_secs: u64,
    /// `egress-redirector/profile` by namespace (labelled ones only).
    pub namespaces: BTreeMap<String, String>,
}

impl PublishedProfiles {
    pub fn read(file: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))
    }

    fn write(&self, file: &Path) -> Result<()> {
        let tmp = PathBuf::from(format!("{}.tmp", file.display()));
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, file).with_context(|| format!("renaming over {}", file.display()))
    }
}

/// Writes `profiles.json` in `dir` now and after each change of the labels,
/// until the process ends. A failed write is logged once and retried.
pub async fn publish(directory: PodDirectory, dir: PathBuf) {
    let file = dir.join(FILE_NAME);
    let mut last: Option<BTreeMap<String, String>> = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let index = directory.snapshot();
        let namespaces: BTreeMap<String, String> = index
            .profiles
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        drop(index);
        if last.as_ref() == Some(&namespaces) {
            continue;
        }
        let content = PublishedProfiles {
            pid: std::process::id(),
            written_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            namespaces: namespaces.clone(),
        };
        match content.write(&file) {
            Ok(()) => last = Some(namespaces),
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %format!("{e:#}"), "cannot publish the namespaces' profiles; explain and status will not show them");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::pods::PodIndex;

    #[tokio::test]
    async fn publishes_the_labels_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let directory = PodDirectory::default();
        let mut index = PodIndex::default();
        index.profiles.insert("shop".into(), "team-a".into());
        directory.publish(index);
        let task = tokio::spawn(publish(directory.clone(), dir.path().to_owned()));
        let file = dir.path().join(FILE_NAME);
        let read = || PublishedProfiles::read(&file).ok();
        let wait = |want: &'static str| async move {
            for _ in 0..50 {
                if read()
                    .and_then(|p| p.namespaces.get("shop").cloned())
                    .as_deref()
                    == Some(want)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("profiles.json never said shop={want}: {:?}", read());
        };
        wait("team-a").await;
        let mut index = PodIndex::default();
        index.profiles.insert("shop".into(), "team-b".into());
        directory.publish(index);
        wait("team-b").await;
        assert_eq!(read().unwrap().pid, std::process::id());
        task.abort();
    }
}
