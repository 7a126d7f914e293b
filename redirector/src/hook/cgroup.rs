//! cgroup v2 lookups: the daemon's own cgroup (the only one whose mark the
//! hooks honour), a directory's cgroup id, and the kubepods directory the
//! daemon's pod sits under (the default attach root).
//!
//! A node with cgroup v1 only has no cgroup2 mount: it is refused here,
//! named, before anything is loaded.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use super::cgroup_layout::{Kubepods, PodCgroupPath};

/// This process's cgroup v2 directory and id. `/proc/self/cgroup` gives the
/// path relative to our cgroup namespace's root; a cgroup2 mount whose root
/// is a prefix of it gives the directory (in a container with its own
/// cgroup namespace: the runtime's `/sys/fs/cgroup`). A candidate counts
/// only if its `cgroup.procs` lists us, so a mount of another part of the
/// tree cannot yield a wrong id.
pub fn own_cgroup() -> Result<(PathBuf, u64)> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    require_cgroup2(&mountinfo)?;
    let pid = std::process::id().to_string();
    let candidates = own_cgroup_candidates(&cgroup, &mountinfo);
    for dir in &candidates {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.lines().any(|l| l.trim() == pid) {
            return Ok((dir.clone(), cgroup_id(dir)?));
        }
    }
    bail!(
        "cannot find this process's cgroup v2 directory (needed to tell the daemon's own \
         sockets apart): /proc/self/cgroup says {:?}, tried {candidates:?}; mount cgroup2 \
         (a container runtime mounts it at /sys/fs/cgroup)",
        cgroup.trim()
    )
}

/// A cgroup2 mount as `/proc/self/mountinfo` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// The cgroup at the mount point, relative to our cgroup namespace's
    /// root: `/..` steps when it is above it (the host's tree bind-mounted
    /// into a container with a private cgroup namespace shows `/../../..`).
    pub root: String,
    pub mountpoint: PathBuf,
}

/// Every mount of `fstype` in `mountinfo`: (root, mount point).
fn mounts_of<'a>(
    mountinfo: &'a str,
    fstype: &'a str,
) -> impl Iterator<Item = (String, String)> + 'a {
    mountinfo.lines().filter_map(move |line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next() != Some(fstype) {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        Some((
            unescape_mountinfo(fields.get(3)?),
            unescape_mountinfo(fields.get(4)?),
        ))
    })
}

/// The cgroup2 mounts in `mountinfo`, in its order.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mounts_of(mountinfo, "cgroup2")
        .map(|(root, mountpoint)| Cgroup2Mount {
            root,
            mountpoint: mountpoint.into(),
        })
        .collect()
}

/// The cgroup2 mounts, or an error naming cgroup v1 when there are none:
/// the hooks are cgroup v2 programs. A hybrid host (v1 controllers, v2
/// mounted at /sys/fs/cgroup/unified) has one and works.
pub fn require_cgroup2(mountinfo: &str) -> Result<Vec<Cgroup2Mount>> {
    let mounts = cgroup2_mounts(mountinfo);
    if !mounts.is_empty() {
        return Ok(mounts);
    }
    let v1: Vec<String> = mounts_of(mountinfo, "cgroup").map(|(_, m)| m).collect();
    if v1.is_empty() {
        bail!(
            "no cgroup2 filesystem is mounted (/proc/self/mountinfo lists none): the hooks \
             attach only to cgroup v2; mount it (`mount -t cgroup2 none /sys/fs/cgroup`), or \
             in a container mount the host's /sys/fs/cgroup"
        );
    }
    let shown = v1.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    let more = if v1.len() > 3 { ", ..." } else { "" };
    bail!(
        "this node runs cgroup v1 only: no cgroup2 filesystem is mounted, only cgroup v1 \
         hierarchies ({shown}{more}), and the hooks attach only to cgroup v2. Boot the node \
         with the unified hierarchy (kernel command line \
         systemd.unified_cgroup_hierarchy=1; Kubernetes has deprecated cgroup v1), or on a \
         hybrid node show the daemon the cgroup2 mount (/sys/fs/cgroup/unified)"
    )
}

/// The v2 path of `/proc/self/cgroup` (`0::PATH`).
fn v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// Directories that may be this process's cgroup: `/proc/self/cgroup`'s
/// v2 path (`0::PATH`) under every cgroup2 mount whose root contains it.
pub fn own_cgroup_candidates(proc_self_cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    let Some(path) = v2_path(proc_self_cgroup) else {
        return Vec::new();
    };
    cgroup2_mounts(mountinfo)
        .iter()
        .filter_map(|m| match reach(&m.root, path) {
            Reach::Direct { rel, .. } => Some(m.mountpoint.join(rel)),
            _ => None,
        })
        .collect()
}

/// How a cgroup2 mount shows a cgroup path `path` (relative to our cgroup
/// namespace's root, as `/proc/self/cgroup` gives it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    /// At `mountpoint/rel`, `height` levels below the mount's root.
    Direct { rel: String, height: usize },
    /// The mount's root is `ups` levels above our namespace's root, so the
    /// cgroup is `height` levels below it under names we cannot see.
    Above { ups: usize, height: usize },
    /// Another part of the tree.
    Unrelated,
}

impl Reach {
    fn height(&self) -> Option<usize> {
        match self {
            Self::Direct { height, .. } | Self::Above { height, .. } => Some(*height),
            Self::Unrelated => None,
        }
    }
}

fn reach(root: &str, path: &str) -> Reach {
    let depth = |p: &str| p.split('/').filter(|c| !c.is_empty()).count();
    let rest = if root == "/" {
        Some(path)
    } else {
        path.strip_prefix(root)
            .filter(|r| r.is_empty() || r.starts_with('/'))
    };
    if let Some(rest) = rest {
        return Reach::Direct {
            rel: rest.trim_start_matches('/').to_string(),
            height: depth(rest),
        };
    }
    let ups = root
        .split('/')
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>();
    if !ups.is_empty() && ups.iter().all(|c| *c == "..") {
        return Reach::Above {
            ups: ups.len(),
            height: ups.len() + depth(path),
        };
    }
    Reach::Unrelated
}

/// The mount that shows the most of the tree above `path`: the kubepods
/// directory must be in it. On a tie, one that shows `path` directly.
fn widest_mount(mounts: &[Cgroup2Mount], path: &str) -> Option<(Cgroup2Mount, Reach)> {
    mounts
        .iter()
        .map(|m| (m.clone(), reach(&m.root, path)))
        .filter(|(_, r)| r.height().is_some())
        .max_by_key(|(_, r)| (r.height(), matches!(r, Reach::Direct { .. })))
}

/// Where this process's cgroup is in the widest cgroup2 mount it sees: the
/// mount point, and the cgroup's path below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePosition {
    pub mountpoint: PathBuf,
    pub path: PathBuf,
}

/// Finds this process's cgroup (id `own_id`, see [`own_cgroup`]) in the
/// widest cgroup2 mount. On a host, and in a container sharing the host's
/// cgroup namespace, `/proc/self/cgroup` names it. In a container with a
/// private cgroup namespace (the container runtimes' default on cgroup v2)
/// it says `/`, and the host's tree, mounted into the container, shows its
/// root as `/..` steps: then the directory is the one, that many levels
/// down, whose id is ours.
pub fn own_cgroup_in_widest_tree(own_id: u64) -> Result<TreePosition> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounts = require_cgroup2(&mountinfo)?;
    let path = v2_path(&cgroup).with_context(|| {
        format!(
            "/proc/self/cgroup has no cgroup v2 line: {:?}",
            cgroup.trim()
        )
    })?;
    let Some((mount, reach)) = widest_mount(&mounts, path) else {
        bail!("no cgroup2 mount shows this process's cgroup {path:?} (mounts: {mounts:?})");
    };
    let dir = match reach {
        Reach::Direct { rel, .. } => {
            let dir = mount.mountpoint.join(rel);
            if cgroup_id(&dir)? != own_id {
                bail!(
                    "{} is not this process's cgroup (its id differs)",
                    dir.display()
                );
            }
            dir
        }
        Reach::Above { height, .. } => {
            let dir = find_dir_by_id(&mount.mountpoint, height, own_id)?.with_context(|| {
                format!(
                    "this process's cgroup is not {height} levels below {} (the widest cgroup2 \
                     mount: root {:?})",
                    mount.mountpoint.display(),
                    mount.root
                )
            })?;
            tracing::debug!(
                dir = %dir.display(),
                mount_root = %mount.root,
                "own cgroup found by its id in a tree above our cgroup namespace"
            );
            dir
        }
        Reach::Unrelated => unreachable!("filtered out by widest_mount"),
    };
    let path = dir
        .strip_prefix(&mount.mountpoint)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    Ok(TreePosition {
        mountpoint: mount.mountpoint,
        path,
    })
}

/// Most directories [`find_dir_by_id`] looks at: far more than a node's
/// cgroups, a bound on a tree that is not one.
const MAX_DIRS_SEARCHED: usize = 200_000;

/// The directory exactly `depth` levels below `top` whose inode (cgroup
/// id) is `id`, depth first.
pub fn find_dir_by_id(top: &Path, depth: usize, id: u64) -> Result<Option<PathBuf>> {
    let mut stack = vec![(top.to_path_buf(), 0)];
    let mut seen = 0;
    while let Some((dir, level)) = stack.pop() {
        if level == depth {
            if fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
                return Ok(Some(dir));
            }
            continue;
        }
        // A cgroup may go away while we look: skip what cannot be read.
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                seen += 1;
                if seen > MAX_DIRS_SEARCHED {
                    bail!(
                        "more than {MAX_DIRS_SEARCHED} directories below {} without finding \
                         this process's cgroup",
                        top.display()
                    );
                }
                stack.push((entry.path(), level + 1));
            }
        }
    }
    Ok(None)
}

/// The kubepods directory this daemon's pod sits under, and its layout:
/// the default attach root, where kubelet puts every pod of the node.
pub fn derive_kubepods(own_id: u64) -> Result<Kubepods> {
    let position = own_cgroup_in_widest_tree(own_id)?;
    kubepods_of(&position)
}

fn kubepods_of(position: &TreePosition) -> Result<Kubepods> {
    let path = position.path.to_string_lossy();
    let Some(pod) = PodCgroupPath::parse(&path) else {
        // Only our own namespace's root in sight: a container whose host
        // tree is not mounted.
        let hint = if path.is_empty() {
            " (in a container with its own cgroup namespace, mount the host's /sys/fs/cgroup \
             so that the daemon sees where its cgroup is)"
        } else {
            ""
        };
        bail!(
            "this process's cgroup {} is not inside a pod's cgroup (no kubepods directory \
             above it, as when the daemon runs outside Kubernetes){hint}: give the hooks' \
             attach root with --cgroup DIR (e.g. /sys/fs/cgroup/kubepods.slice)",
            position.mountpoint.join(&position.path).display()
        );
    };
    Ok(Kubepods {
        dir: position.mountpoint.join(pod.kubepods),
        layout: pod.layout,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel's id of a cgroup v2 directory: its inode number.
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    Ok(fs::metadata(dir)
        .with_context(|| format!("cgroup {}", dir.display()))?
        .ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::cgroup_layout::Layout;

    #[test]
    fn own_cgroup_candidates_from_proc() {
        // A host (hybrid hierarchy): v2 mounted at /sys/fs/cgroup/unified.
        let cgroup = "12:memory:/user.slice\n0::/rde-e2e/system/redirector\n";
        let host = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            own_cgroup_candidates(cgroup, host),
            vec![PathBuf::from(
                "/sys/fs/cgroup/unified/rde-e2e/system/redirector"
            )]
        );
        // A container with its own cgroup namespace: "/" is its cgroup; the
        // host's tree, bind-mounted, has a root outside the namespace.
        let container = "500 400 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n\
                         501 400 0:26 /../../.. /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_candidates("0::/\n", container),
            vec![PathBuf::from("/sys/fs/cgroup/")]
        );
        // A mount of a subtree, and one of an unrelated subtree.
        let sub = "40 25 0:26 /kube\\040pods /mnt/k\\040p rw - cgroup2 cgroup2 rw\n\
                   41 25 0:26 /kubepodsX /mnt/x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_candidates("0::/kube pods/pod1/c\n", sub),
            vec![PathBuf::from("/mnt/k p/pod1/c")]
        );
        assert!(own_cgroup_candidates("12:memory:/x\n", host).is_empty());
    }

    /// mountinfo of a node with cgroup v1 only (systemd's legacy layout),
    /// as the host and as the DaemonSet's container see it.
    const V1_HOST: &str = "25 18 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
        26 25 0:23 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
        29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
        30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
        31 25 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
    const V1_CONTAINER: &str = "700 690 0:120 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
        701 700 0:26 /kubepods/burstable/pod1/c /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
        720 690 0:22 / /host/sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
        721 720 0:26 / /host/sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n";
    /// A hybrid host: v1 controllers, v2 (no controllers) at .../unified.
    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
    /// The DaemonSet's container on a cgroup v2 node: a private cgroup
    /// namespace, the runtime's /sys/fs/cgroup at its root, and the host's
    /// tree (hostPath /sys/fs/cgroup) four levels above: the container's
    /// scope, the pod, the QoS level and kubepods.slice.
    const DAEMONSET: &str = "500 400 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n\
        501 400 0:26 /../../../.. /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn cgroup_v1_only_is_refused_by_name() {
        for mountinfo in [V1_HOST, V1_CONTAINER] {
            let err = require_cgroup2(mountinfo).unwrap_err().to_string();
            assert!(err.contains("runs cgroup v1 only"), "{err}");
            assert!(err.contains("/sys/fs/cgroup/memory"), "{err}");
            assert!(err.contains("systemd.unified_cgroup_hierarchy=1"), "{err}");
        }
        let err = require_cgroup2("22 1 0:21 / /proc rw - proc proc rw\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no cgroup2 filesystem is mounted"), "{err}");
        let hybrid = require_cgroup2(HYBRID).unwrap();
        assert_eq!(hybrid.len(), 1);
        assert_eq!(
            hybrid[0].mountpoint,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert_eq!(require_cgroup2(DAEMONSET).unwrap().len(), 2);
    }

    #[test]
    fn the_widest_mount_is_chosen() {
        // On a host: the v2 path under the one mount.
        let path =
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab.slice/c.scope";
        let (m, r) = widest_mount(&cgroup2_mounts(HYBRID), path).unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            r,
            Reach::Direct {
                rel: path[1..].into(),
                height: 4
            }
        );
        // In the DaemonSet's container: "/" in our namespace; the host's
        // tree shows four more levels than the runtime's mount.
        let (m, r) = widest_mount(&cgroup2_mounts(DAEMONSET), "/").unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/host/sys/fs/cgroup"));
        assert_eq!(r, Reach::Above { ups: 4, height: 4 });
        // A kind node sharing the host's cgroup namespace bind-mounts its
        // own cgroup at /sys/fs/cgroup: the path carries the node
        // container's cgroup, the mount's root strips it.
        let kind =
            "800 700 0:26 /system.slice/docker-4f2a.scope /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let path = "/system.slice/docker-4f2a.scope/kubelet.slice/kubelet-kubepods.slice/\
                    kubelet-kubepods-pod0a.slice/cri-containerd-1.scope";
        let (m, r) = widest_mount(&cgroup2_mounts(kind), path).unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            r,
            Reach::Direct {
                rel: "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod0a.slice/\
                      cri-containerd-1.scope"
                    .into(),
                height: 4
            }
        );
        // Mounts of other parts of the tree do not count.
        let other = "40 25 0:26 /system.slice /mnt/s rw - cgroup2 cgroup2 rw\n\
                     41 25 0:26 /../x /mnt/x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(widest_mount(&cgroup2_mounts(other), "/kubepods/pod1"), None);
        assert_eq!(widest_mount(&cgroup2_mounts(other), "/"), None);
    }

    /// The kubepods directory and layout from where the daemon's cgroup is
    /// in the widest mount, for each way the daemon may run.
    #[test]
    fn kubepods_from_the_daemons_position() {
        let uid_ = "0f1e2d3c_4b5a_6978_8a9b_acbdcedf0011";
        let table = [
            (
                "/host/sys/fs/cgroup",
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-1.scope"
                ),
                "/host/sys/fs/cgroup/kubepods.slice",
                Layout::systemd(),
            ),
            // kind: the DaemonSet inside a kind node
            (
                "/host/sys/fs/cgroup",
                format!(
                    "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{uid_}.slice/cri-containerd-1.scope"
                ),
                "/host/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice",
                Layout::Systemd {
                    prefix: "kubelet-kubepods".into(),
                },
            ),
            (
                "/sys/fs/cgroup/unified",
                "kubelet/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-acbdcedf0011/1".into(),
                "/sys/fs/cgroup/unified/kubelet/kubepods",
                Layout::Cgroupfs,
            ),
        ];
        for (mountpoint, path, want, layout) in table {
            let position = TreePosition {
                mountpoint: mountpoint.into(),
                path: path.clone().into(),
            };
            assert_eq!(
                kubepods_of(&position).unwrap(),
                Kubepods {
                    dir: want.into(),
                    layout
                },
                "{path}"
            );
        }
        let outside = TreePosition {
            mountpoint: "/sys/fs/cgroup".into(),
            path: "system.slice/redirector.service".into(),
        };
        let err = kubepods_of(&outside).unwrap_err().to_string();
        assert!(
            err.contains("/sys/fs/cgroup/system.slice/redirector.service"),
            "{err}"
        );
        assert!(err.contains("--cgroup DIR"), "{err}");
        assert!(!err.contains("mount the host's"), "{err}");
        // A container that sees only its own cgroup (no host tree mounted).
        let alone = TreePosition {
            mountpoint: "/sys/fs/cgroup".into(),
            path: "".into(),
        };
        let err = kubepods_of(&alone).unwrap_err().to_string();
        assert!(err.contains("mount the host's /sys/fs/cgroup"), "{err}");
    }

    #[test]
    fn finds_a_directory_by_id_at_a_depth() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["a/b/c", "a/x/y", "k/p/c1", "k/p/c2", "z"] {
            fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        fs::write(tmp.path().join("k/p/file"), "").unwrap();
        let want = tmp.path().join("k/p/c2");
        let id = cgroup_id(&want).unwrap();
        assert_eq!(find_dir_by_id(tmp.path(), 3, id).unwrap(), Some(want));
        assert_eq!(find_dir_by_id(tmp.path(), 2, id).unwrap(), None);
        let id = cgroup_id(&tmp.path().join("a")).unwrap();
        assert_eq!(find_dir_by_id(tmp.path(), 3, id).unwrap(), None);
        assert_eq!(
            find_dir_by_id(tmp.path(), 1, id).unwrap(),
            Some(tmp.path().join("a"))
        );
    }

    /// This test process, wherever it runs, is found in the widest mount.
    #[test]
    fn own_cgroup_is_found_in_the_widest_tree() {
        let (dir, id) = own_cgroup().unwrap();
        let position = own_cgroup_in_widest_tree(id).unwrap();
        let found = position.mountpoint.join(&position.path);
        assert_eq!(cgroup_id(&found).unwrap(), id, "{dir:?} vs {found:?}");
    }

    /// The test process's own cgroup is found and is where it says it is.
    #[test]
    fn own_cgroup_is_found() {
        let (dir, id) = own_cgroup().unwrap();
        assert_eq!(cgroup_id(&dir).unwrap(), id);
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == std::process::id().to_string()));
    }
}
