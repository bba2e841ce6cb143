//! One client connection through the engine: read a request head, plan
//! it (crate::h1::plan), write it with what of its body has arrived to a
//! pooled tenant connection in one write, relay the body, read the
//! response head, write it with what of its body has arrived in one
//! write, relay the rest; then the next request on the same connection.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use httparse::EMPTY_HEADER;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::client::ClientTcp;
use super::framing::Framer;
use super::head::{self, BodyKind};
use super::local::{drained, Buf, Local, Size};
use super::plan::{self, Forward, Plan};
use super::rewrite;
use crate::body::AccessLog;
use crate::forward::ConnCtx;
use crate::limit::{LINGER_BYTES, LINGER_QUIET, LINGER_TIME};

/// Headers a head may have at most (the setting may ask for fewer).
pub(crate) const MAX_HEADERS: usize = 128;

/// How often a request waiting on its tenant (connect, response head)
/// checks the tenant is still routed: one deprovisioned or stopped
/// meanwhile fails the request at once instead of after a timeout (an
/// address whose interface is gone answers nothing: ARP gives up after
/// ~3 s, an open connection waits for the upstream timeout).
const ROUTE_CHECK: Duration = Duration::from_millis(250);

/// How long a keep-alive connection waits for its next request in its
/// own task before it is parked (crate::server's park): a browser's
/// requests for one page follow each other within milliseconds, so this
/// keeps their task and buffers, while a connection idle longer costs
/// only its socket and a small record.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// A client connection's transport: plain TCP, or TLS.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready when a read would find bytes, so an idle connection holds no
    /// buffer.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether an idle connection can be parked: it buffers nothing of
    /// its own (TLS does).
    fn parkable(&self) -> bool {
        false
    }

    /// A read returned less than it asked for.
    fn drained(&self) {}
}

impl ClientIo for ClientTcp {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ClientTcp::poll_readable(self, cx)
    }

    fn parkable(&self) -> bool {
        true
    }

    fn drained(&self) {
        ClientTcp::drained(self);
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<ClientTcp> {
    /// rustls decrypts every complete record it reads: with no plaintext
    /// pending it wants more bytes, and the socket's readiness says when
    /// they come, so an idle TLS connection holds no request buffer
    /// either. Pending plaintext (or a close_notify) is read at once.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_mut();
        if !tls.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_readable(cx)
    }
}

/// Writes `buf` to the client and sees it sent: TLS may keep the last
/// records of a write while the socket is full, and they would then wait
/// for the next write (a response's tail behind an idle connection).
pub(crate) async fn send<W: AsyncWrite + Unpin>(io: &mut W, buf: &[u8]) -> io::Result<()> {
    io.write_all(buf).await?;
    io.flush().await
}

/// What ended an idle connection's wait.
enum Waited {
    Readable,
    Timer,
    /// Shutdown, or the connection failed.
    Gone,
}

/// How a client connection's task ended.
pub(crate) enum Served<T> {
    Done,
    /// Idle for [`PARK_AFTER`] with nothing of its own buffered: the
    /// caller parks `io` until `until`, its idle deadline.
    Park {
        io: T,
        until: Instant,
    },
}

/// One lazily re-armed timer per connection: it is moved only when a
/// deadline comes earlier than the one it is set for, so busy connections
/// do not touch the timer wheel on every wait.
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
}

impl Timer {
    pub(crate) fn new() -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        }
    }

    /// `f`'s output, or `None` once `deadline` has passed.
    pub(crate) async fn until<F: Future>(&mut self, deadline: Instant, f: F) -> Option<F::Output> {
        let mut f = pin!(f);
        poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            self.poll_at(cx, deadline).map(|()| None)
        })
        .await
    }

    /// Ready once `deadline` has passed.
    pub(crate) fn poll_at(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            if self.sleep.deadline() > deadline {
                self.sleep.as_mut().reset(deadline);
            }
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// A tenant connection lent to one exchange.
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub addr: std::net::SocketAddr,
    /// Came from the pool: a failure before any byte of the answer may be
    /// the tenant having closed it meanwhile, and the request is retried.
    pub reused: bool,
}

/// How an exchange ended for the client connection.
enum Next {
    KeepAlive,
    Close,
    /// Closed on a refusal: the client may still be sending (see [`linger`]).
    Refused,
    /// The client left or timed out: the connection is dropped.
    End,
}

/// Shuts the connection for writing and reads what the client still
/// sends, within bounds (crate::limit::LINGER_TIME): closing with unread
/// bytes would reset it and lose the answer.
async fn linger<T: ClientIo>(io: &mut T, timer: &mut Timer) {
    if io.shutdown().await.is_err() {
        return;
    }
    let end = Instant::now() + LINGER_TIME;
    let mut sink = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    while left > 0 {
        let until = (Instant::now() + LINGER_QUIET).min(end);
        match timer.until(until, io.read(&mut sink)).await {
            Some(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

pub(crate) struct Engine<'a> {
    pub ctx: &'a ConnCtx,
    pub local: &'a Arc<Local>,
    /// PROXY v2 header naming this client: its tenant connections are its
    /// own, never pooled.
    pub proxy_header: Option<&'a [u8]>,
}

/// What a client connection keeps between requests: small, as an idle
/// connection holds only this (and its socket and task).
struct Idle {
    timer: Timer,
    inb: Option<Buf>,
    out: Vec<u8>,
    /// With PROXY headers the tenant connection stays with its client.
    own: Option<Upstream>,
    start: Instant,
    first: bool,
}

impl Engine<'_> {
    /// Serves one client connection until it ends. (A plain function
    /// returning an `async move` block: an `async fn` would keep a second
    /// copy of its arguments in the future every idle connection holds.)
    pub(crate) fn serve<'s, T: ClientIo + 's>(
        &'s self,
        mut io: T,
        mut shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = Served<T>> + Send + 's {
        async move {
            let s = &self.ctx.shared.settings;
            let mut st = Idle {
                timer: Timer::new(),
                inb: None,
                out: Vec::new(),
                own: None,
                start: Instant::now(),
                first: true,
            };
            loop {
                if *shutdown.borrow() {
                    return Served::Done;
                }
                let now = Instant::now();
                let idle_until = if st.first {
                    st.start + s.header_read_timeout.min(s.idle_timeout)
                } else {
                    now + s.idle_timeout
                };
                if st.inb.as_ref().is_none_or(Buf::is_empty) {
                    st.inb = None;
                    self.local.put_out(std::mem::take(&mut st.out));
                    // A connection with its own tenant connection (PROXY
                    // headers) keeps it, and its task.
                    let park = io.parkable() && st.own.is_none();
                    let wake_at = if park {
                        (now + PARK_AFTER).min(idle_until)
                    } else {
                        idle_until
                    };
                    // Polled in place: a select over futures would keep
                    // each one's state in every idle connection.
                    let mut changed = pin!(shutdown.changed());
                    let timer = &mut st.timer;
                    let waited = poll_fn(|cx| {
                        if changed.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Waited::Gone);
                        }
                        match io.poll_readable(cx) {
                            Poll::Ready(Ok(())) => return Poll::Ready(Waited::Readable),
                            Poll::Ready(Err(_)) => return Poll::Ready(Waited::Gone),
                            Poll::Pending => {}
                        }
                        timer.poll_at(cx, wake_at).map(|()| Waited::Timer)
                    })
                    .await;
                    match waited {
                        Waited::Readable => {}
                        Waited::Timer if park && Instant::now() < idle_until => {
                            return Served::Park {
                                io,
                                until: idle_until,
                            };
                        }
                        _ => return Served::Done,
                    }
                }
                // Boxed: an exchange's state (kilobytes: every stage's
                // futures) exists only while a request is under way, so an
                // idle connection holds only `Idle`.
                let next = Box::pin(self.request(&mut io, &mut st, idle_until, &shutdown)).await;
                match next {
                    Next::KeepAlive => continue,
                    Next::End => {}
                    Next::Close => {
                        let _ = io.shutdown().await;
                    }
                    Next::Refused => {
                        // Boxed: only refused connections linger.
                        Box::pin(linger(&mut io, &mut st.timer)).await;
                    }
                }
                self.local.put_out(std::mem::take(&mut st.out));
                return Served::Done;
            }
        }
    }

    /// One request: its head read, planned and answered or forwarded.
    async fn request<T: ClientIo>(
        &self,
        io: &mut T,
        st: &mut Idle,
        idle_until: Instant,
        shutdown: &watch::Receiver<bool>,
    ) -> Next {
        let s = &self.ctx.shared.settings;
        let buf = st.inb.get_or_insert_with(|| self.local.buf(Size::Request));
        if st.out.capacity() == 0 {
            st.out = self.local.take_out();
        }
        let out = &mut st.out;
        // The first head is due within the header timeout of the
        // connection's start; later ones within it of their first byte.
        let head_until = st.first.then(|| st.start + s.header_read_timeout);
        st.first = false;
        // A pipelined request follows at once: `out` still holds the
        // last response's head, which a refusal must not repeat.
        out.clear();
        let Some(len) = self
            .read_head(io, buf, &mut st.timer, idle_until, head_until, out)
            .await
        else {
            if !out.is_empty() && send(io, out).await.is_ok() {
                return Next::Refused;
            }
            return Next::End;
        };
        let began = std::time::Instant::now();
        out.clear();
        let plan = plan::plan(self.ctx, &buf.data()[..len], out);
        buf.consume(len);
        match plan {
            Plan::Answer(answer) => {
                let tenant = answer.tenant.clone().unwrap_or_else(|| Arc::from(""));
                self.ctx
                    .stats
                    .record(&tenant, answer.code, began.elapsed().as_secs_f64());
                let log = answer.log.map(|l| {
                    let mut log = l.into_access_log(tenant, answer.code, began, self.ctx);
                    log.bytes = answer.body_len as u64;
                    log
                });
                let written = send(io, out).await;
                drop(log);
                if written.is_err() {
                    Next::Close
                } else if answer.close && matches!(answer.code, 400 | 405 | 431) {
                    // A refused client may still be sending.
                    Next::Refused
                } else if answer.close {
                    Next::Close
                } else {
                    Next::KeepAlive
                }
            }
            Plan::Forward(fwd) => {
                let draining = *shutdown.borrow();
                self.exchange(
                    io,
                    buf,
                    out,
                    &mut st.timer,
                    fwd,
                    began,
                    &mut st.own,
                    draining,
                )
                .await
            }
        }
    }

    /// Reads until a complete request head starts the buffer; its length.
    /// `None`: the connection ends, after `out` (a refusal) if not empty.
    /// While nothing has arrived the connection is idle (`idle_until`; a
    /// TLS connection waits here); then the head is due by `head_until`,
    /// or the header timeout after its first byte.
    async fn read_head<T: ClientIo>(
        &self,
        io: &mut T,
        buf: &mut Buf,
        timer: &mut Timer,
        idle_until: Instant,
        mut head_until: Option<Instant>,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        let max = self.ctx.shared.settings.max_header_bytes;
        let head_timeout = self.ctx.shared.settings.header_read_timeout;
        let mut scanned = 0;
        loop {
            let empty = head::leading_empty_lines(buf.data());
            if empty > 0 {
                buf.consume(empty);
                scanned = 0;
            }
            match head::head_end(buf.data(), scanned) {
                Ok(Some(len)) if len <= max => return Some(len),
                Ok(Some(_)) => {
                    rewrite::own_answer(431, true, &[], None, out);
                    return None;
                }
                Err(violation) => {
                    tracing::debug!(client = %self.ctx.peer, ?violation, "malformed request refused");
                    rewrite::own_answer(400, true, &[], None, out);
                    return None;
                }
                Ok(None) => {}
            }
            scanned = buf.len();
            if buf.len() >= max {
                rewrite::own_answer(431, true, &[], None, out);
                return None;
            }
            let until = if buf.is_empty() {
                idle_until
            } else {
                *head_until.get_or_insert_with(|| Instant::now() + head_timeout)
            };
            let spare = buf.spare();
            let want = spare.len();
            let n = match timer.until(until, io.read(spare)).await {
                Some(Ok(0)) | Some(Err(_)) => return None,
                Some(Ok(n)) => n,
                None => {
                    tracing::debug!(client = %self.ctx.peer, "request header read timed out");
                    return None;
                }
            };
            if n < want {
                io.drained();
            }
            buf.filled(n);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange<T: ClientIo>(
        &self,
        io: &mut T,
        buf: &mut Buf,
        out: &mut Vec<u8>,
        timer: &mut Timer,
        mut fwd: Forward,
        began: std::time::Instant,
        own: &mut Option<Upstream>,
        draining: bool,
    ) -> Next {
        let s = &self.ctx.shared.settings;
        let mut framer = match fwd.body {
            BodyKind::Length(n) => Some(Framer::length(n)),
            BodyKind::Chunked => Some(Framer::chunked()),
            BodyKind::None | BodyKind::Close => None,
        };
        let mut log = fwd
            .log
            .take()
            .map(|l| l.into_access_log(fwd.route.tenant.clone(), 0, began, self.ctx));
        // The body's start is read before the tenant is contacted, so one
        // malformed from its first bytes never reaches it.
        if let Some(f) = framer.as_mut() {
            if buf.is_empty() {
                if fwd.expect_continue && send(io, b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
                {
                    return Next::Close;
                }
                let until = Instant::now() + s.header_read_timeout;
                let spare = buf.spare();
                match timer.until(until, io.read(spare)).await {
                    Some(Ok(n)) if n > 0 => buf.filled(n),
                    _ => return self.refuse(io, 400, out).await,
                }
            }
            match f.advance(buf.data()) {
                Ok(step) => {
                    out.extend_from_slice(&buf.data()[..step.used]);
                    buf.consume(step.used);
                }
                Err(bad) => {
                    tracing::debug!(client = %self.ctx.peer, ?bad, "malformed request body refused");
                    return self.refuse(io, 400, out).await;
                }
            }
        }
        let body_pending = framer.as_ref().is_some_and(|f| !f.is_done());

        // Send: one write of head and buffered body; a reused connection
        // the tenant closed meanwhile is replaced once.
        let sent_at = Instant::now();
        let response_until = sent_at + s.upstream_timeout;
        let mut up = match self.send(own, &fwd, out, timer).await {
            Ok(up) => up,
            Err(code) => return self.fail(io, out, code, &fwd, began).await,
        };
        let mut rbuf = self.local.buf(Size::Response);

        // Relay the rest of the request body, unless the tenant answers
        // first (then the connection ends after the answer).
        let mut early = false;
        if let Some(f) = framer.as_mut().filter(|f| !f.is_done()) {
            match self.send_body(io, buf, &up.stream, f, timer).await {
                BodySent::Done => {}
                BodySent::Early => early = true,
                BodySent::ClientFailed(bad) => {
                    if bad {
                        return self.refuse(io, 400, out).await;
                    }
                    return Next::Close;
                }
                BodySent::TenantFailed => {
                    return self.fail(io, out, 502, &fwd, began).await;
                }
            }
        }

        // The response head.
        let head_len = loop {
            let read = if fwd.upgrade {
                // Boxed, as only upgrade requests wait this way.
                Box::pin(self.read_switch_head(
                    io,
                    buf,
                    &mut up,
                    &mut rbuf,
                    timer,
                    response_until,
                    &fwd,
                ))
                .await
            } else {
                self.read_response_head(&mut up, &mut rbuf, timer, response_until, &fwd)
                    .await
            };
            match read {
                Ok(len) => {
                    // Interim answers (100, 102, 103) are this hop's.
                    let code = rbuf.data().get(9..12).unwrap_or(b"000");
                    if code[0] == b'1' && code != b"101" {
                        rbuf.consume(len);
                        continue;
                    }
                    break len;
                }
                Err(ReadFail::Held) => {
                    tracing::debug!(client = %self.ctx.peer, "bytes after an upgrade request outlasted the request-head timeout");
                    return Next::Close;
                }
                Err(ReadFail::Timeout) => {
                    tracing::warn!(tenant = %fwd.route.tenant, upstream = %fwd.route.addr, timeout = ?s.upstream_timeout, "tenant too slow");
                    return self.fail(io, out, 504, &fwd, began).await;
                }
                Err(ReadFail::Closed) if up.reused && !body_pending && !early => {
                    // The tenant closed a pooled connection as we used it:
                    // the request never reached it. Once more, fresh.
                    up = match self.connect(&fwd, timer).await {
                        Ok(stream) => Upstream {
                            stream,
                            addr: fwd.route.addr,
                            reused: false,
                        },
                        Err(code) => return self.fail(io, out, code, &fwd, began).await,
                    };
                    if up.stream.write_all(&out[..]).await.is_err() {
                        return self.fail(io, out, 502, &fwd, began).await;
                    }
                    continue;
                }
                Err(why) => {
                    tracing::warn!(tenant = %fwd.route.tenant, upstream = %fwd.route.addr, ?why, "tenant answered no usable response");
                    return self.fail(io, out, 502, &fwd, began).await;
                }
            }
        };
        let upstream_time = sent_at.elapsed();
        out.clear();
        let res = match response_plan(rbuf.data(), head_len, &fwd, early || draining, out) {
            Ok(res) => res,
            Err(why) => {
                tracing::warn!(tenant = %fwd.route.tenant, upstream = %fwd.route.addr, why, "tenant response refused");
                return self.fail(io, out, 502, &fwd, began).await;
            }
        };
        let ResPlan {
            code,
            switched,
            close,
            body,
            reusable,
        } = res;
        let reusable = reusable && !early;
        rbuf.consume(head_len);
        self.ctx
            .stats
            .record(&fwd.route.tenant, code, began.elapsed().as_secs_f64());
        if let Some(l) = log.as_mut() {
            l.status = code;
            l.upstream = upstream_time;
        }

        if switched {
            out.extend_from_slice(rbuf.data());
            rbuf.consume(rbuf.len());
            if send(io, out).await.is_err() {
                return Next::Close;
            }
            drop(log);
            // What the client sent after its request was held until now.
            if !buf.is_empty() && up.stream.write_all(buf.data()).await.is_err() {
                return Next::Close;
            }
            buf.consume(buf.len());
            // Boxed: only upgraded connections need the tunnel's state.
            Box::pin(super::tunnel::run(
                io,
                &mut up.stream,
                buf,
                &mut rbuf,
                s.idle_timeout,
            ))
            .await;
            return Next::Close;
        }

        let mut framer = match body {
            BodyKind::None => None,
            BodyKind::Length(n) => Some(Framer::length(n)),
            BodyKind::Chunked => Some(Framer::chunked()),
            BodyKind::Close => Some(Framer::Close),
        };
        let mut sent_bytes = 0u64;
        let mut done = true;
        if let Some(f) = framer.as_mut() {
            match f.advance(rbuf.data()) {
                Ok(step) => {
                    out.extend_from_slice(&rbuf.data()[..step.used]);
                    sent_bytes += step.used as u64;
                    rbuf.consume(step.used);
                    done = step.done;
                }
                Err(bad) => {
                    tracing::warn!(tenant = %fwd.route.tenant, ?bad, "tenant response body refused");
                    out.clear();
                    return self.fail(io, out, 502, &fwd, began).await;
                }
            }
        }
        if send(io, out).await.is_err() {
            return Next::Close;
        }
        if !done {
            if let Some(f) = framer.as_mut() {
                match self
                    .relay_response(io, &up.stream, &mut rbuf, f, timer)
                    .await
                {
                    Ok(n) => sent_bytes += n,
                    Err(n) => {
                        if let Some(l) = log.as_mut() {
                            l.bytes = sent_bytes + n;
                        }
                        return Next::Close;
                    }
                }
            }
        }
        if let Some(l) = log.as_mut() {
            l.bytes = sent_bytes;
        }
        // Anything the tenant sent beyond its response spoils the
        // connection; so does an answer before the request was all sent.
        if reusable && rbuf.is_empty() && body != BodyKind::Close {
            up.reused = true;
            if self.proxy_header.is_some() {
                *own = Some(up);
            } else {
                self.local.put(up.addr, up.stream);
            }
        }
        drop(rbuf);
        if close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Writes `out` (head and buffered body) to a tenant connection.
    async fn send(
        &self,
        own: &mut Option<Upstream>,
        fwd: &Forward,
        out: &[u8],
        timer: &mut Timer,
    ) -> Result<Upstream, u16> {
        let addr = fwd.route.addr;
        let pooled = match own.take() {
            Some(up) if up.addr == addr => Some(up.stream),
            _ if self.proxy_header.is_some() => None,
            _ => self.local.take(addr),
        };
        if let Some(mut stream) = pooled {
            if stream.write_all(out).await.is_ok() {
                return Ok(Upstream {
                    stream,
                    addr,
                    reused: true,
                });
            }
        }
        let mut stream = self.connect(fwd, timer).await?;
        stream.write_all(out).await.map_err(|_| 502u16)?;
        Ok(Upstream {
            stream,
            addr,
            reused: false,
        })
    }

    /// A new connection to the route's tenant: 502 when refused or
    /// unreachable, 504 after the connect timeout.
    async fn connect(&self, fwd: &Forward, timer: &mut Timer) -> Result<TcpStream, u16> {
        let addr = fwd.route.addr;
        let until = Instant::now() + self.ctx.shared.settings.connect_timeout;
        let mut connecting = pin!(TcpStream::connect(addr));
        let stream = loop {
            let check = (Instant::now() + ROUTE_CHECK).min(until);
            match timer.until(check, connecting.as_mut()).await {
                Some(Ok(s)) => break s,
                Some(Err(e)) => {
                    tracing::warn!(tenant = %fwd.route.tenant, upstream = %addr, error = %e, "tenant unreachable");
                    return Err(502);
                }
                None if Instant::now() >= until => {
                    tracing::warn!(tenant = %fwd.route.tenant, upstream = %addr, "tenant connect timed out");
                    return Err(502);
                }
                None if !self.still_routed(fwd) => {
                    tracing::info!(tenant = %fwd.route.tenant, upstream = %addr, "tenant gone while connecting");
                    return Err(502);
                }
                None => {}
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        if let Some(header) = self.proxy_header {
            stream.write_all(header).await.map_err(|_| 502u16)?;
        }
        Ok(stream)
    }

    /// The response to a request that asks to switch protocols. What the
    /// client sends meanwhile is held in `buf` (one head's worth at most,
    /// then the socket pushes back), under the request-head timer: it
    /// reaches the tenant only after a 101 (see crate::gate).
    #[allow(clippy::too_many_arguments)]
    async fn read_switch_head<T: ClientIo>(
        &self,
        io: &mut T,
        buf: &mut Buf,
        up: &mut Upstream,
        rbuf: &mut Buf,
        timer: &mut Timer,
        until: Instant,
        fwd: &Forward,
    ) -> Result<usize, ReadFail> {
        let head_timeout = self.ctx.shared.settings.header_read_timeout;
        let mut held_until: Option<Instant> =
            (!buf.is_empty()).then(|| Instant::now() + head_timeout);
        loop {
            let deadline = held_until.map_or(until, |h| h.min(until));
            let room = buf.len() < buf.capacity();
            let spare = buf.spare();
            tokio::select! {
                r = self.read_response_head(up, rbuf, timer, deadline, fwd) => {
                    return match r {
                        Err(ReadFail::Timeout) if held_until.is_some_and(|h| h <= Instant::now()) && deadline < until => Err(ReadFail::Held),
                        r => r,
                    };
                }
                r = io.read(spare), if room => match r {
                    Ok(n) if n > 0 => {
                        buf.filled(n);
                        held_until.get_or_insert_with(|| Instant::now() + head_timeout);
                    }
                    _ => return Err(ReadFail::Held),
                },
            }
        }
    }

    fn still_routed(&self, fwd: &Forward) -> bool {
        self.ctx.routes.load().still_routes(&fwd.route)
    }

    async fn read_response_head(
        &self,
        up: &mut Upstream,
        rbuf: &mut Buf,
        timer: &mut Timer,
        until: Instant,
        fwd: &Forward,
    ) -> Result<usize, ReadFail> {
        read_response_head(&mut up.stream, rbuf, timer, until, || {
            self.still_routed(fwd)
        })
        .await
    }

    /// Relays the rest of a request body from the client to the tenant,
    /// checking its framing; stops early if the tenant starts answering.
    async fn send_body<T: ClientIo>(
        &self,
        io: &mut T,
        buf: &mut Buf,
        tenant: &TcpStream,
        framer: &mut Framer,
        timer: &mut Timer,
    ) -> BodySent {
        let idle = self.ctx.shared.settings.idle_timeout;
        loop {
            let spare = buf.spare();
            let want = spare.len();
            let mut probe = [0u8; 1];
            let read = tokio::select! {
                r = timer.until(Instant::now() + idle, io.read(spare)) => r,
                // A byte (or the end) from the tenant: it answers already.
                _ = tenant.peek(&mut probe) => return BodySent::Early,
            };
            let n = match read {
                Some(Ok(n)) if n > 0 => n,
                _ => return BodySent::ClientFailed(false),
            };
            if n < want {
                io.drained();
            }
            buf.filled(n);
            let step = match framer.advance(buf.data()) {
                Ok(step) => step,
                Err(bad) => {
                    tracing::debug!(client = %self.ctx.peer, ?bad, "malformed request body refused");
                    return BodySent::ClientFailed(true);
                }
            };
            if write_all_ref(tenant, &buf.data()[..step.used])
                .await
                .is_err()
            {
                return BodySent::TenantFailed;
            }
            buf.consume(step.used);
            if step.done {
                return BodySent::Done;
            }
        }
    }

    /// Relays the rest of a response body to the client; bytes sent, or
    /// (as the error) bytes sent before it failed.
    async fn relay_response<T: ClientIo>(
        &self,
        io: &mut T,
        tenant: &TcpStream,
        rbuf: &mut Buf,
        framer: &mut Framer,
        timer: &mut Timer,
    ) -> Result<u64, u64> {
        let idle = self.ctx.shared.settings.idle_timeout;
        let mut sent = 0u64;
        loop {
            let spare = rbuf.spare();
            let want = spare.len();
            let n = match timer
                .until(Instant::now() + idle, read_ref(tenant, spare))
                .await
            {
                Some(Ok(n)) => n,
                _ => return Err(sent),
            };
            if n == 0 {
                // Only a body framed by the connection's end ends so.
                return if *framer == Framer::Close {
                    Ok(sent)
                } else {
                    Err(sent)
                };
            }
            if n < want {
                drained(tenant);
            }
            rbuf.filled(n);
            let step = framer.advance(rbuf.data()).map_err(|bad| {
                tracing::warn!(?bad, "tenant response body refused mid-way");
                sent
            })?;
            if send(io, &rbuf.data()[..step.used]).await.is_err() {
                return Err(sent);
            }
            sent += step.used as u64;
            rbuf.consume(step.used);
            if step.done {
                return Ok(sent);
            }
        }
    }

    /// Answers `code` for the tenant, closing when the request asked to
    /// switch protocols or its body was not all read.
    async fn fail<T: ClientIo>(
        &self,
        io: &mut T,
        out: &mut Vec<u8>,
        code: u16,
        fwd: &Forward,
        began: std::time::Instant,
    ) -> Next {
        out.clear();
        rewrite::own_answer(code, true, &[], None, out);
        self.ctx
            .stats
            .record(&fwd.route.tenant, code, began.elapsed().as_secs_f64());
        match send(io, out).await {
            Ok(()) => Next::Refused,
            Err(_) => Next::Close,
        }
    }

    async fn refuse<T: ClientIo>(&self, io: &mut T, code: u16, out: &mut Vec<u8>) -> Next {
        out.clear();
        rewrite::own_answer(code, true, &[], None, out);
        match send(io, out).await {
            Ok(()) => Next::Refused,
            Err(_) => Next::Close,
        }
    }
}

/// What the client gets of a tenant's response head (written to `out`).
struct ResPlan {
    code: u16,
    switched: bool,
    /// The client connection ends after this response.
    close: bool,
    body: BodyKind,
    reusable: bool,
}

fn response_plan(
    rbuf: &[u8],
    head_len: usize,
    fwd: &Forward,
    force_close: bool,
    out: &mut Vec<u8>,
) -> Result<ResPlan, &'static str> {
    let mut hdrs = [EMPTY_HEADER; MAX_HEADERS];
    let res =
        head::parse_response(rbuf, head_len, &mut hdrs, fwd.head).map_err(|bad| match bad {
            head::BadResponse::Syntax => "malformed head",
            head::BadResponse::ContentLength => "bad Content-Length",
            head::BadResponse::TransferEncoding => "conflicting or unknown framing",
            head::BadResponse::TooManyHeaders => "too many header fields",
        })?;
    let switched = res.code == 101;
    if switched && !fwd.upgrade {
        return Err("101 to a request that did not ask to switch protocols");
    }
    if !fwd.http11 && res.body == BodyKind::Chunked {
        return Err("chunked response to an HTTP/1.0 client");
    }
    let close = fwd.close
        || force_close
        || (fwd.asks_upgrade && !switched)
        || res.body == BodyKind::Close
        || !fwd.http11;
    rewrite::response_head(&res, close, switched, out);
    Ok(ResPlan {
        code: res.code,
        switched,
        close,
        body: res.body,
        reusable: res.reusable,
    })
}

#[derive(Debug)]
pub(crate) enum ReadFail {
    Timeout,
    /// Closed or reset before a byte of the answer.
    Closed,
    Truncated,
    Malformed,
    TooLarge,
    /// Bytes held after an upgrade request waited too long, or the
    /// client left: the connection ends without an answer.
    Held,
    /// The tenant was deprovisioned or stopped while it was asked.
    Gone,
}

/// Reads from a tenant until a complete response head starts `rbuf`; its
/// length. Every `ROUTE_CHECK` it asks `still_routed`, so a request to a
/// tenant deprovisioned or stopped meanwhile fails at once.
pub(crate) async fn read_response_head(
    stream: &mut TcpStream,
    rbuf: &mut Buf,
    timer: &mut Timer,
    until: Instant,
    still_routed: impl Fn() -> bool,
) -> Result<usize, ReadFail> {
    let mut scanned = 0;
    let mut got_any = !rbuf.is_empty();
    loop {
        match head::head_end(rbuf.data(), scanned) {
            Ok(Some(len)) => return Ok(len),
            Ok(None) => {}
            Err(_) => return Err(ReadFail::Malformed),
        }
        scanned = rbuf.len();
        if rbuf.len() == rbuf.capacity() {
            return Err(ReadFail::TooLarge);
        }
        let spare = rbuf.spare();
        let want = spare.len();
        let check = (Instant::now() + ROUTE_CHECK).min(until);
        // A read is cancel-safe: it is asked again after each check.
        match timer.until(check, stream.read(spare)).await {
            None if Instant::now() >= until => return Err(ReadFail::Timeout),
            None if !still_routed() => return Err(ReadFail::Gone),
            None => continue,
            Some(Ok(0)) | Some(Err(_)) if !got_any => return Err(ReadFail::Closed),
            Some(Ok(0)) | Some(Err(_)) => return Err(ReadFail::Truncated),
            Some(Ok(n)) => {
                got_any = true;
                if n < want {
                    drained(stream);
                }
                rbuf.filled(n);
            }
        }
    }
}

enum BodySent {
    Done,
    /// The tenant answered before the body was all sent.
    Early,
    /// The client went away, or (true) sent a malformed body.
    ClientFailed(bool),
    TenantFailed,
}

async fn read_ref(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all_ref(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl plan::LogStart {
    fn into_access_log(
        self,
        tenant: Arc<str>,
        status: u16,
        began: std::time::Instant,
        ctx: &ConnCtx,
    ) -> Box<AccessLog> {
        Box::new(AccessLog {
            tenant,
            host: self.host,
            method: self.method,
            path: self.path,
            status,
            bytes: 0,
            start: began,
            upstream: Duration::ZERO,
            peer: ctx.peer,
            json: self.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::send;

    /// A server and a client TLS stream over an in-memory pipe that holds
    /// `capacity` bytes, as a full socket would.
    async fn tls_pair(
        capacity: usize,
    ) -> (
        tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    ) {
        let key = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        let cert = key.cert.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (c, s) = tokio::io::duplex(capacity);
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let (server, client) = tokio::join!(
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(s),
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, c),
        );
        (server.unwrap(), client.unwrap())
    }

    /// rustls takes a whole write while the pipe is full and keeps what did
    /// not fit; `send` returns only once that went out too, so a response
    /// is never left waiting for the connection's next write.
    #[tokio::test]
    async fn a_tls_write_is_sent_whole_when_the_socket_is_full() {
        let (mut server, mut client) = tls_pair(1024).await;
        let body = vec![b'x'; 32 * 1024];
        let writer = tokio::spawn(async move {
            send(&mut server, &body).await.unwrap();
            // Held open: the client must get the bytes, not an EOF.
            server
        });
        let mut got = vec![0u8; 32 * 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "the client got {read:?}: part of the write stayed in TLS"
        );
        assert!(got.iter().all(|&b| b == b'x'));
        drop(writer.await.unwrap());
    }
}
