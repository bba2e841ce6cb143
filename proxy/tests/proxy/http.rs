//! Plain HTTP/1.1 through the proxy to real loopback backends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use sotolito_proxy::RouteTable;

use crate::common::*;

#[test]
fn routes_by_host_to_the_owning_tenant() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = proxy(
        &[("a.test", "a", a.addr), ("*.b.test", "b", b.addr)],
        |_| {},
    );
    let addr = p.http_addr().unwrap();
    for host in ["a.test", "A.Test:80", "a.test."] {
        let r = get(addr, host, "/x?y=1");
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.text(), "a GET /x len=0\n");
    }
    let r = get(addr, "www.b.test", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "b GET / len=0\n"));
    for host in ["b.test", "x.y.b.test", "c.test"] {
        assert_eq!(get(addr, host, "/").status, 404, "{host}");
    }
    assert_eq!(a.requests().len(), 3);
    assert_eq!(b.requests().len(), 1);
}

#[test]
fn hop_by_hop_headers_go_and_untrusted_forwarding_headers_are_replaced() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let r = get_with(
        p.http_addr().unwrap(),
        "a.test",
        "/",
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n\
         Connection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\n\
         Proxy-Connection: keep-alive\r\n",
    );
    assert_eq!(r.status, 200);
    // The tenant's own hop-by-hop headers don't reach the client either.
    assert_eq!(r.header("keep-alive"), None);
    let seen = &a.requests()[0];
    let h = &seen.headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "a.test");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=\"a.test\"");
    assert_eq!(h["host"], "a.test");
    for gone in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert!(!h.contains_key(gone), "{gone} reached the tenant");
    }
}

#[test]
fn trusted_proxies_forwarding_headers_are_extended() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |s| {
        s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    });
    let r = get_with(
        p.http_addr().unwrap(),
        "a.test",
        "/",
        "X-Forwarded-For: 192.0.2.9\r\nX-Forwarded-Proto: https\r\n",
    );
    assert_eq!(r.status, 200);
    let h = &a.requests()[0].headers;
    assert_eq!(h["x-forwarded-for"], "192.0.2.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[test]
fn tenant_down_is_502_and_slow_tenant_is_504() {
    let slow = Backend::start("slow");
    // A port that refuses: bound, then closed.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(
        &[
            ("down.test", "down", down),
            ("slow.test", "slow", slow.addr),
        ],
        |s| s.upstream_timeout = Duration::from_millis(300),
    );
    let addr = p.http_addr().unwrap();
    assert_eq!(get(addr, "down.test", "/").status, 502);
    assert_eq!(get(addr, "slow.test", "/slow").status, 504);
    // The proxy still serves after both.
    assert_eq!(get(addr, "slow.test", "/").status, 200);
}

#[test]
fn keep_alive_requests_reuse_upstream_connections() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let mut s = TcpStream::connect(p.http_addr().unwrap()).unwrap();
    for i in 0..20 {
        write!(s, "GET /{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        let r = read_response(&mut s);
        assert_eq!(r.text(), format!("a GET /{i} len=0\n"));
    }
    assert_eq!(a.requests().len(), 20);
    assert!(
        a.connections() <= 2,
        "{} upstream connections for 20 requests",
        a.connections()
    );
}

#[test]
fn websocket_upgrade_is_tunneled_both_ways() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let mut s = websocket(p.http_addr().unwrap());
    for msg in [&b"hello"[..], b"\x81\x05world", b"GET / HTTP/1.1\n\n"] {
        echo(&mut s, msg);
    }
    // After a pause, and both ways at once with more than a buffer.
    std::thread::sleep(Duration::from_millis(300));
    echo(&mut s, &vec![b'm'; 1 << 20]);
    echo(&mut s, b"again");
    assert_eq!(a.requests()[0].headers["upgrade"], "websocket");
}

/// Each side's end reaches the other: the client's FIN ends what the
/// tenant reads (the echo server then closes), and the tenant's close
/// reaches the client after the bytes before it, with both engines.
#[test]
fn an_upgraded_connection_passes_each_end_on() {
    for engine in ENGINES {
        let a = Backend::start("a");
        let p = proxy(&[("a.test", "a", a.addr)], |s| s.engine = engine);
        let mut ws = websocket(p.http_addr().unwrap());
        ws.write_all(b"last words").unwrap();
        ws.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let end = ws.read_to_end(&mut rest);
        assert!(
            end.is_ok() && rest == b"last words",
            "{engine:?}: after the client's FIN: {end:?}, {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// A quiet WebSocket holds no buffers: upgraded connections through a
/// proxy process of its own, each quiet after moving 256 KiB both ways,
/// cost the proxy a few KiB each (their buffers, 80 KiB, are the
/// worker's again while nothing moves).
#[test]
fn quiet_upgraded_connections_hold_no_buffers() {
    const N: usize = 200;
    let a = Backend::start("a");
    let p = ProxyProcess::start(&format!("a.test={}", a.addr));
    let msg = vec![b'w'; 256 * 1024];
    let open = || {
        let mut s = websocket(p.addr);
        echo(&mut s, &msg);
        s
    };
    // The first ones bring the runtime and the pools to their size.
    let mut warm: Vec<TcpStream> = (0..4).map(|_| open()).collect();
    let before = p.rss_kib();
    let mut quiet: Vec<TcpStream> = (0..N).map(|_| open()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let after = p.rss_kib();
    let per = after.saturating_sub(before) as f64 / N as f64;
    // Still open and tunnelled (the control): they answer again.
    for s in quiet.iter_mut().step_by(50).chain(warm.iter_mut()) {
        echo(s, b"still here");
    }
    assert!(
        per < 16.0,
        "{per:.1} KiB per quiet upgraded connection ({before} -> {after} KiB for {N})"
    );
}

/// The proxy in a process of its own (`proxy-bench`), so its memory is
/// its own and not the test harness's.
struct ProxyProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl ProxyProcess {
    fn start(route: &str) -> ProxyProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_proxy-bench"))
            .args([
                "--listen",
                &addr.to_string(),
                "--route",
                route,
                "--workers",
                "2",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start proxy-bench");
        for _ in 0..200 {
            if TcpStream::connect(addr).is_ok() {
                return ProxyProcess { child, addr };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("proxy-bench did not listen on {addr}");
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hundred_megabyte_bodies_stream_both_ways_in_bounded_memory() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    let a = Backend::start("a");
    let p = Arc::new(ProxyProcess::start(&format!("a.test={}", a.addr)));
    // Warm: one request, so the pools and buffers exist before the baseline.
    let warm = get(p.addr, "a.test", "/warm");
    assert_eq!(warm.status, 200);
    let idle = p.rss_kib();
    // The proxy's RSS, sampled while the bodies flow.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (p, done) = (p.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                samples.push(p.rss_kib());
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };

    // Upload, chunked, from a client that never holds more than 64 KiB.
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b'u'; 64 * 1024];
    for _ in 0..TOTAL / chunk.len() as u64 {
        write!(s, "{:x}\r\n", chunk.len()).unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.text(), format!("a POST /up len={TOTAL}\n"));

    // Download, counted as it arrives.
    write!(
        s,
        "GET /big/{TOTAL} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    // Chunked framing adds a little on top of the payload.
    assert!(got > TOTAL && got < TOTAL + TOTAL / 100, "{got}");
    assert!(samples.len() > 10, "too few RSS samples: {samples:?}");
    let peak = samples.iter().copied().max().unwrap();
    let grown_kib = peak.saturating_sub(idle);
    eprintln!(
        "proxy RSS: idle {idle} KiB, peak {peak} KiB over {} samples",
        samples.len()
    );
    assert!(
        grown_kib < 4 * 1024,
        "the proxy's RSS grew by {grown_kib} KiB (idle {idle} KiB, peak {peak} KiB) while 100 MiB bodies passed"
    );
}

#[test]
fn reload_swaps_routes_and_keeps_open_connections() {
    let a = Backend::start("a");
    let c = Backend::start("c");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let mut s = TcpStream::connect(p.http_addr().unwrap()).unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).status, 200);

    let diff = p.set_routes(RouteTable::from_routes([("c.test", "c", c.addr)]).unwrap());
    assert_eq!(diff.added, vec!["c.test"]);
    assert_eq!(diff.removed, vec!["a.test"]);

    // Same client connection, new table.
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: c.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).text(), "c GET /2 len=0\n");
    s.write_all(b"GET /3 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).status, 404);
}

#[test]
fn reloads_under_load_lose_no_request() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let addr = p.http_addr().unwrap();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let mut statuses = Vec::new();
                for i in 0..300 {
                    write!(s, "GET /{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
                    statuses.push(read_response(&mut s).status);
                    // Some requests on fresh connections too.
                    if i % 50 == 0 {
                        statuses.push(get(addr, "a.test", "/fresh").status);
                    }
                }
                statuses
            })
        })
        .collect();
    for i in 0..50 {
        let extra = format!("h{i}.test");
        let table =
            RouteTable::from_routes([("a.test", "a", a.addr), (extra.as_str(), "b", b.addr)])
                .unwrap();
        p.set_routes(table);
        std::thread::sleep(Duration::from_millis(5));
    }
    for c in clients {
        let statuses = c.join().unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        assert_eq!(statuses.len(), 306);
    }
}

#[test]
fn shutdown_drains_requests_in_flight() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let addr = p.http_addr().unwrap();
    let slow = std::thread::spawn(move || get(addr, "a.test", "/delay/500"));
    while a.requests().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    p.shutdown();
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn metrics_count_requests_by_tenant_and_status() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let addr = p.http_addr().unwrap();
    get(addr, "a.test", "/");
    get(addr, "nobody.test", "/");
    let r = get(p.admin_addr().unwrap(), "localhost", "/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains("sotolito_proxy_requests_total{tenant=\"a\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sotolito_proxy_requests_total{tenant=\"\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(text.contains("sotolito_proxy_request_duration_seconds_bucket"));
    assert!(text.contains("sotolito_proxy_open_connections"));
}

#[test]
fn connections_are_spread_evenly_over_the_workers_and_all_served() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |s| s.workers = 2);
    let addr = p.http_addr().unwrap();
    // Kept open, each with one answered request behind it: those another
    // worker took over answer like the rest.
    let mut open = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).status, 200, "connection {i}");
        open.push(s);
    }
    let per_worker: Vec<i64> = ["0", "1"]
        .iter()
        .map(|w| gauge(&p, &format!("worker_connections{{worker=\"{w}\"}}")))
        .collect();
    assert_eq!(per_worker.iter().sum::<i64>(), 20, "{per_worker:?}");
    assert!((per_worker[0] - per_worker[1]).abs() <= 1, "{per_worker:?}");
    // A second request on every connection, wherever it is served.
    for s in &mut open {
        s.write_all(b"GET /again HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(s).status, 200);
    }
    drop(open);
    // Closed connections leave their worker's count.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = get(p.admin_addr().unwrap(), "localhost", "/metrics").text();
        let total: i64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("sotolito_proxy_worker_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum();
        // The admin address is served apart from the workers.
        if total == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still counted: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_keep_alive_connections_are_parked_and_taken_up_again() {
    let a = Backend::start("a");
    let p = proxy(&[("a.test", "a", a.addr)], |_| {});
    let addr = p.http_addr().unwrap();
    let mut conns = Vec::new();
    for i in 0..6 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET /first/{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_response(&mut s).status, 200);
        conns.push(s);
    }
    // Idle past the park's threshold: every one is parked, still open.
    wait_gauge(&p, "parked_connections", 6);
    assert_eq!(gauge(&p, "open_connections"), 6);
    // Each answers its next request as before, on the same connection,
    // including a request sent in two parts across a pause.
    for (i, s) in conns.iter_mut().enumerate() {
        if i == 0 {
            s.write_all(b"GET /second/0 HTTP/1.1\r\nHo").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"st: a.test\r\n\r\n").unwrap();
        } else {
            s.write_all(format!("GET /second/{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
                .unwrap();
        }
        let r = read_response(s);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("a GET /second/{i} len=0\n"));
    }
    // Parked again; a client that leaves is let go of.
    wait_gauge(&p, "parked_connections", 6);
    conns.truncate(3);
    wait_gauge(&p, "open_connections", 3);
    wait_gauge(&p, "parked_connections", 3);
    // Draining closes the parked ones at once.
    let started = std::time::Instant::now();
    p.shutdown();
    for s in &mut conns {
        assert!(closed_by_peer(s), "a parked connection outlived the drain");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "parked connections closed only after {:?}",
        started.elapsed()
    );
}

#[test]
fn proxy_protocol_v2_names_the_real_client_to_the_tenant() {
    use std::sync::mpsc;
    // A tenant that expects PROXY v2 before HTTP, as nginx with
    // `listen ... proxy_protocol` does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tenant = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut fixed = [0u8; 16];
        s.read_exact(&mut fixed).unwrap();
        let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        let mut addrs = vec![0u8; len];
        s.read_exact(&mut addrs).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\npp\n")
            .unwrap();
        tx.send((fixed, addrs, head)).unwrap();
    });
    let p = proxy(&[("a.test", "a", tenant)], |s| s.proxy_protocol = true);
    let mut s = TcpStream::connect(p.http_addr().unwrap()).unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s);
    assert_eq!((r.status, r.text().as_str()), (200, "pp\n"));
    let (fixed, addrs, head) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(fixed[12], 0x21, "version 2, PROXY command");
    assert_eq!(fixed[13], 0x11, "TCP over IPv4");
    assert_eq!(&addrs[0..4], &[127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([addrs[8], addrs[9]]), client.port());
    assert_eq!(
        u16::from_be_bytes([addrs[10], addrs[11]]),
        p.http_addr().unwrap().port()
    );
    assert!(String::from_utf8_lossy(&head).starts_with("GET / HTTP/1.1\r\n"));
}

/// A tenant address where connecting hangs: a listener that never
/// accepts, its accept queue full, so the kernel drops further SYNs.
fn black_hole() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fill.push(s),
            Err(_) => return (addr, l, fill),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[test]
fn a_request_waiting_on_a_tenant_that_is_removed_fails_fast() {
    // The hyper path serves HTTP/2 too.
    for engine in [
        sotolito_proxy::ProxyEngine::H1,
        sotolito_proxy::ProxyEngine::Hyper,
    ] {
        waiting_request_fails_fast(engine);
    }
}

fn waiting_request_fails_fast(engine: sotolito_proxy::ProxyEngine) {
    let (hole, _listener, _fill) = black_hole();
    let a = Backend::start("a");
    let p = proxy(
        &[("gone.test", "gone", hole), ("a.test", "a", a.addr)],
        |s| {
            s.connect_timeout = Duration::from_secs(20);
            s.engine = engine;
        },
    );
    let mut s = TcpStream::connect(p.http_addr().unwrap()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: gone.test\r\n\r\n")
        .unwrap();
    // Control: while the tenant stays routed the request waits (its
    // connect hangs).
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = s.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the request did not wait on the hanging tenant: {waited:?}"
    );
    // The tenant is deprovisioned: the waiting request fails at once.
    let removed = std::time::Instant::now();
    p.set_routes(RouteTable::from_routes([("a.test", "a", a.addr)]).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response(&mut s);
    let took = removed.elapsed();
    assert_eq!(r.status, 502, "{engine:?}");
    // Fast means long before the 20 s connect timeout; the bound leaves a
    // loaded machine room (the route is checked every 250 ms).
    assert!(
        took < Duration::from_secs(5),
        "{engine:?}: failed only after {took:?}"
    );
    assert!(closed_by_peer(&mut s));
}
