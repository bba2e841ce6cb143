//! Header rewriting between client and tenant: hop-by-hop removal (RFC 9110
//! 7.6.1) and the forwarding headers (X-Forwarded-*, RFC 7239 Forwarded).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_CONNECTION: u8 = 1;
const HOP_KEEP_ALIVE: u8 = 1 << 1;
const HOP_PROXY_CONNECTION: u8 = 1 << 2;
const HOP_TE: u8 = 1 << 3;
const HOP_TRAILER: u8 = 1 << 4;
const HOP_TRANSFER_ENCODING: u8 = 1 << 5;
const HOP_UPGRADE: u8 = 1 << 6;

fn hop_bit(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        HOP_CONNECTION
    } else if name == KEEP_ALIVE {
        HOP_KEEP_ALIVE
    } else if name == PROXY_CONNECTION {
        HOP_PROXY_CONNECTION
    } else if name == header::TE {
        HOP_TE
    } else if name == header::TRAILER {
        HOP_TRAILER
    } else if name == header::TRANSFER_ENCODING {
        HOP_TRANSFER_ENCODING
    } else if name == header::UPGRADE {
        HOP_UPGRADE
    } else {
        0
    }
}

/// Removes the headers that describe one hop, including those the
/// Connection header names. With `upgrade`, keeps `Upgrade` and sends
/// `Connection: upgrade` so the protocol switch reaches the next hop.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names, then removals only of what is there: most
    // messages carry none of these but Connection, and every removal is a
    // hash and a probe.
    let found = headers.keys().fold(0, |found, name| found | hop_bit(name));
    if found & HOP_CONNECTION != 0 {
        let listed: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for value in &listed {
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("upgrade") && upgrade {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    for (bit, name) in [
        (HOP_KEEP_ALIVE, &KEEP_ALIVE),
        (HOP_PROXY_CONNECTION, &PROXY_CONNECTION),
        (HOP_TE, &header::TE),
        (HOP_TRAILER, &header::TRAILER),
        (HOP_TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
    ] {
        if found & bit != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if found & HOP_UPGRADE != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// What the proxy knows about the client side of one request.
pub(crate) struct ClientSide<'a> {
    pub peer: &'a PeerValues,
    pub proto: &'static str,
    pub host: &'a HeaderValue,
    /// This hop's Forwarded element, from [`forwarded_element`]; `None`
    /// when it cannot be a header value.
    pub element: Option<&'a HeaderValue>,
    /// The peer is a trusted proxy: its forwarding headers are extended,
    /// not replaced.
    pub trusted: bool,
}

/// The client's address as the forwarding headers write it, computed once
/// per connection.
pub(crate) struct PeerValues {
    /// For X-Forwarded-For.
    pub ip: HeaderValue,
    /// The Forwarded `for=` node (RFC 7239 6: IPv6 quoted and bracketed).
    pub node: String,
}

impl PeerValues {
    pub(crate) fn new(ip: IpAddr) -> PeerValues {
        let text = ip.to_string();
        let node = match ip {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        PeerValues {
            ip: HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown")),
            node,
        }
    }
}

/// This hop's Forwarded element (RFC 7239 4) for a request to `host`.
pub(crate) fn forwarded_element(
    peer: &PeerValues,
    proto: &str,
    host: &HeaderValue,
) -> Option<HeaderValue> {
    let host = host.to_str().unwrap_or("");
    let element = if host.contains(['"', '\\']) {
        format!(
            "for={};proto={proto};host=\"{}\"",
            peer.node,
            host.replace(['"', '\\'], "")
        )
    } else {
        format!("for={};proto={proto};host=\"{host}\"", peer.node)
    };
    HeaderValue::from_str(&element).ok()
}

/// Headers in which other proxies, CDNs and load balancers name the client
/// (or its scheme and port): Akamai and Cloudflare Enterprise
/// `True-Client-IP`, Cloudflare `CF-Connecting-IP(v6)`, Fastly
/// `Fastly-Client-IP`, nginx's `X-Real-IP` convention, Envoy's
/// `X-Envoy-External-Address`, the old `X-Forwarded`/`Forwarded-For`
/// drafts, and what frameworks read as fallbacks (Rails, Django, Express,
/// PHP apps). From an untrusted client they can only be lies.
fn is_client_ip_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-real-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "cf-connecting-ipv6"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "fastly-client-ip"
            | "forwarded-for"
            | "x-forwarded"
            | "client-ip"
            | "x-original-forwarded-for"
            | "x-originating-ip"
            | "x-remote-ip"
            | "x-remote-addr"
            | "x-envoy-external-address"
            | "x-forwarded-port"
            | "x-forwarded-server"
            | "x-forwarded-ssl"
            | "x-forwarded-scheme"
            | "x-url-scheme"
            | "front-end-https"
    )
}

/// Sets X-Forwarded-For/-Proto/-Host and Forwarded. From an untrusted
/// peer any incoming values are lies: they are replaced, and the other
/// client-address headers ([`is_client_ip_header`]) are removed (not
/// rewritten: a tenant reading one learns nothing false, and no request
/// pays for one more header).
pub(crate) fn apply_forwarding(headers: &mut HeaderMap, client: &ClientSide<'_>) {
    headers.reserve(4);
    if client.trusted {
        append_list(
            headers,
            &X_FORWARDED_FOR,
            client.peer.ip.to_str().unwrap_or(""),
        );
        match client.element.and_then(|e| e.to_str().ok()) {
            Some(element) => append_list(headers, &header::FORWARDED, element),
            None => {
                headers.remove(header::FORWARDED);
            }
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(&X_FORWARDED_HOST, client.host.clone());
        }
    } else {
        // One pass over the names; removals only when a client sent some.
        if headers.keys().any(is_client_ip_header) {
            let lies: Vec<HeaderName> = headers
                .keys()
                .filter(|n| is_client_ip_header(n))
                .cloned()
                .collect();
            for name in lies {
                headers.remove(name);
            }
        }
        headers.insert(&X_FORWARDED_FOR, client.peer.ip.clone());
        match client.element {
            Some(element) => {
                headers.insert(header::FORWARDED, element.clone());
            }
            None => {
                headers.remove(header::FORWARDED);
            }
        }
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
        headers.insert(&X_FORWARDED_HOST, client.host.clone());
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Joins every existing line of a list header with `value` into one line.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    let mut joined = String::new();
    for v in headers.get_all(name) {
        if let Ok(s) = v.to_str() {
            joined.push_str(s);
            joined.push_str(", ");
        }
    }
    joined.push_str(value);
    set(headers, name, &joined);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "close"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), vec!["accept"]);
    }

    #[test]
    fn upgrade_survives_when_switching_protocols() {
        let mut h = map(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), vec!["connection", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let peer = PeerValues::new("192.0.2.7".parse().unwrap());
        let host = HeaderValue::from_static("acme.test");
        let element = forwarded_element(&peer, "http", &host);
        let client = ClientSide {
            peer: &peer,
            proto: "http",
            host: &host,
            element: element.as_ref(),
            trusted: false,
        };
        apply_forwarding(&mut h, &client);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "acme.test");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"acme.test\""
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn untrusted_client_ip_headers_go() {
        let lies = [
            ("x-real-ip", "6.6.6.6"),
            ("x-real-ip", "6.6.6.7"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("fastly-client-ip", "6.6.6.6"),
            ("forwarded-for", "6.6.6.6"),
            ("x-forwarded", "for=6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("accept", "*/*"),
        ];
        let peer = PeerValues::new("192.0.2.7".parse().unwrap());
        let host = HeaderValue::from_static("acme.test");
        for trusted in [false, true] {
            let mut h = map(&lies);
            let client = ClientSide {
                peer: &peer,
                proto: "http",
                host: &host,
                element: None,
                trusted,
            };
            apply_forwarding(&mut h, &client);
            if trusted {
                assert_eq!(h.get_all("x-real-ip").iter().count(), 2);
                assert_eq!(h["true-client-ip"], "6.6.6.6");
            } else {
                assert_eq!(
                    names(&h),
                    [
                        "accept",
                        "x-forwarded-for",
                        "x-forwarded-host",
                        "x-forwarded-proto",
                    ]
                );
            }
        }
    }

    #[test]
    fn trusted_forwarding_headers_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "203.0.113.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.1"),
        ]);
        let peer = PeerValues::new("2001:db8::1".parse().unwrap());
        let host = HeaderValue::from_static("acme.test");
        let element = forwarded_element(&peer, "http", &host);
        let client = ClientSide {
            peer: &peer,
            proto: "http",
            host: &host,
            element: element.as_ref(),
            trusted: true,
        };
        apply_forwarding(&mut h, &client);
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.1, 203.0.113.2, 2001:db8::1"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "acme.test");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.1, for=\"[2001:db8::1]\";proto=http;host=\"acme.test\""
        );
    }
}
