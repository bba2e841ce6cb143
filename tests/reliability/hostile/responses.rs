//! Hostile tenant, its HTTP responses: a tenant whose web server answers
//! with conflicting framing, malformed or oversized heads, bad chunks or
//! a second response hidden behind the first never gets a client to read
//! two responses through the proxy (issue 16: a 502, or where the head
//! already went out a connection that ends before the body does).
//!
//! The tenant is a busybox tenant whose port 80 is `nc -ll -e` running a
//! shell responder that answers each request by its path with bytes from
//! a file in the image. A raw TCP client in the client namespace goes
//! through `vpsctl proxy`, once with each HTTP/1 engine (`h1`, `hyper`),
//! reads until the proxy closes (or sends a second request when the
//! connection stays open) and parses what it got as a client would.
//! Positive controls: the same hostile bytes read from the tenant
//! directly; a valid response through the proxy gives 200, its exact
//! body, and a second request on the same connection works.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Host, HOST_ADDR};

/// What the client must get through the proxy.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// The proxy's 502: the tenant's head is refused before a byte of it
    /// reaches the client.
    BadGateway,
    /// 502, or (the head went out before the body turned bad) that head
    /// and a connection closed before the body's end.
    BadGatewayOrCut,
    /// The tenant's response as it declared it (status, body); what the
    /// tenant sent beyond it reaches no client.
    Exactly(u16, &'static str),
}

/// A catalogue entry: the path the client asks for, the bytes the tenant
/// answers with, bytes it sends 0.3 s later (on the same connection), and
/// what the client must get.
struct Case {
    name: &'static str,
    answer: Vec<u8>,
    late: &'static [u8],
    want: Want,
    /// What hyper's client makes of it where it is more lenient than the
    /// h1 engine (it re-frames what it accepts, so the client still reads
    /// exactly one response).
    hyper: Option<Want>,
}

/// A complete response a client would take as a second one.
const SMUGGLED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled";

fn case(name: &'static str, answer: &[u8], smuggle: bool, want: Want) -> Case {
    let mut a = answer.to_vec();
    if smuggle {
        a.extend_from_slice(SMUGGLED);
    }
    Case {
        name,
        answer: a,
        late: b"",
        want,
        hyper: None,
    }
}

/// hyper's client accepts this one: through it, exactly `want`.
fn lenient_in_hyper(mut c: Case, want: Want) -> Case {
    c.hyper = Some(want);
    c
}

fn catalogue() -> Vec<Case> {
    use Want::*;
    let ok = |head: &str| format!("HTTP/1.1 200 OK\r\n{head}\r\n").into_bytes();
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    vec![
        // Conflicting framing: each reading leaves a second response.
        case(
            "cl-te",
            &[
                ok("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
            true,
            BadGateway,
        ),
        case(
            "te-cl",
            &[
                ok("Transfer-Encoding: chunked\r\nContent-Length: 48\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
            true,
            BadGateway,
        ),
        case(
            "two-cl",
            &[
                ok("Content-Length: 2\r\nContent-Length: 48\r\n"),
                b"ok".to_vec(),
            ]
            .concat(),
            true,
            BadGateway,
        ),
        case(
            "cl-list",
            &[ok("Content-Length: 2, 48\r\n"), b"ok".to_vec()].concat(),
            true,
            BadGateway,
        ),
        case(
            "cl-sign",
            &[ok("Content-Length: +2\r\n"), b"ok".to_vec()].concat(),
            true,
            BadGateway,
        ),
        // Transfer codings other than one final chunked.
        case(
            "te-gzip",
            &[ok("Transfer-Encoding: gzip\r\n"), b"ok".to_vec()].concat(),
            true,
            BadGateway,
        ),
        case(
            "te-chunked-gzip",
            &[
                ok("Transfer-Encoding: chunked, gzip\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
            true,
            BadGateway,
        ),
        case(
            "te-twice",
            &[
                ok("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
            true,
            BadGateway,
        ),
        case(
            "te-http10",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
            BadGateway,
        ),
        // Bad chunks.
        case(
            "chunk-size",
            &[
                ok("Transfer-Encoding: chunked\r\n"),
                b"zz\r\nhello\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            true,
            BadGatewayOrCut,
        ),
        case(
            "chunk-overflow",
            &[
                ok("Transfer-Encoding: chunked\r\n"),
                b"10000000000000002\r\nok\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            true,
            BadGatewayOrCut,
        ),
        // hyper ignores what a chunk extension holds.
        lenient_in_hyper(
            case(
                "chunk-ext",
                &[
                    ok("Transfer-Encoding: chunked\r\n"),
                    b"2;a=\x01b\r\nok\r\n0\r\n\r\n".to_vec(),
                ]
                .concat(),
                true,
                BadGatewayOrCut,
            ),
            Exactly(200, "ok"),
        ),
        case(
            "chunk-lf",
            &[
                ok("Transfer-Encoding: chunked\r\n"),
                b"2\nok\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            true,
            BadGatewayOrCut,
        ),
        Case {
            name: "chunk-late",
            answer: [
                ok("Transfer-Encoding: chunked\r\n"),
                b"2\r\nok\r\n".to_vec(),
            ]
            .concat(),
            late: b"zz\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
            want: BadGatewayOrCut,
            hyper: None,
        },
        // Heads over the limits (64 KiB; header fields).
        case("big-head", &big, false, BadGateway),
        case("many-headers", &many, false, BadGateway),
        // Malformed heads.
        case(
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded: in\r\nContent-Length: 2\r\n\r\nok",
            false,
            BadGateway,
        ),
        case(
            "nul",
            b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
            false,
            BadGateway,
        ),
        case(
            "bare-cr",
            b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 48\r\nContent-Length: 2\r\n\r\nok",
            true,
            BadGateway,
        ),
        // hyper takes a bare LF as a line end (RFC 9112 2.2 allows it).
        lenient_in_hyper(
            case(
                "bare-lf",
                b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
                true,
                BadGateway,
            ),
            Exactly(200, "ok"),
        ),
        // DEL in a value: httparse lets it through, the engine does not.
        case(
            "del",
            b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 2\r\n\r\nok",
            false,
            BadGateway,
        ),
        case(
            "status-digits",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
            BadGateway,
        ),
        case(
            "status-proto",
            b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
            BadGateway,
        ),
        case("status-junk", b"hello there\r\n\r\n", false, BadGateway),
        case(
            "interim-junk",
            b"HTTP/1.1 100 Continue\r\n\r\nnot a response\r\n\r\n",
            false,
            BadGateway,
        ),
        case(
            "unasked-101",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
            true,
            BadGateway,
        ),
        // A body longer than declared, or one where none may be: the
        // declared response passes, the rest reaches nobody.
        case(
            "smuggle-after",
            &[ok("Content-Length: 2\r\n"), b"ok".to_vec()].concat(),
            true,
            Exactly(200, "ok"),
        ),
        Case {
            name: "smuggle-late",
            answer: [ok("Content-Length: 2\r\n"), b"ok".to_vec()].concat(),
            late: SMUGGLED,
            want: Exactly(200, "ok"),
            hyper: None,
        },
        case(
            "204-body",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            true,
            Exactly(204, ""),
        ),
        case(
            "304-body",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\nsmuggled",
            false,
            Exactly(304, ""),
        ),
    ]
}

/// The tenant's web server, run by `nc -ll -e` per connection: answers
/// each request by its path, `/ok...` validly, `/NAME` with the bytes of
/// /srv/hostile/NAME (and NAME.late 0.3 s later).
const RESPONDER: &str = r#"#!/bin/sh
CR=$(printf '\r')
while IFS=' ' read -r method path version; do
  while IFS= read -r line; do
    if [ "$line" = "$CR" ] || [ -z "$line" ]; then break; fi
  done
  case "$path" in
  /ok*)
    body="ok $path"
    printf 'HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n%s' "${#body}" "$body" ;;
  /*/*|*..*)
    printf 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n' ;;
  *)
    f="/srv/hostile${path}"
    if [ -f "$f" ]; then
      cat "$f"
      if [ -f "$f.late" ]; then sleep 0.3; cat "$f.late"; fi
    else
      printf 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'
    fi ;;
  esac
done
"#;

/// A busybox image named `hostile` whose port 80 is the responder.
fn hostile_image(h: &Host, cases: &[Case]) {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = h.root.join("hostile-rootfs");
    sotolito_provisioner::busybox::busybox_rootfs(&rootfs).unwrap();
    let inittab = rootfs.join("etc/inittab");
    let text = std::fs::read_to_string(&inittab).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("httpd"))
        .expect("the busybox image serves HTTP with httpd")
        .to_owned();
    std::fs::write(
        &inittab,
        text.replace(
            &line,
            "::respawn:/usr/bin/nc -ll -p 80 -e /usr/sbin/hostile-http",
        ),
    )
    .unwrap();
    let responder = rootfs.join("usr/sbin/hostile-http");
    std::fs::write(&responder, RESPONDER).unwrap();
    std::fs::set_permissions(&responder, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = rootfs.join("srv/hostile");
    std::fs::create_dir_all(&dir).unwrap();
    for c in cases {
        std::fs::write(dir.join(c.name), &c.answer).unwrap();
        if !c.late.is_empty() {
            std::fs::write(dir.join(format!("{}.late", c.name)), c.late).unwrap();
        }
    }
    h.ok(&["image", "import", "hostile", rootfs.to_str().unwrap()]);
}

/// A response as a client reads it.
#[derive(Debug, PartialEq)]
struct Answer {
    code: u16,
    body: Vec<u8>,
}

/// What a client makes of the bytes of one connection (RFC 9112 6.3; the
/// requests here are GETs).
#[derive(Debug, Default)]
struct Reading {
    responses: Vec<Answer>,
    /// The last response's head arrived, its body did not end.
    cut: bool,
    /// Bytes a client cannot read as a response, or framing it cannot
    /// trust (Content-Length with Transfer-Encoding, differing lengths).
    junk: Option<String>,
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(200)]);
    format!("{s:?}")
}

/// Decodes a chunked body at the start of `b`: (body, bytes used), or
/// `None` when it does not end within `b`, or `Err` when malformed.
fn chunked(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = b[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &b[at..at + eol];
        let size = line.split(|&c| c == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| format!("a bad chunk size line {}", lossy(line)))?;
        at += eol + 2;
        if size == 0 {
            // Trailers up to an empty line.
            loop {
                let Some(eol) = b[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if b.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&b[at..at + size]);
        if &b[at + size..at + size + 2] != b"\r\n" {
            return Err("a chunk without its CRLF".into());
        }
        at += size + 2;
    }
}

fn read_as_client(mut b: &[u8]) -> Reading {
    let mut r = Reading::default();
    while !b.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut res = httparse::Response::new(&mut headers);
        let len = match res.parse(b) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                r.junk = Some(format!("an incomplete head {}", lossy(b)));
                return r;
            }
            Err(e) => {
                r.junk = Some(format!("not a response ({e}): {}", lossy(b)));
                return r;
            }
        };
        let code = res.code.unwrap_or(0);
        let (mut cl, mut te) = (Vec::new(), Vec::new());
        for h in res.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl.push(String::from_utf8_lossy(h.value).trim().to_owned());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te.push(String::from_utf8_lossy(h.value).to_ascii_lowercase());
            }
        }
        let rest = &b[len..];
        if (100..200).contains(&code) {
            // Interim: a client reads on.
            b = rest;
            continue;
        }
        if code == 204 || code == 304 {
            r.responses.push(Answer { code, body: vec![] });
            b = rest;
            continue;
        }
        if !te.is_empty() && !cl.is_empty() {
            r.junk = Some(format!(
                "Content-Length with Transfer-Encoding: {}",
                lossy(b)
            ));
            return r;
        }
        if cl.len() > 1 || cl.iter().any(|v| v.contains(',')) {
            r.junk = Some(format!("several Content-Lengths: {}", lossy(b)));
            return r;
        }
        if te.last().is_some_and(|t| t.trim().ends_with("chunked")) {
            match chunked(rest) {
                Ok(Some((body, used))) => {
                    r.responses.push(Answer { code, body });
                    b = &rest[used..];
                }
                Ok(None) => {
                    r.responses.push(Answer { code, body: vec![] });
                    r.cut = true;
                    return r;
                }
                Err(e) => {
                    r.junk = Some(e);
                    return r;
                }
            }
        } else if let Some(n) = cl.first().filter(|_| te.is_empty()) {
            let Ok(n) = n.parse::<usize>() else {
                r.junk = Some(format!("a bad Content-Length {n:?}"));
                return r;
            };
            if rest.len() < n {
                r.responses.push(Answer {
                    code,
                    body: rest.to_vec(),
                });
                r.cut = true;
                return r;
            }
            r.responses.push(Answer {
                code,
                body: rest[..n].to_vec(),
            });
            b = &rest[n..];
        } else {
            // Until the connection's end.
            r.responses.push(Answer {
                code,
                body: rest.to_vec(),
            });
            b = &[];
        }
    }
    r
}

/// Reads until the peer closes, `done` says the bytes so far are enough,
/// or `limit` passes; (bytes, whether the peer closed).
fn read_until(
    s: &mut TcpStream,
    out: &mut Vec<u8>,
    limit: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 16 * 1024];
    while !done(out) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

/// One response complete at the start of `b` (or bytes no more bytes
/// would make one of).
fn one_complete(b: &[u8]) -> bool {
    let r = read_as_client(b);
    let junk = r
        .junk
        .as_ref()
        .is_some_and(|j| !j.starts_with("an incomplete head"));
    junk || (!r.responses.is_empty() && !(r.cut && r.responses.len() == 1))
}

const SECOND: &str = "/ok/second";

/// Asks `path` through the proxy at `proxy`; when the connection stays
/// open after the first response, asks `/ok/second` on it. Everything the
/// client read, and whether the proxy closed before the second request.
/// With `pause`, waits before the second request.
fn through_proxy(client_ns: &Path, proxy: SocketAddr, path: &str, pause: bool) -> (Vec<u8>, bool) {
    let connected = sotolito_net::netns::run_in(client_ns, || {
        Ok(TcpStream::connect_timeout(&proxy, Duration::from_secs(5)))
    })
    .unwrap();
    // Refused: the proxy is not up (yet); the caller sees no response.
    let Ok(mut s) = connected else {
        return (Vec::new(), true);
    };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: hostile.test\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let closed = read_until(&mut s, &mut out, Duration::from_secs(10), one_complete);
    if closed {
        return (out, true);
    }
    if pause {
        // Bytes the tenant sends late arrive while its connection is idle
        // (once the next request is sent, a tenant may answer it anything).
        std::thread::sleep(Duration::from_millis(800));
    }
    let second =
        format!("GET {SECOND} HTTP/1.1\r\nHost: hostile.test\r\nConnection: close\r\n\r\n");
    if s.write_all(second.as_bytes()).is_ok() {
        read_until(&mut s, &mut out, Duration::from_secs(10), |_| false);
    }
    (out, false)
}

/// Whether the client's reading of `path`'s exchange is what `want`
/// says; the reason when not.
fn judge(want: Want, bytes: &[u8], closed_first: bool) -> Result<(), String> {
    let r = read_as_client(bytes);
    if let Some(junk) = &r.junk {
        return Err(format!("the client read junk: {junk}"));
    }
    let Some(first) = r.responses.first() else {
        return Err(format!("no response at all: {}", lossy(bytes)));
    };
    let second = Answer {
        code: 200,
        body: format!("ok {SECOND}").into_bytes(),
    };
    let rest = &r.responses[1..];
    let first_ok = match want {
        Want::BadGateway => first.code == 502 && !(r.cut && rest.is_empty()),
        Want::BadGatewayOrCut => {
            (first.code == 502 && !(r.cut && rest.is_empty()))
                || (r.cut && rest.is_empty() && closed_first)
        }
        Want::Exactly(code, body) => first.code == code && first.body == body.as_bytes(),
    };
    if !first_ok {
        return Err(format!(
            "got {} {:?}{} (want {want:?}): {}",
            first.code,
            String::from_utf8_lossy(&first.body),
            if r.cut { ", cut" } else { "" },
            lossy(bytes)
        ));
    }
    match rest {
        [] if matches!(want, Want::Exactly(..)) => Err(format!(
            "the second request on the connection got no answer: {}",
            lossy(bytes)
        )),
        [] => Ok(()),
        [a] if *a == second && !r.cut => Ok(()),
        _ => Err(format!(
            "{} responses where the client asked for {}: {}",
            r.responses.len(),
            if closed_first { 1 } else { 2 },
            lossy(bytes)
        )),
    }
}

/// Reads what the tenant itself answers to `path` (bypassing the proxy)
/// until `want` bytes arrived or 5 s passed; nothing while it refuses.
fn direct(host_ns: &Path, tenant: SocketAddr, path: &str, want: usize) -> Vec<u8> {
    let connected = sotolito_net::netns::run_in(host_ns, || {
        Ok(TcpStream::connect_timeout(&tenant, Duration::from_secs(5)))
    })
    .unwrap();
    let Ok(mut s) = connected else {
        return Vec::new();
    };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: hostile.test\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    read_until(&mut s, &mut out, Duration::from_secs(5), |b| {
        b.len() >= want
    });
    out
}

fn start_proxy(h: &Host, engine: &str) -> std::process::Child {
    let config = std::fs::read_to_string(&h.config).unwrap();
    let config = config
        .lines()
        .filter(|l| !l.starts_with("engine ="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&h.config, format!("{config}\nengine = \"{engine}\"\n")).unwrap();
    let log = std::fs::File::create(h.root.join(format!("proxy-{engine}.log"))).unwrap();
    h.vpsctl_cmd(&["proxy"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn hostile_responses_never_read_as_two() {
    // `[proxy]` comes last: the engine is appended to it below.
    let h = Host::new(
        "[proxy]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\nadmin = \"127.0.0.1:9180\"\n",
    );
    h.ok(&["init"]);
    let cases = catalogue();
    hostile_image(&h, &cases);
    let key = h.write_key();
    h.ok(&[
        "provision",
        "hostile",
        "--image",
        "hostile",
        "--host",
        "hostile.test",
        "--ssh-port",
        "2241",
        "--ssh-key",
        key.to_str().unwrap(),
        "--start",
    ]);
    let ip = h.json(&["status", "hostile"])["ip"]
        .as_str()
        .expect("the tenant's address")
        .to_owned();
    let tenant: SocketAddr = format!("{ip}:80").parse().unwrap();
    let host_ns = h.net().host.path();
    let client_ns = h.net().client.path();

    // Control: the tenant really sends each hostile answer, byte for byte
    // (a client talking to it directly would read it).
    let deadline = Instant::now() + Duration::from_secs(20);
    let hello: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nok /ok/direct";
    while direct(&host_ns, tenant, "/ok/direct", hello.len()) != hello {
        assert!(
            Instant::now() < deadline,
            "the hostile tenant's responder never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for c in &cases {
        let want = [&c.answer[..], c.late].concat();
        let got = direct(&host_ns, tenant, &format!("/{}", c.name), want.len());
        assert!(
            got == want,
            "{}: the tenant sent {} instead of its catalogue answer",
            c.name,
            lossy(&got)
        );
    }

    let proxy: SocketAddr = format!("{HOST_ADDR}:80").parse().unwrap();
    let mut failures = Vec::new();
    for engine in ["h1", "hyper"] {
        let mut child = start_proxy(&h, engine);
        // Control: a valid answer passes whole, and the connection carries
        // on to a second request.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (bytes, closed) = through_proxy(&client_ns, proxy, "/ok/first", false);
            match judge(Want::Exactly(200, "ok /ok/first"), &bytes, closed) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{engine}: a valid response did not pass: {e}\n{}",
                        std::fs::read_to_string(h.root.join(format!("proxy-{engine}.log")))
                            .unwrap_or_default()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        for c in &cases {
            let (bytes, closed) = through_proxy(
                &client_ns,
                proxy,
                &format!("/{}", c.name),
                !c.late.is_empty(),
            );
            let want = match engine {
                "hyper" => c.hyper.unwrap_or(c.want),
                _ => c.want,
            };
            if let Err(e) = judge(want, &bytes, closed) {
                failures.push(format!("{engine} {}: {e}", c.name));
            }
        }
        // After all that, the site still serves (no poisoned pooled
        // connection answers for a hostile one).
        let (bytes, closed) = through_proxy(&client_ns, proxy, "/ok/after", false);
        if let Err(e) = judge(Want::Exactly(200, "ok /ok/after"), &bytes, closed) {
            failures.push(format!("{engine} after the catalogue: {e}"));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
