//! The maps the daemon changes at run time: the exempt cgroups (the
//! Kubernetes watcher), the bypass tries and the operator switches
//! (reload), and reading them back from their pins.
use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
use ipnet::IpNet;
use redirector_ebpf::{FLAG_ALLOW_OTHER_STREAMS, RedirectConfig, maps};

use super::pins::{PinDir, open_pinned};

/// Cgroups whose processes are not redirected, changed at run time (the
/// Kubernetes watcher). A process's next connect sees the change.
pub trait ExemptCgroups: Send + Sync + 'static {
    /// Exempts (or stops exempting) the cgroup with this id (its inode).
    fn set(&self, cgroup_id: u64, exempt: bool) -> Result<()>;
}

/// [`ExemptCgroups`] backed by the kernel's `EXEMPT_CGROUPS` map.
pub struct KernelExemptCgroups {
    pub(super) map: std::sync::Mutex<HashMap<MapData, u64, u8>>,
    /// Its `max_entries`, for the "map full" error.
    pub(super) capacity: u32,
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
    pub(super) tries: std::sync::Mutex<(BypassV4, BypassV6)>,
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
        let (add, remove) = bypass_diff(&Self::current(v4, v6)?, wanted);
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

/// The operator switches the kernel programs read, changed at run time
/// (reload): the refused UDP ports and the `CONFIG` flags.
pub trait Switches: Send + Sync + 'static {
    /// Makes the refused UDP ports exactly `wanted`, never refusing fewer
    /// than the ports both lists share meanwhile (new ports go in before
    /// stale ones come out). Returns (inserted, removed).
    fn sync_udp_ports(&self, wanted: &[u16]) -> Result<(Vec<u16>, Vec<u16>)>;
    /// Sets or clears [`FLAG_ALLOW_OTHER_STREAMS`]; returns whether it changed.
    fn set_allow_other_streams(&self, allow: bool) -> Result<bool>;
}

/// [`Switches`] backed by the kernel's `HELD_UDP_PORTS` and `CONFIG` maps.
pub struct KernelSwitches {
    pub(super) udp_ports: std::sync::Mutex<HashMap<MapData, u16, u8>>,
    pub(super) config: std::sync::Mutex<Array<MapData, RedirectConfig>>,
}

/// Whether a map call failed with this errno.
fn is_errno(e: &MapError, errno: i32) -> bool {
    matches!(e, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(errno))
}

impl Switches for KernelSwitches {
    fn sync_udp_ports(&self, wanted: &[u16]) -> Result<(Vec<u16>, Vec<u16>)> {
        let mut map = self.udp_ports.lock().unwrap_or_else(|p| p.into_inner());
        let current: Vec<u16> = map
            .keys()
            .collect::<Result<_, _>>()
            .context("reading HELD_UDP_PORTS")?;
        let (add, remove) = port_diff(&current, wanted);
        // New ports first. The set holds as many as a config may list, so
        // old and new together may not fit: what does not goes in after
        // the stale ports are out (those ports were not refused before the
        // reload either, so nothing is looser than the old list meanwhile).
        let mut deferred = Vec::new();
        for port in &add {
            match map.insert(*port, 1, 0) {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::E2BIG) => deferred.push(*port),
                Err(e) => return Err(e).with_context(|| format!("refusing UDP port {port}")),
            }
        }
        for port in &remove {
            match map.remove(port) {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("no longer refusing UDP port {port}"));
                }
            }
        }
        for port in &deferred {
            map.insert(*port, 1, 0)
                .with_context(|| format!("refusing UDP port {port}"))?;
        }
        Ok((add, remove))
    }

    fn set_allow_other_streams(&self, allow: bool) -> Result<bool> {
        let mut map = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut cfg = map.get(&0, 0).context("reading CONFIG")?;
        let flags = with_flag(cfg.flags, FLAG_ALLOW_OTHER_STREAMS, allow);
        if flags == cfg.flags {
            return Ok(false);
        }
        cfg.flags = flags;
        // Only the flags word differs from what is there: a program that
        // reads the entry while it is copied sees the old or the new flags
        // beside the same addresses, never a torn address.
        map.set(0, cfg, 0).context("writing CONFIG")?;
        Ok(true)
    }
}

/// `flags` with `flag` set or cleared.
pub fn with_flag(flags: u32, flag: u32, on: bool) -> u32 {
    if on { flags | flag } else { flags & !flag }
}

/// Ports to insert into and remove from the kernel's set to go from
/// `current` to `wanted`, each sorted.
pub fn port_diff(current: &[u16], wanted: &[u16]) -> (Vec<u16>, Vec<u16>) {
    let current: BTreeSet<u16> = current.iter().copied().collect();
    let wanted: BTreeSet<u16> = wanted.iter().copied().collect();
    (
        wanted.difference(&current).copied().collect(),
        current.difference(&wanted).copied().collect(),
    )
}

/// The refused UDP ports, sorted, read from the pinned map; `None` when
/// the instance pinned there has no such map (one from before the map).
pub fn read_refused_udp_ports(pins: &PinDir) -> Result<Option<Vec<u16>>> {
    if !pins.map(maps::HELD_UDP_PORTS).exists() {
        return Ok(None);
    }
    let map: HashMap<_, u16, u8> = HashMap::try_from(open_pinned(pins, maps::HELD_UDP_PORTS)?)?;
    let mut ports: Vec<u16> = map.keys().collect::<Result<_, _>>()?;
    ports.sort_unstable();
    Ok(Some(ports))
}

/// The `CONFIG` entry the programs read, from the pinned map.
pub fn read_redirect_config(pins: &PinDir) -> Result<RedirectConfig> {
    let map: Array<_, RedirectConfig> = Array::try_from(open_pinned(pins, maps::CONFIG)?)?;
    Ok(map.get(&0, 0)?)
}

/// The bypass prefixes, read from the pinned tries (`status`, and a new
/// instance keeping what an earlier one bypassed).
pub fn read_bypass(pins: &PinDir) -> Result<Vec<IpNet>> {
    let v4: BypassV4 = LpmTrie::try_from(open_pinned(pins, maps::BYPASS_V4)?)?;
    let v6: BypassV6 = LpmTrie::try_from(open_pinned(pins, maps::BYPASS_V6)?)?;
    KernelBypass::current(&v4, &v6)
}

/// The exempt cgroup ids, read from the pinned map.
pub fn read_exempt_cgroups(pins: &PinDir) -> Result<Vec<u64>> {
    let map: HashMap<_, u64, u8> = HashMap::try_from(open_pinned(pins, maps::EXEMPT_CGROUPS)?)?;
    Ok(map.keys().collect::<Result<_, _>>()?)
}

/// Prefixes to insert into and remove from the kernel tries to go from
/// `current` to `wanted`, compared after truncation to their prefix.
pub fn bypass_diff(current: &[IpNet], wanted: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let current: BTreeSet<IpNet> = current.iter().map(IpNet::trunc).collect();
    let wanted: BTreeSet<IpNet> = wanted.iter().map(IpNet::trunc).collect();
    (
        wanted.difference(&current).copied().collect(),
        current.difference(&wanted).copied().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn bypass_diff_adds_new_and_removes_stale() {
        let current = nets(&["10.0.0.0/8", "127.0.0.0/8", "fd00::/8"]);
        let wanted = nets(&["10.0.0.0/8", "127.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]);
        let (add, remove) = bypass_diff(&current, &wanted);
        assert_eq!(add, nets(&["192.0.2.0/24", "2001:db8::/32"]));
        assert_eq!(remove, nets(&["fd00::/8"]));
    }

    #[test]
    fn port_diff_adds_new_and_removes_stale() {
        assert_eq!(
            port_diff(&[443], &[443, 8443]),
            (vec![8443], vec![]),
            "443 is neither re-added nor removed"
        );
        assert_eq!(port_diff(&[443, 8443], &[]), (vec![], vec![443, 8443]));
        assert_eq!(port_diff(&[], &[443]), (vec![443], vec![]));
        assert_eq!(
            port_diff(&[8443, 443, 53], &[53, 80]),
            (vec![80], vec![443, 8443])
        );
        assert_eq!(port_diff(&[443], &[443]), (vec![], vec![]));
    }

    #[test]
    fn flags_set_and_clear_one_bit() {
        let other = 1 << 5;
        assert_eq!(
            with_flag(0, FLAG_ALLOW_OTHER_STREAMS, true),
            FLAG_ALLOW_OTHER_STREAMS
        );
        assert_eq!(
            with_flag(
                other | FLAG_ALLOW_OTHER_STREAMS,
                FLAG_ALLOW_OTHER_STREAMS,
                false
            ),
            other
        );
        assert_eq!(with_flag(other, FLAG_ALLOW_OTHER_STREAMS, false), other);
    }

    #[test]
    fn bypass_diff_compares_truncated_prefixes() {
        // 10.1.2.3/8 is 10.0.0.0/8: nothing to do, and no duplicates.
        let (add, remove) =
            bypass_diff(&nets(&["10.0.0.0/8"]), &nets(&["10.1.2.3/8", "10.0.0.0/8"]));
        assert!(add.is_empty() && remove.is_empty(), "{add:?} {remove:?}");
        let (add, remove) = bypass_diff(&[], &nets(&["10.1.2.3/8", "10.0.0.0/8"]));
        assert_eq!(add, nets(&["10.0.0.0/8"]));
        assert!(remove.is_empty());
        let (add, remove) = bypass_diff(&nets(&["10.0.0.0/8"]), &[]);
        assert!(add.is_empty());
        assert_eq!(remove, nets(&["10.0.0.0/8"]));
    }
}
