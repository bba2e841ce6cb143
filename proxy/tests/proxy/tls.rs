//! HTTPS: certificates per SNI name, HTTP/2, 421, live certificate reload
//! and the HTTP -> HTTPS redirect.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use rustls::pki_types::pem::PemObject as _;
use sotolito_proxy::{FileSource, Watcher};

#[test]
fn h2_over_tls_routes_two_tenants_by_sni() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let s = site(&["a.test", "*.b.test"]);
    let certs = s.certs.clone();
    let p = proxy(
        &[("a.test", "a", a.addr), ("*.b.test", "b", b.addr)],
        |st| st.certs_dir = Some(certs),
    );
    let port = p.https_addr().unwrap().port();
    let (status, version, body) = curl(&s.ca_file, port, "https://a.test/one", &["--http2"]);
    assert_eq!(
        (status, version.as_str(), body.as_str()),
        (200, "2", "a GET /one len=0\n")
    );
    let (status, version, body) = curl(&s.ca_file, port, "https://www.b.test/two", &["--http1.1"]);
    assert_eq!(
        (status, version.as_str(), body.as_str()),
        (200, "1.1", "b GET /two len=0\n")
    );
    let h = &a.requests()[0].headers;
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["host"], "a.test");
    // POST over h2 streams its body through too.
    let (status, _, body) = curl(
        &s.ca_file,
        port,
        "https://a.test/post",
        &["--http2", "--data-binary", "0123456789"],
    );
    assert_eq!((status, body.as_str()), (200, "a POST /post len=10\n"));
}

#[test]
fn a_host_of_another_tenant_than_the_sni_gets_421() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let s = site(&["a.test", "b.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr), ("b.test", "b", b.addr)], |st| {
        st.certs_dir = Some(certs)
    });
    let port = p.https_addr().unwrap().port();
    for v in ["--http2", "--http1.1"] {
        let (status, _, _) = curl(
            &s.ca_file,
            port,
            "https://a.test/",
            &[v, "-H", "Host: b.test"],
        );
        assert_eq!(status, 421, "{v}");
    }
    assert!(b.requests().is_empty());
}

#[test]
fn certificates_are_picked_up_without_restart() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(
        &[("a.test", "a", a.addr), ("new.test", "a", a.addr)],
        |st| st.certs_dir = Some(certs.clone()),
    );
    let source = FileSource::new().certs(certs, Duration::from_millis(50));
    let _watcher = Watcher::start(source, p.updater(), Vec::new()).unwrap();
    let port = p.https_addr().unwrap().port();
    assert_eq!(
        curl(&s.ca_file, port, "https://new.test/", &[]).0,
        0,
        "no cert yet: handshake fails"
    );
    s.ca.issue(&s.certs, "new.test");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = curl(&s.ca_file, port, "https://new.test/", &[]);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn plain_http_redirects_to_https_only_for_hosts_with_a_certificate() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(
        &[("a.test", "a", a.addr), ("plain.test", "a", a.addr)],
        |st| {
            st.certs_dir = Some(certs);
            st.redirect_https = true;
        },
    );
    let addr = p.http_addr().unwrap();
    let r = get(addr, "a.test", "/x?y=1");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://a.test/x?y=1")
    );
    assert_eq!(get(addr, "plain.test", "/").status, 200);
    assert_eq!(a.requests().len(), 1);
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub(crate) fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &TestCa,
    name: &str,
    alpn: &[&[u8]],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(client_config(&ca.pem, alpn), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn h2_advertises_100_streams_and_edge_sized_windows() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr)], |st| st.certs_dir = Some(certs));
    let mut tls = tls_connect(p.https_addr().unwrap(), &s.ca, "a.test", &[b"h2"]);
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 4, "first frame is SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).unwrap();
    let setting = |id: u16| {
        payload
            .chunks(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == id)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    };
    assert_eq!(setting(3), Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // Envoy's edge guidance: 64 KiB stream windows, a 1 MiB connection window.
    assert_eq!(setting(4), Some(64 * 1024), "SETTINGS_INITIAL_WINDOW_SIZE");
    assert_eq!(setting(6), Some(16 * 1024), "SETTINGS_MAX_HEADER_LIST_SIZE");
    // The connection's WINDOW_UPDATE follows among the next few frames.
    let mut increment = None;
    for _ in 0..4 {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).unwrap();
        if head[3] == 8 && head[5..9] == [0, 0, 0, 0] {
            increment = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            break;
        }
    }
    assert_eq!(
        increment.map(|i| i + 65_535),
        Some(1024 * 1024),
        "connection window"
    );
}

#[test]
fn tls_below_1_2_and_unknown_names_are_refused() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr)], |st| st.certs_dir = Some(certs));
    let port = p.https_addr().unwrap().port();
    let (status, _, _) = curl(&s.ca_file, port, "https://a.test/", &["--tls-max", "1.1"]);
    assert_eq!(status, 0);
    let (status, _, _) = curl(&s.ca_file, port, "https://other.test/", &[]);
    assert_eq!(status, 0);
    let mut tls = tls_connect(p.https_addr().unwrap(), &s.ca, "a.test", &[b"http/1.1"]);
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    assert_eq!(parse(&out).status, 200);
    assert_eq!(a.requests().len(), 1);
}

/// One client address holds its whole HTTP/2 stream budget with responses
/// it never reads: its next stream, on another connection, gets 429, while
/// another address is served.
#[test]
fn an_address_that_never_reads_gets_no_more_than_its_stream_budget() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr)], |st| {
        st.certs_dir = Some(certs);
        st.max_h2_streams_per_ip = 3;
    });
    let port = p.https_addr().unwrap().port();
    // Control: the probe is served while the address has room.
    let (status, version, _) = curl(&s.ca_file, port, "https://a.test/", &["--http2"]);
    assert_eq!((status, version.as_str()), (200, "2"));

    let mut hold = tls_connect(p.https_addr().unwrap(), &s.ca, "a.test", &[b"h2"]);
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    // :method GET, :scheme https, :path and :authority as literals.
    let mut block = vec![0x82, 0x87, 0x04, 17];
    block.extend_from_slice(b"/big/100000000000");
    block.extend_from_slice(&[0x01, 6]);
    block.extend_from_slice(b"a.test");
    for stream in [1u32, 3, 5] {
        frames.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
        frames.extend_from_slice(&[0x1, 0x5]);
        frames.extend_from_slice(&stream.to_be_bytes());
        frames.extend_from_slice(&block);
    }
    hold.write_all(&frames).unwrap();
    hold.flush().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = curl(&s.ca_file, port, "https://a.test/", &["--http2"]);
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "a fourth stream of the address was still served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, _) = curl(
        &s.ca_file,
        port,
        "https://a.test/",
        &["--http2", "--interface", "127.0.0.2"],
    );
    assert_eq!(status, 200, "another address is unaffected");
    drop(hold);
}

/// Reads until the proxy closes; the response head, lowercased, and
/// whether the proxy closed the connection.
fn read_until_closed(s: &mut impl Read) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    (
        text.split("\r\n\r\n").next().unwrap_or("").to_owned(),
        closed,
    )
}

/// An idle HTTP/1 connection over TLS waits on its socket with no request
/// buffer: what arrives after a pause, in one record or split across
/// several, and requests sent together are all answered in order.
#[test]
fn tls_keep_alive_connections_answer_after_pauses() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr)], |st| st.certs_dir = Some(certs));
    let mut tls = tls_connect(p.https_addr().unwrap(), &s.ca, "a.test", &[b"http/1.1"]);
    tls.write_all(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut tls).text(), "a GET /1 len=0\n");
    std::thread::sleep(Duration::from_millis(300));
    // Split across records with a pause between them.
    tls.write_all(b"GET /2 HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    tls.write_all(b"st: a.test\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut tls).text(), "a GET /2 len=0\n");
    std::thread::sleep(Duration::from_millis(300));
    // Two requests in one record, then two in two records sent together.
    tls.write_all(
        b"GET /3 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /4 HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .unwrap();
    tls.write_all(b"GET /5 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    tls.write_all(b"GET /6 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    for i in 3..=6 {
        let r = read_response(&mut tls);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("a GET /{i} len=0\n"));
    }
    assert_eq!(a.requests().len(), 6);
}

/// The answers of the proxy's own that need TLS, a certificate or an ACME
/// challenge (421, the HTTPS redirect, an HTTP-01 answer), given to an
/// upgrade request followed by a request the gate refuses: each closes the
/// connection and the second request never reaches a tenant.
#[test]
fn own_answers_to_upgrade_requests_close_the_connection() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let s = site(&["a.test", "b.test"]);
    let certs = s.certs.clone();
    let challenges = sotolito_proxy::acme::Challenges::new();
    let _token = challenges.insert("tok123", "tok123.key");
    let ch = challenges.clone();
    let p = proxy(&[("a.test", "a", a.addr), ("b.test", "b", b.addr)], |st| {
        st.certs_dir = Some(certs);
        st.redirect_https = true;
        st.acme_challenges = ch;
    });
    let up = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n";

    // 421: over TLS for a.test, a request for b.test.
    let mut tls = tls_connect(p.https_addr().unwrap(), &s.ca, "a.test", &[b"http/1.1"]);
    tls.write_all(format!("GET /ws HTTP/1.1\r\nHost: b.test\r\n{up}\r\n{smuggled}").as_bytes())
        .unwrap();
    let (head, closed) = read_until_closed(&mut tls);
    assert!(head.starts_with("http/1.1 421"), "{head}");
    assert!(
        head.contains("\r\nconnection: close") && closed,
        "421 kept the connection: {head}"
    );

    // 308 and the ACME answer, on plain HTTP.
    for (first, status) in [
        (
            format!("GET /ws HTTP/1.1\r\nHost: a.test\r\n{up}\r\n"),
            "308",
        ),
        (
            format!("GET /.well-known/acme-challenge/tok123 HTTP/1.1\r\nHost: a.test\r\n{up}\r\n"),
            "200",
        ),
    ] {
        let mut c = TcpStream::connect(p.http_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(format!("{first}{smuggled}").as_bytes())
            .unwrap();
        let (head, closed) = read_until_closed(&mut c);
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{head}");
        assert!(
            head.contains("\r\nconnection: close") && closed,
            "{status} kept the connection: {head}"
        );
    }
    a.assert_untouched("a after the proxy's own answers");
    b.assert_untouched("b after the proxy's own answers");
}

/// A WebSocket over TLS: echoed both ways, after pauses (the tunnel then
/// waits on the socket without buffers and rustls' state decides when to
/// read), with more than a buffer at once; the client's close_notify
/// reaches the tenant as its end, and the tenant's end comes back.
#[test]
fn websockets_over_tls_are_tunneled_across_pauses_and_ends() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr)], |st| st.certs_dir = Some(certs));
    let mut tls = tls_connect(p.https_addr().unwrap(), &s.ca, "a.test", &[b"http/1.1"]);
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut tls);
    assert_eq!(r.status, 101);
    let mut echo = |msg: &[u8]| {
        tls.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        tls.read_exact(&mut back).unwrap();
        assert!(back == msg, "the echo of {} bytes differs", msg.len());
    };
    echo(b"hello");
    std::thread::sleep(Duration::from_millis(300));
    echo(b"after a pause");
    echo(&vec![b'm'; 200 * 1024]);
    std::thread::sleep(Duration::from_millis(300));
    echo(b"again");
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut rest = Vec::new();
    let end = tls.read_to_end(&mut rest);
    assert!(
        matches!(end, Ok(0)) && rest.is_empty(),
        "after the client's end: {end:?}, {} more bytes",
        rest.len()
    );
}

/// A stopped tenant's sites answer 503 with the short page at once,
/// without the tenant being asked, over HTTP/2 (hyper's path, whatever the
/// HTTP/1 engine) and with either HTTP/1 engine.
#[test]
fn a_stopped_tenant_answers_503_over_http2_and_both_engines() {
    use sotolito_config::{Desired, HostName, HttpPort, TenantName};
    use sotolito_proxy::{ProxyEngine, RouteTable, TenantRoute};
    for engine in [ProxyEngine::H1, ProxyEngine::Hyper] {
        let a = Backend::start("a");
        let s = site(&["a.test"]);
        let certs = s.certs.clone();
        let p = proxy(&[("a.test", "a", a.addr)], |st| {
            st.certs_dir = Some(certs);
            st.engine = engine;
        });
        let port = p.https_addr().unwrap().port();
        // Control: running, it answers over both protocols.
        let (status, version, _) = curl(&s.ca_file, port, "https://a.test/", &["--http2"]);
        assert_eq!((status, version.as_str()), (200, "2"), "{engine:?}");
        assert_eq!(get(p.http_addr().unwrap(), "a.test", "/").status, 200);
        let asked = a.requests().len();
        let stopped = TenantRoute {
            name: TenantName::new("a").unwrap(),
            hosts: vec![HostName::new("a.test").unwrap()],
            ip: [127, 0, 0, 1].into(),
            http_port: HttpPort::new(a.addr.port().into()).unwrap(),
            desired: Desired::Stopped,
            acme_opt_out: Vec::new(),
            node: None,
        };
        p.set_routes(RouteTable::from_records(&[stopped]));
        let (status, version, body) = curl(&s.ca_file, port, "https://a.test/", &["--http2"]);
        assert_eq!(
            (status, version.as_str()),
            (503, "2"),
            "{engine:?} HTTP/2: {body}"
        );
        assert!(body.contains("stopped"), "{engine:?}: {body}");
        let r = get(p.http_addr().unwrap(), "a.test", "/");
        assert_eq!(r.status, 503, "{engine:?} HTTP/1.1");
        assert_eq!(r.header("retry-after").as_deref(), Some("60"));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert!(r.text().contains("stopped"), "{}", r.text());
        assert_eq!(
            a.requests().len(),
            asked,
            "{engine:?}: a stopped tenant was asked"
        );
        p.shutdown();
    }
}
