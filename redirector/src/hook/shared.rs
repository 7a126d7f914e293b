//! The maps successive instances share: the original destinations
//! (`DST_BY_COOKIE`, `DST_BY_CLIENT`), pinned under
//! `shared/v<LAYOUT>/` and adopted by every later instance of the same
//! layout instead of being created afresh.
//!
//! Why: while one instance hands over to the next, both accept from the same
//! listening socket, and the kernel programs of both are attached for a
//! moment. A connection saved by one instance's programs may be accepted by
//! the other daemon, so both must read and write the same maps; with a map
//! each, the daemon that did not save a connection would find no original
//! destination and refuse it.
//!
//! `LAYOUT` names the maps' shape (type, key and value layout). It changes
//! only with that shape: a daemon with a new layout creates its maps under
//! the new version while the older instance's programs still write the
//! older ones, so its lookup must fall back to the older layout's pins
//! during the overlap, and it removes them once nothing attached writes
//! them. Pins of the right name but another shape (a test run with shrunk
//! maps) are replaced, with a warning.
use std::{fs, path::PathBuf};

use anyhow::{Context, Result};
use aya::maps::{MapInfo, MapType};
use redirector_ebpf::{Endpoint, SavedDst, maps};

use super::pins::{PinDir, remove_if_present};

/// The layout version of the shared maps.
pub const LAYOUT: u32 = 1;

/// A shared map as this build defines it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub name: &'static str,
    pub kind: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The shared maps of this layout, with `max_entries` as this instance
/// creates them (see [`DEBUG_MAP_MAX_ENV`](super::DEBUG_MAP_MAX_ENV)).
pub(super) fn shapes(max_entries: impl Fn(&str) -> u32) -> [Shape; 2] {
    [
        Shape {
            name: maps::DST_BY_COOKIE,
            kind: MapType::LruHash,
            key_size: size_of::<u64>() as u32,
            value_size: size_of::<Endpoint>() as u32,
            max_entries: max_entries(maps::DST_BY_COOKIE),
        },
        Shape {
            name: maps::DST_BY_CLIENT,
            kind: MapType::Hash,
            key_size: size_of::<Endpoint>() as u32,
            value_size: size_of::<SavedDst>() as u32,
            max_entries: max_entries(maps::DST_BY_CLIENT),
        },
    ]
}

/// Whether a map name is one of the shared ones.
pub(super) fn is_shared(name: &str) -> bool {
    name == maps::DST_BY_COOKIE || name == maps::DST_BY_CLIENT
}

/// Where each shared map is pinned, for `EbpfLoader::map_pin_path`: a map
/// pinned there is adopted, else created and pinned. Pins of another shape
/// are removed first, so the loader creates those afresh.
pub(super) fn prepare(pins: &PinDir, shapes: &[Shape]) -> Result<Vec<(&'static str, PathBuf)>> {
    let dir = pins.shared(LAYOUT);
    fs::create_dir_all(&dir).with_context(|| {
        format!(
            "creating {} (is a bpffs mounted there? `mount -t bpf bpf DIR`)",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for shape in shapes {
        let path = dir.join(shape.name);
        if path.exists() {
            match MapInfo::from_pin(&path)
                .map_err(anyhow::Error::from)
                .and_then(pinned_shape)
            {
                Ok(found) if same(&found, shape) => {
                    tracing::info!(map = shape.name, pin = %path.display(), "adopting the shared map of an earlier instance");
                }
                found => {
                    tracing::warn!(
                        map = shape.name, pin = %path.display(), found = ?found.ok(), expected = ?shape,
                        "a shared map of another shape is pinned here: replacing it (connections \
                         an earlier instance is handing over may find no original destination)"
                    );
                    remove_if_present(&path)?;
                }
            }
        }
        out.push((shape.name, path));
    }
    Ok(out)
}

fn pinned_shape(info: MapInfo) -> Result<Shape> {
    Ok(Shape {
        name: "",
        kind: info.map_type()?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// Same shape, whatever the names.
fn same(a: &Shape, b: &Shape) -> bool {
    (a.kind, a.key_size, a.value_size, a.max_entries)
        == (b.kind, b.key_size, b.value_size, b.max_entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_kernel_types() {
        let [cookie, client] = shapes(|_| maps::DST_MAX);
        assert_eq!((cookie.key_size, cookie.value_size), (8, 20));
        assert_eq!((client.key_size, client.value_size), (20, 32));
        assert_eq!(client.kind, MapType::Hash, "never LRU: see sock_ops.rs");
        let [_, small] = shapes(|n| if n == maps::DST_BY_CLIENT { 4 } else { 9 });
        assert_eq!(small.max_entries, 4);
        assert!(!same(&client, &small));
        assert!(same(&client, &Shape { name: "", ..client }));
        assert!(is_shared(maps::DST_BY_CLIENT) && !is_shared(maps::CONFIG));
    }
}
