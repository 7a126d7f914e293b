//! The pins of one redirector instance under `--bpffs`: where links and
//! maps are pinned, and their removal (`redirector detach`).
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    maps::MapData,
    programs::links::{FdLink, PinnedLink},
};

use super::PROGRAMS;

/// Pinned paths of one redirector instance.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub(super) fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Names of the programs whose links are pinned here.
    pub fn pinned_links(&self) -> Vec<String> {
        PROGRAMS
            .iter()
            .filter(|p| self.link(p).exists())
            .map(|p| p.to_string())
            .collect()
    }
}

/// Pins a link at its staging path and returns that path. Dropping the
/// `PinnedLink` closes our fd; the pin keeps the link attached.
pub(super) fn pin_link(link: FdLink, pins: &PinDir, name: &str) -> Result<PathBuf> {
    // No dots: bpffs reserves names containing '.' (EPERM).
    let path = pins.links().join(format!("{name}_next"));
    remove_if_present(&path)?;
    let _: PinnedLink = link
        .pin(&path)
        .with_context(|| format!("pinning link {}", path.display()))?;
    Ok(path)
}

pub(super) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes every pinned link and map of an instance: the programs detach
/// once nothing else holds their links. Missing pins are not an error.
pub fn detach(pins: &PinDir) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in [pins.links(), pins.maps()] {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path.display().to_string());
        }
        fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    match fs::remove_dir(&pins.root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", pins.root.display())),
    }
    Ok(removed)
}

pub(super) fn open_pinned(pins: &PinDir, name: &str) -> Result<aya::maps::Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
}
