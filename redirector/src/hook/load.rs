//! Loading: the embedded programs through the verifier, their maps filled
//! from the settings, then attached to a cgroup and pinned.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, links::FdLink},
};
use ipnet::IpNet;
use redirector_ebpf::{Endpoint, FLAG_ALLOW_OTHER_STREAMS, RedirectConfig, SavedDst, maps};

use super::{
    CONNECT_PROGRAMS, SOCK_CREATE_PROGRAM, SOCK_OPS_PROGRAM,
    cgroup::cgroup_id,
    maps::{KernelBypass, KernelExemptCgroups, KernelSwitches},
    pins::{PinDir, pin_link, remove_if_present},
    shared,
};
use crate::endpoint::to_endpoint;

/// The eBPF object built by `cargo xtask build`, embedded at compile time.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector.bpf.o"));

/// What the kernel programs are told.
pub struct HookSettings {
    /// Where redirected connects go: at most one IPv4 and one IPv6 address.
    pub listen: Vec<SocketAddr>,
    /// The daemon's `SO_MARK`.
    pub socket_mark: u32,
    /// The daemon's own cgroup id ([`own_cgroup`](super::own_cgroup)): the mark is honoured
    /// only on connects from there.
    pub daemon_cgroup: u64,
    /// cgroup directories whose processes are never redirected.
    pub exempt_cgroups: Vec<PathBuf>,
    /// Destinations that are never redirected (`noProxy` IPs and CIDRs).
    pub bypass: Vec<IpNet>,
    /// Let the programs' debug logs through (costly: one record per connect).
    pub kernel_debug_logs: bool,
    /// UDP destination ports redirected pods may not send to
    /// (`refuseUdpPorts`).
    pub held_udp_ports: Vec<u16>,
    /// Let redirected pods open stream sockets of other protocols (SCTP)
    /// (`allowOtherStreamProtocols`).
    pub allow_other_streams: bool,
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
    /// Loads the embedded programs (the verifier runs here) and fills the
    /// maps. The original-destination maps are the ones pinned under `pins`
    /// by an earlier instance, if any (see `shared`), else new ones pinned
    /// there.
    pub fn load(settings: &HookSettings, pins: &PinDir) -> Result<Self> {
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
        let mut shrunk = Vec::new();
        if let Ok(value) = std::env::var(DEBUG_MAP_MAX_ENV) {
            shrunk = parse_debug_map_max(&value)?;
            for &(name, n) in &shrunk {
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
        let shapes = shared::shapes(|name| {
            shrunk
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(maps::DST_MAX, |(_, n)| *n)
        });
        for (name, path) in shared::prepare(pins, &shapes)? {
            loader.map_pin_path(name, path);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        for name in CONNECT_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name}"))?;
        }
        let prog: &mut CgroupSock = program(&mut ebpf, SOCK_CREATE_PROGRAM)?.try_into()?;
        prog.load()
            .with_context(|| format!("loading program {SOCK_CREATE_PROGRAM}"))?;
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
        hooks.write_held_udp_ports(&settings.held_udp_ports)?;
        Ok(hooks)
    }

    fn write_config(&mut self, settings: &HookSettings) -> Result<()> {
        let mut cfg = RedirectConfig {
            socket_mark: settings.socket_mark,
            daemon_cgroup: settings.daemon_cgroup,
            flags: if settings.allow_other_streams {
                FLAG_ALLOW_OTHER_STREAMS
            } else {
                0
            },
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

    fn write_held_udp_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut map: HashMap<_, u16, u8> = HashMap::try_from(self.map_mut(maps::HELD_UDP_PORTS)?)?;
        for port in ports {
            map.insert(*port, 1, 0)
                .with_context(|| format!("holding back UDP port {port}"))?;
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

    /// The refused UDP ports and the `CONFIG` map, for the switches that
    /// change at run time (reload). Taken after attach, which pins them.
    pub fn take_switches(&mut self) -> Result<KernelSwitches> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no {name} map"))
        };
        let udp_ports = HashMap::try_from(take(maps::HELD_UDP_PORTS)?)?;
        let config = Array::try_from(take(maps::CONFIG)?)?;
        Ok(KernelSwitches {
            udp_ports: std::sync::Mutex::new(udp_ports),
            config: std::sync::Mutex::new(config),
        })
    }

    /// The map the daemon reads original destinations from.
    pub fn take_dst_by_client(&mut self) -> Result<HashMap<MapData, Endpoint, SavedDst>> {
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
                    pins.root().display()
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
            tracing::info!(pins = %pins.root().display(), "taking over from an earlier instance");
        }
        for (staging, name) in staged {
            remove_if_present(&pins.link(name))?;
            fs::rename(&staging, pins.link(name))
                .with_context(|| format!("renaming {}", staging.display()))?;
        }
        for (name, map) in self.ebpf.maps() {
            // The shared maps are pinned already, where every instance finds them.
            if shared::is_shared(name) || name.starts_with("AYA_") || name.starts_with('.') {
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
        let prog: &mut CgroupSock = program(&mut self.ebpf, SOCK_CREATE_PROGRAM)?.try_into()?;
        let id = prog
            .attach(cgroup_dir, mode)
            .with_context(|| attach_error(SOCK_CREATE_PROGRAM))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        staged.push((
            pin_link(link, pins, SOCK_CREATE_PROGRAM)?,
            SOCK_CREATE_PROGRAM,
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
