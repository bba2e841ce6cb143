//! One request: route it by Host, rewrite headers, forward it to the
//! tenant, stream the answer back (or tunnel an upgraded connection).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{access_log_enabled, first_frame, read_ahead, AccessLog, ReqBody, ResBody};
use crate::gate::Switch;
use crate::headers::{
    apply_forwarding, forwarded_element, strip_hop_by_hop, ClientSide, PeerValues,
};
use crate::metrics::{Metrics, RequestShard};
use crate::route::{normalize_host, Route, RouteTable};
use crate::tls::CertStore;
use crate::upstream::{Checkout, Pool};
use crate::{AccessLogFormat, Settings};

/// How often a request waiting on its tenant checks that it is still
/// routed (the h1 engine's check, crate::h1).
const ROUTE_CHECK: Duration = Duration::from_millis(250);

/// What every connection of every worker shares.
pub(crate) struct Shared {
    pub routes: ArcSwap<RouteTable>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub certs: Option<Arc<CertStore>>,
}

/// One client connection, as the requests on it see it. Cloned per request;
/// everything a request writes to (reference counts, figures) belongs to
/// its worker alone.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    /// The worker's own copy of the route table.
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub stats: Arc<RequestShard>,
    pub peer: SocketAddr,
    pub tls: bool,
    /// The TLS server name, normalized.
    pub sni: Option<Box<str>>,
    pub h2: bool,
    pub pool: Arc<Pool>,
    pub peer_values: PeerValues,
    pub trusted: bool,
    /// The last Host and its Forwarded element: a keep-alive connection
    /// names the same host request after request.
    pub forwarded: std::sync::Mutex<Option<(HeaderValue, Option<HeaderValue>)>>,
    /// HTTP/1: tells the gate the tenant switched protocols.
    pub switch: Option<Switch>,
    /// HTTP/2 with the HTTP/1 engine: the worker's pooled tenant
    /// connections, which bodyless streams go through (crate::h2tenant).
    pub local: Option<Arc<crate::h1::Local>>,
}

impl ConnCtx {
    fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    fn forwarded_element(&self, host: &HeaderValue) -> Option<HeaderValue> {
        let mut cache = self.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_host, element)) = &*cache {
            if cached_host == host {
                return element.clone();
            }
        }
        let element = forwarded_element(&self.peer_values, self.proto(), host);
        *cache = Some((host.clone(), element.clone()));
        element
    }
}

/// An answer of the proxy's own. `close` ends an HTTP/1 connection after it.
fn status_response(status: StatusCode, close: bool, h2: bool) -> Response<ResBody> {
    let reason = status.canonical_reason().unwrap_or("error");
    let mut resp = Response::new(ResBody::Full(Some(Bytes::from(format!("{reason}\n")))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close && !h2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 429 to a stream beyond its client address's budget of open streams.
pub(crate) fn too_many_streams() -> Response<ResBody> {
    let mut resp = status_response(StatusCode::TOO_MANY_REQUESTS, false, true);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

pub(crate) struct Outcome {
    pub resp: Response<ResBody>,
    pub tenant: Option<Arc<str>>,
    pub upstream: Duration,
}

impl Outcome {
    fn ours(status: StatusCode, close: bool, ctx: &ConnCtx) -> Outcome {
        Outcome {
            resp: status_response(status, close, ctx.h2),
            tenant: None,
            upstream: Duration::ZERO,
        }
    }

    /// 502 or 504 for a tenant that failed an HTTP/2 stream.
    pub(crate) fn tenant_failed(code: u16, route: Arc<Route>, ctx: &ConnCtx) -> Outcome {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut o = Outcome::ours(status, false, ctx);
        o.tenant = Some(route.tenant.clone());
        o
    }
}

/// The service of every client connection. Never fails: every problem is
/// an HTTP answer.
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    let start = Instant::now();
    // The gate holds back everything after such a request until a 101.
    let wants_switch =
        !ctx.h2 && (req.headers().contains_key(header::UPGRADE) || req.method() == Method::CONNECT);
    let json_log = ctx.shared.settings.access_log == AccessLogFormat::Json;
    let log = (json_log || access_log_enabled()).then(|| {
        (
            req.method().clone(),
            req.uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.to_string()),
        )
    });
    let (host, mut outcome) = match request_host(&req, &ctx) {
        Some(host) => {
            let outcome = proxy(&ctx, req, &host).await;
            (host, outcome)
        }
        None => (
            HeaderValue::from_static(""),
            Outcome::ours(StatusCode::BAD_REQUEST, true, &ctx),
        ),
    };
    let status = outcome.resp.status();
    if wants_switch && status != StatusCode::SWITCHING_PROTOCOLS {
        // Whoever answered (we or the tenant), the connection carries no
        // further request: it ends here (HAProxy and Envoy do the same).
        outcome
            .resp
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let tenant = outcome.tenant.clone().unwrap_or_else(|| Arc::from(""));
    ctx.stats
        .record(&tenant, status.as_u16(), start.elapsed().as_secs_f64());
    if let Some((method, path)) = log {
        let entry = Box::new(AccessLog {
            tenant,
            host: host.to_str().unwrap_or("").to_owned(),
            method,
            path,
            status: status.as_u16(),
            bytes: 0,
            start,
            upstream: outcome.upstream,
            peer: ctx.peer,
            json: json_log,
        });
        match outcome.resp.body_mut() {
            ResBody::Upstream { log, .. } => *log = Some(entry),
            ResBody::Tenant(body) => body.log = Some(entry),
            ResBody::Full(b) => {
                let mut entry = entry;
                entry.bytes = b.as_ref().map_or(0, |b| b.len() as u64);
            }
        }
    }
    Ok(outcome.resp)
}

/// The Host of a request: the Host header for HTTP/1 (the gate already
/// checked it is single and agrees with an absolute URI), :authority or
/// Host for HTTP/2, which must agree when both are sent.
fn request_host(req: &Request<Incoming>, ctx: &ConnCtx) -> Option<HeaderValue> {
    let header = req.headers().get(header::HOST);
    if let Some(h) = header {
        h.to_str().ok()?;
    }
    let authority = req.uri().authority().map(|a| a.as_str());
    match (header, authority) {
        (Some(h), Some(a)) if ctx.h2 && !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()) => None,
        // A clone shares the request's buffer: no copy.
        (Some(h), _) => Some(h.clone()),
        (None, Some(a)) if ctx.h2 => HeaderValue::from_str(a).ok(),
        _ => None,
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// A request on its way to a tenant.
struct Upstream {
    route: Arc<Route>,
    parts: http::request::Parts,
    body: ReqBody,
    upgrade: bool,
    client_upgrade: Option<OnUpgrade>,
}

/// What the proxy does with a request: answer it itself, or forward it.
enum Plan {
    Answer(Outcome),
    Forward(Upstream),
}

// The request's future is moved several times per request, so its state is
// kept small: everything but the waiting happens in plain functions.
async fn proxy(ctx: &ConnCtx, req: Request<Incoming>, host_value: &HeaderValue) -> Outcome {
    let up = match plan(ctx, req, host_value) {
        Plan::Answer(outcome) => return outcome,
        Plan::Forward(up) => up,
    };
    if let Some(local) = ctx.local.as_ref().filter(|_| ctx.h2 && up.body.is_empty()) {
        return crate::h2tenant::exchange(ctx, local, up.route, up.parts).await;
    }
    // Boxed: hyper's client state is kilobytes that every HTTP/2 stream's
    // task would otherwise carry (and copy when it is spawned), though
    // only streams with a body and `engine = "hyper"` use it.
    Box::pin(through_client(ctx, up)).await
}

/// `up` sent with hyper's client over the worker's pool, and its answer.
async fn through_client(ctx: &ConnCtx, mut up: Upstream) -> Outcome {
    let settings = &ctx.shared.settings;
    if !up.body.is_empty()
        // Boxed, as only requests with a body need its state.
        && Box::pin(read_ahead(&mut up.body, settings.header_read_timeout))
            .await
            .is_err()
    {
        return Outcome::ours(StatusCode::BAD_REQUEST, true, ctx);
    }
    let Upstream {
        route,
        parts,
        body,
        upgrade,
        client_upgrade,
    } = up;
    let client_failed = body.failure_flag();
    let sent = Instant::now();
    let mut send = std::pin::pin!(ctx.pool.send(route.addr, Request::from_parts(parts, body)));
    // The upstream timeout, and every ROUTE_CHECK whether the tenant is
    // still routed: one deprovisioned or stopped while the request waits
    // (to connect, for an answer) fails it at once, as in the h1 engine,
    // instead of after ARP's ~3 s or the timeout. A quick answer costs
    // one timer, as before.
    let deadline = sent + settings.upstream_timeout;
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(ROUTE_CHECK), send.as_mut()).await {
            Ok(r) => break Ok(r),
            Err(_) if Instant::now() >= deadline => break Err(()),
            Err(_) if !ctx.routes.load().still_routes(&route) => {
                tracing::info!(tenant = %route.tenant, upstream = %route.addr, "tenant gone while waiting");
                // Closed, as the h1 engine closes after it.
                let mut o = Outcome::ours(StatusCode::BAD_GATEWAY, true, ctx);
                o.tenant = Some(route.tenant.clone());
                return o;
            }
            Err(_) => {}
        }
    };
    let upstream = sent.elapsed();
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) if client_failed.load(std::sync::atomic::Ordering::Relaxed) => {
            // The client's body turned malformed midway (the gate refused
            // the rest): the client's fault, as the h1 engine answers it.
            tracing::debug!(client = %ctx.peer, "malformed request body refused");
            return Outcome::ours(StatusCode::BAD_REQUEST, true, ctx);
        }
        Ok(Err(e)) => {
            tracing::warn!(tenant = %route.tenant, upstream = %route.addr, error = %e, "tenant unreachable");
            let mut o = Outcome::ours(StatusCode::BAD_GATEWAY, upgrade, ctx);
            o.tenant = Some(route.tenant.clone());
            return o;
        }
        Err(_) => {
            tracing::warn!(tenant = %route.tenant, upstream = %route.addr, timeout = ?settings.upstream_timeout, "tenant too slow");
            let mut o = Outcome::ours(StatusCode::GATEWAY_TIMEOUT, upgrade, ctx);
            o.tenant = Some(route.tenant.clone());
            return o;
        }
    };
    if let Err(why) = response_framing(&answer.0, upgrade) {
        // The tenant connection goes with the answer (not back to the pool).
        tracing::warn!(tenant = %route.tenant, upstream = %route.addr, why, "tenant response refused");
        let mut o = Outcome::ours(StatusCode::BAD_GATEWAY, upgrade, ctx);
        o.tenant = Some(route.tenant.clone());
        return o;
    }
    let mut outcome = respond(
        route,
        upgrade,
        client_upgrade,
        answer,
        upstream,
        ctx.switch.as_ref(),
    );
    // An HTTP/1 client must not get a head whose body is already known to
    // be malformed (HTTP/2 frames its own bodies and resets the stream).
    if !ctx.h2 && first_frame(outcome.resp.body_mut()).await.is_err() {
        tracing::warn!(tenant = ?outcome.tenant, "tenant response body refused");
        let tenant = outcome.tenant.take();
        outcome = Outcome::ours(StatusCode::BAD_GATEWAY, upgrade, ctx);
        outcome.tenant = tenant;
    }
    outcome
}

/// What hyper's client accepts but the h1 engine refuses (crate::h1's
/// head checks): a response whose framing a client could read another
/// way than hyper did (Content-Length with Transfer-Encoding, a coding
/// other than one final `chunked`), or a 101 nobody asked for.
fn response_framing(resp: &Response<Incoming>, upgrade: bool) -> Result<(), &'static str> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
        return Err("101 to a request that did not ask to switch protocols");
    }
    let h = resp.headers();
    let (mut codings, mut chunked, mut last_chunked) = (0, 0, false);
    for v in h.get_all(header::TRANSFER_ENCODING) {
        for c in v.as_bytes().split(|&b| b == b',') {
            codings += 1;
            last_chunked = c.trim_ascii().eq_ignore_ascii_case(b"chunked");
            chunked += usize::from(last_chunked);
        }
    }
    if codings == 0 {
        return Ok(());
    }
    if h.contains_key(header::CONTENT_LENGTH) || chunked != 1 || !last_chunked {
        return Err("conflicting or unknown framing");
    }
    Ok(())
}

/// Routes the request and rewrites it for the tenant, or answers it.
fn plan(ctx: &ConnCtx, req: Request<Incoming>, host_value: &HeaderValue) -> Plan {
    let settings = &ctx.shared.settings;
    // request_host checked it is text.
    let host = host_value.to_str().unwrap_or("");
    // ACME HTTP-01 (RFC 8555 8.3): our pending tokens only; any other
    // /.well-known/acme-challenge/ request goes on to the tenant.
    if !ctx.tls {
        let answer = |b| ResBody::Full(Some(b));
        let challenges = &settings.acme_challenges;
        if let Some(resp) = crate::acme::challenge_response(challenges, req.uri().path(), answer) {
            return Plan::Answer(Outcome {
                resp,
                tenant: None,
                upstream: Duration::ZERO,
            });
        }
    }
    let route = {
        let routes = ctx.routes.load();
        let Some(route) = routes.lookup(host) else {
            return Plan::Answer(Outcome::ours(StatusCode::NOT_FOUND, false, ctx));
        };
        if let Some(sni) = &ctx.sni {
            // A certificate for one tenant must not carry another tenant's
            // requests (RFC 9110 7.4: 421 Misdirected Request).
            if routes.lookup(sni).map(|r| &r.tenant) != Some(&route.tenant) {
                return Plan::Answer(Outcome::ours(StatusCode::MISDIRECTED_REQUEST, false, ctx));
            }
        }
        route.clone()
    };
    if req.method() == Method::CONNECT {
        return Plan::Answer(Outcome::ours(StatusCode::METHOD_NOT_ALLOWED, true, ctx));
    }
    if !ctx.tls && settings.redirect_https {
        if let Some(resp) = redirect(&ctx.shared, host, req.uri()) {
            return Plan::Answer(Outcome {
                resp,
                tenant: Some(route.tenant.clone()),
                upstream: Duration::ZERO,
            });
        }
    }
    if route.stopped {
        // As the h1 engine answers (crate::h1::plan): HTTP/2 clients and
        // `engine = "hyper"` get the page at once too.
        let mut resp = Response::new(ResBody::Full(Some(Bytes::from_static(
            crate::h1::STOPPED_PAGE,
        ))));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return Plan::Answer(Outcome {
            resp,
            tenant: Some(route.tenant.clone()),
            upstream: Duration::ZERO,
        });
    }

    let upgrade = !ctx.h2 && is_upgrade(&req);
    let (mut parts, incoming) = req.into_parts();
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrade);
    // The client's 100-continue was answered by this hop.
    headers.remove(header::EXPECT);
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, host_value.clone());
    }
    let element = ctx.forwarded_element(host_value);
    apply_forwarding(
        headers,
        &ClientSide {
            peer: &ctx.peer_values,
            proto: ctx.proto(),
            host: host_value,
            element: element.as_ref(),
            trusted: ctx.trusted,
        },
    );
    // Origin form: the tenant learns the host from Host.
    parts.uri = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.version = Version::HTTP_11;
    Plan::Forward(Upstream {
        route,
        parts,
        body: ReqBody::new(incoming),
        upgrade,
        client_upgrade,
    })
}

/// The tenant's answer as the client gets it.
fn respond(
    route: Arc<Route>,
    upgrade: bool,
    client_upgrade: Option<OnUpgrade>,
    (mut resp, checkout): (Response<Incoming>, Checkout),
    upstream: Duration,
    switch: Option<&Switch>,
) -> Outcome {
    let switched = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        let tenant_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            let guard = switch.map(Switch::switched);
            tokio::spawn(async move {
                tunnel(client_upgrade, tenant_upgrade).await;
                drop(guard);
            });
        }
    }
    strip_hop_by_hop(resp.headers_mut(), switched);
    let (parts, body) = resp.into_parts();
    let body = if switched {
        // The connection now belongs to the tunnel.
        drop(checkout);
        ResBody::Full(None)
    } else {
        ResBody::upstream(body, checkout)
    };
    Outcome {
        resp: Response::from_parts(parts, body),
        tenant: Some(route.tenant.clone()),
        upstream,
    }
}

fn redirect(shared: &Shared, host: &str, uri: &Uri) -> Option<Response<ResBody>> {
    let certs = shared.certs.as_ref()?;
    let name = normalize_host(host)?;
    if !certs.has_cert(&name) {
        return None;
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::from_str(&format!("https://{name}{pq}")).ok()?;
    let mut resp = status_response(StatusCode::PERMANENT_REDIRECT, false, false);
    resp.headers_mut().insert(header::LOCATION, location);
    Some(resp)
}

/// Copies bytes both ways between an upgraded client connection and the
/// tenant until either side closes.
async fn tunnel(client: OnUpgrade, tenant: OnUpgrade) {
    let (client, tenant) = match tokio::try_join!(client, tenant) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut tenant = TokioIo::new(tenant);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut tenant).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}
