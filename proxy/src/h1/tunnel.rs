//! An upgraded connection (WebSocket and the like) after the tenant's
//! 101: bytes copied both ways, each side's end passed on to the other
//! (half-close), until both have ended or nothing moved for the idle
//! timeout.
//!
//! The two directions move independently (a side that is not reading
//! holds up only what is sent to it), and a direction with nothing in
//! flight holds no buffer: a quiet WebSocket costs its sockets and this
//! state, not 80 KiB of buffers for its life.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn::{ClientIo, Timer};
use super::local::{drained, Buf};

/// A side of the tunnel, as the source of one direction.
trait Source: AsyncRead + Unpin {
    /// Ready when a read may find bytes (or the end).
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// A read found less than it asked for.
    fn drained(&self);
}

impl<T: ClientIo> Source for T {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ClientIo::poll_readable(self, cx)
    }

    fn drained(&self) {
        ClientIo::drained(self)
    }
}

impl Source for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn drained(&self) {
        drained(self)
    }
}

/// One direction: bytes read from a source, not yet all written on.
struct Direction<'b> {
    buf: &'b mut Buf,
    /// The source has not ended.
    open: bool,
    /// The end has been passed on (the other side shut down for writing).
    ended: bool,
    /// Written but perhaps not yet sent (TLS keeps records until a flush).
    unflushed: bool,
}

impl Direction<'_> {
    /// Moves what can move now, until it has to wait. Ready(Err) ends
    /// the tunnel; Ready(Ok) means bytes moved or the end was passed on;
    /// Pending means nothing could move (and no buffer is held unless
    /// bytes are in flight).
    fn poll_move<S: Source, D: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
    ) -> Poll<io::Result<()>> {
        let mut moved = false;
        loop {
            if !self.buf.is_empty() {
                match Pin::new(&mut *dst).poll_write(cx, self.buf.data()) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.buf.consume(n);
                        self.unflushed = true;
                        moved = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if self.unflushed {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            self.buf.release();
            if !self.open {
                if !self.ended {
                    // The other side may already be gone: its end is ours.
                    if Pin::new(&mut *dst).poll_shutdown(cx).is_pending() {
                        break;
                    }
                    self.ended = true;
                    moved = true;
                }
                break;
            }
            match src.poll_readable(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
            let spare = self.buf.spare();
            let want = spare.len();
            let mut rb = ReadBuf::new(spare);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.open = false;
                    } else {
                        if n < want {
                            src.drained();
                        }
                        self.buf.filled(n);
                    }
                    moved = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Nothing after all (the readiness was stale): wait again,
                // without the buffer.
                Poll::Pending => {
                    self.buf.release();
                    break;
                }
            }
        }
        if moved {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

pub(crate) async fn run<T: ClientIo>(
    client: &mut T,
    tenant: &mut TcpStream,
    cbuf: &mut Buf,
    tbuf: &mut Buf,
    idle: Duration,
) {
    let mut up = Direction {
        buf: cbuf,
        open: true,
        ended: false,
        unflushed: false,
    };
    let mut down = Direction {
        buf: tbuf,
        open: true,
        ended: false,
        unflushed: false,
    };
    let mut timer = Timer::new();
    let mut until = Instant::now() + idle;
    // Each direction moves until it has to wait (its wakers are then
    // registered), so one pass per wakeup is enough.
    let ended = poll_fn(|cx| {
        let mut moved = false;
        if !up.ended {
            match up.poll_move(cx, &mut *client, &mut *tenant) {
                Poll::Ready(Ok(())) => moved = true,
                Poll::Ready(Err(_)) => return Poll::Ready(true),
                Poll::Pending => {}
            }
        }
        if !down.ended {
            match down.poll_move(cx, &mut *tenant, &mut *client) {
                Poll::Ready(Ok(())) => moved = true,
                Poll::Ready(Err(_)) => return Poll::Ready(true),
                Poll::Pending => {}
            }
        }
        if up.ended && down.ended {
            return Poll::Ready(true);
        }
        if moved {
            until = Instant::now() + idle;
        }
        timer.poll_at(cx, until).map(|()| false)
    })
    .await;
    if !ended {
        tracing::debug!("upgraded connection idle; closed");
    }
}
