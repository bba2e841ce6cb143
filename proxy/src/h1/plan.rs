//! What the engine does with one request head: refuse it, answer it
//! itself (ACME, 404, 421, 405, 308, 503), or forward it to a tenant with
//! its head rewritten. The same decisions, in the same order, as
//! crate::forward makes on hyper's path.

use std::sync::Arc;

use httparse::EMPTY_HEADER;

use super::conn::MAX_HEADERS;
use super::head::{self, BodyKind, Refused};
use super::rewrite::{self, Forwarding};
use crate::forward::ConnCtx;
use crate::route::{normalize_host, Route};
use crate::AccessLogFormat;

/// The short page a stopped tenant's sites answer with.
pub(crate) const STOPPED_PAGE: &[u8] = b"<!doctype html>\n<title>Site stopped</title>\n<p>This site is stopped. Its owner can start it again.</p>\n";

/// What the access log line needs from the request head.
pub(crate) struct LogStart {
    pub method: http::Method,
    pub path: String,
    pub host: String,
    pub json: bool,
}

pub(crate) struct Answer {
    pub code: u16,
    pub close: bool,
    pub tenant: Option<Arc<str>>,
    pub body_len: usize,
    pub log: Option<LogStart>,
}

pub(crate) struct Forward {
    pub route: Arc<Route>,
    pub body: BodyKind,
    pub upgrade: bool,
    pub asks_upgrade: bool,
    pub close: bool,
    /// A HEAD request: the response has no body whatever it says.
    pub head: bool,
    pub http11: bool,
    pub expect_continue: bool,
    pub log: Option<LogStart>,
}

pub(crate) enum Plan {
    /// `out` holds the whole answer.
    Answer(Answer),
    /// `out` holds the head for the tenant.
    Forward(Forward),
}

fn answer(
    out: &mut Vec<u8>,
    code: u16,
    close: bool,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    tenant: Option<Arc<str>>,
    log: Option<LogStart>,
) -> Plan {
    let start = out.len();
    rewrite::own_answer(code, close, extra, body, out);
    let body_len = match body {
        Some((_, b)) => b.len(),
        None => {
            out.len()
                - start
                - out[start..]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |p| p + 4)
        }
    };
    Plan::Answer(Answer {
        code,
        close,
        tenant,
        body_len,
        log,
    })
}

/// Plans the request whose complete head is `head_bytes`; writes what is
/// to be sent into `out`.
pub(crate) fn plan(ctx: &ConnCtx, head_bytes: &[u8], out: &mut Vec<u8>) -> Plan {
    let settings = &ctx.shared.settings;
    let mut storage = [EMPTY_HEADER; MAX_HEADERS];
    let max = settings.max_headers.min(MAX_HEADERS);
    let req = match head::parse_request(head_bytes, head_bytes.len(), &mut storage[..max]) {
        Ok(req) => req,
        Err(Refused::TooManyHeaders) => return answer(out, 431, true, &[], None, None, None),
        Err(Refused::Bad(violation)) => {
            tracing::debug!(client = %ctx.peer, ?violation, "malformed request refused");
            return answer(out, 400, true, &[], None, None, None);
        }
    };
    // Host must be text to be routed (HTTP/1.0 may lack it: then 400).
    let Some(host_raw) = req
        .host
        .filter(|h| h.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)))
    else {
        return answer(out, 400, true, &[], None, None, None);
    };
    let host = std::str::from_utf8(host_raw).unwrap_or("");
    let target = head::origin_form(req.target);
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"/");
    let path = std::str::from_utf8(path).unwrap_or("/");
    let json = settings.access_log == AccessLogFormat::Json;
    let log = (json || crate::body::access_log_enabled()).then(|| LogStart {
        method: http::Method::from_bytes(req.method).unwrap_or(http::Method::GET),
        path: String::from_utf8_lossy(target).into_owned(),
        host: host.to_owned(),
        json,
    });
    // Every answer to a request that asks to switch protocols but is not
    // a 101 ends the connection (see crate::gate).
    let close = req.asks_upgrade || req.close;

    if !ctx.tls {
        // ACME HTTP-01 (RFC 8555 8.3): our pending tokens only.
        if let Some(resp) = crate::acme::challenge_response(&settings.acme_challenges, path, |b| b)
        {
            let body = resp.body().clone();
            return answer(
                out,
                200,
                close,
                &[],
                Some(("application/octet-stream", &body)),
                None,
                log,
            );
        }
    }
    let route = {
        let routes = ctx.routes.load();
        let Some(route) = routes.lookup(host) else {
            return answer(out, 404, close, &[], None, None, log);
        };
        if let Some(sni) = &ctx.sni {
            // A certificate for one tenant must not carry another tenant's
            // requests (RFC 9110 7.4).
            if routes.lookup(sni).map(|r| &r.tenant) != Some(&route.tenant) {
                return answer(out, 421, close, &[], None, None, log);
            }
        }
        route.clone()
    };
    if req.method == b"CONNECT" {
        return answer(out, 405, true, &[], None, None, log);
    }
    if !ctx.tls && settings.redirect_https {
        if let (Some(certs), Some(name)) = (&ctx.shared.certs, normalize_host(host)) {
            if certs.has_cert(&name) {
                let target = std::str::from_utf8(target).unwrap_or("/");
                let location = format!("https://{name}{target}");
                return answer(
                    out,
                    308,
                    close,
                    &[("location", &location)],
                    None,
                    Some(route.tenant.clone()),
                    log,
                );
            }
        }
    }
    if route.stopped {
        return answer(
            out,
            503,
            close,
            &[("retry-after", "60")],
            Some(("text/html; charset=utf-8", STOPPED_PAGE)),
            Some(route.tenant.clone()),
            log,
        );
    }
    let fwd = Forwarding {
        ip: ctx.peer_values.ip.to_str().unwrap_or("unknown"),
        node: &ctx.peer_values.node,
        proto: if ctx.tls { "https" } else { "http" },
        trusted: ctx.trusted,
    };
    rewrite::request_head(&req, host_raw, &fwd, out);
    Plan::Forward(Forward {
        route,
        body: req.body,
        upgrade: req.upgrade,
        asks_upgrade: req.asks_upgrade,
        close,
        head: req.method == b"HEAD",
        http11: req.http11,
        expect_continue: req.expect_continue,
        log,
    })
}
