//! `redirector status`: what is attached, read from the pins, so it works
//! whether or not the daemon runs.
//!
//! The links' target cgroup comes from the kernel (`/proc/self/fdinfo` of
//! the pinned link prints `cgroup_id`), mapped to a path by walking the
//! cgroup2 tree under `--cgroup-root`. Map entry counts come from walking
//! each pinned map's keys with `BPF_MAP_GET_NEXT_KEY` on raw key bytes, so
//! they need no knowledge of the map's layout (an older instance's maps
//! count as well). The daemon pins no config digest: `--proxy-config FILE`
//! prints the digest of that file, as the daemon logs it at load and reload.
//!
//! The bypass tries hold bare prefixes; where each came from is in the
//! file the daemon publishes in its `--handover-dir` (`bypass`'s
//! `published`).
//! Both are shown, and any difference between them (a prefix in the kernel
//! that no published source names, or the reverse) is named.
use std::{
    collections::HashMap,
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, MapType};
use ipnet::IpNet;
use serde_json::json;

use crate::{
    bypass::published::{FILE_NAME, Published},
    caller::{self, published::PublishedProfiles},
    hook::{self, PinDir},
    metrics::scrape::{self, RelayFigures},
};

/// One pinned link, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub program: String,
    pub link_id: Option<u64>,
    pub prog_id: Option<u64>,
    /// The cgroup it is attached to (0 once that cgroup is gone).
    pub cgroup_id: Option<u64>,
}

/// One pinned map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapStatus {
    pub name: String,
    pub kind: String,
    /// Keys present (hash, LRU and LPM maps); `None` for arrays, whose
    /// every slot exists.
    pub entries: Option<u64>,
    pub max_entries: u32,
}

/// The operator switches the kernel programs read, as pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchStatus {
    /// `refuseUdpPorts`, sorted.
    pub refuse_udp_ports: Vec<u16>,
    /// The `CONFIG` flags word.
    pub flags: u32,
}

impl SwitchStatus {
    fn allow_other_stream_protocols(&self) -> bool {
        self.flags & redirector_ebpf::FLAG_ALLOW_OTHER_STREAMS != 0
    }
}

/// The kernel's bypass prefixes and where the daemon says they came from.
#[derive(Debug, Clone)]
pub struct BypassStatus {
    /// The file the daemon publishes.
    pub file: PathBuf,
    /// Its content, or why it could not be read.
    pub published: Result<Published, String>,
    /// The prefixes in the pinned tries.
    pub kernel: Vec<IpNet>,
}

impl BypassStatus {
    /// Kernel prefixes no published source explains, and published
    /// prefixes (aggregated as the daemon does) the kernel lacks.
    fn differences(&self) -> (Vec<IpNet>, Vec<IpNet>) {
        let Ok(published) = &self.published else {
            return (self.kernel.clone(), Vec::new());
        };
        let wanted = published.aggregated();
        let unaccounted = self
            .kernel
            .iter()
            .filter(|n| !wanted.contains(n))
            .copied()
            .collect();
        let missing = wanted
            .iter()
            .filter(|n| !self.kernel.contains(n))
            .copied()
            .collect();
        (unaccounted, missing)
    }

    fn text(&self, out: &mut Vec<String>) {
        match &self.published {
            Ok(p) => {
                let age = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .saturating_sub(p.written_unix_secs);
                out.push(format!(
                    "bypass_sources: {} (pid {}, written {age} s ago)",
                    self.file.display(),
                    p.pid
                ));
                for source in &p.sources {
                    for entry in &source.prefixes {
                        out.push(if entry.detail.is_empty() {
                            format!("bypass {}: {}", entry.prefix, source.source)
                        } else {
                            format!(
                                "bypass {}: {} ({})",
                                entry.prefix, source.source, entry.detail
                            )
                        });
                    }
                }
            }
            Err(e) => out.push(format!("bypass_sources: unknown ({e})")),
        }
        let (unaccounted, missing) = self.differences();
        for net in unaccounted {
            out.push(format!(
                "bypass {net}: in the kernel, in no published source"
            ));
        }
        for net in missing {
            out.push(format!("bypass {net}: published, not in the kernel"));
        }
    }

    fn json(&self) -> serde_json::Value {
        let (unaccounted, missing) = self.differences();
        let (published, error) = match &self.published {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        json!({
            "file": self.file.display().to_string(),
            "pid": published.map(|p| p.pid),
            "written_unix_secs": published.map(|p| p.written_unix_secs),
            "sources": published.map(|p| &p.sources),
            "error": error,
            "kernel": self.kernel,
            "unaccounted": unaccounted,
            "missing": missing,
        })
    }
}

/// Everything `status` shows.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub links: Vec<LinkStatus>,
    /// cgroup id → path under the cgroup root, for the ids that resolved.
    pub cgroup_paths: HashMap<u64, PathBuf>,
    pub maps: Vec<MapStatus>,
    pub exempt_cgroups: Vec<u64>,
    /// The switches in force (from the pinned maps); `None` when the
    /// instance pinned there has no such map.
    pub switches: Option<SwitchStatus>,
    pub counters: Vec<(String, u64)>,
    /// The `--proxy-config` file and its digest.
    pub config: Option<(PathBuf, String)>,
    /// The bypass prefixes and their sources; `None` when nothing is
    /// attached.
    pub bypass: Option<BypassStatus>,
    /// The profile each labelled namespace selects, as the daemon
    /// published it (`None`: no file, e.g. without `--kube`).
    pub profiles: Option<PublishedProfiles>,
    /// The running daemon's relay figures (`--metrics`), or why they could
    /// not be read.
    pub relay: Option<Result<RelayFigures, String>>,
}

impl Status {
    /// Reads the pins; the cgroup tree under `cgroup_root` names cgroup ids;
    /// `run_dir` (the daemon's `--handover-dir`) holds its published bypass
    /// sources.
    pub fn read(
        pins: &PinDir,
        cgroup_root: &Path,
        config: Option<&Path>,
        run_dir: &Path,
    ) -> Result<Self> {
        let mut status = Status {
            config: match config {
                Some(path) => {
                    let bytes =
                        fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                    Some((path.to_path_buf(), crate::config::digest(&bytes)))
                }
                None => None,
            },
            ..Default::default()
        };
        for program in pins.pinned_links() {
            status
                .links
                .push(link_status(&pins.link(&program), program));
        }
        if status.links.is_empty() {
            return Ok(status);
        }
        status.maps = map_statuses(&pins.maps())?;
        status.exempt_cgroups = hook::read_exempt_cgroups(pins)?;
        status.switches = match hook::read_refused_udp_ports(pins)? {
            Some(refuse_udp_ports) => Some(SwitchStatus {
                refuse_udp_ports,
                flags: hook::read_redirect_config(pins)?.flags,
            }),
            None => None,
        };
        status.profiles = PublishedProfiles::read(&run_dir.join(caller::published::FILE_NAME)).ok();
        let file = run_dir.join(FILE_NAME);
        status.bypass = Some(BypassStatus {
            published: Published::read(&file).map_err(|e| format!("{e:#}")),
            file,
            kernel: hook::read_bypass(pins)?,
        });
        status.counters = hook::read_counters(pins)?
            .into_iter()
            .map(|(c, v)| (c.name().to_owned(), v))
            .collect();
        let mut wanted: Vec<u64> = status.links.iter().filter_map(|l| l.cgroup_id).collect();
        wanted.extend(&status.exempt_cgroups);
        status.cgroup_paths = find_cgroups(cgroup_root, &wanted);
        Ok(status)
    }

    fn all_attached(&self) -> bool {
        self.links.len() == hook::PROGRAMS.len()
    }

    fn cgroup_text(&self, id: u64) -> String {
        match self.cgroup_paths.get(&id) {
            Some(path) => format!("{} (id {id})", path.display()),
            None => format!("id {id}"),
        }
    }

    /// `key: value` lines. The counters come last, one `name: N` each,
    /// which scripts read.
    pub fn text(&self) -> Vec<String> {
        let mut out = vec![format!(
            "attached: {}",
            if self.links.is_empty() {
                "no".to_owned()
            } else {
                self.links
                    .iter()
                    .map(|l| l.program.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )];
        let mut cgroups: Vec<u64> = self.links.iter().filter_map(|l| l.cgroup_id).collect();
        cgroups.dedup();
        if !cgroups.is_empty() {
            out.push(format!(
                "cgroup: {}",
                cgroups
                    .iter()
                    .map(|id| self.cgroup_text(*id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for link in &self.links {
            let n = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
            out.push(format!(
                "link {}: link id {}, program id {}, cgroup id {}",
                link.program,
                n(link.link_id),
                n(link.prog_id),
                n(link.cgroup_id)
            ));
        }
        if let Some((path, digest)) = &self.config {
            out.push(format!("config_digest: {digest} ({})", path.display()));
        }
        if let Some(relay) = &self.relay {
            relay_text(relay, &mut out);
        }
        if self.links.is_empty() {
            return out;
        }
        for map in &self.maps {
            out.push(format!(
                "map {}: {}, {}",
                map.name,
                map.kind,
                match map.entries {
                    Some(n) => format!("{n} of {} entries", map.max_entries),
                    None => format!("{} slots", map.max_entries),
                }
            ));
        }
        out.push(format!(
            "exempt_cgroups: {}",
            self.exempt_cgroups
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for id in &self.exempt_cgroups {
            if let Some(path) = self.cgroup_paths.get(id) {
                out.push(format!("exempt_cgroup {id}: {}", path.display()));
            }
        }
        if let Some(switches) = &self.switches {
            out.push(format!(
                "refuse_udp_ports: {}",
                if switches.refuse_udp_ports.is_empty() {
                    "none".to_owned()
                } else {
                    switches
                        .refuse_udp_ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
            out.push(format!(
                "allow_other_stream_protocols: {}",
                switches.allow_other_stream_protocols()
            ));
        }
        if let Some(bypass) = &self.bypass {
            bypass.text(&mut out);
        }
        if let Some(profiles) = &self.profiles {
            for (namespace, profile) in &profiles.namespaces {
                out.push(format!("profile {namespace}: {profile}"));
            }
        }
        for (name, value) in &self.counters {
            out.push(format!("{name}: {value}"));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let path = |id: u64| self.cgroup_paths.get(&id).map(|p| p.display().to_string());
        json!({
            "attached": self.all_attached(),
            "links": self.links.iter().map(|l| json!({
                "program": l.program,
                "link_id": l.link_id,
                "program_id": l.prog_id,
                "cgroup_id": l.cgroup_id,
                "cgroup": l.cgroup_id.and_then(path),
            })).collect::<Vec<_>>(),
            "maps": self.maps.iter().map(|m| json!({
                "name": m.name,
                "type": m.kind,
                "entries": m.entries,
                "max_entries": m.max_entries,
            })).collect::<Vec<_>>(),
            "exempt_cgroups": self.exempt_cgroups.iter().map(|id| json!({
                "id": id,
                "path": path(*id),
            })).collect::<Vec<_>>(),
            "refuse_udp_ports": self.switches.as_ref().map(|s| &s.refuse_udp_ports),
            "allow_other_stream_protocols":
                self.switches.as_ref().map(SwitchStatus::allow_other_stream_protocols),
            "counters": self.counters.iter().map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "config": self.config.as_ref().map(|(p, d)| json!({
                "file": p.display().to_string(),
                "digest": d,
            })),
            "bypass": self.bypass.as_ref().map(BypassStatus::json),
            "profiles": self.profiles.as_ref().map(|p| &p.namespaces),
            "relay": self.relay.as_ref().map(relay_json),
        })
    }
}

/// The CLI command; with `check`, fails unless every hook is attached.
pub fn run(args: &crate::cli::StatusArgs) -> Result<()> {
    let pins = PinDir::new(&args.pins.bpffs);
    let mut status = Status::read(
        &pins,
        &args.cgroup_root,
        args.proxy_config.as_deref(),
        &args.published.handover_dir,
    )?;
    status.relay = args.metrics.map(scrape::relay_figures);
    if args.json {
        println!("{}", status.json());
    } else {
        for line in status.text() {
            println!("{line}");
        }
    }
    if args.check && !status.all_attached() {
        bail!("not all hooks are attached under {}", pins.root().display());
    }
    Ok(())
}

/// The daemon's relay lines: connections per path, lanes in use.
fn relay_text(relay: &Result<RelayFigures, String>, out: &mut Vec<String>) {
    match relay {
        Ok(figures) => {
            for (path, n) in &figures.paths {
                out.push(format!("relay {}: {n} connections", path.label()));
            }
            out.push(format!(
                "bulk_lanes: {} of {} in use",
                figures.lanes_in_use, figures.lanes
            ));
        }
        Err(e) => out.push(format!("relay: unknown ({e})")),
    }
}

fn relay_json(relay: &Result<RelayFigures, String>) -> serde_json::Value {
    match relay {
        Ok(figures) => json!({
            "connections": figures.paths.iter()
                .map(|(path, n)| (path.label().to_owned(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "bulk_lanes_in_use": figures.lanes_in_use,
            "bulk_lanes": figures.lanes,
        }),
        Err(e) => json!({ "error": e }),
    }
}

/// What the kernel says about a pinned link; unknown fields stay `None`
/// (an old kernel, or a link we may not open).
fn link_status(pin: &Path, program: String) -> LinkStatus {
    let fields = bpf_obj_get(pin)
        .and_then(|fd| fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())))
        .map(|text| parse_fdinfo(&text))
        .unwrap_or_default();
    LinkStatus {
        program,
        link_id: fields.get("link_id").copied(),
        prog_id: fields.get("prog_id").copied(),
        cgroup_id: fields.get("cgroup_id").copied(),
    }
}

/// The numeric `key:\tvalue` lines of an fdinfo file.
fn parse_fdinfo(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn map_statuses(dir: &Path) -> Result<Vec<MapStatus>> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let info = data.info()?;
        let map_type = info.map_type().ok();
        let keyed = matches!(
            map_type,
            Some(
                MapType::Hash
                    | MapType::PerCpuHash
                    | MapType::LruHash
                    | MapType::LruPerCpuHash
                    | MapType::LpmTrie
            )
        );
        let entries = if keyed {
            Some(
                count_keys(&data, info.key_size(), info.max_entries())
                    .with_context(|| format!("counting the entries of {}", path.display()))?,
            )
        } else {
            None
        };
        out.push(MapStatus {
            name,
            kind: map_type.map_or("unknown".to_owned(), type_name),
            entries,
            max_entries: info.max_entries(),
        });
    }
    Ok(out)
}

fn type_name(t: MapType) -> String {
    match t {
        MapType::Hash => "hash".into(),
        MapType::PerCpuHash => "percpu_hash".into(),
        MapType::LruHash => "lru_hash".into(),
        MapType::LruPerCpuHash => "lru_percpu_hash".into(),
        MapType::LpmTrie => "lpm_trie".into(),
        MapType::Array => "array".into(),
        MapType::PerCpuArray => "percpu_array".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `bpf(2)` commands used here (uapi `enum bpf_cmd`).
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;

/// Counts a map's keys. A map that changes meanwhile (the LRU of original
/// destinations) gives an approximate count; the walk is bounded so that
/// deletions, which restart it, cannot make it loop.
fn count_keys(map: &MapData, key_size: u32, max_entries: u32) -> io::Result<u64> {
    #[repr(C)]
    struct GetNextKey {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut count = 0u64;
    let limit = u64::from(max_entries) * 2 + 16;
    while count < limit {
        let attr = GetNextKey {
            map_fd: fd as u32,
            _pad: 0,
            key: if count == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: attr points at live buffers of the map's key size; the
        // kernel reads `key` and writes `next_key`, nothing else.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const GetNextKey,
                std::mem::size_of::<GetNextKey>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(count),
                _ => Err(e),
            };
        }
        count += 1;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(count.min(u64::from(max_entries)))
}

/// Opens a pinned bpf object (aya exposes no fd of a pinned link).
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: attr points at a NUL-terminated path that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Paths of the cgroups with these ids (their inode numbers) under `root`,
/// found by walking the tree until all are found.
fn find_cgroups(root: &Path, ids: &[u64]) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let mut pending: Vec<u64> = ids.iter().copied().filter(|id| *id != 0).collect();
    pending.sort_unstable();
    pending.dedup();
    let mut stack = vec![root.to_path_buf()];
    // Bounded: a node has thousands of cgroups, not millions.
    let mut budget = 200_000usize;
    while let Some(dir) = stack.pop() {
        if pending.is_empty() || budget == 0 {
            break;
        }
        budget -= 1;
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if let Some(i) = pending.iter().position(|id| *id == meta.ino()) {
            pending.swap_remove(i);
            found.insert(meta.ino(), dir.clone());
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let link = |program: &str, id| LinkStatus {
            program: program.into(),
            link_id: Some(id),
            prog_id: Some(id + 100),
            cgroup_id: Some(4242),
        };
        Status {
            profiles: Some(PublishedProfiles {
                pid: 1,
                written_unix_secs: 0,
                namespaces: [("shop".to_owned(), "team-a".to_owned())].into(),
            }),
            links: hook::PROGRAMS
                .iter()
                .zip(1..)
                .map(|(program, id)| link(program, id))
                .collect(),
            cgroup_paths: HashMap::from([
                (4242, PathBuf::from("/sys/fs/cgroup/kubepods.slice")),
                (7, PathBuf::from("/sys/fs/cgroup/system.slice")),
            ]),
            maps: vec![
                MapStatus {
                    name: "COUNTERS".into(),
                    kind: "percpu_array".into(),
                    entries: None,
                    max_entries: 7,
                },
                MapStatus {
                    name: "EXEMPT_CGROUPS".into(),
                    kind: "hash".into(),
                    entries: Some(2),
                    max_entries: 1024,
                },
            ],
            exempt_cgroups: vec![7, 8],
            switches: Some(SwitchStatus {
                refuse_udp_ports: vec![443, 8443],
                flags: 0,
            }),
            counters: vec![("redirected".into(), 5), ("skipped_mark".into(), 0)],
            config: Some((PathBuf::from("/etc/p.json"), "0123456789ab".into())),
            bypass: None,
            relay: None,
        }
    }

    /// The bypass lines: each published prefix with its source, and what
    /// the kernel and the file disagree on.
    #[test]
    fn bypass_sources_as_published() {
        use crate::bypass::{Entry, Source, Sources};
        let mut sources = Sources::default();
        sources.set(
            Source::NoProxy,
            vec![Entry::new("10.249.3.0/24".parse().unwrap(), "")],
        );
        sources.set(
            Source::PodCidrs,
            vec![
                Entry::new("10.250.0.0/24".parse().unwrap(), "node n2"),
                Entry::new("10.250.1.0/24".parse().unwrap(), "node n3"),
            ],
        );
        let published = Published::of(&sources, &sources.kernel_prefixes());
        let mut status = sample();
        status.bypass = Some(BypassStatus {
            file: PathBuf::from("/run/r/bypass.json"),
            published: Ok(published.clone()),
            kernel: vec![
                "10.249.3.0/24".parse().unwrap(),
                "10.250.0.0/23".parse().unwrap(),
            ],
        });
        let text = status.text();
        let lines: Vec<&str> = text
            .iter()
            .filter(|l| l.starts_with("bypass"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            lines[0].split(" (pid").next(),
            Some("bypass_sources: /run/r/bypass.json")
        );
        assert_eq!(
            lines[1..],
            [
                "bypass 10.249.3.0/24: noProxy",
                "bypass 10.250.0.0/24: pod CIDRs (Node.spec.podCIDRs) (node n2)",
                "bypass 10.250.1.0/24: pod CIDRs (Node.spec.podCIDRs) (node n3)",
            ]
        );
        assert_eq!(
            text.last().unwrap(),
            "skipped_mark: 0",
            "counters stay last"
        );
        let v = status.json();
        assert_eq!(
            v["bypass"]["sources"][1]["source"],
            "pod CIDRs (Node.spec.podCIDRs)"
        );
        assert_eq!(v["bypass"]["unaccounted"], json!([]));

        // The kernel holds what no source names, and lacks a published one.
        status.bypass = Some(BypassStatus {
            file: PathBuf::from("/run/r/bypass.json"),
            published: Ok(published),
            kernel: vec![
                "10.250.0.0/23".parse().unwrap(),
                "10.9.0.0/16".parse().unwrap(),
            ],
        });
        let text = status.text();
        assert!(
            text.contains(&"bypass 10.9.0.0/16: in the kernel, in no published source".to_owned()),
            "{text:?}"
        );
        assert!(
            text.contains(&"bypass 10.249.3.0/24: published, not in the kernel".to_owned()),
            "{text:?}"
        );

        // No file: every kernel prefix, source unknown.
        status.bypass = Some(BypassStatus {
            file: PathBuf::from("/run/r/bypass.json"),
            published: Err("reading /run/r/bypass.json: No such file".into()),
            kernel: vec!["10.9.0.0/16".parse().unwrap()],
        });
        let text = status.text();
        assert!(
            text.contains(
                &"bypass_sources: unknown (reading /run/r/bypass.json: No such file)".to_owned()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(&"bypass 10.9.0.0/16: in the kernel, in no published source".to_owned()),
            "{text:?}"
        );
        assert_eq!(status.json()["bypass"]["sources"], json!(null));
    }

    #[test]
    fn text_lines() {
        let text = sample().text();
        assert_eq!(
            text,
            [
                "attached: connect4, connect6, sendmsg4, sendmsg6, sock_create, rekey_client",
                "cgroup: /sys/fs/cgroup/kubepods.slice (id 4242)",
                "link connect4: link id 1, program id 101, cgroup id 4242",
                "link connect6: link id 2, program id 102, cgroup id 4242",
                "link sendmsg4: link id 3, program id 103, cgroup id 4242",
                "link sendmsg6: link id 4, program id 104, cgroup id 4242",
                "link sock_create: link id 5, program id 105, cgroup id 4242",
                "link rekey_client: link id 6, program id 106, cgroup id 4242",
                "config_digest: 0123456789ab (/etc/p.json)",
                "map COUNTERS: percpu_array, 7 slots",
                "map EXEMPT_CGROUPS: hash, 2 of 1024 entries",
                "exempt_cgroups: 7, 8",
                "exempt_cgroup 7: /sys/fs/cgroup/system.slice",
                "refuse_udp_ports: 443, 8443",
                "allow_other_stream_protocols: false",
                "profile shop: team-a",
                "redirected: 5",
                "skipped_mark: 0",
            ]
        );
    }

    #[test]
    fn relay_lines_from_the_daemon_or_why_not() {
        use crate::relay::RelayPath;
        let mut status = Status {
            relay: Some(Ok(RelayFigures {
                paths: vec![(RelayPath::Splice, 7), (RelayPath::BulkLane, 1)],
                lanes_in_use: 1,
                lanes: 2,
            })),
            ..Status::default()
        };
        assert_eq!(
            status.text(),
            [
                "attached: no",
                "relay splice: 7 connections",
                "relay splice_bulk_lane: 1 connections",
                "bulk_lanes: 1 of 2 in use",
            ]
        );
        let v = status.json();
        assert_eq!(v["relay"]["connections"]["splice_bulk_lane"], json!(1));
        assert_eq!(v["relay"]["bulk_lanes"], json!(2));
        status.relay = Some(Err("10.0.0.1:9465: connection refused".into()));
        assert_eq!(
            status.text()[1],
            "relay: unknown (10.0.0.1:9465: connection refused)"
        );
        assert_eq!(
            status.json()["relay"]["error"],
            json!("10.0.0.1:9465: connection refused")
        );
    }

    #[test]
    fn nothing_attached_is_one_line() {
        assert_eq!(Status::default().text(), ["attached: no"]);
        assert_eq!(Status::default().json()["attached"], json!(false));
    }

    #[test]
    fn json_object() {
        let v = sample().json();
        assert_eq!(v["attached"], json!(true));
        assert_eq!(
            v["links"][0]["cgroup"],
            json!("/sys/fs/cgroup/kubepods.slice")
        );
        assert_eq!(v["maps"][1]["entries"], json!(2));
        assert_eq!(v["maps"][0]["entries"], json!(null));
        assert_eq!(v["exempt_cgroups"][1], json!({"id": 8, "path": null}));
        assert_eq!(v["counters"]["redirected"], json!(5));
        assert_eq!(v["config"]["digest"], json!("0123456789ab"));
        assert_eq!(v["refuse_udp_ports"], json!([443, 8443]));
        assert_eq!(v["allow_other_stream_protocols"], json!(false));
    }

    #[test]
    fn switches_as_pinned() {
        let mut status = sample();
        status.switches = Some(SwitchStatus {
            refuse_udp_ports: vec![],
            flags: redirector_ebpf::FLAG_ALLOW_OTHER_STREAMS,
        });
        let text = status.text();
        assert!(
            text.contains(&"refuse_udp_ports: none".to_owned()),
            "{text:?}"
        );
        assert!(
            text.contains(&"allow_other_stream_protocols: true".to_owned()),
            "{text:?}"
        );
        assert_eq!(status.json()["allow_other_stream_protocols"], json!(true));
        // An instance from before the map: no lines, nulls in JSON.
        status.switches = None;
        assert!(
            !status
                .text()
                .iter()
                .any(|l| l.starts_with("refuse_udp_ports"))
        );
        assert_eq!(status.json()["refuse_udp_ports"], json!(null));
    }

    #[test]
    fn fdinfo_of_a_cgroup_link() {
        let text = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t2061\n\
                    link_type:\tcgroup\nlink_id:\t12\nprog_tag:\t0a1b2c3d4e5f6a7b\n\
                    prog_id:\t40\ncgroup_id:\t4242\nattach_type:\t10\n";
        let f = parse_fdinfo(text);
        assert_eq!(f["link_id"], 12);
        assert_eq!(f["prog_id"], 40);
        assert_eq!(f["cgroup_id"], 4242);
        assert!(!f.contains_key("link_type"));
    }

    #[test]
    fn cgroup_ids_resolve_to_paths_by_inode() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        fs::create_dir_all(&deep).unwrap();
        let id = fs::metadata(&deep).unwrap().ino();
        let found = find_cgroups(root.path(), &[id, 0, 999_999_999]);
        assert_eq!(found, HashMap::from([(id, deep)]));
    }
}
