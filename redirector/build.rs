//! Embeds the eBPF object that `cargo xtask build` produced (path in
//! `REDIRECTOR_EBPF_OBJ`), so one binary is all a node needs. Without it the
//! crate still builds (for unit tests and clippy) with an empty object, and
//! `redirector run` says how to build a complete binary.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=REDIRECTOR_EBPF_OBJ");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("redirector.bpf.o");
    match env::var_os("REDIRECTOR_EBPF_OBJ") {
        Some(obj) => {
            let obj = PathBuf::from(obj);
            println!("cargo::rerun-if-changed={}", obj.display());
            fs::copy(&obj, &out)
                .unwrap_or_else(|e| panic!("REDIRECTOR_EBPF_OBJ={}: {e}", obj.display()));
        }
        None => fs::write(&out, b"").expect("writing the empty eBPF placeholder"),
    }
}
