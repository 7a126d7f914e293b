//! What the kernel must offer before the hooks are loaded, probed one
//! feature at a time so that an unsupported kernel (or a container without
//! the capabilities) gets an error naming the missing piece instead of a
//! verifier or `bpf()` errno from deep inside the loader.
use std::{io, os::unix::ffi::OsStrExt, path::Path};

use aya::{
    maps::MapType,
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};
use thiserror::Error;

/// A kernel feature the hooks need that this kernel, or this process, lacks.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KernelSupportError {
    #[error("--cgroup {path}: {reason}")]
    Cgroup { path: String, reason: String },
    #[error(
        "bpf() is not permitted (EPERM while probing {probe}): the daemon needs CAP_BPF and \
         CAP_NET_ADMIN (CAP_SYS_ADMIN before Linux 5.8)"
    )]
    NotPermitted { probe: &'static str },
    #[error("bpf() does not exist (ENOSYS): the kernel is built without CONFIG_BPF_SYSCALL")]
    NoBpfSyscall,
    #[error("kernel {kernel} lacks {feature} (needs {needs})")]
    Missing {
        feature: &'static str,
        needs: &'static str,
        kernel: String,
    },
    #[error("probing {probe}: {error}")]
    Probe { probe: &'static str, error: String },
}

/// One feature to probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
    /// `bpf_link_create` for cgroup programs: without it aya falls back to
    /// `BPF_PROG_ATTACH`, whose attachment cannot be pinned, so the hooks
    /// would go away with the daemon.
    CgroupLink,
}

/// A feature, how it is named in errors, and what provides it.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub feature: &'static str,
    pub needs: &'static str,
    pub probe: Probe,
}

const CGROUP_BPF: &str = "Linux >= 4.17 with CONFIG_CGROUP_BPF";
/// The newest of the features below (the ring buffer).
const MINIMUM: &str = "Linux >= 5.8, the redirector's minimum";

/// Everything the embedded programs use, cheapest and most basic first: a
/// plain map creation tells "no permission" from "no feature".
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        feature: "BPF_MAP_TYPE_ARRAY",
        needs: "Linux >= 3.19 with CONFIG_BPF_SYSCALL",
        probe: Probe::Map(MapType::Array),
    },
    Requirement {
        feature: "BPF_PROG_TYPE_CGROUP_SOCK_ADDR",
        needs: CGROUP_BPF,
        probe: Probe::Program(ProgramType::CgroupSockAddr),
    },
    Requirement {
        feature: "BPF_PROG_TYPE_SOCK_OPS",
        needs: "Linux >= 4.13 with CONFIG_CGROUP_BPF",
        probe: Probe::Program(ProgramType::SockOps),
    },
    Requirement {
        feature: "BPF_PROG_TYPE_CGROUP_SOCK (refusing other stream protocols at socket())",
        needs: "Linux >= 4.10 with CONFIG_CGROUP_BPF",
        probe: Probe::Program(ProgramType::CgroupSock),
    },
    Requirement {
        feature: "BPF_MAP_TYPE_HASH",
        needs: "Linux >= 3.19",
        probe: Probe::Map(MapType::Hash),
    },
    Requirement {
        feature: "BPF_MAP_TYPE_PERCPU_ARRAY",
        needs: "Linux >= 4.6",
        probe: Probe::Map(MapType::PerCpuArray),
    },
    Requirement {
        feature: "BPF_MAP_TYPE_LRU_HASH",
        needs: "Linux >= 4.10",
        probe: Probe::Map(MapType::LruHash),
    },
    Requirement {
        feature: "BPF_MAP_TYPE_LPM_TRIE",
        needs: "Linux >= 4.11",
        probe: Probe::Map(MapType::LpmTrie),
    },
    Requirement {
        feature: "BPF_MAP_TYPE_RINGBUF (the programs' log buffer)",
        needs: "Linux >= 5.8",
        probe: Probe::Map(MapType::RingBuf),
    },
    Requirement {
        feature: "bpf_link for cgroup programs (pinned attachments that outlive the daemon)",
        needs: "Linux >= 5.7",
        probe: Probe::CgroupLink,
    },
    Requirement {
        feature: "the helper bpf_get_current_ancestor_cgroup_id in cgroup_sock_addr programs",
        needs: "Linux >= 5.7",
        probe: Probe::Helper(
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
        ),
    },
    Requirement {
        feature: "the helper bpf_get_current_cgroup_id in cgroup_sock_addr programs",
        needs: "Linux >= 5.7",
        probe: Probe::Helper(
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_current_cgroup_id,
        ),
    },
    Requirement {
        feature: "the helper bpf_get_socket_cookie in cgroup_sock_addr programs",
        needs: MINIMUM,
        probe: Probe::Helper(
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_socket_cookie,
        ),
    },
    Requirement {
        feature: "the helper bpf_get_socket_cookie in sock_ops programs",
        needs: MINIMUM,
        probe: Probe::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_socket_cookie),
    },
    Requirement {
        feature: "the helper bpf_sock_ops_cb_flags_set (removing entries of connects that fail)",
        needs: "Linux >= 4.16",
        probe: Probe::Helper(
            ProgramType::SockOps,
            BpfHelper::BPF_FUNC_sock_ops_cb_flags_set,
        ),
    },
    Requirement {
        feature: "the helper bpf_get_current_ancestor_cgroup_id in cgroup_sock programs",
        needs: "Linux >= 5.7",
        probe: Probe::Helper(
            ProgramType::CgroupSock,
            BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
        ),
    },
];

/// Checks `requirements` in order with `probe`, stopping at the first
/// missing feature. `kernel` names the running kernel in errors.
pub fn check_with(
    requirements: &[Requirement],
    kernel: &str,
    mut probe: impl FnMut(Probe) -> io::Result<bool>,
) -> Result<(), KernelSupportError> {
    for req in requirements {
        match probe(req.probe) {
            Ok(true) => {}
            Ok(false) => {
                return Err(KernelSupportError::Missing {
                    feature: req.feature,
                    needs: req.needs,
                    kernel: kernel.to_owned(),
                });
            }
            Err(e) => {
                return Err(match e.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        KernelSupportError::NotPermitted { probe: req.feature }
                    }
                    Some(libc::ENOSYS) => KernelSupportError::NoBpfSyscall,
                    _ => KernelSupportError::Probe {
                        probe: req.feature,
                        error: e.to_string(),
                    },
                });
            }
        }
    }
    Ok(())
}

/// Probes the running kernel for everything in [`REQUIREMENTS`].
pub fn check_kernel() -> Result<(), KernelSupportError> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "(unknown version)".into());
    check_with(REQUIREMENTS, &kernel, probe_kernel)
}

fn probe_kernel(probe: Probe) -> io::Result<bool> {
    fn program_error(e: ProgramError) -> io::Error {
        match e {
            ProgramError::SyscallError(e) => e.io_error,
            other => io::Error::other(other.to_string()),
        }
    }
    match probe {
        Probe::Program(t) => is_program_supported(t).map_err(program_error),
        Probe::Map(t) => is_map_supported(t).map_err(|e| e.io_error),
        Probe::Helper(t, h) => is_helper_supported(t, h).map_err(program_error),
        // aya picks bpf_link for cgroups by the same version test.
        Probe::CgroupLink => KernelVersion::current()
            .map(|v| v >= KernelVersion::new(5, 7, 0))
            .map_err(|e| io::Error::other(e.to_string())),
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// What a filesystem is, by its `statfs` magic, for the error message.
fn filesystem_name(magic: i64) -> String {
    match magic {
        0x0027_e0eb => "a cgroup v1 hierarchy".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6265_6572 => "sysfs".into(),
        0x9fa0 => "procfs".into(),
        0xef53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0xcafe_4a11 => "bpffs".into(),
        other => format!("a filesystem with magic {other:#x}"),
    }
}

/// The problem with `magic` as the filesystem of the attach cgroup, if any.
pub fn cgroup_fs_problem(magic: i64) -> Option<String> {
    (magic != CGROUP2_SUPER_MAGIC).then(|| {
        format!(
            "not a cgroup v2 directory (it is on {}): the hooks attach only to cgroup v2; \
             give a directory of a cgroup2 mount (/sys/fs/cgroup on a unified host, \
             /sys/fs/cgroup/unified on a hybrid one)",
            filesystem_name(magic)
        )
    })
}

/// Checks that `dir` is a directory of a cgroup v2 mount.
pub fn check_cgroup2(dir: &Path) -> Result<(), KernelSupportError> {
    let error = |reason: String| KernelSupportError::Cgroup {
        path: dir.display().to_string(),
        reason,
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(error("not a directory".into())),
        Err(e) => return Err(error(e.to_string())),
    }
    let mut path = dir.as_os_str().as_bytes().to_vec();
    path.push(0);
    // SAFETY: all-zero is a valid `statfs`; the kernel fills it in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out pointer.
    if unsafe { libc::statfs(path.as_ptr().cast(), &mut st) } != 0 {
        return Err(error(io::Error::last_os_error().to_string()));
    }
    #[allow(clippy::unnecessary_cast)] // the field's type differs by architecture
    match cgroup_fs_problem(st.f_type as i64) {
        Some(problem) => Err(error(problem)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails_at(feature: &str) -> impl FnMut(Probe) -> io::Result<bool> + '_ {
        move |p| {
            let req = REQUIREMENTS.iter().find(|r| r.probe == p).unwrap();
            Ok(req.feature != feature)
        }
    }

    #[test]
    fn a_supporting_kernel_passes() {
        let mut probed = Vec::new();
        check_with(REQUIREMENTS, "6.1.0", |p| {
            probed.push(p);
            Ok(true)
        })
        .unwrap();
        assert_eq!(probed.len(), REQUIREMENTS.len());
    }

    #[test]
    fn a_missing_feature_is_named_with_what_provides_it() {
        let err = check_with(
            REQUIREMENTS,
            "4.14.0",
            fails_at("BPF_PROG_TYPE_CGROUP_SOCK_ADDR"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "kernel 4.14.0 lacks BPF_PROG_TYPE_CGROUP_SOCK_ADDR \
             (needs Linux >= 4.17 with CONFIG_CGROUP_BPF)"
        );
        for (feature, needs) in [
            ("BPF_MAP_TYPE_LRU_HASH", "Linux >= 4.10"),
            ("BPF_PROG_TYPE_SOCK_OPS", "CONFIG_CGROUP_BPF"),
            ("bpf_link for cgroup", "Linux >= 5.7"),
            ("BPF_MAP_TYPE_RINGBUF", "Linux >= 5.8"),
        ] {
            let full = REQUIREMENTS
                .iter()
                .find(|r| r.feature.starts_with(feature))
                .unwrap()
                .feature;
            let err = check_with(REQUIREMENTS, "5.4.0", fails_at(full))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(feature) && err.contains(needs) && err.contains("5.4.0"),
                "{err}"
            );
        }
    }

    #[test]
    fn no_permission_names_the_capabilities() {
        for errno in [libc::EPERM, libc::EACCES] {
            let err = check_with(REQUIREMENTS, "6.1.0", |p| match p {
                Probe::Map(MapType::Array) => Ok(true),
                _ => Err(io::Error::from_raw_os_error(errno)),
            })
            .unwrap_err();
            assert_eq!(
                err,
                KernelSupportError::NotPermitted {
                    probe: "BPF_PROG_TYPE_CGROUP_SOCK_ADDR"
                }
            );
            let text = err.to_string();
            assert!(
                text.contains("CAP_BPF") && text.contains("CAP_NET_ADMIN"),
                "{text}"
            );
        }
    }

    #[test]
    fn other_errors_name_the_syscall_state() {
        let err = check_with(REQUIREMENTS, "6.1.0", |_| {
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        })
        .unwrap_err();
        assert_eq!(err, KernelSupportError::NoBpfSyscall);
        assert!(err.to_string().contains("CONFIG_BPF_SYSCALL"));
        let err = check_with(REQUIREMENTS, "6.1.0", |_| {
            Err(io::Error::from_raw_os_error(libc::ENOMEM))
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("probing BPF_MAP_TYPE_ARRAY: "), "{err}");
    }

    #[test]
    fn cgroup_filesystems() {
        assert_eq!(cgroup_fs_problem(CGROUP2_SUPER_MAGIC), None);
        let tmpfs = cgroup_fs_problem(0x0102_1994).unwrap();
        assert!(
            tmpfs.contains("not a cgroup v2 directory (it is on tmpfs)"),
            "{tmpfs}"
        );
        let v1 = cgroup_fs_problem(0x0027_e0eb).unwrap();
        assert!(v1.contains("cgroup v1"), "{v1}");
        assert!(cgroup_fs_problem(0x1234).unwrap().contains("magic 0x1234"));
    }

    #[test]
    fn a_plain_directory_or_a_missing_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = check_cgroup2(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("not a cgroup v2 directory"), "{err}");
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
        let err = check_cgroup2(&tmp.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("No such file"), "{err}");
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = check_cgroup2(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    /// On a machine with cgroup v2 mounted, its root passes.
    #[test]
    fn a_cgroup2_mount_passes() {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let Some(dir) = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| f[1].to_owned())
        else {
            panic!("this test needs a cgroup2 mount (the e2e tests need one too)");
        };
        check_cgroup2(Path::new(&dir)).unwrap();
    }
}
