//! The refusal path and the edges of an exchange, with both HTTP/1
//! engines: a refused client that is still sending reads its answer and a
//! clean end, not a reset (lingering close).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sotolito_proxy::ProxyEngine;

use crate::common::*;

const ENGINES: [ProxyEngine; 2] = [ProxyEngine::H1, ProxyEngine::Hyper];

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
