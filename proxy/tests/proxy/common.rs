//! Test helpers: real loopback backends, a raw-bytes HTTP client, test
//! certificates and a proxy started on free ports.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sotolito_proxy::{Listen, ProxyHandle, RouteTable, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: u64,
}

#[derive(Default)]
struct State {
    connections: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
}

/// An HTTP/1.1 server on loopback, standing in for a tenant. Paths:
/// `/slow` answers after 5 s, `/delay/MS` after MS ms, `/big/N` streams N
/// bytes, `/ws` accepts an Upgrade and echoes bytes; anything else reads
/// the body and answers `NAME METHOD PATH len=N`.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let name: Arc<str> = Arc::from(name);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    st.connections.fetch_add(1, Ordering::SeqCst);
                    let st = st.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| answer(name.clone(), st.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        Backend { addr, state }
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Nothing at all reached this backend.
    pub fn assert_untouched(&self, what: &str) {
        assert_eq!(self.connections(), 0, "{what}: backend got a connection");
        assert!(self.requests().is_empty(), "{what}: backend got a request");
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn answer(
    name: Arc<str>,
    st: Arc<State>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut seen = Seen {
        method: req.method().to_string(),
        path: path.clone(),
        headers: req.headers().clone(),
        body_len: 0,
    };
    if path == "/ws" {
        st.requests.lock().unwrap().push(seen);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap();
        return Ok(resp);
    }
    let mut body = req.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            seen.body_len += d.len() as u64;
        }
    }
    let body_len = seen.body_len;
    let method = seen.method.clone();
    st.requests.lock().unwrap().push(seen);
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let total: u64 = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64);
                Some((
                    Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                    left - n,
                ))
            }
        });
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    let text = format!("{name} {method} {path} len={body_len}\n");
    Ok(Response::builder()
        .header("x-tenant", &*name)
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .body(full(text))
        .unwrap())
}

/// A proxy on free loopback ports with `routes` as (host, tenant, address).
pub fn proxy(
    routes: &[(&str, &str, SocketAddr)],
    tweak: impl FnOnce(&mut Settings),
) -> ProxyHandle {
    let mut settings = Settings {
        workers: 2,
        ..Settings::default()
    };
    tweak(&mut settings);
    let table = RouteTable::from_routes(routes.iter().copied()).unwrap();
    let listen = Listen {
        http: Some("127.0.0.1:0".parse().unwrap()),
        https: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some("127.0.0.1:0".parse().unwrap()),
    };
    ProxyHandle::start(settings, listen, table).unwrap()
}

/// Both HTTP/1 engines, for tests that hold for each.
pub const ENGINES: [sotolito_proxy::ProxyEngine; 2] = [
    sotolito_proxy::ProxyEngine::H1,
    sotolito_proxy::ProxyEngine::Hyper,
];

/// A gauge's value from the admin listener's /metrics.
pub fn gauge(p: &sotolito_proxy::ProxyHandle, name: &str) -> i64 {
    let text = get(p.admin_addr().unwrap(), "localhost", "/metrics").text();
    let key = format!("sotolito_proxy_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key:?} in\n{text}"))
        .parse()
        .unwrap()
}

/// Waits up to 5 s for a gauge to read `want`.
pub fn wait_gauge(p: &sotolito_proxy::ProxyHandle, name: &str, want: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = gauge(p, name);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} is {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed HTTP/1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes and reads until the proxy closes (or 10 s pass).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

pub fn parse(bytes: &[u8]) -> Resp {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    Resp {
        status,
        head,
        body: bytes[end + 4..].to_vec(),
    }
}

/// One GET with `Connection: close`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    get_with(addr, host, path, "")
}

pub fn get_with(addr: SocketAddr, host: &str, path: &str, extra_headers: &str) -> Resp {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Connection: close\r\n\r\n");
    parse(&raw(addr, req.as_bytes()))
}

/// Reads one response with a Content-Length body from a keep-alive stream.
pub fn read_response(s: &mut impl Read) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let mut r = parse(&buf);
    let len: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    r.body = body;
    r
}

/// Waits for the peer to close; true if it did within 10 s.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A certs dir with certificates for names from a test CA, and the CA's
/// file for clients.
pub struct Site {
    pub _dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub ca_file: PathBuf,
    pub ca: TestCa,
}

pub fn site(names: &[&str]) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = TestCa::new();
    for n in names {
        ca.issue(&certs, n);
    }
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    Site {
        _dir: dir,
        certs,
        ca_file,
        ca,
    }
}

/// A test CA and certificates for names, written as the certs dir expects.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sotolito test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// Writes DIR/NAME/{fullchain,privkey}.pem (`*.x` as `_.x`).
    pub fn issue(&self, certs_dir: &Path, name: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let dir = certs_dir.join(name.replace('*', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        // privkey first: the proxy reloads when the chain appears.
        std::fs::write(dir.join("privkey.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("fullchain.pem"), cert.pem()).unwrap();
    }
}

/// curl, the way an operator would test: `--connect-to` sends SNI and Host
/// for `url` to the proxy's port. Returns (status, http version, body).
pub fn curl(ca_file: &Path, port: u16, url: &str, extra: &[&str]) -> (u16, String, String) {
    let host = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca_file)
        .arg("--connect-to")
        .arg(format!("{host}:443:127.0.0.1:{port}"))
        .args(["-w", "\n@@%{http_code} %{http_version}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once("\n@@").unwrap_or(("", &text));
    let mut tail = tail.split(' ');
    let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = tail.next().unwrap_or("").to_owned();
    (status, version, body.to_owned())
}

/// Opens a WebSocket to backend `a` (Host a.test) through the proxy at
/// `addr`, and checks that it echoes.
pub fn websocket(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    echo(&mut s, b"ping");
    s
}

/// Sends `msg` and reads it back from the echoing backend, both at once
/// (a message larger than the sockets' buffers would otherwise stop).
pub fn echo(s: &mut TcpStream, msg: &[u8]) {
    let mut w = s.try_clone().unwrap();
    let sent = msg.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap().unwrap();
    assert!(back == msg, "the echo of {} bytes differs", msg.len());
}
