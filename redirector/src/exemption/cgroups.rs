//! Where kubelet puts a pod's cgroup: pure path resolution for both cgroup
//! drivers, relative to the hooks' attach root (the kubepods directory).
//!
//! - cgroupfs: `kubepods/<qos>/pod<uid>`, guaranteed pods at `kubepods/pod<uid>`;
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`
//!   (dashes of the UID as underscores), guaranteed pods at
//!   `kubepods.slice/kubepods-pod<uid_>.slice`.
//!
//! The attach root is usually the kubepods directory itself; a root one
//! level up (the cgroup2 mount) works too.
use std::path::{Path, PathBuf};

/// A pod's QoS class (`status.qosClass`), which picks kubelet's middle level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    const ALL: [Qos; 3] = [Qos::Burstable, Qos::BestEffort, Qos::Guaranteed];

    /// `status.qosClass` as the API spells it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Guaranteed" => Some(Self::Guaranteed),
            "Burstable" => Some(Self::Burstable),
            "BestEffort" => Some(Self::BestEffort),
            _ => None,
        }
    }

    /// kubelet's name for the QoS level; guaranteed pods have none.
    fn level(self) -> Option<&'static str> {
        match self {
            Self::Guaranteed => None,
            Self::Burstable => Some("burstable"),
            Self::BestEffort => Some("besteffort"),
        }
    }
}

/// Which kubelet cgroup driver a layout belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// The pod-level cgroup directory of a pod, relative to the kubepods
/// directory, for one driver and QoS class. `None` for a UID that is not
/// one (it comes from the API and becomes a path: no `/`, no `..`).
pub fn pod_dir(driver: Driver, qos: Qos, uid: &str) -> Option<PathBuf> {
    if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return None;
    }
    Some(match (driver, qos.level()) {
        (Driver::Cgroupfs, None) => PathBuf::from(format!("pod{uid}")),
        (Driver::Cgroupfs, Some(level)) => [level, &format!("pod{uid}")].iter().collect(),
        (Driver::Systemd, None) => {
            PathBuf::from(format!("kubepods-pod{}.slice", uid.replace('-', "_")))
        }
        (Driver::Systemd, Some(level)) => [
            format!("kubepods-{level}.slice"),
            format!("kubepods-{level}-pod{}.slice", uid.replace('-', "_")),
        ]
        .iter()
        .collect(),
    })
}

/// Every place the pod's cgroup may be under `root`, most likely first:
/// the given QoS class before the others (a missing or stale `qosClass`
/// still resolves), `root` as the kubepods directory before `root` as its
/// parent.
pub fn candidates(root: &Path, uid: &str, qos: Option<Qos>) -> Vec<PathBuf> {
    let mut classes: Vec<Qos> = qos.into_iter().collect();
    classes.extend(Qos::ALL.into_iter().filter(|q| Some(*q) != qos));
    let bases = [
        (root.to_path_buf(), None),
        (root.join("kubepods"), Some(Driver::Cgroupfs)),
        (root.join("kubepods.slice"), Some(Driver::Systemd)),
    ];
    let mut out = Vec::new();
    for (base, only) in &bases {
        for driver in [Driver::Cgroupfs, Driver::Systemd] {
            if only.is_some_and(|d| d != driver) {
                continue;
            }
            for qos in &classes {
                if let Some(dir) = pod_dir(driver, *qos, uid) {
                    out.push(base.join(dir));
                }
            }
        }
    }
    out
}

/// The pod's cgroup directory under `root`, if it exists now.
pub fn resolve(root: &Path, uid: &str, qos: Option<Qos>) -> Option<PathBuf> {
    candidates(root, uid, qos).into_iter().find(|p| p.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-acbdcedf0011";
    const UID_: &str = "0f1e2d3c_4b5a_6978_8a9b_acbdcedf0011";

    #[test]
    fn pod_dirs_of_both_drivers() {
        let table = [
            (
                Driver::Cgroupfs,
                Qos::Burstable,
                format!("burstable/pod{UID}"),
            ),
            (
                Driver::Cgroupfs,
                Qos::BestEffort,
                format!("besteffort/pod{UID}"),
            ),
            (Driver::Cgroupfs, Qos::Guaranteed, format!("pod{UID}")),
            (
                Driver::Systemd,
                Qos::Burstable,
                format!("kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            ),
            (
                Driver::Systemd,
                Qos::BestEffort,
                format!("kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"),
            ),
            (
                Driver::Systemd,
                Qos::Guaranteed,
                format!("kubepods-pod{UID_}.slice"),
            ),
        ];
        for (driver, qos, want) in table {
            assert_eq!(
                pod_dir(driver, qos, UID),
                Some(PathBuf::from(&want)),
                "{driver:?} {qos:?}"
            );
        }
    }

    #[test]
    fn uids_that_are_not_uids_resolve_to_nothing() {
        for bad in ["", "../../etc", "a/b", "pod x", "..", "0f1e.2d"] {
            for driver in [Driver::Cgroupfs, Driver::Systemd] {
                assert_eq!(pod_dir(driver, Qos::Burstable, bad), None, "{bad:?}");
            }
            assert!(candidates(Path::new("/r"), bad, None).is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn qos_parses_the_api_spelling() {
        assert_eq!(Qos::parse("Guaranteed"), Some(Qos::Guaranteed));
        assert_eq!(Qos::parse("Burstable"), Some(Qos::Burstable));
        assert_eq!(Qos::parse("BestEffort"), Some(Qos::BestEffort));
        assert_eq!(Qos::parse("besteffort"), None);
    }

    #[test]
    fn the_given_qos_is_tried_first() {
        let c = candidates(Path::new("/r"), UID, Some(Qos::BestEffort));
        assert_eq!(c[0], PathBuf::from(format!("/r/besteffort/pod{UID}")));
        assert_eq!(c.len(), 6 + 3 + 3);
    }

    /// Real directory trees, as kubelet grows them, with the attach root at
    /// the kubepods directory or one level up.
    #[test]
    fn resolves_existing_directories() {
        let table: [(&str, &str, Option<Qos>); 8] = [
            // (tree under the temp dir, attach root, qos hint)
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
            // attach root one level above kubepods
            ("kubepods.slice/kubepods-pod{uid_}.slice", "", None),
        ];
        for (tree, root, qos) in table {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp
                .path()
                .join(tree.replace("{uid}", UID).replace("{uid_}", UID_));
            std::fs::create_dir_all(&dir).unwrap();
            let root = tmp.path().join(root);
            assert_eq!(resolve(&root, UID, qos), Some(dir.clone()), "{tree}");
            assert_eq!(resolve(&root, "aaaa-bbbb", qos), None, "{tree}: other uid");
        }
    }

    #[test]
    fn nothing_before_the_directory_exists() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(resolve(tmp.path(), UID, Some(Qos::Burstable)), None);
    }
}
