//! Reads a running daemon's relay figures from its own `/metrics`, for
//! `redirector status --metrics ADDR`: the pins say what the kernel does,
//! only the daemon knows which path its connections' bytes took.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::relay::RelayPath;

/// Bound on connecting, and on each read or write after.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Far more than the daemon's exposition (a few KiB); a peer that sends
/// more is not our daemon.
const MAX_ANSWER: u64 = 4 << 20;

/// The relay's figures, as the daemon counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFigures {
    /// Connections whose bytes the relay moved, per path, in
    /// [`RelayPath::ALL`] order; a path the daemon has no line for (an
    /// older daemon) is left out.
    pub paths: Vec<(RelayPath, u64)>,
    /// Bulk lanes held now, and how many there are.
    pub lanes_in_use: u64,
    pub lanes: u64,
}

/// Asks the daemon on `addr`; the error says why in one line.
pub fn relay_figures(addr: SocketAddr) -> Result<RelayFigures, String> {
    let answer = get_metrics(addr).map_err(|e| format!("{addr}: {e}"))?;
    let body = answer_body(&answer).map_err(|e| format!("{addr}: {e}"))?;
    parse(body).ok_or_else(|| format!("{addr}: the answer has no redirector relay metrics"))
}

fn get_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    // HTTP/1.0: the daemon answers with a length and closes, never chunked.
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: redirector\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    String::from_utf8(answer)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "answer is not UTF-8"))
}

/// The body of a `200` answer.
fn answer_body(answer: &str) -> Result<&str, String> {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or("no complete HTTP answer")?;
    let status = head.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(body),
        _ => Err(format!("answered {status:?}")),
    }
}

/// The relay's figures from OpenMetrics text; `None` if it has none of
/// them (another program on that port).
fn parse(text: &str) -> Option<RelayFigures> {
    let value = |wanted: &str| {
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == wanted)
                .then(|| value.parse::<u64>().ok())
                .flatten()
        })
    };
    let paths: Vec<(RelayPath, u64)> = RelayPath::ALL
        .into_iter()
        .filter_map(|path| {
            let name = format!(
                "redirector_relayed_connections_total{{path=\"{}\"}}",
                path.label()
            );
            Some((path, value(&name)?))
        })
        .collect();
    if paths.is_empty() {
        return None;
    }
    Some(RelayFigures {
        paths,
        lanes_in_use: value("redirector_bulk_lanes_in_use").unwrap_or(0),
        lanes: value("redirector_connection_limit{cap=\"bulk_lanes\"}").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::Metrics, relay::lanes::LaneEvent};

    #[test]
    fn reads_the_daemon_s_own_exposition() {
        let m = Metrics::new(None);
        m.set_connection_limits(100, 10, 2);
        m.record_relay_path(RelayPath::Splice);
        m.record_relay_path(RelayPath::BulkLane);
        m.record_relay_path(RelayPath::BulkLane);
        m.record_bulk_lane(LaneEvent::Granted);
        let figures = parse(&m.encode()).unwrap();
        assert_eq!(
            figures,
            RelayFigures {
                paths: vec![
                    (RelayPath::Splice, 1),
                    (RelayPath::BulkLane, 2),
                    (RelayPath::Tls, 0)
                ],
                lanes_in_use: 1,
                lanes: 2,
            }
        );
        assert_eq!(parse("# EOF\nsomething_else 3\n"), None);
    }

    #[test]
    fn asks_over_http_and_says_why_it_could_not() {
        let m = Metrics::new(None);
        m.record_relay_path(RelayPath::Tls);
        let body = m.encode();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::thread::spawn(move || {
            for answer in [
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                "HTTP/1.0 503 Service Unavailable\r\n\r\n".to_owned(),
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut head = [0u8; 256];
                let n = s.read(&mut head).unwrap();
                assert!(head[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let figures = relay_figures(addr).unwrap();
        assert_eq!(figures.paths[2], (RelayPath::Tls, 1));
        let refused = relay_figures(addr).unwrap_err();
        assert!(refused.contains("503"), "{refused}");
        served.join().unwrap();
        // Nobody listens there any more.
        let gone = relay_figures(addr).unwrap_err();
        assert!(gone.starts_with(&addr.to_string()), "{gone}");
    }
}
