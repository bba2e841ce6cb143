//! Malformed, ambiguous and abusive clients, sent as raw bytes: each gets
//! its status (or a closed connection) and the tenant sees nothing at all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

const SMUGGLING: &[(&str, &str)] = &[
    (
        "content-length with transfer-encoding",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "transfer-encoding with content-length",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    ),
    (
        "differing duplicate content-length",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    ),
    (
        "content-length list",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4, 5\r\n\r\nabcde",
    ),
    (
        "bad chunk size",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "bad chunk size after a good chunk",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-1\r\n\r\n",
    ),
    (
        "overflowing chunk size",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n",
    ),
    (
        "chunk data longer than its size",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "obs-fold",
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n X-Smuggled: 2\r\n\r\n",
    ),
    (
        "bare CR in a header",
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\rTransfer-Encoding: chunked\r\n\r\n",
    ),
    ("bare LF line ends", "GET / HTTP/1.1\nHost: a.test\n\n"),
    (
        "bare LF hiding a header",
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\nContent-Length: 5\r\n\r\nabcde",
    ),
    (
        "absolute URI naming another host",
        "GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ),
    (
        "two Host headers",
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ),
    ("no Host header", "GET / HTTP/1.1\r\n\r\n"),
    (
        "space before colon",
        "GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "unknown transfer coding",
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
];

#[test]
fn ambiguous_requests_get_400_close_and_never_reach_the_tenant() {
    for engine in ENGINES {
        for (what, req) in SMUGGLING {
            let a = Backend::start("a");
            let p = proxy(&[("a.test", "a", a.addr), ("b.test", "a", a.addr)], |s| {
                s.engine = engine
            });
            // In one write; what came back until the proxy closed.
            let (out, closed) = send_split(p.http_addr().unwrap(), req.as_bytes(), req.len());
            let r = parse(&out);
            assert_eq!(r.status, 400, "{engine:?} {what}: {}", r.head);
            assert!(
                closed,
                "{engine:?} {what}: the proxy kept the connection open"
            );
            // Nothing else answered on the connection after the 400.
            assert_eq!(
                out.windows(5).filter(|w| w == b"HTTP/").count(),
                1,
                "{engine:?} {what}: {:?}",
                String::from_utf8_lossy(&out)
            );
            a.assert_untouched(what);
            p.shutdown();
        }
    }
}

/// Sends `bytes` in two writes cut at `at` (a pause between, so the proxy
/// reads them apart); what came back, and whether the proxy closed.
fn send_split(addr: std::net::SocketAddr, bytes: &[u8], at: usize) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&bytes[..at]).unwrap();
    if at == bytes.len() {
        // In one write.
        return read_to_close(&mut s);
    }
    std::thread::sleep(Duration::from_millis(2));
    // The proxy may have refused (and closed) on the first part already.
    let _ = s.write_all(&bytes[at..]);
    read_to_close(&mut s)
}

/// Reads until the proxy closes (true) or 10 s pass (false).
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (out, closed)
}

#[test]
fn refused_requests_split_at_every_byte_get_400_and_a_closed_connection() {
    for (engine, (what, req)) in ENGINES
        .into_iter()
        .flat_map(|e| SMUGGLING.iter().map(move |c| (e, c)))
    {
        let what = format!("{engine:?} {what}");
        let req = req.as_bytes();
        let a = Backend::start("a");
        let p = proxy(&[("a.test", "a", a.addr), ("b.test", "a", a.addr)], |s| {
            s.engine = engine
        });
        let addr = p.http_addr().unwrap();
        let head_len = req
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(req.len(), |i| i + 4);
        // Positive control: the same connection handling serves a good
        // request split the same way.
        let good = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
        let (out, closed) = send_split(addr, good, good.len() / 2);
        assert!(
            closed && parse(&out).status == 200,
            "control: {:?}",
            String::from_utf8_lossy(&out)
        );
        let seen = a.connections();
        // Every cut inside the head first: then nothing reaches the tenant.
        let cuts = (1..=head_len.min(req.len() - 1)).chain(head_len + 1..req.len());
        for at in cuts {
            let (out, closed) = send_split(addr, req, at);
            let text = String::from_utf8_lossy(&out);
            assert!(
                closed,
                "{what}, cut at {at}: the proxy kept the connection open: {text:?}"
            );
            assert_eq!(parse(&out).status, 400, "{what}, cut at {at}: {text:?}");
            assert_eq!(
                out.windows(5).filter(|w| w == b"HTTP/").count(),
                1,
                "{what}, cut at {at}: {text:?}"
            );
            if at <= head_len {
                assert_eq!(
                    a.connections(),
                    seen,
                    "{what}, cut at {at}: the tenant was contacted"
                );
            }
        }
        p.shutdown();
    }
}

#[test]
fn a_bad_request_behind_a_good_one_is_refused_alone() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let out = raw(
        p.http_addr().unwrap(),
        b"GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\nGET /bad HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    let seen = a.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/ok");
}

/// Heads over the limits get 431 and a closed connection, in one write
/// and split: at every byte around the limit (where the refusal happens)
/// and every 97th elsewhere (every byte of a 10 KB head would be 10,000
/// connections per engine).
#[test]
fn oversized_heads_get_431() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(10_000)
    );
    let many: String = (0..30).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}Connection: close\r\n\r\n");
    for engine in ENGINES {
        let a = Backend::start("a");
        let p = proxy(&[("a.test", "a", a.addr)], |s| {
            s.engine = engine;
            s.max_header_bytes = 8192;
            s.max_headers = 20;
        });
        let addr = p.http_addr().unwrap();
        // Control: a head just within the limits passes.
        let fits = format!("X-Big: {}\r\n", "x".repeat(7_000));
        assert_eq!(
            get_with(addr, "a.test", "/", &fits).status,
            200,
            "{engine:?}"
        );
        let seen = a.connections();
        for (what, req) in [("big", big.as_bytes()), ("many", many.as_bytes())] {
            let cuts = (1..=req.len())
                .filter(|at| at % 97 == 0 || (8100..8300).contains(at) || *at == req.len());
            for at in cuts {
                let (out, closed) = send_split(addr, req, at);
                let text = String::from_utf8_lossy(&out[..out.len().min(200)]).into_owned();
                assert!(
                    closed,
                    "{engine:?} {what}, cut at {at}: kept open: {text:?}"
                );
                assert_eq!(
                    parse(&out).status,
                    431,
                    "{engine:?} {what}, cut at {at}: {text:?}"
                );
            }
        }
        assert_eq!(
            a.connections(),
            seen,
            "{engine:?}: the tenant saw an oversized head"
        );
        p.shutdown();
    }
}

#[test]
fn slow_request_heads_are_cut_off() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |s| {
        s.header_read_timeout = Duration::from_millis(300);
    });
    let mut s = TcpStream::connect(p.http_addr().unwrap()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ")
        .unwrap();
    assert!(
        closed_by_peer(&mut s),
        "a slowloris head kept its connection"
    );
    // A connection that never says anything is closed too.
    let mut silent = TcpStream::connect(p.http_addr().unwrap()).unwrap();
    assert!(closed_by_peer(&mut silent));
    a.assert_untouched("slowloris");
}

#[test]
fn connections_are_taken_in_when_they_speak() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let addr = p.http_addr().unwrap();
    // Connected, nothing sent: the kernel holds it, the proxy has no
    // connection yet.
    let mut silent = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gauge(&p, "open_connections"),
        0,
        "a connection that said nothing was accepted"
    );
    // Once it speaks it is served at once, and counted.
    silent
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut silent).status, 200);
    assert_eq!(gauge(&p, "open_connections"), 1);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |s| {
        s.idle_timeout = Duration::from_millis(300);
    });
    let mut s = TcpStream::connect(p.http_addr().unwrap()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).status, 200);
    assert!(closed_by_peer(&mut s), "idle connection stayed open");
}

/// A WebSocket whose client stops reading while its tenant keeps sending
/// is closed once nothing has moved for the idle timeout, with both
/// engines (the h1 engine's tunnel used to wait on that write for ever,
/// holding the tenant connection, its buffers and a place in the limits).
#[test]
fn a_websocket_whose_client_stops_reading_is_closed() {
    for engine in ENGINES {
        let a = Backend::start("a");
        let p = proxy(&[("a.test", "a", a.addr)], |s| {
            s.engine = engine;
            s.idle_timeout = Duration::from_millis(500);
        });
        // Control: it is tunnelled and counted.
        let ws = websocket(p.http_addr().unwrap());
        assert_eq!(gauge(&p, "open_connections"), 1, "{engine:?}");
        // The client sends without end and never reads: the tenant's echo
        // fills the way back, and then nothing moves.
        let mut w = ws.try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            (0..4096)
                .take_while(|_| w.write_all(&chunk).is_ok())
                .count()
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while gauge(&p, "open_connections") != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{engine:?}: the WebSocket whose client stopped reading is still open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let chunks = writer.join().unwrap();
        assert!(chunks < 4096, "{engine:?}: the proxy took all 256 MiB");
        drop(ws);
    }
}

#[test]
fn connections_beyond_the_per_client_limit_are_closed() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |s| {
        s.max_connections_per_ip = 2;
    });
    let addr = p.http_addr().unwrap();
    let mut first = TcpStream::connect(addr).unwrap();
    let mut second = TcpStream::connect(addr).unwrap();
    // Both are held (a request in each proves the proxy accepted them).
    for s in [&mut first, &mut second] {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(s).status, 200);
    }
    let mut third = TcpStream::connect(addr).unwrap();
    let _ = third.write_all(b"GET /third HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(closed_by_peer(&mut third));
    assert!(a.requests().iter().all(|r| r.path != "/third"));
    // Freed places are given out again, once the proxy has seen the close.
    drop(first);
    let mut ok = None;
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET /later HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut out);
        if out.starts_with(b"HTTP/1.1 200") {
            ok = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok.is_some(), "a freed place was not reused");
}

#[test]
fn parked_connections_keep_their_place_in_the_limits() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |s| {
        s.max_connections_per_ip = 2;
    });
    let addr = p.http_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).status, 200);
        held.push(s);
    }
    wait_gauge(&p, "parked_connections", 2);
    let mut third = TcpStream::connect(addr).unwrap();
    let _ = third.write_all(b"GET /third HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(
        closed_by_peer(&mut third),
        "a third connection was served beside two parked ones"
    );
    assert!(a.requests().iter().all(|r| r.path != "/third"));
    // Control: once a parked one leaves, its place is given out again.
    drop(held.pop());
    wait_gauge(&p, "open_connections", 1);
    let r = get(addr, "a.test", "/later");
    assert_eq!(r.status, 200);
}

#[test]
fn connections_beyond_the_total_limit_are_closed() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |s| {
        s.max_connections = 1;
    });
    let addr = p.http_addr().unwrap();
    let mut first = TcpStream::connect(addr).unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut first).status, 200);
    let mut second = TcpStream::connect(addr).unwrap();
    let _ = second.write_all(b"GET /second HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(closed_by_peer(&mut second));
    assert_eq!(a.requests().len(), 1);
}
