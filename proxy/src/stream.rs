//! The client connection's byte stream as hyper sees it: the strict HTTP/1
//! gate on the read side, and the header-read and idle timeouts.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::gate::{Gate, POISON};
use crate::limit::{LINGER_BYTES, LINGER_QUIET, LINGER_TIME};

pub(crate) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

pub(crate) struct GuardedStream<T> {
    inner: T,
    /// `None` for HTTP/2, whose framing hyper's h2 checks strictly.
    gate: Option<Gate>,
    released: BytesMut,
    poisoned: bool,
    timeouts: Timeouts,
    last_activity: Instant,
    head_started: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
    /// After a refusal, once shut for writing: when lingering ends, and
    /// how many more bytes it reads (see crate::limit::LINGER_TIME).
    linger: Option<(Instant, usize)>,
}

impl<T> GuardedStream<T> {
    pub(crate) fn new(inner: T, gate: Option<Gate>, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        // The first request head is due within the header timeout: a client
        // that connects and says nothing is a slowloris too.
        let first = now + timeouts.header_read.min(timeouts.idle);
        GuardedStream {
            inner,
            gate,
            released: BytesMut::new(),
            poisoned: false,
            timeouts,
            last_activity: now,
            head_started: Some(now),
            sleep: Box::pin(tokio::time::sleep_until(first)),
            linger: None,
        }
    }

    fn deadline(&self) -> Instant {
        match self.head_started {
            Some(start) => {
                (start + self.timeouts.header_read).min(self.last_activity + self.timeouts.idle)
            }
            None => self.last_activity + self.timeouts.idle,
        }
    }

    /// Ready with an error once the deadline has passed. The sleep is reset
    /// only when it would fire too late, so busy connections don't touch
    /// the timer wheel on every read.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.deadline();
            if self.sleep.deadline() > deadline {
                self.sleep.as_mut().reset(deadline);
            }
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                let what = if self.head_started.is_some() {
                    "request header read timed out"
                } else {
                    "idle connection timed out"
                };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.released.is_empty() {
                let n = this.released.len().min(buf.remaining());
                buf.put_slice(&this.released[..n]);
                this.released.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.poisoned {
                return Poll::Ready(Ok(()));
            }
            if let Some(gate) = this.gate.as_mut() {
                if gate.take_switch(&mut this.released) {
                    this.head_started = None;
                    continue;
                }
                if gate.hold_full() {
                    return match this.poll_deadline(cx) {
                        Poll::Ready(e) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
            let Some(gate) = this.gate.as_mut() else {
                let before = buf.filled().len();
                return match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Ready(r) => {
                        if buf.filled().len() > before {
                            this.last_activity = Instant::now();
                            this.head_started = None;
                        }
                        Poll::Ready(r)
                    }
                    Poll::Pending => match this.poll_deadline(cx) {
                        Poll::Ready(e) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    },
                };
            };
            let mut space = [MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut tmp = ReadBuf::uninit(&mut space);
            match Pin::new(&mut this.inner).poll_read(cx, &mut tmp) {
                Poll::Pending => {
                    return match this.poll_deadline(cx) {
                        Poll::Ready(e) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = tmp.filled();
            if data.is_empty() {
                // EOF; a partial head held back dies with the connection.
                return Poll::Ready(Ok(()));
            }
            this.last_activity = Instant::now();
            if let Err(violation) = gate.feed(data, &mut this.released) {
                tracing::debug!(?violation, "malformed request refused");
                this.released.extend_from_slice(POISON);
                this.poisoned = true;
            }
            this.head_started = match (gate.head_pending(), this.head_started) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(this.last_activity),
                (false, _) => None,
            };
        }
    }
}

impl<T> GuardedStream<T> {
    /// A write that waits is held to the idle deadline too: a client that
    /// stops reading (an upgraded connection's, whose tunnel then waits
    /// on this write and reads nothing) is not kept for ever.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.last_activity = Instant::now();
                r
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
            r => r,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// hyper shuts the connection down after its answer to a refused
    /// request; then what the client still sends is drained (bounded), so
    /// that the close does not reset the connection and lose the answer.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let refused = this.poisoned || this.gate.as_ref().is_some_and(Gate::gave_up);
        if !refused {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        }
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let now = Instant::now();
            this.linger = Some((now + LINGER_TIME, LINGER_BYTES));
            this.sleep
                .as_mut()
                .reset((now + LINGER_QUIET).min(now + LINGER_TIME));
        }
        loop {
            let Some((end, left)) = this.linger.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            if *left == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut space = [MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut tmp = ReadBuf::uninit(&mut space);
            match Pin::new(&mut this.inner).poll_read(cx, &mut tmp) {
                Poll::Ready(Ok(())) if !tmp.filled().is_empty() => {
                    *left = left.saturating_sub(tmp.filled().len());
                    let quiet = (Instant::now() + LINGER_QUIET).min(*end);
                    this.sleep.as_mut().reset(quiet);
                }
                // The client closed, or the connection failed.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    ready!(this.sleep.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}
