//! The kernel counters (the per-CPU `COUNTERS` map), read from the pin
//! for `redirector status` and, at scrape time, for `/metrics`.
use anyhow::Result;
use aya::maps::PerCpuArray;
use redirector_ebpf::{COUNTERS_LEN, Counter, maps};

use super::pins::{PinDir, open_pinned};
use crate::metrics::KernelCounters;

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

/// The counters of the instance pinned at a pin directory, as `/metrics`
/// reads them: none while nothing is pinned there (yet).
#[derive(Debug)]
pub struct PinnedCounters(PinDir);

impl PinnedCounters {
    pub fn new(pins: PinDir) -> Self {
        Self(pins)
    }
}

impl KernelCounters for PinnedCounters {
    fn read(&self) -> Vec<(Counter, u64)> {
        read_counters(&self.0).unwrap_or_default()
    }
}
