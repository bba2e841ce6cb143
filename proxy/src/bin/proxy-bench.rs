//! The proxy with a route table from the command line, for the load
//! benchmark (benches/load/run.sh); `vpsctl proxy` is the real entry point.
//!
//! proxy-bench --listen ADDR --route HOST=ADDR... [--extra-routes N]
//!             [--workers N] [--admin ADDR]
//!             [--https ADDR --certs DIR [--no-resumption]]
//!             [--h2-streams-per-ip N] [--engine h1|hyper]

use std::net::SocketAddr;
use std::process::ExitCode;

use sotolito_proxy::{Listen, ProxyHandle, RouteTable, Settings};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut listen = None;
    let mut admin = None;
    let mut https = None;
    let mut routes: Vec<(String, SocketAddr)> = Vec::new();
    let mut extra = 0usize;
    let mut settings = Settings::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(parse_addr(&value()?)?),
            "--admin" => admin = Some(parse_addr(&value()?)?),
            "--https" => https = Some(parse_addr(&value()?)?),
            "--certs" => settings.certs_dir = Some(value()?.into()),
            "--no-resumption" => settings.tls_resumption = false,
            "--route" => {
                let v = value()?;
                let (host, addr) = v.split_once('=').ok_or("--route takes HOST=ADDR")?;
                routes.push((host.to_owned(), parse_addr(addr)?));
            }
            "--extra-routes" => {
                extra = value()?
                    .parse()
                    .map_err(|_| "--extra-routes takes a number")?
            }
            "--h2-streams-per-ip" => {
                settings.max_h2_streams_per_ip = value()?
                    .parse()
                    .map_err(|_| "--h2-streams-per-ip takes a number")?
            }
            "--engine" => {
                settings.engine = match value()?.as_str() {
                    "h1" => sotolito_proxy::ProxyEngine::H1,
                    "hyper" => sotolito_proxy::ProxyEngine::Hyper,
                    _ => return Err("--engine takes h1 or hyper".into()),
                }
            }
            "--workers" => {
                settings.workers = value()?.parse().map_err(|_| "--workers takes a number")?
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    // Extra hosts that no request names: the table grows, lookups must not.
    let filler = unused_hosts("filler", extra);
    let initial = table(&routes, &filler, &[])?;
    let proxy = ProxyHandle::start(
        settings,
        Listen {
            http: Some(listen),
            https,
            admin,
        },
        initial,
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "proxy-bench: listening on {listen} with {} routes",
        routes.len() + extra
    );
    // SIGHUP swaps in a new table (one more host each time), as a registry
    // change does; the benchmark counts failed requests across swaps. Runs
    // until killed; the benchmark script stops it by PID.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| e.to_string())?;
        let mut generation = 0usize;
        while hup.recv().await.is_some() {
            generation += 1;
            proxy.set_routes(table(
                &routes,
                &filler,
                &unused_hosts("reload", generation),
            )?);
        }
        Ok(())
    })
}

/// `n` hosts named `{prefix}{i}.bench.test` routed to the discard port.
fn unused_hosts(prefix: &str, n: usize) -> Vec<(String, SocketAddr)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}{i}.bench.test"),
                SocketAddr::from(([127, 0, 0, 1], 9)),
            )
        })
        .collect()
}

/// One table of every given host, all of one tenant.
fn table(
    routes: &[(String, SocketAddr)],
    filler: &[(String, SocketAddr)],
    added: &[(String, SocketAddr)],
) -> Result<RouteTable, String> {
    RouteTable::from_routes(
        routes
            .iter()
            .chain(filler)
            .chain(added)
            .map(|(h, a)| (h.as_str(), "bench", *a)),
    )
    .map_err(|e| e.to_string())
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:8080"))
}
