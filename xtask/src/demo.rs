//! `cargo xtask demo`: the miniature node of `tests/e2e/demo.sh`, where a
//! pod curls an HTTPS site through mitmproxy.

use anyhow::{Context, Result};

use crate::toolchain::{Paths, run};
use crate::{build, setup, test};

pub fn demo(paths: &Paths) -> Result<()> {
    test::require_root("the demo")?;
    setup::setup(paths)?;
    let binary = build::build(paths, true)?;
    run(&mut test::e2e_command(paths, "demo.sh", &binary)?).context("the demo failed")
}
