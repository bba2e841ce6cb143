//! HTTP/2 streams to tenants through the HTTP/1 engine's pooled
//! connections: framing kept across the protocol change, tenant
//! connections reused, and hostile tenant answers refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// curl over HTTP/2 to the proxy's HTTPS port, one transfer per URL on
/// one connection: per URL `(status, http version, bytes received)`, and
/// whether curl reported every transfer complete.
fn curl_h2(
    ca_file: &Path,
    port: u16,
    urls: &[&str],
    extra: &[&str],
) -> (Vec<(u16, String, u64)>, bool, String) {
    let host = urls[0]
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "10", "--cacert"])
        .arg(ca_file)
        .arg("--connect-to")
        .arg(format!("{host}:443:127.0.0.1:{port}"))
        .args(["-w", "##%{http_code} %{http_version} %{size_download}\n"])
        .args(extra);
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.output().expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let results = text
        .split("##")
        .skip(1)
        .map(|r| {
            let mut f = r.trim().split(' ');
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().to_owned(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    (
        results,
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tenant speaking raw bytes: it answers each request head it reads
/// with `answer` (then closes, with `close`), and keeps what it received.
struct RawTenant {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
}

fn raw_tenant(answer: &'static [u8], close: bool) -> RawTenant {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (g, c) = (got.clone(), connections.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    g.lock().unwrap().extend_from_slice(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if stream.write_all(answer).is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    RawTenant {
        addr,
        got,
        connections,
    }
}

#[test]
fn h2_streams_reuse_pooled_tenant_connections_with_their_framing() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr)], |st| st.certs_dir = Some(certs));
    let port = p.https_addr().unwrap().port();
    // A Content-Length body, a chunked one of 300,000 bytes (the backend
    // streams /big/N without a length), and one more: three streams one
    // after the other on one client connection.
    let (results, ok, err) = curl_h2(
        &s.ca_file,
        port,
        &[
            "https://a.test/one",
            "https://a.test/big/300000",
            "https://a.test/two",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(
        results,
        [
            (200, "2".to_owned(), "a GET /one len=0\n".len() as u64),
            (200, "2".to_owned(), 300_000),
            (200, "2".to_owned(), "a GET /two len=0\n".len() as u64),
        ]
    );
    // HEAD answers carry no body: a proxy that waited for one would time
    // out, or read the next answer as it.
    let (results, ok, err) = curl_h2(
        &s.ca_file,
        port,
        &["https://a.test/h1", "https://a.test/h2"],
        &["--head"],
    );
    assert!(ok, "{err}");
    assert_eq!(results.iter().map(|r| r.0).collect::<Vec<_>>(), [200, 200]);
    let seen = a.requests();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[3].method, "HEAD");
    assert_eq!(seen[1].headers["x-forwarded-proto"], "https");
    // The two client connections went to one worker or two: each worker
    // kept reusing its one tenant connection.
    assert!(
        a.connections() <= 2,
        "{} tenant connections for 5 sequential streams",
        a.connections()
    );
}

/// Tenant answers the HTTP/1 engine refuses are refused on HTTP/2 too:
/// 502 before anything of them reaches the client; a body that breaks
/// off after its head went out resets the stream (curl reports the
/// transfer incomplete), never a complete answer.
#[test]
fn hostile_tenant_answers_to_h2_streams_are_refused() {
    let s = site(&["a.test"]);
    let cases: [(&str, &'static [u8], bool, u16); 6] = [
        (
            "Content-Length with Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
            502,
        ),
        (
            "two Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            false,
            502,
        ),
        (
            "bare LF",
            b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
            false,
            502,
        ),
        (
            "a chunked body malformed from its first byte",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
            false,
            502,
        ),
        (
            "a 101 to a stream",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            false,
            502,
        ),
        (
            "a body shorter than its length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some",
            true,
            200,
        ),
    ];
    for (what, answer, close, want) in cases {
        let t = raw_tenant(answer, close);
        let certs = s.certs.clone();
        let p = proxy(&[("a.test", "a", t.addr)], |st| st.certs_dir = Some(certs));
        let port = p.https_addr().unwrap().port();
        let (results, ok, err) = curl_h2(&s.ca_file, port, &["https://a.test/x"], &[]);
        assert!(
            t.connections.load(Ordering::SeqCst) > 0,
            "{what}: the tenant was not asked"
        );
        if want == 502 {
            assert!(ok, "{what}: {err}");
            assert_eq!(results[0].0, 502, "{what}");
        } else {
            // The head went out, then the body broke off: the stream is
            // reset and curl must not see a complete answer.
            assert!(!ok, "{what}: curl saw a complete answer {results:?}");
            assert!(
                results.first().is_none_or(|r| r.2 < 100),
                "{what}: {results:?}"
            );
        }
    }
    // Control: a well-formed answer through the same kind of tenant, with
    // hop-by-hop fields (and one its Connection names) that have no place
    // in HTTP/2, and a chunked body with an extension and a trailer.
    let t = raw_tenant(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        false,
    );
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", t.addr)], |st| st.certs_dir = Some(certs));
    let port = p.https_addr().unwrap().port();
    let (status, version, body) = curl(&s.ca_file, port, "https://a.test/x", &["--http2"]);
    assert_eq!(
        (status, version.as_str(), body.as_str()),
        (200, "2", "hello world")
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&s.ca_file)
        .arg("--connect-to")
        .arg(format!("a.test:443:127.0.0.1:{port}"))
        .arg("https://a.test/y")
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.contains("x-kept: yes"), "{head}");
    for hop in ["x-hop", "keep-alive", "connection", "transfer-encoding"] {
        assert!(
            !head.contains(&format!("{hop}:")),
            "{hop} reached the client: {head}"
        );
    }
}

/// A client's Content-Length on a stream that ends with its headers
/// would make the tenant read the next request on the pooled connection
/// as that body (request smuggling across streams): it never reaches the
/// tenant, and the next stream's request arrives as a request.
#[test]
fn a_length_without_a_body_never_reaches_the_tenant() {
    let t = raw_tenant(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", t.addr)], |st| st.certs_dir = Some(certs));
    let port = p.https_addr().unwrap().port();
    // Control: without the header both streams are answered.
    let (results, ok, err) = curl_h2(
        &s.ca_file,
        port,
        &["https://a.test/first", "https://a.test/second"],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(results.iter().map(|r| r.0).collect::<Vec<_>>(), [200, 200]);
    t.got.lock().unwrap().clear();
    let (results, _, _) = curl_h2(
        &s.ca_file,
        port,
        &["https://a.test/first", "https://a.test/second"],
        &["-H", "Content-Length: 40"],
    );
    let got = String::from_utf8_lossy(&t.got.lock().unwrap()).to_ascii_lowercase();
    assert!(!got.contains("content-length: 40"), "{got}");
    // Whatever reached the tenant are whole requests, each answered.
    let heads = got.matches(" http/1.1\r\n").count();
    let answered = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(heads, answered, "{got}");
    std::thread::sleep(Duration::from_millis(50));
}

/// One HTTP/2 frame: (type, flags, stream, payload).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads frames until the connection ends (or 10 s pass): the type,
/// stream and first payload word of each.
fn frames_until_closed(tls: &mut impl Read) -> Vec<(u8, u32, u32)> {
    let mut seen = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if tls.read_exact(&mut head).is_err() {
            return seen;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if tls.read_exact(&mut payload).is_err() {
            return seen;
        }
        let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let word = |at: usize| {
            payload
                .get(at..at + 4)
                .map_or(0, |w| u32::from_be_bytes(w.try_into().unwrap()))
        };
        // GOAWAY: last stream id, then the error code.
        let code = if head[3] == 7 { word(4) } else { word(0) };
        seen.push((head[3], stream, code));
    }
}

/// Rapid reset (CVE-2023-44487): a client that opens streams and resets
/// each at once makes the proxy start work it never finishes, at no cost
/// to itself. After a few such streams the proxy sends GOAWAY with
/// ENHANCE_YOUR_CALM and ends the connection; other clients are served.
#[test]
fn rapid_reset_streams_end_the_connection() {
    let a = Backend::start("a");
    let s = site(&["a.test"]);
    let certs = s.certs.clone();
    let p = proxy(&[("a.test", "a", a.addr)], |st| st.certs_dir = Some(certs));
    let addr = p.https_addr().unwrap();
    let connect = || crate::tls::tls_connect(addr, &s.ca, "a.test", &[b"h2"]);
    // :method GET, :scheme https, :path /x, :authority a.test (literals).
    let block = [&[0x82u8, 0x87, 0x04, 2][..], b"/x", &[0x01, 6], b"a.test"].concat();
    let preface = [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &frame(4, 0, 0, &[]),
    ]
    .concat();

    // Control: the same streams without the resets are answered.
    let mut tls = connect();
    let mut out = preface.clone();
    for stream in [1u32, 3, 5] {
        out.extend(frame(1, 0x5, stream, &block));
    }
    out.extend(frame(7, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]));
    tls.write_all(&out).unwrap();
    tls.flush().unwrap();
    let seen = frames_until_closed(&mut tls);
    for stream in [1u32, 3, 5] {
        assert!(
            seen.iter().any(|f| f.0 == 1 && f.1 == stream),
            "control: no response HEADERS on stream {stream}: {seen:?}"
        );
    }

    // The attack: 1,000 streams, each reset right after its HEADERS.
    let mut tls = connect();
    let mut out = preface.clone();
    for i in 0..1000u32 {
        let stream = 1 + 2 * i;
        out.extend(frame(1, 0x5, stream, &block));
        out.extend(frame(3, 0, stream, &8u32.to_be_bytes()));
    }
    // The proxy may close before it has read it all.
    let _ = tls.write_all(&out).and_then(|()| tls.flush());
    let seen = frames_until_closed(&mut tls);
    assert!(
        seen.iter().any(|f| f.0 == 7 && f.2 == 0xb),
        "no GOAWAY(ENHANCE_YOUR_CALM) after 1,000 reset streams: {:?}",
        &seen[seen.len().saturating_sub(5)..]
    );
    assert!(
        a.requests().len() < 500,
        "{} of 1,000 reset streams reached the tenant",
        a.requests().len()
    );
    // Another client is served.
    let (status, version, _) = curl(&s.ca_file, addr.port(), "https://a.test/", &["--http2"]);
    assert_eq!((status, version.as_str()), (200, "2"));
}
