//! Original destination lookup: on accept, the client's address and port
//! lead to the destination it asked for, saved by the kernel hooks.
use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use aya::maps::{HashMap, IterableMap, MapData};
use redirector_ebpf::{CONFLICT, Endpoint, SavedDst};

use crate::{
    endpoint::{to_endpoint, to_socket_addr},
    ratelog::{self, RateLog},
};

/// A pod can make conflicts at will: rate-limited.
static CONFLICT_REFUSED: RateLog = RateLog::default_budget("client_address_conflict");

/// Where a redirected connection was originally going.
pub trait OriginalDst: Send + Sync + 'static {
    /// Takes (looks up and forgets) the original destination of the
    /// connection from `client`. `None`: the hook did not redirect it.
    fn take(&self, client: SocketAddr) -> Option<SocketAddr>;
}

/// The kernel map `DST_BY_CLIENT`, filled by the `rekey_client` program.
pub struct KernelOriginalDst {
    // aya's remove needs `&mut`; only the fallback path takes the lock.
    map: Mutex<HashMap<MapData, Endpoint, SavedDst>>,
    /// Cleared when the kernel lacks lookup-and-delete for this map type
    /// (before Linux 5.14): then a lookup and a delete, under the lock.
    atomic_take: AtomicBool,
}

impl KernelOriginalDst {
    pub fn new(map: HashMap<MapData, Endpoint, SavedDst>) -> Self {
        Self {
            map: Mutex::new(map),
            atomic_take: AtomicBool::new(true),
        }
    }
}

impl OriginalDst for KernelOriginalDst {
    fn take(&self, client: SocketAddr) -> Option<SocketAddr> {
        let key = to_endpoint(client);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if self.atomic_take.load(Ordering::Relaxed) {
            // One syscall, and the lock is not held across it.
            let fd = IterableMap::map(&*map).fd().as_fd().as_raw_fd();
            drop(map);
            match lookup_and_delete(fd, &key) {
                Ok(saved) => return saved.as_ref().and_then(served_destination),
                Err(e) => {
                    tracing::info!(error = %e, "BPF lookup-and-delete unavailable; using lookup + delete");
                    self.atomic_take.store(false, Ordering::Relaxed);
                    map = self.map.lock().unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        let saved = map.get(&key, 0).ok()?;
        // Forget it now: the client port may be reused by a later connect.
        let _ = map.remove(&key);
        served_destination(&saved)
    }
}

/// The destination to serve, or `None` when two sockets claimed the same
/// client address: serving either could misroute the other's bytes.
fn served_destination(saved: &SavedDst) -> Option<SocketAddr> {
    if saved.state == CONFLICT {
        ratelog::warn!(
            CONFLICT_REFUSED,
            "two sockets claimed one client address (a pod bound another's address?); refused"
        );
        return None;
    }
    to_socket_addr(&saved.dst)
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (aya 0.14 does not expose it for hash
/// maps): `Ok(None)` when the key is absent, `Err` when the kernel cannot
/// do it for this map.
fn lookup_and_delete(map_fd: i32, key: &Endpoint) -> std::io::Result<Option<SavedDst>> {
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    /// The map-element member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = std::mem::MaybeUninit::<SavedDst>::zeroed();
    let attr = ElemAttr {
        map_fd: map_fd as u32,
        _pad: 0,
        key: key as *const Endpoint as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: attr points at a live key and a value buffer of the map's
    // value size (`Endpoint`, `SavedDst`); the fd is the map's and stays open
    // (owned by `self.map`) for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        // SAFETY: the kernel filled the value on success; SavedDst is POD.
        return Ok(Some(unsafe { value.assume_init() }));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}
