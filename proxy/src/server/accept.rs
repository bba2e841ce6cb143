//! Accepting client connections without registering them with the
//! runtime's poller: a connection answered without ever waiting (the
//! common `Connection: close` request) then costs no `epoll_ctl` (see
//! `h1::ClientTcp`). The listening socket's readiness comes from tokio's
//! `AsyncFd`.
//!
//! The one module of this crate allowed `unsafe`: tokio's
//! `AsyncFd::register_with_interest` is `unsafe` (the caller vouches that
//! the descriptor stays open while registered), and tokio's
//! `TcpListener` has no safe way to accept without registering what it
//! accepts.
#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A listening socket whose accepted connections are non-blocking and
/// not registered.
pub(super) struct Acceptor(AsyncFd<TcpListener>);

impl Acceptor {
    /// `listener` must be non-blocking.
    pub(super) fn new(listener: TcpListener) -> io::Result<Acceptor> {
        // SAFETY: the AsyncFd owns `listener` for its whole life and never
        // hands it out mutably; std's TcpListener closes its descriptor
        // only when dropped, which AsyncFd does after deregistering it.
        let fd = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
        fd.map(Acceptor).map_err(|e| e.into_parts().1)
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
