//! Bulk lanes: wide socket buffers for the few connections that move a lot.
//!
//! Every relayed socket starts with small buffers (`--socket-buffer`, 32
//! KiB) so that the connection cap can count thousands of connections at
//! their worst within the daemon's memory limit. A bulk transfer through
//! such sockets pays a wake-up and a splice per 64 KiB and a small TCP
//! window: redirector/env-var bulk 0.65 up and 0.55 down, against 0.76 and
//! 0.84 with 4 MiB buffers (docs/benchmarks.md). A lane widens both sockets
//! of one connection once it has moved [`PROMOTE_AFTER`] bytes. Lanes are
//! few (`--bulk-lanes`) and the memory budget reserves each one's extra
//! buffers at their worst, so the cap still holds whatever the pods do; a
//! connection that finds every lane taken keeps its small buffers.
use std::{
    fmt, io,
    sync::atomic::{AtomicBool, Ordering},
};

use socket2::SockRef;
use tokio::{net::TcpStream, sync::Semaphore};

use crate::socket_options::{KernelBuffers, force_recv_buffer, force_send_buffer, setsockopt_int};

/// Bytes a connection moves, one way or the other, before it asks for a
/// lane: short exchanges (API calls, small pages) never take one.
pub const PROMOTE_AFTER: u64 = 1 << 20;
/// `--bulk-buffer` when not given: set from the start, 4 MiB halved the
/// daemon's CPU per GiB relayed and gained most of the bulk throughput;
/// as a lane, a third less CPU per GiB (docs/benchmarks.md).
pub const DEFAULT_BUFFER: usize = 4 << 20;
/// `--bulk-lanes` when not given.
pub const DEFAULT_LANES: usize = 2;

/// What happens to lanes, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneEvent {
    /// A connection took a lane.
    Granted,
    /// A connection asked while every lane was held: it keeps small buffers.
    AllTaken,
    /// A connection with a lane ended.
    GivenBack,
}

/// Told of every [`LaneEvent`].
pub type LaneObserver = Box<dyn Fn(LaneEvent) + Send + Sync>;

/// The node's lanes, shared by every connection.
pub struct BulkLanes {
    free: Semaphore,
    /// `SO_RCVBUF`/`SO_SNDBUF` of a widened socket (forced past
    /// `net.core.rmem_max`/`wmem_max`, as the budget counted them).
    buffer: usize,
    observe: LaneObserver,
}

impl fmt::Debug for BulkLanes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkLanes")
            .field("free", &self.free.available_permits())
            .field("buffer", &self.buffer)
            .finish()
    }
}

/// One connection's ask for a lane: made once, by whichever direction
/// first passes [`PROMOTE_AFTER`]; the lane is given back when this is
/// dropped, however the relay ends. Small on purpose: it lives in every
/// relaying connection's task.
#[derive(Debug)]
pub struct Promotion<'a> {
    lanes: &'a BulkLanes,
    asked: AtomicBool,
    granted: AtomicBool,
}

impl BulkLanes {
    pub fn new(lanes: usize, buffer: usize, observe: LaneObserver) -> Self {
        BulkLanes {
            free: Semaphore::new(lanes),
            buffer,
            observe,
        }
    }

    /// No lanes: every connection keeps its small buffers.
    pub fn none() -> Self {
        Self::new(0, DEFAULT_BUFFER, Box::new(|_| {}))
    }

    /// A connection's promotion, not asked yet.
    pub fn promotion(&self) -> Promotion<'_> {
        Promotion {
            lanes: self,
            asked: AtomicBool::new(false),
            granted: AtomicBool::new(false),
        }
    }
}

impl Promotion<'_> {
    /// After `moved` bytes in one direction: the first time the connection
    /// passes [`PROMOTE_AFTER`], widens both its sockets if a lane is free.
    pub fn after(&self, moved: u64, a: &TcpStream, b: &TcpStream) {
        if moved < PROMOTE_AFTER
            || self.asked.load(Ordering::Relaxed)
            || self.asked.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let lanes = self.lanes;
        let Ok(permit) = lanes.free.try_acquire() else {
            (lanes.observe)(LaneEvent::AllTaken);
            return;
        };
        // Given back in `drop`, not by the permit.
        permit.forget();
        self.granted.store(true, Ordering::Relaxed);
        (lanes.observe)(LaneEvent::Granted);
        // Best effort: a socket that refuses keeps working as it was (the
        // lane stays held: its reservation is what the budget counted).
        let widened = widen(SockRef::from(a), lanes.buffer);
        if let Err(e) = widened.and_then(|()| widen(SockRef::from(b), lanes.buffer)) {
            tracing::debug!(error = %e, "could not widen a bulk connection's sockets");
        }
    }

    /// Whether this connection holds a lane.
    pub fn granted(&self) -> bool {
        self.granted.load(Ordering::Relaxed)
    }
}

impl Drop for Promotion<'_> {
    fn drop(&mut self) {
        if self.granted() {
            self.lanes.free.add_permits(1);
            (self.lanes.observe)(LaneEvent::GivenBack);
        }
    }
}

/// Both queue limits to `buffer` (forced past the sysctls: the daemon has
/// `CAP_NET_ADMIN`, and the budget counted this size), and the window
/// clamp to match: the kernel fixed it at the handshake from the small
/// buffer. The window can grow that far because the SYN offered the scale
/// for it (`SocketOptions::scale_for`).
fn widen(sock: SockRef<'_>, buffer: usize) -> io::Result<()> {
    force_recv_buffer(&sock, buffer)?;
    force_send_buffer(&sock, buffer)?;
    // The kernel doubles the buffers: the window may use the receive
    // queue's limit.
    let clamp = libc::c_int::try_from(buffer.saturating_mul(2)).unwrap_or(libc::c_int::MAX);
    setsockopt_int(&sock, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, clamp)
}

/// The queue limits a widened socket gets on this kernel, read back from a
/// socket that is never connected: what the memory budget reserves.
pub fn kernel_buffers(buffer: usize) -> io::Result<KernelBuffers> {
    KernelBuffers::after(|socket| widen(socket, buffer))
}
