//! Hand-over between two instances of the daemon on one node: the running
//! one gives its listening sockets to its successor, which then attaches
//! its hooks, and only then does the running one stop accepting and drain.
//!
//! The sockets themselves change hands (`SCM_RIGHTS` over a unix socket,
//! `<--handover-dir>/handover.sock`), not just the address: both instances
//! accept from one accept queue, and a connection waiting in it is accepted
//! by whichever instance calls `accept` next. Two sockets on one address
//! (`SO_REUSEPORT`) would each have a queue of their own, and closing the
//! old one resets what waits in its queue unless `net.ipv4.tcp_migrate_req`
//! is set, which a container cannot set. The original destinations are
//! shared too (pinned maps, see `hook::shared`), so neither instance ever
//! lacks the destination of a connection the other's hook saved.
//!
//! The exchange, one line each way at a time:
//!
//! ```text
//! successor                                running instance
//!   redirector-handover 1 pins=DIR   ──►
//!                                    ◄──   offer 1 cgroup=ID listeners=N   (+ N sockets)
//!   (exempts cgroup ID, attaches its
//!    hooks, accepts, publishes its own
//!    handover.sock)
//!   attached                         ──►
//!                                    ◄──   draining   (stops accepting, drains)
//! ```
//!
//! or `refuse REASON` instead of the offer (another pin directory, another
//! protocol version). Both keep accepting until `attached`, so there is no
//! moment without an instance taking connections. A successor that goes
//! away before `attached` changes nothing. The running instance's own
//! cgroup is exempted by the successor's hooks: its connects to the proxy
//! while it drains must not be redirected, and the successor's hooks honour
//! the socket mark only from the successor's own cgroup.
//!
//! Only a process of the same user may connect (`SO_PEERCRED`), in a
//! directory only that user may enter.
mod fds;
mod listener;

use std::{
    fs,
    io::{self, ErrorKind},
    net::SocketAddr,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::{DirBuilderExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    io::Interest,
    net::{UnixListener, UnixStream},
    sync::mpsc,
    time::timeout,
};

pub use listener::HeldListener;

/// The socket's name in `--handover-dir`.
pub const SOCKET: &str = "handover.sock";
/// The version of the exchange above.
const VERSION: u32 = 1;
/// A successor says what it wants at once.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A successor has loaded its programs before it asks: attaching and
/// starting to accept take well under a second.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a successor waits for the running instance's last word.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new instance waits for an address in use to be handed over
/// (an instance may be between two hand-overs for a moment).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
const LINE_MAX: usize = 4096;

/// What a hand-over means for the running instance, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A successor holds the listeners now (both accept): the metrics
    /// address answers for the successor from here on.
    Offered,
    /// The successor went away before it attached: nothing changed.
    Aborted(String),
    /// The successor attached its hooks and accepts: stop accepting, drain.
    Completed,
}

/// What a successor must share with the running instance to take over.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The pin directory (`--bpffs`), canonical: instances of another pin
    /// directory are other installations and never hand over.
    pub pins: PathBuf,
    /// The running instance's cgroup id, exempted by the successor.
    pub cgroup: u64,
}

impl Identity {
    pub fn new(pins: &Path, cgroup: u64) -> Result<Self> {
        let pins = fs::canonicalize(pins).with_context(|| format!("{}", pins.display()))?;
        Ok(Self { pins, cgroup })
    }
}

/// The hand-over socket of this instance: bound at start (a directory that
/// cannot hold it stops the start), published once this instance serves.
pub struct Server {
    listener: UnixListener,
    dir: PathBuf,
    bound: PathBuf,
}

impl Server {
    /// Binds a socket of our own in `dir` (made, mode 0700, if missing).
    pub fn bind(dir: &Path) -> Result<Self> {
        let hint = "the directory holds the hand-over socket between instances (a hostPath \
                    in the DaemonSet)";
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("--handover-dir {}: {hint}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("--handover-dir {}: {hint}", dir.display()))?;
        let bound = dir.join(format!("{SOCKET}-{}", std::process::id()));
        let _ = fs::remove_file(&bound);
        let listener = UnixListener::bind(&bound).with_context(|| {
            format!(
                "--handover-dir {}: binding {}",
                dir.display(),
                bound.display()
            )
        })?;
        Ok(Self {
            listener,
            dir: dir.to_owned(),
            bound,
        })
    }

    /// Makes this instance the one the next successor finds: an atomic
    /// rename over the previous instance's socket, so the name always leads
    /// to an instance that holds the listeners.
    pub fn publish(&self) -> Result<()> {
        let path = self.dir.join(SOCKET);
        fs::rename(&self.bound, &path)
            .with_context(|| format!("publishing the hand-over socket {}", path.display()))
    }

    /// Answers successors, one at a time, until one has taken over; after
    /// that it holds nothing and never ends (a supervised task).
    pub async fn serve(
        self,
        held: Arc<Vec<HeldListener>>,
        me: Identity,
        events: mpsc::Sender<Event>,
    ) -> Result<()> {
        loop {
            let (stream, _) = self
                .listener
                .accept()
                .await
                .context("accepting on the hand-over socket")?;
            match answer(&stream, &held, &me, &events).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "hand-over: a successor failed")
                }
            }
        }
        drop(self.listener);
        drop(held);
        std::future::pending().await
    }
}

/// One successor's request: `Ok(true)` once it has taken over.
async fn answer(
    stream: &UnixStream,
    held: &[HeldListener],
    me: &Identity,
    events: &mpsc::Sender<Event>,
) -> Result<bool> {
    let peer = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if peer.uid() != uid {
        write_line(stream, "refuse another user").await?;
        bail!("refused a successor of uid {} (ours: {uid})", peer.uid());
    }
    let hello = timeout(HELLO_TIMEOUT, read_line(stream))
        .await
        .map_err(|_| anyhow!("no request within {HELLO_TIMEOUT:?}"))??;
    let (version, pins) = parse_hello(&hello)?;
    if version != VERSION {
        write_line(
            stream,
            &format!("refuse version {version} (this instance speaks {VERSION})"),
        )
        .await?;
        bail!("refused a successor speaking version {version}");
    }
    if pins != me.pins {
        write_line(
            stream,
            &format!(
                "refuse pins={} (this instance: {})",
                pins.display(),
                me.pins.display()
            ),
        )
        .await?;
        bail!(
            "refused a successor of another pin directory ({})",
            pins.display()
        );
    }
    let fds: Vec<BorrowedFd<'_>> = held.iter().map(AsFd::as_fd).collect();
    let offer = format!(
        "offer {VERSION} cgroup={} listeners={}\n",
        me.cgroup,
        fds.len()
    );
    stream
        .async_io(Interest::WRITABLE, || {
            fds::send(stream.as_fd(), offer.as_bytes(), &fds)
        })
        .await
        .context("sending the listeners")?;
    let addrs: Vec<SocketAddr> = held.iter().map(HeldListener::addr).collect();
    tracing::info!(pid = peer.pid(), listeners = ?addrs, "hand-over: a new instance holds our listeners");
    let _ = events.send(Event::Offered).await;
    let reply = match timeout(ATTACH_TIMEOUT, read_line(stream)).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => return aborted(events, format!("{e}")).await,
        Err(_) => return aborted(events, format!("not attached within {ATTACH_TIMEOUT:?}")).await,
    };
    if reply != "attached" {
        return aborted(events, format!("unexpected `{reply}`")).await;
    }
    let _ = events.send(Event::Completed).await;
    write_line(stream, "draining").await?;
    Ok(true)
}

async fn aborted(events: &mpsc::Sender<Event>, why: String) -> Result<bool> {
    let _ = events.send(Event::Aborted(why.clone())).await;
    bail!("the new instance went away before it attached: {why}")
}

fn parse_hello(line: &str) -> Result<(u32, PathBuf)> {
    let bad = || anyhow!("not a hand-over request: `{line}`");
    let rest = line.strip_prefix("redirector-handover ").ok_or_else(bad)?;
    let (version, pins) = rest.split_once(' ').ok_or_else(bad)?;
    let pins = pins.strip_prefix("pins=").ok_or_else(bad)?;
    Ok((version.parse().map_err(|_| bad())?, PathBuf::from(pins)))
}

/// The running instance this one takes over from, between its offer and
/// our confirmation.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
    /// Its cgroup id, for our exempt map.
    pub cgroup: u64,
    /// Its pid, for logs.
    pub pid: Option<i32>,
}

impl Predecessor {
    /// Tells it we are attached and accepting; it stops accepting and
    /// drains. Without its answer it may still be accepting, which is
    /// harmless: both serve the same socket with the same maps.
    pub async fn confirm(self) -> Result<()> {
        write_line(&self.stream, "attached").await?;
        match timeout(CONFIRM_TIMEOUT, read_line(&self.stream)).await {
            Ok(Ok(line)) if line == "draining" => Ok(()),
            Ok(Ok(line)) => bail!("unexpected answer `{line}`"),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("no answer within {CONFIRM_TIMEOUT:?}"),
        }
    }
}

/// The listening sockets for `addrs`, in that order: those a running
/// instance offers, else bound here. An address in use and not offered is
/// waited for a while (an instance may be between two hand-overs), then an
/// error that says what to do.
pub async fn acquire(
    dir: &Path,
    pins: &Path,
    addrs: &[SocketAddr],
) -> Result<(Option<Predecessor>, Vec<HeldListener>)> {
    acquire_within(dir, pins, addrs, ACQUIRE_TIMEOUT).await
}

async fn acquire_within(
    dir: &Path,
    pins: &Path,
    addrs: &[SocketAddr],
    wait: Duration,
) -> Result<(Option<Predecessor>, Vec<HeldListener>)> {
    let deadline = Instant::now() + wait;
    loop {
        let (predecessor, mut offered) = match ask(dir, pins).await? {
            Some((p, offered)) => (Some(p), offered),
            None => (None, Vec::new()),
        };
        let mut out = Vec::new();
        let mut in_use = None;
        for addr in addrs {
            if let Some(i) = offered.iter().position(|l| l.addr() == *addr) {
                out.push(offered.swap_remove(i));
                continue;
            }
            match crate::server::listen(*addr).and_then(HeldListener::from_tokio) {
                Ok(l) => out.push(l),
                Err(e) if e.kind() == ErrorKind::AddrInUse => {
                    in_use = Some(*addr);
                    break;
                }
                Err(e) => return Err(e).with_context(|| format!("listening on {addr}")),
            }
        }
        let Some(addr) = in_use else {
            return Ok((predecessor, out));
        };
        if Instant::now() >= deadline {
            bail!(
                "listening on {addr}: address in use, and no running instance handed it over \
                 through {}: another program holds it, or an instance that cannot hand over \
                 (one with another --handover-dir, or a release without hand-over): stop it first",
                dir.join(SOCKET).display()
            );
        }
        drop((predecessor, out, offered));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asks the instance behind `dir`'s socket, if any, for its listeners.
async fn ask(dir: &Path, pins: &Path) -> Result<Option<(Predecessor, Vec<HeldListener>)>> {
    let path = dir.join(SOCKET);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        // Nobody there: the first instance, or the last one was killed.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let pins = fs::canonicalize(pins).with_context(|| format!("{}", pins.display()))?;
    write_line(
        &stream,
        &format!("redirector-handover {VERSION} pins={}", pins.display()),
    )
    .await?;
    let (line, received) = match timeout(HELLO_TIMEOUT, recv_offer(&stream)).await {
        Ok(Ok(got)) => got,
        // It went away (it has just handed over to another): try again.
        Ok(Err(e))
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(None);
        }
        Ok(Err(e)) => return Err(e).context("reading the running instance's offer"),
        Err(_) => bail!("the running instance did not answer within {HELLO_TIMEOUT:?}"),
    };
    if let Some(reason) = line.strip_prefix("refuse ") {
        bail!(
            "the running instance behind {} refuses to hand over: {reason}",
            path.display()
        );
    }
    let (cgroup, count) = parse_offer(&line)?;
    if count != received.len() {
        bail!(
            "the running instance announced {count} listeners and sent {}",
            received.len()
        );
    }
    let listeners = received
        .into_iter()
        .map(HeldListener::from_received)
        .collect::<io::Result<Vec<_>>>()?;
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let addrs: Vec<SocketAddr> = listeners.iter().map(HeldListener::addr).collect();
    tracing::info!(pid, listeners = ?addrs, "taking over the listeners of the running instance");
    Ok(Some((
        Predecessor {
            stream,
            cgroup,
            pid,
        },
        listeners,
    )))
}

fn parse_offer(line: &str) -> Result<(u64, usize)> {
    let bad = || anyhow!("not a hand-over offer: `{line}`");
    let mut words = line.split(' ');
    if words.next() != Some("offer") || words.next() != Some("1") {
        return Err(bad());
    }
    let mut field = |key: &str| {
        words
            .next()
            .and_then(|w| w.strip_prefix(key))
            .ok_or_else(bad)
    };
    let cgroup = field("cgroup=")?.parse().map_err(|_| bad())?;
    let count = field("listeners=")?.parse().map_err(|_| bad())?;
    Ok((cgroup, count))
}

/// The offer line and the sockets that came with it.
async fn recv_offer(stream: &UnixStream) -> io::Result<(String, Vec<std::os::fd::OwnedFd>)> {
    let mut buf = vec![0u8; LINE_MAX];
    let (n, fds) = stream
        .async_io(Interest::READABLE, || fds::recv(stream.as_fd(), &mut buf))
        .await?;
    if n == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    // One message carries the whole line: it is sent in one sendmsg, and a
    // unix stream socket never merges a message carrying descriptors.
    let line = buf[..n]
        .strip_suffix(b"\n")
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "the offer is not one line"))?;
    Ok((String::from_utf8_lossy(line).into_owned(), fds))
}

/// Reads one line (the peer sends nothing after it until we answer).
async fn read_line(stream: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        // One byte at a time: never read into what comes next (descriptors
        // attached to a later message would be lost). Lines are a few bytes.
        let mut byte = [0u8; 1];
        stream.readable().await?;
        match stream.try_read(&mut byte) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) if line.len() >= LINE_MAX => {
                return Err(io::Error::new(ErrorKind::InvalidData, "line too long"));
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

async fn write_line(stream: &UnixStream, line: &str) -> io::Result<()> {
    let bytes = format!("{line}\n").into_bytes();
    let mut sent = 0;
    while sent < bytes.len() {
        stream.writable().await?;
        match stream.try_write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
