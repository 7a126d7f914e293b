//! How kubelet names pods' cgroups: pure naming, no filesystem access.
//!
//! Both cgroup drivers, with or without a cgroup root (kubelet's
//! `cgroupRoot`; kind sets `/kubelet`), every QoS class:
//!
//! | driver   | kubepods directory                | a pod below it                                  |
//! | -------- | --------------------------------- | ----------------------------------------------- |
//! | cgroupfs | `[<root>/]kubepods`               | `[<qos>/]pod<uid>`                              |
//! | systemd  | `[<root>.slice/]<P>.slice`        | `[<P>-<qos>.slice/]<P>[-<qos>]-pod<uid_>.slice` |
//!
//! `<P>` is `kubepods`, or `<root>-kubepods` under a cgroup root (systemd
//! repeats every ancestor's name in a slice's: `kubelet-kubepods.slice`);
//! `<qos>` is `burstable` or `besteffort` (guaranteed pods have no QoS
//! level); `<uid_>` is the UID with `_` for `-`. A static pod's cgroup is
//! named after its config hash (the mirror pod's `kubernetes.io/config.mirror`),
//! 32 hex digits, not after the mirror pod's `metadata.uid`.
use std::{
    fmt,
    path::{Path, PathBuf},
};

/// A pod's QoS class (`status.qosClass`), which picks kubelet's middle level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// Every class, the most common first.
    pub const ALL: [Qos; 3] = [Qos::Burstable, Qos::BestEffort, Qos::Guaranteed];

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

/// The QoS classes that have a level of their own.
const LEVELS: [Qos; 2] = [Qos::Burstable, Qos::BestEffort];

/// How pods' cgroups are named below the kubepods directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// kubelet's cgroupfs driver: plain names, whatever the cgroup root.
    Cgroupfs,
    /// kubelet's systemd driver: slices named `<prefix>[-<qos>]-pod<uid_>`,
    /// where `prefix` is the kubepods slice's name without `.slice`
    /// (`kubepods`, `kubelet-kubepods`).
    Systemd { prefix: String },
}

impl Layout {
    /// The systemd layout without a cgroup root (`kubepods.slice`).
    pub fn systemd() -> Self {
        Self::Systemd {
            prefix: "kubepods".into(),
        }
    }

    /// The layout a kubepods directory's name says: `kubepods` (cgroupfs),
    /// `kubepods.slice` or `<root>-kubepods.slice` (systemd). `None` for any
    /// other name.
    pub fn of_kubepods_dir(name: &str) -> Option<Self> {
        if name == "kubepods" {
            return Some(Self::Cgroupfs);
        }
        let stem = name.strip_suffix(".slice")?;
        is_kubepods_slice_stem(stem).then(|| Self::Systemd {
            prefix: stem.into(),
        })
    }

    /// The pod-level cgroup directory of a pod, relative to the kubepods
    /// directory. `None` for a UID that is not one (it comes from the API
    /// and becomes a path: no `/`, no `..`).
    pub fn pod_dir(&self, qos: Qos, uid: &str) -> Option<PathBuf> {
        if !is_uid(uid, '-') {
            return None;
        }
        Some(match (self, qos.level()) {
            (Self::Cgroupfs, None) => PathBuf::from(format!("pod{uid}")),
            (Self::Cgroupfs, Some(level)) => [level, &format!("pod{uid}")].iter().collect(),
            (Self::Systemd { prefix }, None) => {
                PathBuf::from(format!("{prefix}-pod{}.slice", uid.replace('-', "_")))
            }
            (Self::Systemd { prefix }, Some(level)) => [
                format!("{prefix}-{level}.slice"),
                format!("{prefix}-{level}-pod{}.slice", uid.replace('-', "_")),
            ]
            .iter()
            .collect(),
        })
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroupfs => f.write_str("cgroupfs (kubepods/<qos>/pod<uid>)"),
            Self::Systemd { prefix } => {
                write!(f, "systemd ({prefix}-<qos>-pod<uid>.slice)")
            }
        }
    }
}

/// `kubepods`, or `<root>-kubepods` under a cgroup root.
fn is_kubepods_slice_stem(stem: &str) -> bool {
    stem == "kubepods"
        || stem
            .strip_suffix("-kubepods")
            .is_some_and(|r| !r.is_empty())
}

/// A pod UID as it appears in a cgroup name: hex digits and `sep` (`-` in
/// the API and cgroupfs names, `_` in systemd names; a static pod's config
/// hash has none).
fn is_uid(s: &str, sep: char) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit() || c == sep)
}

/// The kubepods directory and how pods are named below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubepods {
    pub dir: PathBuf,
    pub layout: Layout,
}

impl Kubepods {
    /// `dir` as a kubepods directory, if its name says which layout.
    pub fn named(dir: &Path) -> Option<Self> {
        let layout = Layout::of_kubepods_dir(dir.file_name()?.to_str()?)?;
        Some(Self {
            dir: dir.to_path_buf(),
            layout,
        })
    }

    /// Where the kubepods directory may be below `root`, a directory whose
    /// name does not say (the cgroup2 mount, a test's scratch cgroup): `root`
    /// itself under either driver, then kubelet's defaults below it, without
    /// and with kind's cgroup root `/kubelet`.
    pub fn standard_places(root: &Path) -> Vec<Self> {
        let at = |rel: &str, layout: Layout| Self {
            dir: root.join(rel),
            layout,
        };
        let kubelet = Layout::Systemd {
            prefix: "kubelet-kubepods".into(),
        };
        vec![
            at("", Layout::Cgroupfs),
            at("", Layout::systemd()),
            at("kubepods", Layout::Cgroupfs),
            at("kubepods.slice", Layout::systemd()),
            at("kubelet/kubepods", Layout::Cgroupfs),
            at("kubelet.slice/kubelet-kubepods.slice", kubelet),
        ]
    }

    /// The pod's cgroup directory in this layout.
    pub fn pod_dir(&self, qos: Qos, uid: &str) -> Option<PathBuf> {
        Some(self.dir.join(self.layout.pod_dir(qos, uid)?))
    }
}

/// What the cgroup path of a process inside a pod says: where the
/// kubepods directory is on that path, the layout, and the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroupPath {
    /// The kubepods directory: the leading components of the path given,
    /// relative (`kubelet.slice/kubelet-kubepods.slice`).
    pub kubepods: PathBuf,
    pub layout: Layout,
    pub qos: Qos,
    /// The UID as the API spells it (`-`, not `_`).
    pub uid: String,
}

impl PodCgroupPath {
    /// Finds the pod level in a cgroup path (`/proc/<pid>/cgroup`'s, or a
    /// directory's below a cgroup2 mount), the one nearest the end if pods
    /// are nested, and everything above its QoS level is the kubepods
    /// directory. Whatever lies above that (a cgroup root, the cgroup of a
    /// kind node's container) and below the pod (containers) is kept or
    /// ignored. `None` if no component is a pod's.
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        (0..parts.len())
            .rev()
            .find_map(|i| systemd_pod(&parts, i).or_else(|| cgroupfs_pod(&parts, i)))
    }
}

/// `parts[i]` as a systemd pod slice, checked against its parents.
fn systemd_pod(parts: &[&str], i: usize) -> Option<PodCgroupPath> {
    let (head, uid_) = parts[i].strip_suffix(".slice")?.rsplit_once("-pod")?;
    if !is_uid(uid_, '_') {
        return None;
    }
    let found = |prefix: &str, qos: Qos, kubepods_at: usize| PodCgroupPath {
        kubepods: parts[..=kubepods_at].iter().collect(),
        layout: Layout::Systemd {
            prefix: prefix.into(),
        },
        qos,
        uid: uid_.replace('_', "-"),
    };
    let parent_is =
        |back: usize, stem: &str| i >= back && parts[i - back].strip_suffix(".slice") == Some(stem);
    // `<P>-<qos>-pod<uid_>.slice` in `<P>-<qos>.slice` in `<P>.slice`
    for qos in LEVELS {
        let level = qos.level().unwrap_or_default();
        if let Some(prefix) = head.strip_suffix(&format!("-{level}"))
            && is_kubepods_slice_stem(prefix)
            && parent_is(1, head)
            && parent_is(2, prefix)
        {
            return Some(found(prefix, qos, i - 2));
        }
    }
    // `<P>-pod<uid_>.slice` in `<P>.slice` (guaranteed)
    (is_kubepods_slice_stem(head) && parent_is(1, head))
        .then(|| found(head, Qos::Guaranteed, i - 1))
}

/// `parts[i]` as a cgroupfs pod directory, checked against its parents.
fn cgroupfs_pod(parts: &[&str], i: usize) -> Option<PodCgroupPath> {
    let uid = parts[i].strip_prefix("pod")?;
    if !is_uid(uid, '-') {
        return None;
    }
    let found = |qos: Qos, kubepods_at: usize| PodCgroupPath {
        kubepods: parts[..=kubepods_at].iter().collect(),
        layout: Layout::Cgroupfs,
        qos,
        uid: uid.into(),
    };
    // `kubepods/<qos>/pod<uid>`
    for qos in LEVELS {
        if i >= 2 && Some(parts[i - 1]) == qos.level() && parts[i - 2] == "kubepods" {
            return Some(found(qos, i - 2));
        }
    }
    // `kubepods/pod<uid>` (guaranteed)
    (i >= 1 && parts[i - 1] == "kubepods").then(|| found(Qos::Guaranteed, i - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8a9b-acbdcedf0011";
    const UID_: &str = "0f1e2d3c_4b5a_6978_8a9b_acbdcedf0011";
    /// A static pod's UID: the hash of its manifest.
    const HASH: &str = "df7cc47f8477b6b1226d7d23a904867b";
    const CONTAINER: &str = "8f3c1a9e0b7d4c2e6f5a3b1d9c7e5f3a1b9d7c5e3f1a9b7d5c3e1f9a7b5d3c1e";

    fn systemd(prefix: &str) -> Layout {
        Layout::Systemd {
            prefix: prefix.into(),
        }
    }

    /// Every layout (both drivers, without and with a cgroup root) and
    /// every QoS class, from the cgroup path of a container as runc and
    /// kubelet create it, down to the pod directory, and back.
    #[test]
    fn real_paths_of_all_four_layouts() {
        // (container's cgroup path, kubepods directory, layout, qos)
        let table: Vec<(String, &str, Layout, Qos)> = vec![
            // systemd (kubeadm, AKS)
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CONTAINER}.scope"
                ),
                "kubepods.slice",
                Layout::systemd(),
                Qos::Burstable,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CONTAINER}.scope"
                ),
                "kubepods.slice",
                Layout::systemd(),
                Qos::BestEffort,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CONTAINER}.scope"
                ),
                "kubepods.slice",
                Layout::systemd(),
                Qos::Guaranteed,
            ),
            // systemd with cgroupRoot /kubelet (kind)
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{CONTAINER}.scope"
                ),
                "kubelet.slice/kubelet-kubepods.slice",
                systemd("kubelet-kubepods"),
                Qos::Burstable,
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CONTAINER}.scope"
                ),
                "kubelet.slice/kubelet-kubepods.slice",
                systemd("kubelet-kubepods"),
                Qos::BestEffort,
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CONTAINER}.scope"
                ),
                "kubelet.slice/kubelet-kubepods.slice",
                systemd("kubelet-kubepods"),
                Qos::Guaranteed,
            ),
            // cgroupfs
            (
                format!("/kubepods/burstable/pod{UID}/{CONTAINER}"),
                "kubepods",
                Layout::Cgroupfs,
                Qos::Burstable,
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{CONTAINER}"),
                "kubepods",
                Layout::Cgroupfs,
                Qos::BestEffort,
            ),
            (
                format!("/kubepods/pod{UID}/{CONTAINER}"),
                "kubepods",
                Layout::Cgroupfs,
                Qos::Guaranteed,
            ),
            // cgroupfs with cgroupRoot /kubelet
            (
                format!("/kubelet/kubepods/burstable/pod{UID}/{CONTAINER}"),
                "kubelet/kubepods",
                Layout::Cgroupfs,
                Qos::Burstable,
            ),
            (
                format!("/kubelet/kubepods/besteffort/pod{UID}/{CONTAINER}"),
                "kubelet/kubepods",
                Layout::Cgroupfs,
                Qos::BestEffort,
            ),
            (
                format!("/kubelet/kubepods/pod{UID}/{CONTAINER}"),
                "kubelet/kubepods",
                Layout::Cgroupfs,
                Qos::Guaranteed,
            ),
        ];
        for (path, kubepods, layout, qos) in table {
            let got = PodCgroupPath::parse(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(
                got,
                PodCgroupPath {
                    kubepods: kubepods.into(),
                    layout: layout.clone(),
                    qos,
                    uid: UID.into()
                },
                "{path}"
            );
            // The kubepods directory's name alone says the layout...
            let name = Path::new(kubepods).file_name().unwrap().to_str().unwrap();
            assert_eq!(
                Layout::of_kubepods_dir(name),
                Some(layout.clone()),
                "{path}"
            );
            // ... and the layout names the pod directory the path holds.
            let pod = Path::new(kubepods).join(layout.pod_dir(qos, UID).unwrap());
            let pod = format!("/{}/", pod.display());
            assert!(path.starts_with(&pod), "{path} is not under {pod}");
        }
    }

    /// kind nests the node in a container: with the host's cgroup
    /// namespace (cgroup v1 hosts, `--cgroupns=host`) a pod's path carries
    /// the node container's cgroup above kubelet's cgroup root.
    #[test]
    fn prefixes_above_the_cgroup_root_stay_in_the_kubepods_path() {
        let path = format!(
            "/system.slice/docker-4f2a.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CONTAINER}.scope"
        );
        let got = PodCgroupPath::parse(&path).unwrap();
        assert_eq!(
            got.kubepods,
            PathBuf::from("system.slice/docker-4f2a.scope/kubelet.slice/kubelet-kubepods.slice")
        );
        assert_eq!(got.layout, systemd("kubelet-kubepods"));
        let path = format!("/docker/4f2a/kubelet/kubepods/burstable/pod{UID}/{CONTAINER}");
        let got = PodCgroupPath::parse(&path).unwrap();
        assert_eq!(got.kubepods, PathBuf::from("docker/4f2a/kubelet/kubepods"));
        // A deeper cgroup root: systemd repeats every ancestor's name.
        let path = format!("/a.slice/a-b.slice/a-b-kubepods.slice/a-b-kubepods-pod{UID_}.slice");
        let got = PodCgroupPath::parse(&path).unwrap();
        assert_eq!(
            got.kubepods,
            PathBuf::from("a.slice/a-b.slice/a-b-kubepods.slice")
        );
        assert_eq!(got.layout, systemd("a-b-kubepods"));
    }

    /// A static pod's cgroup carries its config hash; the pod itself (not a
    /// container below it) parses too.
    #[test]
    fn static_pods_and_pod_level_paths() {
        let got = PodCgroupPath::parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{HASH}.slice"
        ))
        .unwrap();
        assert_eq!((got.uid.as_str(), got.qos), (HASH, Qos::Burstable));
        let got = PodCgroupPath::parse(&format!("kubepods/pod{HASH}")).unwrap();
        assert_eq!((got.uid.as_str(), got.qos), (HASH, Qos::Guaranteed));
        assert_eq!(
            Layout::Cgroupfs.pod_dir(Qos::BestEffort, HASH),
            Some(PathBuf::from(format!("besteffort/pod{HASH}")))
        );
    }

    /// Paths outside any pod, and look-alikes whose parents do not match.
    #[test]
    fn paths_outside_pods_say_nothing() {
        for path in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            "/rde-e2e/system/redirector",
            // the pod slice without its parents, or under the wrong ones
            &format!("/kubepods-pod{UID_}.slice"),
            &format!("/other.slice/kubepods-pod{UID_}.slice"),
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{UID_}.slice"
            ),
            &format!("/kubepods.slice/kubepods-burstable-pod{UID_}.slice"),
            &format!("/other/burstable/pod{UID}"),
            &format!("/kubepods/guaranteed/pod{UID}"),
            &format!("/pod{UID}"),
            // not a UID
            "/kubepods/podx/c",
            "/kubepods/pod/c",
            "/kubepods.slice/kubepods-podzz.slice",
        ] {
            assert_eq!(PodCgroupPath::parse(path), None, "{path}");
        }
    }

    /// Nested pods (a cluster inside a pod): the innermost pod is ours.
    #[test]
    fn the_innermost_pod_counts() {
        let outer = "aaaaaaaa_0000_4000_8000_00000000000a";
        let path = format!(
            "/kubepods.slice/kubepods-pod{outer}.slice/c.scope/kubelet/kubepods/besteffort/pod{UID}/c"
        );
        let got = PodCgroupPath::parse(&path).unwrap();
        assert_eq!(got.uid, UID);
        assert_eq!(
            got.kubepods,
            PathBuf::from(format!(
                "kubepods.slice/kubepods-pod{outer}.slice/c.scope/kubelet/kubepods"
            ))
        );
    }

    #[test]
    fn kubepods_directory_names() {
        assert_eq!(Layout::of_kubepods_dir("kubepods"), Some(Layout::Cgroupfs));
        assert_eq!(
            Layout::of_kubepods_dir("kubepods.slice"),
            Some(Layout::systemd())
        );
        assert_eq!(
            Layout::of_kubepods_dir("kubelet-kubepods.slice"),
            Some(systemd("kubelet-kubepods"))
        );
        for other in [
            "kubelet",
            "kubelet.slice",
            "-kubepods.slice",
            "kubepods-burstable.slice",
            "unified",
            "",
        ] {
            assert_eq!(Layout::of_kubepods_dir(other), None, "{other}");
        }
        let k = Kubepods::named(Path::new("/host/sys/fs/cgroup/kubelet/kubepods")).unwrap();
        assert_eq!(k.layout, Layout::Cgroupfs);
        assert_eq!(Kubepods::named(Path::new("/sys/fs/cgroup")), None);
        assert_eq!(Kubepods::named(Path::new("/")), None);
    }

    #[test]
    fn uids_that_are_not_uids_name_no_directory() {
        for bad in ["", "../../etc", "a/b", "pod x", "..", "0f1e.2d", "0f1e_2d"] {
            for layout in [
                Layout::Cgroupfs,
                Layout::systemd(),
                systemd("kubelet-kubepods"),
            ] {
                for qos in Qos::ALL {
                    assert_eq!(layout.pod_dir(qos, bad), None, "{bad:?}");
                }
            }
        }
    }

    #[test]
    fn qos_parses_the_api_spelling() {
        assert_eq!(Qos::parse("Guaranteed"), Some(Qos::Guaranteed));
        assert_eq!(Qos::parse("Burstable"), Some(Qos::Burstable));
        assert_eq!(Qos::parse("BestEffort"), Some(Qos::BestEffort));
        assert_eq!(Qos::parse("besteffort"), None);
    }
}
