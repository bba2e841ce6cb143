//! The refusal path and the edges of an exchange, with both HTTP/1
//! engines: a refused client that is still sending reads its answer and a
//! clean end, not a reset (lingering close).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::*;

/// How a connection ended for the client.
#[derive(Debug, PartialEq)]
enum End {
    /// FIN: every byte the proxy sent was read.
    Closed,
    Reset,
    /// Still open after 3 s.
    Open,
}

/// A client with a small receive buffer sends a request for a 200 KB
/// answer, then `refused` and 64 KiB more (none with an empty `refused`),
/// and reads only 0.5 s later: the proxy's answers are still queued in
/// its socket when it refuses. Everything the client read and how the
/// connection ended.
fn refused_behind_a_queued_answer(addr: SocketAddr, refused: &[u8]) -> (Vec<u8>, End) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut bytes = b"GET /big/200000 HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec();
    if !refused.is_empty() {
        bytes.extend_from_slice(refused);
        bytes.extend(std::iter::repeat_n(b'x', 64 * 1024));
    }
    let _ = s.write_all(&bytes);
    std::thread::sleep(Duration::from_millis(500));
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break End::Closed,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
            Err(_) => break End::Open,
        }
    };
    (out, end)
}

/// The statuses of the responses in `out` and whether the first one's
/// 200,000-byte body came whole.
fn statuses(out: &[u8]) -> (Vec<u16>, bool) {
    let codes = out
        .windows(9)
        .enumerate()
        .filter(|(_, w)| *w == b"HTTP/1.1 ")
        .filter_map(|(i, _)| {
            std::str::from_utf8(out.get(i + 9..i + 12)?)
                .ok()?
                .parse()
                .ok()
        })
        .collect();
    let whole = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .is_some_and(|h| out.len() >= h + 4 + 200_000);
    (codes, whole)
}

/// A refused request is answered, and the answer arrives, even when the
/// client is still sending and the answer waits behind others in the
/// socket: closing a socket with unread bytes resets it and throws away
/// what it still had to send, so the proxy first drains (bounded).
#[test]
fn a_refused_answer_queued_behind_others_arrives_before_a_clean_close() {
    let refused: &[(&str, &[u8], u16)] = &[
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            400,
        ),
        (
            "differing lengths",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 9\r\nContent-Length: 8\r\n\r\n",
            400,
        ),
        ("bare LF", b"GET / HTTP/1.1\nHost: a.test\n\n", 400),
        (
            "a head over the limit",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: ",
            431,
        ),
    ];
    let mut failures = Vec::new();
    for engine in ENGINES {
        let a = Backend::start("a");
        let p = proxy(&[("a.test", "a", a.addr)], |s| {
            s.engine = engine;
            s.max_header_bytes = 8192;
        });
        let addr = p.http_addr().unwrap();
        // Control: the same exchange without the refused request ends
        // with the whole answer (the client's buffer does not lose it).
        let (out, end) = refused_behind_a_queued_answer(addr, b"");
        let (codes, whole) = statuses(&out);
        assert!(
            codes == [200] && whole && end == End::Open,
            "{engine:?} control: {codes:?}, whole: {whole}, {end:?}"
        );
        for (what, req, want) in refused {
            let (out, end) = refused_behind_a_queued_answer(addr, req);
            let (codes, whole) = statuses(&out);
            if codes != [200, *want] || !whole || end != End::Closed {
                failures.push(format!(
                    "{engine:?} {what}: statuses {codes:?} (want [200, {want}]), first body \
                     whole: {whole}, ended {end:?}, {} bytes",
                    out.len()
                ));
            }
        }
        p.shutdown();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A tenant on loopback that answers every request with `answer(path)`,
/// raw, on a keep-alive connection (requests without bodies).
fn raw_tenant(answer: fn(&str, &str) -> Vec<u8>) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        seen.drain(..end + 4);
                        let mut words = head.split(' ');
                        let (method, path) =
                            (words.next().unwrap_or(""), words.next().unwrap_or(""));
                        if s.write_all(&answer(method, path)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads one response head from a keep-alive connection.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// The framing headers (Content-Length, Transfer-Encoding) of a head.
fn framing(head: &str) -> Vec<String> {
    head.lines()
        .filter(|l| l.starts_with("content-length:") || l.starts_with("transfer-encoding:"))
        .map(str::to_owned)
        .collect()
}

/// Answers without a body (to HEAD, 204, 304) carry the framing headers
/// as hyper's server passes them, in both engines: a HEAD answer keeps
/// Content-Length (what a GET would get, RFC 9110 9.3.2) and loses
/// Transfer-Encoding (hyper writes none where no body may follow, RFC
/// 9112 6.1 makes it optional); no body follows any of them.
#[test]
fn bodiless_answers_keep_the_framing_headers_hyper_keeps() {
    fn answer(method: &str, path: &str) -> Vec<u8> {
        let head = method == "HEAD";
        match path {
            "/chunked" if head => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            "/chunked" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec()
            }
            "/length" if head => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            "/304-length" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            "/304-chunked" => {
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()
            }
            "/204" => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        }
    }
    let tenant = raw_tenant(answer);
    let asks = [
        "HEAD /chunked",
        "HEAD /length",
        "GET /304-length",
        "GET /304-chunked",
        "GET /204",
    ];
    let mut seen = Vec::new();
    for engine in ENGINES {
        let p = proxy(&[("a.test", "a", tenant)], |s| s.engine = engine);
        let mut s = TcpStream::connect(p.http_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Control: the GET's answer is chunked, and its body follows.
        s.write_all(b"GET /chunked HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let head = read_head(&mut s);
        assert_eq!(
            framing(&head),
            ["transfer-encoding: chunked"],
            "{engine:?}: {head}"
        );
        let mut body = [0u8; 12];
        s.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"2\r\nok\r\n0\r\n\r\n", "{engine:?}");
        let mut heads = Vec::new();
        for ask in asks {
            s.write_all(format!("{ask} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
                .unwrap();
            heads.push(framing(&read_head(&mut s)));
        }
        // No body went with any of them: the next answer starts right here.
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("http/1.1 200"), "{engine:?}: {head}");
        seen.push(heads);
        p.shutdown();
    }
    assert_eq!(seen[0], seen[1], "h1 engine, then hyper, for {asks:?}");
    assert_eq!(seen[0][0], Vec::<String>::new(), "HEAD of a chunked answer");
    assert_eq!(
        seen[0][1],
        ["content-length: 1234"],
        "HEAD of a 1234-byte answer"
    );
}

/// An upgraded connection is still a client connection: it keeps its
/// place in the connection limits and in the open-connections gauge until
/// it ends (else one address opens WebSockets without bound), and its
/// tenant connection is closed with it, never pooled.
#[test]
fn upgraded_connections_count_until_they_end() {
    let mut failures = Vec::new();
    for engine in ENGINES {
        let a = Backend::start("a");
        let p = proxy(&[("a.test", "a", a.addr)], |s| {
            s.engine = engine;
            s.max_connections_per_ip = 2;
        });
        let addr = p.http_addr().unwrap();
        let first = websocket(addr);
        let mut second = websocket(addr);
        let open = gauge(&p, "open_connections");
        // A third connection from the same address is over the limit.
        let mut third = TcpStream::connect(addr).unwrap();
        let _ = third.write_all(b"GET /third HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let refused = closed_by_peer(&mut third);
        if open != 2 || !refused {
            failures.push(format!(
                "{engine:?}: with two WebSockets open, the gauge says {open} (want 2) and a \
                 third connection was {}",
                if refused { "refused" } else { "served" }
            ));
        }
        // Both still work.
        second.write_all(b"pong").unwrap();
        let mut back = [0u8; 4];
        second.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong", "{engine:?}");
        // Control: once one ends, its place is given back.
        drop(first);
        let mut served = None;
        for _ in 0..100 {
            let out = raw(
                addr,
                b"GET /later HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            );
            if out.starts_with(b"HTTP/1.1 200") {
                served = Some(out);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let served = served.unwrap_or_else(|| panic!("{engine:?}: a freed place was not reused"));
        // Answered by the tenant's HTTP server, not echoed back by a
        // tunnel's connection put into the pool.
        assert!(
            String::from_utf8_lossy(&served)
                .trim_end()
                .ends_with("a GET /later len=0"),
            "{engine:?}: {:?}",
            String::from_utf8_lossy(&served)
        );
        drop((second, third));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while gauge(&p, "open_connections") != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{engine:?}: the gauge stays at {} after every connection ended",
                gauge(&p, "open_connections")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if a.requests().iter().any(|r| r.path == "/third") {
            failures.push(format!(
                "{engine:?}: the connection over the limit reached the tenant"
            ));
        }
        p.shutdown();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
