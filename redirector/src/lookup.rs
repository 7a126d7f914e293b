//! Original destination lookup: on accept, the client's address and port
//! lead to the destination it asked for, saved by the kernel hooks.
use std::{net::SocketAddr, sync::Mutex};

use aya::maps::{HashMap, MapData};
use redirector_ebpf::Endpoint;

use crate::endpoint::{to_endpoint, to_socket_addr};

/// Where a redirected connection was originally going.
pub trait OriginalDst: Send + Sync + 'static {
    /// Takes (looks up and forgets) the original destination of the
    /// connection from `client`. `None`: the hook did not redirect it.
    fn take(&self, client: SocketAddr) -> Option<SocketAddr>;
}

/// The kernel map `DST_BY_CLIENT`, filled by the `rekey_client` program.
pub struct KernelOriginalDst {
    // aya's remove needs `&mut`; the syscalls are short, so a mutex is fine.
    map: Mutex<HashMap<MapData, Endpoint, Endpoint>>,
}

impl KernelOriginalDst {
    pub fn new(map: HashMap<MapData, Endpoint, Endpoint>) -> Self {
        Self {
            map: Mutex::new(map),
        }
    }
}

impl OriginalDst for KernelOriginalDst {
    fn take(&self, client: SocketAddr) -> Option<SocketAddr> {
        let key = to_endpoint(client);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let dst = map.get(&key, 0).ok()?;
        // Forget it now: the client port may be reused by a later connect.
        let _ = map.remove(&key);
        to_socket_addr(&dst)
    }
}
