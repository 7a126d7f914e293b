//! The maps shared with the daemon. Names, key and value types are defined
//! in the crate's library (`redirector_ebpf::maps`) so both sides agree.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use redirector_ebpf::{COUNTERS_LEN, Counter, Endpoint, RedirectConfig, SavedDst, maps as m};

#[map(name = "CONFIG")]
pub static CONFIG: Array<RedirectConfig> = Array::with_max_entries(1, 0);

#[map(name = "EXEMPT_CGROUPS")]
pub static EXEMPT_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(m::EXEMPT_CGROUPS_MAX, 0);

#[map(name = "BYPASS_V4")]
pub static BYPASS_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(m::BYPASS_MAX, 0);

#[map(name = "BYPASS_V6")]
pub static BYPASS_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(m::BYPASS_MAX, 0);

#[map(name = "DST_BY_COOKIE")]
pub static DST_BY_COOKIE: LruHashMap<u64, Endpoint> = LruHashMap::with_max_entries(m::DST_MAX, 0);

// Not LRU: an evicted claim could be claimed again by another socket
// (see sock_ops.rs); entries are removed by the daemon or their socket.
#[map(name = "DST_BY_CLIENT")]
pub static DST_BY_CLIENT: HashMap<Endpoint, SavedDst> = HashMap::with_max_entries(m::DST_MAX, 0);

#[map(name = "HELD_UDP_PORTS")]
pub static HELD_UDP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(m::HELD_UDP_PORTS_MAX, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Adds one to a per-CPU counter (no atomics needed: the slot is this CPU's).
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the map and is valid for this CPU.
        unsafe { *slot += 1 };
    }
}
