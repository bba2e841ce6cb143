//! A client's TCP connection, registered with the runtime's poller only
//! once it has to wait. A client that sends its request with the
//! connection (the common case) and is answered at once, such as a
//! `Connection: close` request, costs no `epoll_ctl` at all, as in
//! HAProxy; one that has to wait (keep-alive, slow senders, TLS) is
//! registered at its first wait and stays so.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct ClientTcp {
    state: State,
    /// No wait yet: the first one is skipped, as a new connection's
    /// request usually came with it.
    fresh: bool,
}

enum State {
    /// Non-blocking, not yet known to the poller.
    Plain(std::net::TcpStream),
    Registered(TcpStream),
    /// Registration failed; every operation fails.
    Gone,
}

impl ClientTcp {
    /// `stream` must be non-blocking.
    pub(crate) fn new(stream: std::net::TcpStream) -> ClientTcp {
        ClientTcp {
            state: State::Plain(stream),
            fresh: true,
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.state {
            State::Plain(s) => s.local_addr(),
            State::Registered(s) => s.local_addr(),
            State::Gone => Err(gone()),
        }
    }

    /// The runtime's stream, registering it first if needed.
    pub(crate) fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if let State::Plain(_) = self.state {
            self.state = match std::mem::replace(&mut self.state, State::Gone) {
                State::Plain(s) => State::Registered(TcpStream::from_std(s)?),
                other => other,
            };
        }
        match &mut self.state {
            State::Registered(s) => Ok(s),
            _ => Err(gone()),
        }
    }

    /// Ready when a read may find bytes; at once the first time (the read
    /// finds out, and registers the stream if it has to wait).
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if std::mem::take(&mut self.fresh) {
            return Poll::Ready(Ok(()));
        }
        self.registered()?.poll_read_ready(cx)
    }

    /// A read returned less than it asked for.
    pub(crate) fn drained(&self) {
        if let State::Registered(s) = &self.state {
            super::local::drained(s);
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "client connection unusable")
}

impl AsyncRead for ClientTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Plain(s) = &mut this.state {
            match s.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(this.registered()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let State::Plain(s) = &mut this.state {
            match s.write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
        Pin::new(this.registered()?).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Plain(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            State::Registered(s) => Pin::new(s).poll_shutdown(cx),
            State::Gone => Poll::Ready(Err(gone())),
        }
    }
}
