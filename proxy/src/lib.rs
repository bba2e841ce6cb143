//! sotolito-proxy: the edge proxy that routes HTTP and HTTPS to tenants by
//! Host header and TLS SNI.
//!
//! A connection goes accept ([`server`]) -> TLS ([`tls`]) -> strict HTTP/1
//! framing ([`gate`], [`stream`]) -> route ([`route`]) -> upstream
//! ([`forward`], [`body`], [`upstream`]). [`run`] is what `vpsctl proxy`
//! calls; [`source`] tells the proxy and ACME about tenants.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod acme;
mod admin;
mod body;
mod fleet;
mod forward;
mod gate;
#[doc(hidden)]
pub mod h1;
mod h2tenant;
mod headers;
mod limit;
mod metrics;
pub mod route;
mod run;
pub mod server;
pub mod source;
mod stream;
pub mod tls;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use route::{Route, RouteDiff, RouteTable};
pub use run::{run, RunOptions};
pub use server::{Listen, ProxyHandle, ProxyUpdater};
pub use sotolito_config::host::{AccessLogFormat, ProxyEngine};
pub use source::{FileSource, RouteSource, SourceEvent, TenantRoute, Tenants, Watcher};

/// Errors of the proxy; each names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid host {host:?} in route table: {source}")]
    InvalidHost {
        host: String,
        #[source]
        source: sotolito_config::InvalidValue,
    },
    #[error("cannot listen on {what} address {addr}: {source} (is another proxy running there?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load certificate for {host} from {path}: {message}")]
    Cert {
        host: String,
        path: PathBuf,
        message: String,
    },
    #[error("cannot read the tenant registry: {0}")]
    Registry(#[source] sotolito_config::Error),
    #[error("cannot follow the fleet's store: {0}")]
    Fleet(#[source] sotolito_fleet::Error),
    #[error("cannot start the proxy's {what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Limits, timeouts and behaviour. Defaults follow Envoy's edge guidance
/// and HAProxy's defaults where they agree.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time for the tenant to start answering (response head) -> 504.
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time for a client to send a whole request head (and a TLS handshake).
    pub header_read_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    /// More header fields get 431.
    pub max_headers: usize,
    pub max_h2_streams: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams of one client address over all its
    /// connections; more get 429. Bounds the memory an address can pin
    /// (see docs/proxy.md).
    pub max_h2_streams_per_ip: usize,
    /// Peers whose forwarding headers are extended rather than replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Send a PROXY protocol v2 header on each tenant connection.
    pub proxy_protocol: bool,
    /// Answer plain HTTP with a redirect to HTTPS for hosts with a certificate.
    pub redirect_https: bool,
    /// How long SIGTERM waits for open requests before closing connections.
    pub drain_timeout: Duration,
    /// Threads, each with its own runtime and listening socket.
    pub workers: usize,
    /// Where HOST/fullchain.pem and HOST/privkey.pem live; `None`: no TLS.
    pub certs_dir: Option<PathBuf>,
    /// Let TLS clients resume sessions (stateful cache, TLS 1.3 tickets).
    /// Off only to measure full handshakes.
    pub tls_resumption: bool,
    /// Pending ACME HTTP-01 challenges, answered on plain HTTP before routing.
    pub acme_challenges: acme::Challenges,
    /// Text lines through tracing, or JSON lines on stdout.
    pub access_log: AccessLogFormat,
    /// Which HTTP/1 implementation serves clients (HTTP/2 is hyper's).
    pub engine: ProxyEngine,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_h2_streams: 100,
            max_connections: 50_000,
            max_connections_per_ip: 1_000,
            max_h2_streams_per_ip: 500,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            redirect_https: false,
            drain_timeout: Duration::from_secs(10),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            certs_dir: None,
            tls_resumption: true,
            acme_challenges: acme::Challenges::default(),
            access_log: AccessLogFormat::Text,
            engine: ProxyEngine::H1,
        }
    }
}
