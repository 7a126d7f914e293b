//! The pins of one redirector instance under `--bpffs`: where links and
//! maps are pinned, and their removal (`redirector detach`).
//!
//! `links/` and `maps/` belong to the instance attached now and are replaced
//! by the next one; `shared/v<LAYOUT>/` holds the maps that successive
//! instances share (see `shared`).
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
    /// The maps instances share, for one layout version of them.
    pub fn shared(&self, layout: u32) -> PathBuf {
        self.root.join("shared").join(format!("v{layout}"))
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

/// Removes every pinned link and map of an instance, the shared maps of
/// every layout included: the programs detach once nothing else holds
/// their links. Missing pins are not an error.
pub fn detach(pins: &PinDir) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let shared = pins.root.join("shared");
    let mut dirs = vec![pins.links(), pins.maps()];
    if let Ok(layouts) = fs::read_dir(&shared) {
        for layout in layouts {
            dirs.push(layout?.path());
        }
    }
    for dir in &dirs {
        remove_dir_of_pins(dir, &mut removed)?;
    }
    for dir in [&shared, &pins.root] {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    Ok(removed)
}

/// Removes a directory of pins and the pins in it.
fn remove_dir_of_pins(dir: &Path, removed: &mut Vec<String>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(path.display().to_string());
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

pub(super) fn open_pinned(pins: &PinDir, name: &str) -> Result<aya::maps::Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// detach removes the instance's pins and the shared maps of every
    /// layout (plain files stand in for pins: bpffs is not needed for this).
    #[test]
    fn detach_removes_links_maps_and_shared_maps() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinDir::new(dir.path().join("redirector"));
        for path in [
            pins.link("connect4"),
            pins.map("CONFIG"),
            pins.shared(1).join("DST_BY_CLIENT"),
            pins.shared(2).join("DST_BY_CLIENT"),
        ] {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"").unwrap();
        }
        let removed = detach(&pins).unwrap();
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(!pins.root().exists());
        assert!(detach(&pins).unwrap().is_empty(), "again: nothing left");
    }
}
