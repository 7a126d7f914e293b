//! cgroup v2 lookups: the daemon's own cgroup (the only one whose mark the
//! hooks honour) and a directory's cgroup id.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

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

/// Directories that may be this process's cgroup: `/proc/self/cgroup`'s
/// v2 path (`0::PATH`) under every cgroup2 mount whose root contains it.
pub fn own_cgroup_candidates(proc_self_cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    let Some(path) = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(mountpoint)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let (root, mountpoint) = (unescape_mountinfo(root), unescape_mountinfo(mountpoint));
        let rest = if root == "/" {
            Some(path)
        } else {
            path.strip_prefix(root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        if let Some(rest) = rest {
            out.push(Path::new(&mountpoint).join(rest.trim_start_matches('/')));
        }
    }
    out
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

    /// The test process's own cgroup is found and is where it says it is.
    #[test]
    fn own_cgroup_is_found() {
        let (dir, id) = own_cgroup().unwrap();
        assert_eq!(cgroup_id(&dir).unwrap(), id);
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == std::process::id().to_string()));
    }
}
