//! Where a pod's cgroup is now: its directory under the kubepods directory
//! (or directories) the daemon knows, in the layout kubelet uses there
//! (naming: `hook::Layout`).
//!
//! The places come from the attach root: the kubepods directory derived
//! from the daemon's own cgroup, or `--cgroup` (its name says the layout:
//! `kubepods`, `kubepods.slice`, `kubelet-kubepods.slice`; a directory
//! whose name does not say is searched in kubelet's standard places below
//! it).
use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::hook::Kubepods;
pub use crate::hook::Qos;

/// The kubepods directories a pod's cgroup may be under, with their layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroups {
    places: Vec<Kubepods>,
}

impl PodCgroups {
    /// One known kubepods directory (derived from the daemon's own cgroup).
    pub fn at(kubepods: Kubepods) -> Self {
        Self {
            places: vec![kubepods],
        }
    }

    /// For the attach root `--cgroup`: the kubepods directory its name
    /// says, else kubelet's standard places below it.
    pub fn under_attach_root(root: &Path) -> Self {
        let places = match Kubepods::named(root) {
            Some(kubepods) => vec![kubepods],
            None => Kubepods::standard_places(root),
        };
        Self { places }
    }

    /// Every place the pod's cgroup may be, most likely first: the given
    /// QoS class before the others (a missing or stale `qosClass` still
    /// resolves), places in order.
    pub fn candidates(&self, uid: &str, qos: Option<Qos>) -> Vec<PathBuf> {
        let mut classes: Vec<Qos> = qos.into_iter().collect();
        classes.extend(Qos::ALL.into_iter().filter(|q| Some(*q) != qos));
        self.places
            .iter()
            .flat_map(|place| classes.iter().filter_map(|q| place.pod_dir(*q, uid)))
            .collect()
    }

    /// The pod's cgroup directory, if it exists now.
    pub fn resolve(&self, uid: &str, qos: Option<Qos>) -> Option<PathBuf> {
        self.candidates(uid, qos).into_iter().find(|p| p.is_dir())
    }
}

impl From<&Path> for PodCgroups {
    fn from(root: &Path) -> Self {
        Self::under_attach_root(root)
    }
}

impl From<&PathBuf> for PodCgroups {
    fn from(root: &PathBuf) -> Self {
        Self::under_attach_root(root)
    }
}

impl fmt::Display for PodCgroups {
    /// `DIR (LAYOUT)`, places separated by `; `: for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, place) in self.places.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{} ({})", place.dir.display(), place.layout)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::Layout;

    const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-acbdcedf0011";
    const UID_: &str = "0f1e2d3c_4b5a_6978_8a9b_acbdcedf0011";

    #[test]
    fn the_given_qos_is_tried_first() {
        let pods = PodCgroups::under_attach_root(Path::new("/r/kubepods"));
        let c = pods.candidates(UID, Some(Qos::BestEffort));
        assert_eq!(
            c[0],
            PathBuf::from(format!("/r/kubepods/besteffort/pod{UID}"))
        );
        assert_eq!(c.len(), 3);
        let c = PodCgroups::under_attach_root(Path::new("/r")).candidates(UID, None);
        assert_eq!(c.len(), 6 * 3);
        assert!(
            PodCgroups::under_attach_root(Path::new("/r"))
                .candidates("../x", None)
                .is_empty()
        );
    }

    /// Real directory trees, as kubelet grows them, with the attach root at
    /// the kubepods directory (its name says the layout), one or two levels
    /// up (kubelet's standard places), or derived.
    #[test]
    fn resolves_existing_directories() {
        let kubelet = Layout::Systemd {
            prefix: "kubelet-kubepods".into(),
        };
        // (tree under the temp dir, attach root, qos hint)
        let table: [(&str, &str, Option<Qos>); 13] = [
            (
                "kubepods/burstable/pod{uid}",
                "kubepods",
                Some(Qos::Burstable),
            ),
            (
                "kubepods/besteffort/pod{uid}",
                "kubepods",
                Some(Qos::BestEffort),
            ),
            ("kubepods/pod{uid}", "kubepods", Some(Qos::Guaranteed)),
            (
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice",
                "kubepods.slice",
                Some(Qos::Burstable),
            ),
            (
                "kubepods.slice/kubepods-pod{uid_}.slice",
                "kubepods.slice",
                Some(Qos::Guaranteed),
            ),
            // kind's cgroup root, both drivers
            (
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice",
                "kubelet.slice/kubelet-kubepods.slice",
                Some(Qos::BestEffort),
            ),
            (
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_}.slice",
                "kubelet.slice/kubelet-kubepods.slice",
                None,
            ),
            (
                "kubelet/kubepods/burstable/pod{uid}",
                "kubelet/kubepods",
                None,
            ),
            // stale or missing QoS hints still find the pod
            (
                "kubepods/besteffort/pod{uid}",
                "kubepods",
                Some(Qos::Burstable),
            ),
            (
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice",
                "kubepods.slice",
                None,
            ),
            // attach root above the kubepods directory: standard places
            ("kubepods.slice/kubepods-pod{uid_}.slice", "", None),
            (
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{uid_}.slice",
                "",
                None,
            ),
            // ... or at an unnamed kubepods-like directory (either driver)
            ("burstable/pod{uid}", "", None),
        ];
        for (tree, root, qos) in table {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp
                .path()
                .join(tree.replace("{uid}", UID).replace("{uid_}", UID_));
            std::fs::create_dir_all(&dir).unwrap();
            let pods = PodCgroups::under_attach_root(&tmp.path().join(root));
            assert_eq!(pods.resolve(UID, qos), Some(dir.clone()), "{tree}");
            assert_eq!(pods.resolve("aaaa-bbbb", qos), None, "{tree}: other uid");
        }
        // Derived: one place, one layout; another layout's tree is not looked at.
        let tmp = tempfile::tempdir().unwrap();
        let kubepods = tmp.path().join("kubelet.slice/kubelet-kubepods.slice");
        let pods = PodCgroups::at(Kubepods {
            dir: kubepods.clone(),
            layout: kubelet,
        });
        let dir = kubepods.join(format!(
            "kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice"
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(kubepods.join(format!("kubepods-pod{UID_}.slice"))).unwrap();
        assert_eq!(pods.resolve(UID, None), Some(dir));
        std::fs::create_dir_all(kubepods.join("burstable/podaaaa-bbbb")).unwrap();
        assert_eq!(pods.resolve("aaaa-bbbb", None), None);
        assert!(
            pods.to_string()
                .contains("kubelet-kubepods-<qos>-pod<uid>.slice"),
            "{pods}"
        );
    }

    #[test]
    fn nothing_before_the_directory_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let pods = PodCgroups::under_attach_root(tmp.path());
        assert_eq!(pods.resolve(UID, Some(Qos::Burstable)), None);
    }
}
