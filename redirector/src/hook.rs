//! The user-space side of the kernel hooks: load the embedded programs,
//! fill their maps, attach them to a cgroup as pinned `bpf_link`s, and
//! remove them again.
//!
//! Pin layout under the bpffs directory (`--bpffs`):
//! `links/{connect4,connect6,rekey_client}` and `maps/<MAP NAME>`.
//! Pinned links keep the programs attached when the daemon exits, so pods
//! never bypass the proxy while it is down: their connects are refused by
//! the empty listen address instead (fail closed).
use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use ipnet::IpNet;
use redirector_ebpf::{COUNTERS_LEN, Counter, Endpoint, RedirectConfig, maps};

use crate::endpoint::to_endpoint;

mod support;
pub use support::{KernelSupportError, check_cgroup2, check_kernel};

/// The eBPF object built by `cargo xtask build`, embedded at compile time.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector.bpf.o"));

/// The programs, by their names in the kernel crate.
const CONNECT_PROGRAMS: [&str; 2] = ["connect4", "connect6"];
const SOCK_OPS_PROGRAM: &str = "rekey_client";
/// Every program whose link an attached instance pins.
pub const PROGRAMS: [&str; 3] = ["connect4", "connect6", "rekey_client"];

/// Pinned paths of one redirector instance.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    fn links(&self) -> PathBuf {
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

/// What the kernel programs are told.
pub struct HookSettings {
    /// Where redirected connects go: at most one IPv4 and one IPv6 address.
    pub listen: Vec<SocketAddr>,
    /// The daemon's `SO_MARK`.
    pub socket_mark: u32,
    /// The daemon's own cgroup id ([`own_cgroup`]): the mark is honoured
    /// only on connects from there.
    pub daemon_cgroup: u64,
    /// cgroup directories whose processes are never redirected.
    pub exempt_cgroups: Vec<PathBuf>,
    /// Destinations that are never redirected (`noProxy` IPs and CIDRs).
    pub bypass: Vec<IpNet>,
    /// Let the programs' debug logs through (costly: one record per connect).
    pub kernel_debug_logs: bool,
}

/// Test-only: shrinks maps to make "map full" reachable in end-to-end tests,
/// e.g. `EXEMPT_CGROUPS=1,DST_BY_CLIENT=4`. Only the maps whose overflow
/// must fail closed are accepted, and only made smaller.
pub const DEBUG_MAP_MAX_ENV: &str = "REDIRECTOR_DEBUG_MAP_MAX";

/// Parses [`DEBUG_MAP_MAX_ENV`]'s value into (map, entries).
pub fn parse_debug_map_max(value: &str) -> Result<Vec<(&'static str, u32)>> {
    let shrinkable = [
        (maps::EXEMPT_CGROUPS, maps::EXEMPT_CGROUPS_MAX),
        (maps::DST_BY_COOKIE, maps::DST_MAX),
        (maps::DST_BY_CLIENT, maps::DST_MAX),
    ];
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, n) = item
            .split_once('=')
            .with_context(|| format!("{DEBUG_MAP_MAX_ENV}: `{item}` is not MAP=ENTRIES"))?;
        let Some(&(name, max)) = shrinkable.iter().find(|(m, _)| *m == name.trim()) else {
            bail!("{DEBUG_MAP_MAX_ENV}: `{name}` cannot be resized");
        };
        let n: u32 = n
            .trim()
            .parse()
            .with_context(|| format!("{DEBUG_MAP_MAX_ENV}: `{item}`"))?;
        if n == 0 || n > max {
            bail!("{DEBUG_MAP_MAX_ENV}: `{item}`: between 1 and {max}");
        }
        out.push((name, n));
    }
    Ok(out)
}

/// Loaded (not yet attached) programs with their maps filled.
pub struct LoadedHooks {
    ebpf: Ebpf,
    /// Entries the exempt-cgroup map holds, for "map full" errors.
    exempt_capacity: u32,
}

impl LoadedHooks {
    /// Loads the embedded programs (the verifier runs here) and fills the maps.
    pub fn load(settings: &HookSettings) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this redirector binary was built without its eBPF programs; \
                 build it with `cargo xtask build`"
            );
        }
        let level = if settings.kernel_debug_logs {
            aya_log::Level::Debug
        } else {
            aya_log::Level::Warn
        } as u8;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, true);
        let mut exempt_capacity = maps::EXEMPT_CGROUPS_MAX;
        if let Ok(value) = std::env::var(DEBUG_MAP_MAX_ENV) {
            for (name, n) in parse_debug_map_max(&value)? {
                tracing::warn!(
                    map = name,
                    entries = n,
                    "test setting {DEBUG_MAP_MAX_ENV}: map shrunk"
                );
                loader.map_max_entries(name, n);
                if name == maps::EXEMPT_CGROUPS {
                    exempt_capacity = n;
                }
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        for name in CONNECT_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name}"))?;
        }
        let prog: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?.try_into()?;
        prog.load()
            .with_context(|| format!("loading program {SOCK_OPS_PROGRAM}"))?;

        let mut hooks = Self {
            ebpf,
            exempt_capacity,
        };
        hooks.write_config(settings)?;
        hooks.write_exempt_cgroups(&settings.exempt_cgroups)?;
        hooks.write_bypass(&settings.bypass)?;
        Ok(hooks)
    }

    fn write_config(&mut self, settings: &HookSettings) -> Result<()> {
        let mut cfg = RedirectConfig {
            socket_mark: settings.socket_mark,
            daemon_cgroup: settings.daemon_cgroup,
            ..Default::default()
        };
        for addr in &settings.listen {
            let slot = if addr.is_ipv4() {
                &mut cfg.proxy_v4
            } else {
                &mut cfg.proxy_v6
            };
            if slot.is_set() {
                bail!("--listen: at most one IPv4 and one IPv6 address ({addr} is a second one)");
            }
            *slot = to_endpoint(*addr);
        }
        let mut map: Array<_, RedirectConfig> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        map.set(0, cfg, 0).context("writing the CONFIG map")?;
        Ok(())
    }

    /// Exempts cgroups by id before attaching (e.g. the exemptions an
    /// earlier instance had in force, so a restart does not drop them).
    pub fn exempt_cgroup_ids(&mut self, ids: &[u64]) -> Result<()> {
        let mut map: HashMap<_, u64, u8> = HashMap::try_from(self.map_mut(maps::EXEMPT_CGROUPS)?)?;
        for id in ids {
            map.insert(*id, 1, 0)
                .with_context(|| format!("exempting cgroup id {id}"))?;
        }
        Ok(())
    }

    fn write_exempt_cgroups(&mut self, dirs: &[PathBuf]) -> Result<()> {
        let mut map: HashMap<_, u64, u8> = HashMap::try_from(self.map_mut(maps::EXEMPT_CGROUPS)?)?;
        for dir in dirs {
            map.insert(cgroup_id(dir)?, 1, 0)
                .with_context(|| format!("exempting cgroup {}", dir.display()))?;
        }
        Ok(())
    }

    fn write_bypass(&mut self, nets: &[IpNet]) -> Result<()> {
        let mut v4: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(self.map_mut(maps::BYPASS_V4)?)?;
        for net in nets.iter().filter_map(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        }) {
            v4.insert(
                &Key::new(net.prefix_len().into(), net.addr().octets()),
                1,
                0,
            )
            .with_context(|| format!("adding bypass {net}"))?;
        }
        let mut v6: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(self.map_mut(maps::BYPASS_V6)?)?;
        for net in nets.iter().filter_map(|n| match n {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        }) {
            v6.insert(
                &Key::new(net.prefix_len().into(), net.addr().octets()),
                1,
                0,
            )
            .with_context(|| format!("adding bypass {net}"))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("the eBPF object has no map {name}"))
    }

    /// Starts forwarding the programs' log records to `tracing`.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// The exempt-cgroup map, for exemptions that change at run time.
    pub fn take_exempt_cgroups(&mut self) -> Result<KernelExemptCgroups> {
        let map = self
            .ebpf
            .take_map(maps::EXEMPT_CGROUPS)
            .context("the eBPF object has no EXEMPT_CGROUPS map")?;
        Ok(KernelExemptCgroups {
            map: std::sync::Mutex::new(HashMap::try_from(map)?),
            capacity: self.exempt_capacity,
        })
    }

    /// The bypass tries, for bypasses that change at run time (reload).
    /// Taken after attach, which pins them.
    pub fn take_bypass(&mut self) -> Result<KernelBypass> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no {name} map"))
        };
        let v4 = LpmTrie::try_from(take(maps::BYPASS_V4)?)?;
        let v6 = LpmTrie::try_from(take(maps::BYPASS_V6)?)?;
        Ok(KernelBypass {
            tries: std::sync::Mutex::new((v4, v6)),
        })
    }

    /// The map the daemon reads original destinations from.
    pub fn take_dst_by_client(&mut self) -> Result<HashMap<MapData, Endpoint, Endpoint>> {
        let map = self
            .ebpf
            .take_map(maps::DST_BY_CLIENT)
            .context("the eBPF object has no DST_BY_CLIENT map")?;
        Ok(HashMap::try_from(map)?)
    }

    /// Attaches the programs to `cgroup` and pins links and maps under
    /// `pins`, taking over from an earlier instance pinned there without a
    /// moment in which pods' connects go unredirected: the new links attach
    /// (under staging names) while the old ones are still attached, and
    /// only then do the old pins go. While both run, the old programs
    /// redirect first and ours skip connects already aimed at the proxy.
    pub fn attach(&mut self, cgroup: &Path, pins: &PinDir) -> Result<()> {
        let cgroup_dir = fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        fs::create_dir_all(pins.links())
            .and_then(|()| fs::create_dir_all(pins.maps()))
            .with_context(|| {
                format!(
                    "creating {} (is a bpffs mounted there? `mount -t bpf bpf DIR`)",
                    pins.root.display()
                )
            })?;
        let mut staged = Vec::new();
        if let Err(e) = self.attach_staged(&cgroup_dir, cgroup, pins, &mut staged) {
            // Our links detach with their pins; the earlier instance's stay.
            for (staging, _) in &staged {
                let _ = fs::remove_file(staging);
            }
            return Err(e);
        }
        if !pins.pinned_links().is_empty() {
            tracing::info!(pins = %pins.root.display(), "taking over from an earlier instance");
        }
        for (staging, name) in staged {
            remove_if_present(&pins.link(name))?;
            fs::rename(&staging, pins.link(name))
                .with_context(|| format!("renaming {}", staging.display()))?;
        }
        for (name, map) in self.ebpf.maps() {
            if name == maps::DST_BY_COOKIE || name.starts_with("AYA_") || name.starts_with('.') {
                continue;
            }
            remove_if_present(&pins.map(name))?;
            map.pin(pins.map(name))
                .with_context(|| format!("pinning map {name}"))?;
        }
        Ok(())
    }

    /// Attaches every program and pins its link at a staging path, recorded
    /// in `staged` as it goes so a failure can undo exactly what was done.
    fn attach_staged(
        &mut self,
        cgroup_dir: &fs::File,
        cgroup: &Path,
        pins: &PinDir,
        staged: &mut Vec<(PathBuf, &'static str)>,
    ) -> Result<()> {
        // bpf_link_create takes no flags for cgroups (EINVAL otherwise):
        // links always attach as if BPF_F_ALLOW_MULTI, beside other programs.
        let mode = CgroupAttachMode::Single;
        let attach_error = |name: &str| format!("attaching {name} to {}", cgroup.display());
        for name in CONNECT_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            let id = prog
                .attach(cgroup_dir, mode)
                .with_context(|| attach_error(name))?;
            let link: FdLink = prog.take_link(id)?.try_into()?;
            staged.push((pin_link(link, pins, name)?, name));
        }
        let prog: &mut SockOps = program(&mut self.ebpf, SOCK_OPS_PROGRAM)?.try_into()?;
        let id = prog
            .attach(cgroup_dir, mode)
            .with_context(|| attach_error(SOCK_OPS_PROGRAM))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        staged.push((pin_link(link, pins, SOCK_OPS_PROGRAM)?, SOCK_OPS_PROGRAM));
        Ok(())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))
}

/// Pins a link at its staging path and returns that path. Dropping the
/// `PinnedLink` closes our fd; the pin keeps the link attached.
fn pin_link(link: FdLink, pins: &PinDir, name: &str) -> Result<PathBuf> {
    // No dots: bpffs reserves names containing '.' (EPERM).
    let path = pins.links().join(format!("{name}_next"));
    remove_if_present(&path)?;
    let _: PinnedLink = link
        .pin(&path)
        .with_context(|| format!("pinning link {}", path.display()))?;
    Ok(path)
}

fn remove_if_present(path: &Path) -> Result<()> {
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

/// The kernel counters, summed over CPUs, read from the pinned map.
pub fn read_counters(pins: &PinDir) -> Result<Vec<(Counter, u64)>> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(open_pinned(pins, maps::COUNTERS)?)?;
    let mut out = Vec::with_capacity(COUNTERS_LEN as usize);
    for counter in Counter::ALL {
        let per_cpu = map.get(&(counter as u32), 0)?;
        out.push((counter, per_cpu.iter().sum()));
    }
    Ok(out)
}

/// Cgroups whose processes are not redirected, changed at run time (the
/// Kubernetes watcher). A process's next connect sees the change.
pub trait ExemptCgroups: Send + Sync + 'static {
    /// Exempts (or stops exempting) the cgroup with this id (its inode).
    fn set(&self, cgroup_id: u64, exempt: bool) -> Result<()>;
}

/// [`ExemptCgroups`] backed by the kernel's `EXEMPT_CGROUPS` map.
pub struct KernelExemptCgroups {
    map: std::sync::Mutex<HashMap<MapData, u64, u8>>,
    /// Its `max_entries`, for the "map full" error.
    capacity: u32,
}

impl ExemptCgroups for KernelExemptCgroups {
    fn set(&self, cgroup_id: u64, exempt: bool) -> Result<()> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if exempt {
            match map.insert(cgroup_id, 1, 0) {
                Ok(()) => {}
                // The kernel's answer to an insert into a full hash map.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    bail!(
                        "exempting cgroup id {cgroup_id}: the {} map is full ({} entries)",
                        maps::EXEMPT_CGROUPS,
                        self.capacity
                    );
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("exempting cgroup id {cgroup_id}"));
                }
            }
        } else {
            match map.remove(&cgroup_id) {
                Ok(()) => {}
                // Not there: nothing to undo.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("un-exempting cgroup id {cgroup_id}"));
                }
            }
        }
        Ok(())
    }
}

/// Destinations the kernel never redirects, changed at run time (reload).
pub trait BypassTries: Send + Sync + 'static {
    /// Makes the tries hold exactly `wanted`: new prefixes are inserted
    /// before stale ones are removed, so the tries are never emptier than
    /// either set. Returns (inserted, removed).
    fn sync(&self, wanted: &[IpNet]) -> Result<(Vec<IpNet>, Vec<IpNet>)>;
}

type BypassV4 = LpmTrie<MapData, [u8; 4], u8>;
type BypassV6 = LpmTrie<MapData, [u8; 16], u8>;

/// [`BypassTries`] backed by the kernel's `BYPASS_V4` and `BYPASS_V6` tries.
pub struct KernelBypass {
    tries: std::sync::Mutex<(BypassV4, BypassV6)>,
}

impl KernelBypass {
    fn current(v4: &BypassV4, v6: &BypassV6) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for key in v4.keys() {
            let key = key.context("reading BYPASS_V4")?;
            let net = ipnet::Ipv4Net::new(key.data().into(), key.prefix_len() as u8)?;
            out.push(IpNet::V4(net));
        }
        for key in v6.keys() {
            let key = key.context("reading BYPASS_V6")?;
            let net = ipnet::Ipv6Net::new(key.data().into(), key.prefix_len() as u8)?;
            out.push(IpNet::V6(net));
        }
        Ok(out)
    }
}

impl BypassTries for KernelBypass {
    fn sync(&self, wanted: &[IpNet]) -> Result<(Vec<IpNet>, Vec<IpNet>)> {
        let mut guard = self.tries.lock().unwrap_or_else(|p| p.into_inner());
        let (v4, v6) = &mut *guard;
        let (add, remove) = crate::reload::bypass_diff(&Self::current(v4, v6)?, wanted);
        for net in &add {
            match net {
                IpNet::V4(n) => {
                    v4.insert(&Key::new(n.prefix_len().into(), n.addr().octets()), 1, 0)
                }
                IpNet::V6(n) => {
                    v6.insert(&Key::new(n.prefix_len().into(), n.addr().octets()), 1, 0)
                }
            }
            .with_context(|| format!("adding bypass {net}"))?;
        }
        for net in &remove {
            let removed = match net {
                IpNet::V4(n) => v4.remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
                IpNet::V6(n) => v6.remove(&Key::new(n.prefix_len().into(), n.addr().octets())),
            };
            match removed {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e).with_context(|| format!("removing bypass {net}")),
            }
        }
        Ok((add, remove))
    }
}

/// The exempt cgroup ids, read from the pinned map.
pub fn read_exempt_cgroups(pins: &PinDir) -> Result<Vec<u64>> {
    let map: HashMap<_, u64, u8> = HashMap::try_from(open_pinned(pins, maps::EXEMPT_CGROUPS)?)?;
    Ok(map.keys().collect::<Result<_, _>>()?)
}

fn open_pinned(pins: &PinDir, name: &str) -> Result<aya::maps::Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(aya::maps::Map::from_map_data(data)?)
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

    #[test]
    fn debug_map_max_only_shrinks_the_fail_closed_maps() {
        assert_eq!(
            parse_debug_map_max("EXEMPT_CGROUPS=1, DST_BY_CLIENT=4,").unwrap(),
            vec![(maps::EXEMPT_CGROUPS, 1), (maps::DST_BY_CLIENT, 4)]
        );
        assert!(parse_debug_map_max("").unwrap().is_empty());
        for bad in [
            "CONFIG=1",
            "BYPASS_V4=1",
            "EXEMPT_CGROUPS",
            "EXEMPT_CGROUPS=0",
            "EXEMPT_CGROUPS=x",
            "DST_BY_CLIENT=99999999",
        ] {
            assert!(parse_debug_map_max(bad).is_err(), "{bad}");
        }
    }
}
