//! `redirector status`: what is attached, read from the pins, so it works
//! whether or not the daemon runs.
use anyhow::{Result, bail};

use crate::hook::{self, PinDir};

/// Prints the status; with `check`, fails unless every hook is attached.
pub fn print(pins: &PinDir, check: bool) -> Result<()> {
    let links = pins.pinned_links();
    println!(
        "attached: {}",
        if links.is_empty() {
            "no".to_owned()
        } else {
            links.join(", ")
        }
    );
    if check && links.len() != hook::PROGRAMS.len() {
        bail!("not all hooks are attached under {}", pins.root().display());
    }
    if links.is_empty() {
        return Ok(());
    }
    let exempt = hook::read_exempt_cgroups(pins)?;
    println!(
        "exempt_cgroups: {}",
        exempt
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (counter, value) in hook::read_counters(pins)? {
        println!("{}: {value}", counter.name());
    }
    Ok(())
}
