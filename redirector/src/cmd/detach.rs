//! `redirector detach`: remove an instance's pinned links and maps, which
//! detaches its programs.
use anyhow::Result;

use crate::{
    cli::PinArgs,
    hook::{self, PinDir},
};

pub fn run(args: &PinArgs) -> Result<()> {
    let removed = hook::detach(&PinDir::new(&args.bpffs))?;
    println!(
        "removed {} pins under {}",
        removed.len(),
        args.bpffs.display()
    );
    Ok(())
}
