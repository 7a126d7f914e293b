//! A listening socket the daemon holds, serves and may hand over. The
//! daemon keeps this descriptor; each accept loop works on a duplicate, so
//! that stopping a loop never closes the socket, and handing it over gives
//! the successor the very same socket, accept queue included.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

#[derive(Debug)]
pub struct HeldListener {
    addr: SocketAddr,
    fd: OwnedFd,
}

impl HeldListener {
    /// Takes a listener the daemon has just bound.
    pub fn from_tokio(listener: TcpListener) -> io::Result<Self> {
        let std = listener.into_std()?;
        Ok(Self {
            addr: std.local_addr()?,
            fd: std.into(),
        })
    }

    /// Takes a descriptor received from another instance, after checking
    /// that it is what it must be: a listening TCP socket.
    pub fn from_received(fd: OwnedFd) -> io::Result<Self> {
        let socket = Socket::from(fd);
        let domain = socket.domain()?;
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        if domain != Domain::IPV4 && domain != Domain::IPV6 {
            return Err(invalid("a received descriptor is not an IP socket"));
        }
        if socket.r#type()? != Type::STREAM || !socket.is_listener()? {
            return Err(invalid(
                "a received descriptor is not a listening TCP socket",
            ));
        }
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| invalid("a received socket has no IP address"))?;
        Ok(Self {
            addr,
            fd: socket.into(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A listener for one accept loop, on a duplicate of the descriptor.
    /// Dropping it (stopping the loop) leaves the socket listening.
    pub fn serve(&self) -> io::Result<TcpListener> {
        let std = std::net::TcpListener::from(self.fd.try_clone()?);
        // O_NONBLOCK belongs to the socket's open file, shared with every
        // duplicate and every process holding it: all of them want it.
        std.set_nonblocking(true)?;
        TcpListener::from_std(std)
    }
}

impl AsFd for HeldListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_accept_loop_leaves_the_socket_listening() {
        let held =
            HeldListener::from_tokio(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let first = held.serve().unwrap();
        drop(first);
        // Still listening: a connect succeeds and a new loop accepts it.
        let client = tokio::net::TcpStream::connect(held.addr()).await.unwrap();
        let (_, peer) = held.serve().unwrap().accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = HeldListener::from_received(OwnedFd::from(listener)).unwrap();
        assert_eq!(held.addr(), addr);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(HeldListener::from_received(OwnedFd::from(udp)).is_err());
        let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(HeldListener::from_received(OwnedFd::from(unbound)).is_err());
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(HeldListener::from_received(OwnedFd::from(unix)).is_err());
    }
}
