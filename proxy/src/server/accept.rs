//! Accepting client connections without registering them with the
//! runtime's poller: a connection answered without ever waiting (the
//! common `Connection: close` request) then costs no `epoll_ctl` (see
//! `h1::ClientTcp`). The listening socket's readiness comes from tokio's
//! `AsyncFd`.
//!
//! Registering the listener is the one call that needs `unsafe`; it lives
//! in sotolito-sys (`register_listener`).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use socket2::SockRef;
use tokio::io::unix::AsyncFd;

/// A listening socket whose accepted connections are non-blocking and
/// not registered.
pub(super) struct Acceptor(AsyncFd<TcpListener>);

impl Acceptor {
    /// `listener` must be non-blocking.
    pub(super) fn new(listener: TcpListener) -> io::Result<Acceptor> {
        sotolito_sys::register_listener(listener).map(Acceptor)
    }

    pub(super) async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            let accepted = ready.try_io(|l| {
                SockRef::from(l.get_ref()).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            });
            if let Ok(r) = accepted {
                let (socket, addr) = r?;
                let peer = addr.as_socket().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "accepted a connection without an IP address",
                    )
                })?;
                return Ok((socket.into(), peer));
            }
        }
    }
}
