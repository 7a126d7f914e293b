//! The lines of `target/soak/raw.jsonl`: one JSON object each, told apart
//! by `kind`, written by tests/e2e/soak.sh (the idle points and the load's
//! result through hostile.py) and read back here. Fields the checks do not
//! use are left out (serde skips them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of raw.jsonl.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// The soak's settings, first.
    Config(Config),
    /// An idle point: the daemon's resources and the load's counts so far.
    Point(Point),
    /// The SIGKILL and restart half-way.
    Restart(Restart),
    /// A config reload written (the daemon's logs say whether it applied).
    Reload,
    /// The load generator's final result.
    Load { result: LoadResult },
    /// What the daemon's logs say, at the end.
    Logs(Logs),
}

/// The soak's settings, echoed into the summary as written.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub minutes: serde_json::Number,
    /// Requests per second the load aims at.
    pub rate: serde_json::Number,
}

/// One idle point (traffic paused, connections finished).
#[derive(Debug, Clone, Deserialize)]
pub struct Point {
    /// start, A, B, C or D.
    pub name: String,
    /// 1 before the restart, 2 after.
    pub instance: u64,
    /// When, in ms since the epoch.
    pub t: i64,
    /// The daemon's RSS, descriptors, and the sockets and pipes among them.
    pub rss_kb: i64,
    pub fds: i64,
    pub sockets: i64,
    pub pipes: i64,
    /// Entries of each BPF map, by name.
    pub maps: BTreeMap<String, MapEntries>,
    /// The daemon's /metrics, one value per series (`name{labels}`).
    pub metrics: BTreeMap<String, f64>,
    /// The load's counts at the pause.
    pub client: ClientCounts,
}

impl Point {
    /// A metric's value, 0 when absent.
    pub fn metric(&self, key: &str) -> i64 {
        self.metrics.get(key).map_or(0, |v| *v as i64)
    }

    /// The load's counts for one kind of request, zero when absent.
    pub fn counts(&self, kind: &str) -> Sent {
        self.client.counts.get(kind).copied().unwrap_or_default()
    }

    /// A map's entry count, if it was counted.
    pub fn map_entries(&self, name: &str) -> Option<i64> {
        self.maps.get(name).and_then(|m| m.entries)
    }

    /// A map's capacity, 0 when unknown.
    pub fn map_max(&self, name: &str) -> i64 {
        self.maps.get(name).and_then(|m| m.max).unwrap_or(0)
    }
}

/// A BPF map's size; either may be unknown (`null`): an array has no keys
/// to walk.
#[derive(Debug, Clone, Deserialize)]
pub struct MapEntries {
    pub entries: Option<i64>,
    pub max: Option<i64>,
}

/// The load's counts by kind of request (https, http, tcp, direct, bypass).
#[derive(Debug, Clone, Deserialize)]
pub struct ClientCounts {
    pub counts: BTreeMap<String, Sent>,
}

/// Requests of one kind: sent, and how they ended.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Sent {
    pub sent: i64,
    pub ok: i64,
    pub errors: i64,
}

/// The daemon killed, started again and ready (ms since the epoch).
#[derive(Debug, Clone, Deserialize)]
pub struct Restart {
    pub t_kill: i64,
    pub t_ready: i64,
}

/// The load generator's result at the end of the soak.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadResult {
    pub counts: BTreeMap<String, Sent>,
    /// (ms since the epoch, kind, reason) of each failed request.
    pub errors_list: Vec<(i64, String, String)>,
    /// Worker threads still running after the stop: they should be none.
    pub threads_alive: i64,
    /// Connect-to-answer latency of each kind.
    pub latency_ms: BTreeMap<String, Percentiles>,
}

/// Latency percentiles of one kind; only `n` when there was no sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Percentiles {
    pub n: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// What the daemon's logs say about the reloads and errors.
#[derive(Debug, Clone, Deserialize)]
pub struct Logs {
    pub reloads_written: i64,
    pub reloaded: i64,
    pub reload_failed: i64,
    pub error_lines: i64,
    pub daemon_alive: bool,
}
