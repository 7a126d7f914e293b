//! The lines of `target/bench/raw.jsonl`: one JSON object each, told apart
//! by `kind`. `peers load` writes the [`Load`] lines; tests/e2e/bench.sh
//! writes the others with `printf`, in the shapes below; `cargo xtask
//! bench` reads every line back into a [`Record`], so a line that drifts
//! from these shapes fails to parse instead of reading as a missing figure.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One line of raw.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// What the run covers; bench.sh writes it first.
    Paths(Run),
    /// One workload over one path (`peers load`).
    Load(Load),
    /// A relay process's cost over one bulk run (bench.sh).
    Daemon(RelayCost),
    /// A relay's memory while idle connections are held (bench.sh).
    Memory(IdleMemory),
}

impl Record {
    /// The path the record is about; none for the run's own record.
    pub fn path(&self) -> Option<&str> {
        match self {
            Record::Paths(_) => None,
            Record::Load(l) => Some(&l.path),
            Record::Daemon(d) => Some(&d.path),
            Record::Memory(m) => Some(&m.path),
        }
    }

    /// The round of a load or relay-cost record.
    pub fn round(&self) -> Option<u32> {
        match self {
            Record::Load(l) => Some(l.round),
            Record::Daemon(d) => Some(d.round),
            Record::Paths(_) | Record::Memory(_) => None,
        }
    }
}

/// What one run of bench.sh covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The paths, in the order they run within a round.
    pub paths: Vec<String>,
    /// The network workloads (bulk, rate, latency, iperf3, memory).
    pub workloads: Vec<String>,
    /// Interleaved rounds.
    pub rounds: u32,
    /// Bytes each way of bulk and iperf3.
    pub bulk_bytes: u64,
    /// Idle connections the memory workload asks for.
    pub idle_connections: u64,
    /// Small sizes, one round: only that data moves is checked.
    pub quick: bool,
}

/// One workload run over one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// The path label (direct, env-var, redirector, ...).
    pub path: String,
    /// The round it belongs to (1 for the memory workload's connections).
    pub round: u32,
    /// The benchmark server (or iperf3 server) dialled.
    pub server: SocketAddr,
    /// The proxy spoken CONNECT to first, as an env-var client does.
    pub proxy: Option<SocketAddr>,
    /// The workload, and what it measured.
    #[serde(flatten)]
    pub measured: Measured,
}

/// What a workload measured, tagged with its name (`workload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "workload", rename_all = "lowercase")]
pub enum Measured {
    /// One stream, upload then download.
    Bulk(Throughput),
    /// iperf3's view of the same path, one stream each way.
    Iperf3(Throughput),
    /// A new connection per request.
    Rate(Rate),
    /// Paced requests, a new connection each.
    Latency(Latency),
    /// Idle connections held open (the memory workload's client side).
    Idle(Idle),
}

impl Measured {
    /// The workload's name, as in the record and on `peers load`'s command line.
    pub fn workload(&self) -> &'static str {
        match self {
            Measured::Bulk(_) => "bulk",
            Measured::Iperf3(_) => "iperf3",
            Measured::Rate(_) => "rate",
            Measured::Latency(_) => "latency",
            Measured::Idle(_) => "idle",
        }
    }
}

/// Throughput each way of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Bytes each way.
    pub bytes: u64,
    pub up_gbps: f64,
    pub down_gbps: f64,
}

/// The connection-rate workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Workers, each opening one connection after another.
    pub concurrency: usize,
    /// Requests answered, and connections or requests that failed.
    pub ok: u64,
    pub errors: u64,
    /// Answered requests per second.
    pub conn_per_s: f64,
}

/// The latency workload: connect to first byte of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Pace of the requests.
    pub per_second: u32,
    /// Requests answered (the samples), and failed.
    pub samples: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Idle connections opened and held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Idle {
    /// Connections asked for, opened, and failed (opening stops at the first).
    pub requested: u32,
    pub opened: u64,
    pub errors: u64,
}

/// A relay process's CPU and RSS over one bulk run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayCost {
    pub path: String,
    pub round: u32,
    /// CPU seconds of the relay process during the run.
    pub cpu_s: f64,
    /// CPU seconds of its upstream; none on a path without one.
    pub upstream_cpu_s: Option<f64>,
    /// Bytes relayed, both directions.
    pub bytes: u64,
    /// The relay's RSS before and after the run, KiB.
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
}

/// A relay's RSS before and while idle connections are held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleMemory {
    pub path: String,
    /// Connections asked for, and held once the client was ready.
    pub requested: u64,
    pub connections: u64,
    /// KiB, before the connections and while they are held.
    pub rss_kib_before: u64,
    pub rss_kib_held: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A load line is flat: the workload's figures beside the path's.
    #[test]
    fn a_load_line_is_flat_and_reads_back() {
        let record = Record::Load(Load {
            path: "env-var".into(),
            round: 2,
            server: "10.249.0.2:7100".parse().unwrap(),
            proxy: Some("10.249.0.2:3128".parse().unwrap()),
            measured: Measured::Rate(Rate {
                concurrency: 32,
                ok: 900,
                errors: 1,
                conn_per_s: 450.5,
            }),
        });
        let line = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            json!({"kind": "load", "path": "env-var", "round": 2, "server": "10.249.0.2:7100",
                "proxy": "10.249.0.2:3128", "workload": "rate", "concurrency": 32, "ok": 900,
                "errors": 1, "conn_per_s": 450.5})
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
        assert_eq!(record.path(), Some("env-var"));
        assert_eq!(record.round(), Some(2));
    }

    /// The lines bench.sh prints, as it prints them.
    #[test]
    fn bench_sh_lines_read() {
        let run: Record = serde_json::from_str(
            r#"{"kind":"paths","paths":["direct","redirector"],"workloads":["bulk","memory"],"rounds":1,"bulk_bytes":67108864,"idle_connections":200,"quick":true}"#,
        )
        .unwrap();
        let Record::Paths(run) = run else {
            panic!("{run:?}")
        };
        assert_eq!(
            (run.paths.len(), run.bulk_bytes, run.quick),
            (2, 64 << 20, true)
        );

        // Integral CPU seconds and no upstream (redsocks to nothing): still a cost.
        let cost: Record = serde_json::from_str(
            r#"{"kind":"daemon","path":"redirector","round":1,"cpu_s":1,"upstream_cpu_s":null,"bytes":134217728,"rss_kib_before":4000,"rss_kib_after":5000}"#,
        )
        .unwrap();
        let Record::Daemon(cost) = cost else {
            panic!("{cost:?}")
        };
        assert_eq!((cost.cpu_s, cost.upstream_cpu_s), (1.0, None));

        let memory: Record = serde_json::from_str(
            r#"{"kind":"memory","path":"redsocks","requested":2000,"connections":1999,"rss_kib_before":900,"rss_kib_held":5000}"#,
        )
        .unwrap();
        assert_eq!(memory.path(), Some("redsocks"));
        assert_eq!(memory.round(), None);
    }

    #[test]
    fn a_line_that_drifted_does_not_read() {
        for line in [
            r#"{"kind":"cpu","path":"redirector"}"#,
            r#"{"kind":"memory","path":"redsocks","connections":5}"#,
            r#"{"kind":"load","path":"direct","round":1,"server":"10.0.0.1:1","proxy":null,"workload":"bulk","bytes":1}"#,
        ] {
            assert!(serde_json::from_str::<Record>(line).is_err(), "{line}");
        }
    }
}
