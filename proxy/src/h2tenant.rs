//! HTTP/2 streams to tenants over the HTTP/1 engine's per-worker pooled
//! connections (crate::h1's `local`), instead of hyper's client.
//!
//! A stream that carries no request body (GET, HEAD, and every request
//! whose HEADERS frame ends the stream) is written as one HTTP/1.1 head
//! to a pooled tenant connection; the response head is read into a
//! worker buffer, parsed once and checked as the engine checks it (502
//! for anything malformed or ambiguous); a body that arrived with the
//! head goes out whole and the connection is back in the pool before the
//! answer leaves. A longer body is read by the stream's own task as
//! hyper asks for it, that is as the client's flow control allows: no
//! connection task, no channels between tasks. Streams with a request
//! body, and connections whose tenant connections carry a PROXY header,
//! stay on hyper's client (crate::forward).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::Frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::body::{AccessLog, ResBody};
use crate::forward::{ConnCtx, Outcome};
use crate::h1::framing::{BadBody, Chunk, Framer};
use crate::h1::head::{self, BodyKind};
use crate::h1::local::{drained, Local, Size};
use crate::h1::{read_response_head, ReadFail, Timer};
use crate::route::Route;

/// How often a stream waiting on its tenant checks the tenant is still
/// routed (as the HTTP/1 engine does): a deprovisioned or stopped tenant
/// fails the stream at once, not after the upstream timeout.
const ROUTE_CHECK: Duration = Duration::from_millis(250);

/// Header fields a tenant's response head may have at most.
const MAX_HEADERS: usize = 128;

/// Forwards one bodyless HTTP/2 request (already routed and rewritten by
/// crate::forward) to its tenant.
pub(crate) async fn exchange(
    ctx: &ConnCtx,
    local: &Arc<Local>,
    route: Arc<Route>,
    parts: http::request::Parts,
) -> Outcome {
    let s = &ctx.shared.settings;
    let mut out = local.take_out();
    write_head(&parts, &mut out);
    let head_req = parts.method == Method::HEAD;
    drop(parts);
    let sent = Instant::now();
    let until = sent + s.upstream_timeout;
    let result = async {
        let mut up = send(ctx, local, &route, &out).await?;
        let mut rbuf = local.buf(Size::Response);
        let mut timer = Timer::new();
        loop {
            let still_routed = || ctx.routes.load().still_routes(&route);
            match read_response_head(&mut up.stream, &mut rbuf, &mut timer, until, still_routed)
                .await
            {
                Ok(len) => {
                    // Interim answers (100, 102, 103) are this hop's.
                    if rbuf.data()[9] == b'1' && &rbuf.data()[9..12] != b"101" {
                        rbuf.consume(len);
                        continue;
                    }
                    return Ok((up, rbuf, len));
                }
                Err(ReadFail::Closed) if up.reused => {
                    // The tenant closed a pooled connection as we used it:
                    // the request never reached it. Once more, fresh.
                    up = Upstream {
                        stream: connect(ctx, &route).await?,
                        reused: false,
                    };
                    up.stream.write_all(&out).await.map_err(|_| 502u16)?;
                }
                Err(ReadFail::Timeout) => {
                    tracing::warn!(tenant = %route.tenant, upstream = %route.addr, timeout = ?s.upstream_timeout, "tenant too slow");
                    return Err(504);
                }
                Err(why) => {
                    tracing::warn!(tenant = %route.tenant, upstream = %route.addr, ?why, "tenant answered no usable response");
                    return Err(502);
                }
            }
        }
    }
    .await;
    local.put_out(out);
    let upstream = sent.elapsed();
    let (up, mut rbuf, len) = match result {
        Ok(r) => r,
        Err(code) => return Outcome::tenant_failed(code, route, ctx),
    };
    let resp = match response(rbuf.data(), len, head_req) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(tenant = %route.tenant, upstream = %route.addr, why, "tenant response refused");
            return Outcome::tenant_failed(502, route, ctx);
        }
    };
    rbuf.consume(len);
    let (parts, (framing, reusable)) = resp.into_parts();
    let mut framer = match framing {
        BodyKind::None => Framer::length(0),
        BodyKind::Length(n) => Framer::length(n),
        BodyKind::Chunked => Framer::chunked(),
        BodyKind::Close => Framer::Close,
    };
    // What arrived with the head: all of a small body, usually.
    let (used, data) = match decode(&mut framer, rbuf.data()) {
        Ok(d) => d,
        Err(bad) => {
            tracing::warn!(tenant = %route.tenant, ?bad, "tenant response body refused");
            return Outcome::tenant_failed(502, route, ctx);
        }
    };
    rbuf.consume(used);
    let reusable = reusable && framing != BodyKind::Close;
    let body = if framer.is_done() {
        // Anything the tenant sent beyond its response spoils the
        // connection.
        if reusable && rbuf.is_empty() {
            local.put(route.addr, up.stream);
        }
        ResBody::Full(data)
    } else {
        ResBody::Tenant(Box::new(TenantBody {
            stream: Some(up.stream),
            addr: route.addr,
            rest: BytesMut::new(),
            framer,
            reusable,
            local: local.clone(),
            pending: data,
            log: None,
            idle: s.idle_timeout,
            sleep: None,
        }))
    };
    // The read buffer goes back to the worker now, whatever the body's
    // length.
    drop(rbuf);
    Outcome {
        resp: Response::from_parts(parts, body),
        tenant: Some(route.tenant.clone()),
        upstream,
    }
}

/// The HTTP/1.1 head of a request for its tenant. Names and values
/// passed the h2 codec's checks (no CR, LF or NUL) and crate::forward's
/// rewriting; framing headers are the proxy's: the request has no body.
fn write_head(parts: &http::request::Parts, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // A length the client announced without sending a body would
        // make the tenant read the next request on this connection as
        // that body.
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

struct Upstream {
    stream: TcpStream,
    /// Came from the pool: closed before a byte of the answer may be the
    /// tenant having closed it meanwhile.
    reused: bool,
}

/// Writes the head to a pooled connection, or a new one.
async fn send(ctx: &ConnCtx, local: &Local, route: &Route, out: &[u8]) -> Result<Upstream, u16> {
    if let Some(mut stream) = local.take(route.addr) {
        if stream.write_all(out).await.is_ok() {
            return Ok(Upstream {
                stream,
                reused: true,
            });
        }
    }
    let mut stream = connect(ctx, route).await?;
    stream.write_all(out).await.map_err(|_| 502u16)?;
    Ok(Upstream {
        stream,
        reused: false,
    })
}

/// A new connection to the tenant: 502 when refused, unreachable, gone
/// from the routes meanwhile, or not connected within the connect timeout.
async fn connect(ctx: &ConnCtx, route: &Route) -> Result<TcpStream, u16> {
    let until = Instant::now() + ctx.shared.settings.connect_timeout;
    let mut connecting = pin!(TcpStream::connect(route.addr));
    loop {
        let check = (Instant::now() + ROUTE_CHECK).min(until);
        match tokio::time::timeout_at(check, connecting.as_mut()).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => {
                tracing::warn!(tenant = %route.tenant, upstream = %route.addr, error = %e, "tenant unreachable");
                return Err(502);
            }
            Err(_) if Instant::now() >= until => {
                tracing::warn!(tenant = %route.tenant, upstream = %route.addr, "tenant connect timed out");
                return Err(502);
            }
            Err(_) if !ctx.routes.load().still_routes(route) => {
                tracing::info!(tenant = %route.tenant, upstream = %route.addr, "tenant gone while connecting");
                return Err(502);
            }
            Err(_) => {}
        }
    }
}

/// The client's response head from the tenant's, with how its body is
/// framed and whether the tenant keeps the connection.
#[allow(clippy::type_complexity)]
fn response(
    buf: &[u8],
    len: usize,
    head_req: bool,
) -> Result<Response<(BodyKind, bool)>, &'static str> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let res = head::parse_response(buf, len, &mut storage, head_req).map_err(|bad| match bad {
        head::BadResponse::Syntax => "malformed head",
        head::BadResponse::ContentLength => "bad Content-Length",
        head::BadResponse::TransferEncoding => "conflicting or unknown framing",
        head::BadResponse::TooManyHeaders => "too many header fields",
    })?;
    if res.code == 101 {
        return Err("101 to an HTTP/2 request");
    }
    let status = StatusCode::from_u16(res.code).map_err(|_| "bad status")?;
    let mut resp = Response::new((res.body, res.reusable));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.reserve(res.headers.len());
    // Connection-specific fields have no place in HTTP/2 (RFC 9113
    // 8.2.2), nor do those the Connection field names.
    let listed = |name: &[u8]| {
        res.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("connection") && head::lists(h.value, name))
    };
    for h in res.headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || listed(name) {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| "bad header name")?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| "bad header value")?;
        headers.append(name, value);
    }
    Ok(resp)
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
        b"http2-settings",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Takes the body bytes at the start of `input` (as far as `framer`
/// says the body goes), without chunk framing: how many bytes of
/// `input` were the body's, and their data.
fn decode(framer: &mut Framer, input: &[u8]) -> Result<(usize, Option<Bytes>), BadBody> {
    let mut used = 0;
    let mut data: Option<BytesMut> = None;
    let mut add = |bytes: &[u8]| {
        if !bytes.is_empty() {
            data.get_or_insert_with(|| BytesMut::with_capacity(input.len()))
                .extend_from_slice(bytes);
        }
    };
    if let Framer::Chunked(_) = framer {
        while used < input.len() && !framer.is_done() {
            let (n, is_data) = match *framer {
                Framer::Chunked(Chunk::Data(left)) => (
                    usize::try_from(left).map_or(input.len() - used, |l| l.min(input.len() - used)),
                    true,
                ),
                // Sizes, chunk ends and trailers, a byte at a time.
                _ => (1, false),
            };
            let step = framer.advance(&input[used..used + n])?;
            if is_data {
                add(&input[used..used + step.used]);
            }
            used += step.used;
            if step.used == 0 {
                break;
            }
        }
    } else {
        let step = framer.advance(input)?;
        add(&input[..step.used]);
        used = step.used;
    }
    Ok((used, data.map(BytesMut::freeze)))
}

/// A tenant's response body that did not arrive with its head, read on
/// the stream's own task as hyper polls it (as the client's flow control
/// allows). Read buffers are handed on to hyper as they are (no copy but
/// of chunk framing), at most one [`READ_CHUNK`] read ahead. The
/// connection goes back to the worker's pool when the body ends where
/// its framing says it does, with nothing after it.
pub(crate) struct TenantBody {
    stream: Option<TcpStream>,
    addr: SocketAddr,
    /// Read from the tenant, not yet handed out.
    rest: BytesMut,
    framer: Framer,
    reusable: bool,
    local: Arc<Local>,
    /// Data handed out before anything else (what came with the head).
    pending: Option<Bytes>,
    pub(crate) log: Option<Box<AccessLog>>,
    idle: Duration,
    /// Armed while a read waits: the tenant must send within `idle`.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// What one read from the tenant asks for: one stream window, the most
/// of a body that waits here for a slow client (as with hyper's client,
/// crate::upstream).
const READ_CHUNK: usize = crate::upstream::UPSTREAM_READ_BUFFER;

impl TenantBody {
    /// The next piece of data in `rest`, framing taken off.
    fn next_data(&mut self) -> Result<Option<Bytes>, BadBody> {
        loop {
            if self.rest.is_empty() || self.framer.is_done() {
                return Ok(None);
            }
            match self.framer {
                Framer::Chunked(Chunk::Data(left)) => {
                    let n =
                        usize::try_from(left).map_or(self.rest.len(), |l| l.min(self.rest.len()));
                    self.framer.advance(&self.rest[..n])?;
                    return Ok(Some(self.rest.split_to(n).freeze()));
                }
                Framer::Chunked(_) => {
                    let step = self.framer.advance(&self.rest[..1])?;
                    if step.used == 0 {
                        return Ok(None);
                    }
                    bytes::Buf::advance(&mut self.rest, step.used);
                }
                _ => {
                    let step = self.framer.advance(&self.rest)?;
                    if step.used == 0 {
                        return Ok(None);
                    }
                    return Ok(Some(self.rest.split_to(step.used).freeze()));
                }
            }
        }
    }

    /// The body ended: the connection back to the pool if it can carry
    /// another request.
    fn finish(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.reusable && self.rest.is_empty() && self.framer.is_done() {
                self.local.put(self.addr, stream);
            }
        }
    }

    fn fail(&mut self, kind: io::ErrorKind) -> Poll<Option<io::Result<Bytes>>> {
        self.stream = None;
        Poll::Ready(Some(Err(kind.into())))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let data = match self.pending.take() {
                Some(data) => Some(data),
                None => match self.next_data() {
                    Ok(data) => data,
                    Err(bad) => {
                        tracing::warn!(?bad, "tenant response body refused mid-way");
                        return self.fail(io::ErrorKind::InvalidData);
                    }
                },
            };
            if self.framer.is_done() {
                // hyper stops polling once the body says it ended.
                self.finish();
            }
            if let Some(data) = data {
                if let Some(log) = self.log.as_mut() {
                    log.bytes += data.len() as u64;
                }
                return Poll::Ready(Some(Ok(data)));
            }
            if self.framer.is_done() {
                return Poll::Ready(None);
            }
            let Some(stream) = self.stream.as_ref() else {
                return Poll::Ready(None);
            };
            match stream.poll_read_ready(cx) {
                Poll::Pending => {
                    let idle = self.idle;
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        return self.fail(io::ErrorKind::TimedOut);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return self.fail(e.kind()),
                Poll::Ready(Ok(())) => {}
            }
            if self.rest.capacity() - self.rest.len() < READ_CHUNK / 4 {
                self.rest.reserve(READ_CHUNK);
            }
            let want = self.rest.capacity() - self.rest.len();
            match stream.try_read_buf(&mut self.rest) {
                Ok(0) => {
                    self.stream = None;
                    // Only a body framed by the connection's end ends so.
                    if self.framer == Framer::Close {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(n) => {
                    self.sleep = None;
                    if n < want {
                        drained(stream);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return self.fail(e.kind()),
            }
        }
    }
}

impl hyper::body::Body for TenantBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.get_mut()
            .poll_next(cx)
            .map(|r| r.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && (self.framer.is_done() || self.stream.is_none())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let pending = self.pending.as_ref().map_or(0, |p| p.len() as u64);
        match self.framer {
            Framer::Length(n) => hyper::body::SizeHint::with_exact(n + pending),
            _ => {
                let mut hint = hyper::body::SizeHint::new();
                hint.set_lower(pending);
                hint
            }
        }
    }
}
