//! The heads the engine writes: a request as the tenant gets it (origin
//! form, hop-by-hop headers gone, forwarding headers set, as
//! crate::headers does for hyper's path), a response as the client gets
//! it, and the proxy's own answers. Each is appended to a reused buffer
//! and sent in one write.

use httparse::Header;

use super::head::{lists, origin_form, BodyKind, Request, Response};

/// What the forwarding headers say about the client.
pub(crate) struct Forwarding<'a> {
    /// For X-Forwarded-For.
    pub ip: &'a str,
    /// The Forwarded `for=` node (RFC 7239 6).
    pub node: &'a str,
    pub proto: &'static str,
    /// Its own forwarding headers are extended, not replaced.
    pub trusted: bool,
}

fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.as_bytes().eq_ignore_ascii_case(lower.as_bytes())
}

/// Describes one hop only (RFC 9110 7.6.1); `upgrade` is kept when the
/// protocol switch must reach the next hop.
fn hop_by_hop(name: &str, upgrade: bool) -> bool {
    match name.len() {
        2 => is(name, "te"),
        7 => is(name, "trailer") || (!upgrade && is(name, "upgrade")),
        10 => is(name, "connection") || is(name, "keep-alive"),
        16 => is(name, "proxy-connection"),
        17 => is(name, "transfer-encoding"),
        _ => false,
    }
}

/// Headers in which other proxies and CDNs name a client; from an
/// untrusted peer they can only be lies (see crate::headers).
fn client_ip_header(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "cf-connecting-ipv6",
        "x-client-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "forwarded-for",
        "x-forwarded",
        "client-ip",
        "x-original-forwarded-for",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-envoy-external-address",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-url-scheme",
        "front-end-https",
    ];
    NAMES.iter().any(|n| is(name, n))
}

/// Names the Connection headers list, other than the common tokens every
/// message carries: those headers are hop-by-hop too.
fn listed_by_connection(headers: &[Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .any(|h| lists(h.value, name.as_bytes()))
}

fn has_extra_connection_tokens(headers: &[Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .any(|h| {
            h.value.split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                !(t.is_empty()
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"upgrade"))
            })
        })
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Text a header value may carry as-is (what `HeaderValue::to_str`
/// accepts on hyper's path).
fn is_text(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The request head for the tenant. `host` is the request's Host value.
pub(crate) fn request_head(
    req: &Request<'_, '_>,
    host: &[u8],
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(req.method);
    out.push(b' ');
    out.extend_from_slice(origin_form(req.target));
    // An HTTP/1.0 client's request goes as HTTP/1.0, so the tenant
    // answers in a framing it can read (no chunks).
    out.extend_from_slice(if req.http11 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    let upgrade = req.upgrade;
    let extra = has_extra_connection_tokens(req.headers);
    let mut xff_seen = false;
    let mut fwd_seen = false;
    let (mut proto_seen, mut xfh_seen) = (false, false);
    for h in req.headers {
        let name = h.name;
        if hop_by_hop(name, upgrade)
            || is(name, "expect")
            || (extra && listed_by_connection(req.headers, name))
        {
            continue;
        }
        if fwd.trusted {
            // Extended below as one line each.
            if is(name, "x-forwarded-for") {
                xff_seen = true;
                continue;
            }
            if is(name, "forwarded") {
                fwd_seen = true;
                continue;
            }
            proto_seen |= is(name, "x-forwarded-proto");
            xfh_seen |= is(name, "x-forwarded-host");
        } else if is(name, "x-forwarded-for")
            || is(name, "forwarded")
            || is(name, "x-forwarded-proto")
            || is(name, "x-forwarded-host")
            || client_ip_header(name)
        {
            continue;
        }
        header(out, name.as_bytes(), h.value);
    }
    if req.body == BodyKind::Chunked {
        header(out, b"transfer-encoding", b"chunked");
    }
    if upgrade {
        header(out, b"connection", b"upgrade");
    }
    // X-Forwarded-For: earlier hops' values first when trusted.
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff_seen {
        join_values(req.headers, "x-forwarded-for", out);
    }
    out.extend_from_slice(fwd.ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(element_ok) = forwarded_host(host) {
        out.extend_from_slice(b"forwarded: ");
        if fwd_seen {
            join_values(req.headers, "forwarded", out);
        }
        out.extend_from_slice(b"for=");
        out.extend_from_slice(fwd.node.as_bytes());
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(fwd.proto.as_bytes());
        out.extend_from_slice(b";host=\"");
        out.extend(element_ok);
        out.extend_from_slice(b"\"\r\n");
    }
    if !proto_seen {
        header(out, b"x-forwarded-proto", fwd.proto.as_bytes());
    }
    if !xfh_seen {
        header(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"\r\n");
}

/// The host as a Forwarded `host=` quoted string: quotes and backslashes
/// dropped; `None` if it cannot be a header value at all.
fn forwarded_host(host: &[u8]) -> Option<impl Iterator<Item = u8> + '_> {
    is_text(host).then(|| host.iter().copied().filter(|b| *b != b'"' && *b != b'\\'))
}

/// Every text value of `name`, each followed by ", ".
fn join_values(headers: &[Header<'_>], name: &str, out: &mut Vec<u8>) {
    for h in headers.iter().filter(|h| is(h.name, name)) {
        if is_text(h.value) {
            out.extend_from_slice(h.value.trim_ascii());
            out.extend_from_slice(b", ");
        }
    }
}

/// The response head for the client. `close`: the client connection ends
/// after this response; `switched`: a 101 to an upgrade request.
pub(crate) fn response_head(
    res: &Response<'_, '_>,
    close: bool,
    switched: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = res.code;
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(res.reason);
    out.extend_from_slice(b"\r\n");
    let extra = has_extra_connection_tokens(res.headers);
    // As hyper's server writes them: no length where no body can be
    // (RFC 9110 8.6 forbids it on 1xx and 204; hyper drops it on 304 too).
    let lengthless = code < 200 || code == 204 || code == 304;
    for h in res.headers {
        if hop_by_hop(h.name, switched)
            || (extra && listed_by_connection(res.headers, h.name))
            || (lengthless && is(h.name, "content-length"))
        {
            continue;
        }
        header(out, h.name.as_bytes(), h.value);
    }
    if res.body == BodyKind::Chunked {
        header(out, b"transfer-encoding", b"chunked");
    }
    if switched {
        header(out, b"connection", b"upgrade");
    } else if close {
        header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// One of the proxy's own answers: `{reason}\n` as text/plain, or `body`.
pub(crate) fn own_answer(
    code: u16,
    close: bool,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    out: &mut Vec<u8>,
) {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    out.extend_from_slice(format!("HTTP/1.1 {code} {reason}\r\n").as_bytes());
    let (ctype, text): (&str, std::borrow::Cow<'_, [u8]>) = match body {
        Some((ctype, b)) => (ctype, b.into()),
        None => (
            "text/plain; charset=utf-8",
            format!("{reason}\n").into_bytes().into(),
        ),
    };
    header(out, b"content-type", ctype.as_bytes());
    header(out, b"content-length", text.len().to_string().as_bytes());
    for (k, v) in extra {
        header(out, k.as_bytes(), v.as_bytes());
    }
    if close {
        header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::super::head::{head_end, parse_request, parse_response};
    use super::*;
    use httparse::EMPTY_HEADER;

    fn rewrite(raw: &str, trusted: bool) -> String {
        let b = raw.as_bytes();
        let len = head_end(b, 0).unwrap().unwrap();
        let mut h = [EMPTY_HEADER; 100];
        let req = parse_request(b, len, &mut h).unwrap();
        let fwd = Forwarding {
            ip: "192.0.2.7",
            node: "192.0.2.7",
            proto: "http",
            trusted,
        };
        let mut out = Vec::new();
        request_head(&req, req.host.unwrap(), &fwd, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn requests_lose_hop_by_hop_and_lies_and_gain_forwarding() {
        let out = rewrite(
            "GET http://a.test/x?y HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Real-IP: 6.6.6.6\r\n\
             X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nExpect: 100-continue\r\nAccept: */*\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "GET /x?y HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.7\r\n\
             forwarded: for=192.0.2.7;proto=http;host=\"a.test\"\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a.test\r\n\r\n"
        );
    }

    #[test]
    fn trusted_peers_extend_and_upgrades_keep_upgrade() {
        let out = rewrite(
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.1\r\nX-Forwarded-For: 203.0.113.2\r\n\
             X-Forwarded-Proto: https\r\nX-Real-IP: 1.2.3.4\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            true,
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 1.2.3.4\r\n\
             Upgrade: websocket\r\nconnection: upgrade\r\nx-forwarded-for: 203.0.113.1, 203.0.113.2, 192.0.2.7\r\n\
             forwarded: for=192.0.2.7;proto=http;host=\"a.test\"\r\nx-forwarded-host: a.test\r\n\r\n"
        );
    }

    #[test]
    fn responses_keep_their_framing_and_say_close() {
        let raw = b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nConnection: x-a\r\nX-A: 1\r\nKeep-Alive: t=1\r\nServer: s\r\n\r\n";
        let len = head_end(raw, 0).unwrap().unwrap();
        let mut h = [EMPTY_HEADER; 10];
        let res = parse_response(raw, len, &mut h, false).unwrap();
        let mut out = Vec::new();
        response_head(&res, true, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nServer: s\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}
