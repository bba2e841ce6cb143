//! Idle keep-alive clients for the load benchmark (benches/load/run.sh):
//! opens connections to a proxy, sends one request on each, reads its
//! answer, and holds them all open and idle, so the proxy's memory per
//! idle connection can be measured.
//!
//! idle-hold --connect ADDR --host HOST [--path PATH] [--connections N]
//!           [--hold SECONDS]
//!
//! Source addresses rotate over 127.0.1.1, 127.0.1.2, ... (900
//! connections each), as the proxy admits at most 1,000 connections per
//! client address. Bounded: at most 20,000 connections, held at most 600 s
//! (or until stdin closes). Prints `held N` once all are open.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

const PER_SOURCE: usize = 900;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle-hold: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut connect: Option<SocketAddr> = None;
    let mut host = None;
    let mut path = "/".to_owned();
    let mut count = 1000usize;
    let mut hold = 60u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--connect" => {
                connect = Some(value()?.parse().map_err(|_| "--connect takes ADDR:PORT")?)
            }
            "--host" => host = Some(value()?),
            "--path" => path = value()?,
            "--connections" => {
                count = value()?
                    .parse()
                    .map_err(|_| "--connections takes a number")?
            }
            "--hold" => hold = value()?.parse().map_err(|_| "--hold takes seconds")?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let connect = connect.ok_or("--connect is required")?;
    let host = host.ok_or("--host is required")?;
    let (count, hold) = (count.min(20_000), hold.min(600));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut held = Vec::with_capacity(count);
    let mut buf = [0u8; 4096];
    for i in 0..count {
        let source = Ipv4Addr::new(127, 0, 1, u8::try_from(i / PER_SOURCE + 1).unwrap_or(255));
        let mut s = open(source, connect).map_err(|e| format!("connection {i}: {e}"))?;
        s.write_all(request.as_bytes())
            .map_err(|e| format!("connection {i}: {e}"))?;
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("connection {i}: {e}"))?;
        if !buf[..n].starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "connection {i}: {:?}",
                String::from_utf8_lossy(&buf[..n.min(80)])
            ));
        }
        held.push(s);
    }
    println!("held {}", held.len());
    let _ = std::io::stdout().flush();
    // Until stdin closes or the hold ends.
    let until = Instant::now() + Duration::from_secs(hold);
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).map_or(false, |n| n > 0) {}
        std::process::exit(0);
    });
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn open(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::from((source, 0)).into())?;
    s.connect(&to.into())?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}
