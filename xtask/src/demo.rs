//! `cargo xtask demo`: the miniature node of `tests/e2e/demo.sh`, where a
//! pod curls an HTTPS site through mitmproxy.

use anyhow::{Context, Result};

use crate::toolchain::{Paths, e2e_command, require_root, run};
use crate::{build, setup};

pub fn demo(paths: &Paths) -> Result<()> {
    require_root("the demo")?;
    setup::setup(paths, setup::Purpose::Demo)?;
    let binary = build::build(paths, true)?;
    run(&mut e2e_command(paths, "demo.sh", &binary)?).context("the demo failed")
}
