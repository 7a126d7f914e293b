//! The benchmark's peers, which tests/e2e/bench.sh runs in the miniature
//! node's namespaces: a minimal CONNECT upstream, the benchmark server and
//! the load generator (the `peers` binary, `src/main.rs`).
//!
//! The library is what they share with `cargo xtask bench`: the [`records`]
//! of `target/bench/raw.jsonl`, one definition for the writers and the
//! reader. It needs serde only, so xtask depends on it without the
//! binary's dependencies (the `bin` feature).

pub mod records;
