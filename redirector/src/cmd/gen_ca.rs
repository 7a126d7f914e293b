//! `redirector gen-ca`: a MITM CA for the upstream proxy, written as
//! mitmproxy's confdir file set and printed as base64 for `trustedCA`.
use anyhow::Result;

use crate::{ca::GeneratedCa, cli::GenCaArgs};

pub fn run(args: &GenCaArgs) -> Result<()> {
    let ca = GeneratedCa::generate()?;
    ca.write_to(&args.out_dir)?;
    println!("{}", ca.trusted_ca_base64());
    Ok(())
}
