//! A hostile HTTP/2 client for measuring the proxy's memory
//! (benches/h2-memory/run.sh): from one address it opens connections, asks
//! for a large response on every stream it may open, and never reads.
//!
//! h2-hold --connect ADDR --name HOST --ca CA.pem [--connections N]
//!         [--streams N] [--path PATH] [--hold SECONDS] [--open-windows]
//!
//! With --open-windows the client announces the largest flow-control
//! windows (2^31-1 per stream and for the connection), so the proxy may
//! send as much as it buffers; without, the default 64 KiB windows.
//!
//! Bounded: at most 10,000 connections and 1,000 streams each, held for at
//! most 600 s; exits after the hold. Prints how many connections the proxy
//! accepted (completed the TLS handshake and did not close at once).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h2-hold: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    connect: SocketAddr,
    name: String,
    ca: String,
    connections: usize,
    streams: u32,
    path: String,
    hold: u64,
    open_windows: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        connect: SocketAddr::from(([127, 0, 0, 1], 443)),
        name: String::new(),
        ca: String::new(),
        connections: 1,
        streams: 100,
        path: "/".into(),
        hold: 10,
        open_windows: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--open-windows" {
            a.open_windows = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--connect" => a.connect = v.parse().map_err(|_| "--connect takes ADDR:PORT")?,
            "--name" => a.name = v,
            "--ca" => a.ca = v,
            "--connections" => a.connections = num(&v)?.min(10_000) as usize,
            "--streams" => a.streams = num(&v)?.min(1_000) as u32,
            "--path" => a.path = v,
            "--hold" => a.hold = num(&v)?.min(600),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.name.is_empty() || a.ca.is_empty() {
        return Err("--name and --ca are required".into());
    }
    Ok(a)
}

fn run() -> Result<(), String> {
    let a = args()?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.ca).map_err(|e| format!("{}: {e}", a.ca))? {
        roots
            .add(c.map_err(|e| format!("{}: {e}", a.ca))?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let name = ServerName::try_from(a.name.clone()).map_err(|e| e.to_string())?;

    let requests = requests(&a.name, &a.path, a.streams, a.open_windows);
    let mut held = Vec::new();
    let mut refused = 0usize;
    let mut first_error = None;
    for _ in 0..a.connections {
        match open(&a, &config, &name, &requests) {
            Ok(conn) => held.push(conn),
            Err(e) => {
                refused += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("h2-hold: first refusal: {e}");
    }
    eprintln!(
        "h2-hold: {} connections open with {} streams each, {refused} refused; holding {} s",
        held.len(),
        a.streams,
        a.hold
    );
    std::thread::sleep(Duration::from_secs(a.hold));
    Ok(())
}

type Conn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn open(
    a: &Args,
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    requests: &[u8],
) -> Result<Conn, String> {
    let tcp = TcpStream::connect_timeout(&a.connect, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let conn =
        rustls::ClientConnection::new(config.clone(), name.clone()).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    if tls.conn.alpn_protocol() != Some(b"h2") {
        return Err("no h2".into());
    }
    tls.write_all(requests).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    Ok(tls)
}

/// The connection preface, SETTINGS (empty: the default 64 KiB windows;
/// or the largest windows) and `streams` GET requests, each a HEADERS
/// frame with END_STREAM. HPACK without Huffman or indexing.
fn requests(host: &str, path: &str, streams: u32, open_windows: bool) -> Vec<u8> {
    const MAX_WINDOW: u32 = (1 << 31) - 1;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    if open_windows {
        // SETTINGS_INITIAL_WINDOW_SIZE, then the connection's window.
        let mut settings = vec![0, 4];
        settings.extend_from_slice(&MAX_WINDOW.to_be_bytes());
        frame(&mut out, 0x4, 0, 0, &settings);
        frame(&mut out, 0x8, 0, 0, &(MAX_WINDOW - 65_535).to_be_bytes());
    } else {
        frame(&mut out, 0x4, 0, 0, &[]);
    }
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    literal(&mut block, 4, path); // :path
    literal(&mut block, 1, host); // :authority
    for i in 0..streams {
        // END_STREAM | END_HEADERS
        frame(&mut out, 0x1, 0x5, 2 * i + 1, &block);
    }
    out
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Literal header field without indexing, name from the static table
/// (RFC 7541 6.2.2); values under 127 bytes.
fn literal(block: &mut Vec<u8>, name_index: u8, value: &str) {
    block.push(name_index);
    block.push(value.len().min(126) as u8);
    block.extend_from_slice(&value.as_bytes()[..value.len().min(126)]);
}
