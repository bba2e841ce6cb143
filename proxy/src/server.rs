//! Listening and accepting: one thread per worker, each with its own
//! single-threaded runtime, SO_REUSEPORT listening sockets and upstream
//! pool, so a request never crosses threads; plus a control thread for the
//! admin listener and certificate polling.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::body::BudgetedBody;
use crate::forward::{self, ConnCtx, Shared};
use crate::gate::{Gate, Switch};
use crate::headers::PeerValues;
use crate::limit::{ConnLimiter, ConnPermit};
use crate::metrics::{Metrics, RequestShard};
use crate::route::{normalize_host, RouteDiff, RouteTable};
use crate::stream::{GuardedStream, Timeouts};
use crate::tls::{self, CertStore};
use crate::upstream::{self, Pool};
use crate::{Error, Settings};

const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Where to listen; `None` leaves that listener out. Port 0 picks a free one.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
}

/// A running proxy. Dropping it stops it without draining.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    /// Each worker's copy of the table, swapped along with the shared one.
    worker_routes: Vec<Arc<ArcSwap<RouteTable>>>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl ProxyHandle {
    /// Binds every listener, then starts the workers. Errors if any
    /// address cannot be bound or the runtime cannot start.
    pub fn start(
        settings: Settings,
        listen: Listen,
        routes: RouteTable,
    ) -> Result<ProxyHandle, Error> {
        let workers = settings.workers.max(1);
        let acme = settings.acme_challenges.clone();
        let certs = settings
            .certs_dir
            .clone()
            .map(|d| CertStore::open_with_acme(d, acme));
        let tls_config = match (&certs, listen.https) {
            (Some(store), Some(_)) => {
                Some(tls::server_config(store.clone(), settings.tls_resumption)?)
            }
            _ => None,
        };
        let (balance, mut inboxes) = Balance::new(workers);
        let metrics = Metrics::with_collectors(vec![Box::new(balance.clone())]);
        metrics.routes.set(routes.len() as i64);
        let shared = Arc::new(Shared {
            routes: ArcSwap::from_pointee(routes),
            settings,
            metrics,
            certs,
        });

        let mut per_worker: Vec<Vec<(std::net::TcpListener, Kind)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut bound = |addr: Option<SocketAddr>,
                         kind: Kind,
                         what: &'static str|
         -> Result<Option<SocketAddr>, Error> {
            let Some(mut addr) = addr else {
                return Ok(None);
            };
            for slot in per_worker.iter_mut() {
                let listener =
                    bind_reuseport(addr).map_err(|source| Error::Bind { what, addr, source })?;
                // Port 0: the first socket picks, the others share it.
                addr =
                    listener
                        .local_addr()
                        .map_err(|source| Error::Bind { what, addr, source })?;
                slot.push((listener, kind));
            }
            Ok(Some(addr))
        };
        let http = bound(listen.http, Kind::Http, "http")?;
        let https = match tls_config {
            Some(_) => bound(listen.https, Kind::Https, "https")?,
            None => None,
        };
        let admin_listener = match listen.admin {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| Error::Bind {
                        what: "admin",
                        addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let admin = match &admin_listener {
            Some(l) => Some(l.local_addr().map_err(|source| {
                Error::Bind {
                    what: "admin",
                    addr: listen
                        .admin
                        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
                    source,
                }
            })?),
            None => None,
        };

        let (shutdown, shutdown_rx) = watch::channel(false);
        let limiter = ConnLimiter::new(
            shared.settings.max_connections,
            shared.settings.max_connections_per_ip,
            shared.settings.max_h2_streams_per_ip,
        );
        let mut threads = Vec::new();
        let mut worker_routes = Vec::new();
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let inbox = inboxes.remove(0);
            let rt = runtime()?;
            let routes = Arc::new(ArcSwap::from_pointee(shared.routes.load().detached()));
            worker_routes.push(routes.clone());
            let worker = Worker {
                shared: shared.clone(),
                routes,
                stats: shared.metrics.request_shard(),
                tls: tls_config.as_ref().map(|c| TlsAcceptor::from(c.clone())),
                limiter: limiter.clone(),
                index: i,
                balance: balance.clone(),
            };
            let shutdown = shutdown_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || rt.block_on(worker.run(listeners, inbox, shutdown)))
                .map_err(|source| Error::Start {
                    what: "worker thread",
                    source,
                })?;
            threads.push(thread);
        }
        let rt = runtime()?;
        let control_shared = shared.clone();
        let control = std::thread::Builder::new()
            .name("proxy-control".into())
            .spawn(move || rt.block_on(control(control_shared, admin_listener, shutdown_rx)))
            .map_err(|source| Error::Start {
                what: "control thread",
                source,
            })?;
        threads.push(control);
        Ok(ProxyHandle {
            shared,
            worker_routes,
            shutdown,
            threads,
            http,
            https,
            admin,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.shared.routes.load_full()
    }

    /// Swaps in a new table for the requests that start from now on; open
    /// connections stay open. Logs and returns what changed.
    pub fn set_routes(&self, table: RouteTable) -> RouteDiff {
        let len = table.len();
        for worker in &self.worker_routes {
            worker.store(Arc::new(table.detached()));
        }
        let old = self.shared.routes.swap(Arc::new(table));
        let diff = self.shared.routes.load().diff(&old);
        let m = &self.shared.metrics;
        m.reloads.inc();
        m.routes.set(len as i64);
        tracing::info!(
            added = ?diff.added,
            removed = ?diff.removed,
            changed = ?diff.changed,
            routes = len,
            "routes reloaded"
        );
        diff
    }

    /// Stops accepting, lets open requests finish for up to the drain
    /// timeout, then closes everything and waits for the threads.
    pub fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Start {
            what: "runtime",
            source,
        })
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn control(
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Some(listener) = admin {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                tokio::spawn(crate::admin::serve(
                    l,
                    shared.metrics.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => tracing::error!(error = %e, "admin listener unusable"),
        }
    }
    let mut tick = tokio::time::interval(shared.settings.cert_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(certs) = &shared.certs {
                    let certs = certs.clone();
                    // File reads stay off the runtime's thread.
                    let _ = tokio::task::spawn_blocking(move || certs.reload()).await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    routes: Arc<ArcSwap<RouteTable>>,
    stats: Arc<RequestShard>,
    tls: Option<TlsAcceptor>,
    limiter: Arc<ConnLimiter>,
    index: usize,
    balance: Arc<Balance>,
}

/// Held by every connection task; the worker drains until all are gone.
type DrainToken = mpsc::Sender<()>;

/// A connection accepted by one worker for another to serve.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    kind: Kind,
    permit: ConnPermit,
}

/// Spreads connections evenly over the workers. The kernel hashes
/// connections onto the SO_REUSEPORT listeners, which for a few dozen
/// clients leaves one worker with a quarter more of them than another
/// (measured): that worker's requests wait longer. A worker that accepts
/// while holding more connections than another hands the new one over.
struct Balance {
    /// Connections each worker serves or is about to.
    assigned: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Balance {
    fn new(workers: usize) -> (Arc<Balance>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Balance {
            assigned: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders,
        };
        (Arc::new(balance), receivers)
    }

    /// Which worker serves a connection `me` accepted; counts it there.
    fn pick(&self, me: usize) -> usize {
        let mine = self.assigned[me].load(Ordering::Relaxed);
        let (least, count) = self
            .assigned
            .iter()
            .enumerate()
            .map(|(i, a)| (i, a.load(Ordering::Relaxed)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((me, mine));
        // Ties stay with the accepting worker: no handoff between equals.
        let target = if count < mine { least } else { me };
        self.assigned[target].fetch_add(1, Ordering::Relaxed);
        target
    }
}

/// One connection counted on its worker until dropped.
struct Assigned {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.balance.assigned[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("assigned", &self.assigned)
            .finish_non_exhaustive()
    }
}

/// `worker_connections{worker}`: what each worker serves, so an operator
/// (and a test) can see the spread.
impl Collector for Balance {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "worker_connections",
            "Client connections each worker serves",
            None,
            MetricType::Gauge,
        )?;
        for (i, n) in self.assigned.iter().enumerate() {
            let n = i64::try_from(n.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            family
                .encode_family(&[("worker", i.to_string())])?
                .encode_gauge(&n)?;
        }
        Ok(())
    }
}

impl Worker {
    async fn run(
        self,
        listeners: Vec<(std::net::TcpListener, Kind)>,
        inbox: mpsc::UnboundedReceiver<Handoff>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        let pool = Pool::new(this.shared.settings.connect_timeout, None);
        let (token, mut drained) = mpsc::channel::<()>(1);
        // Connections wait on this worker's own channel: a pending wait is
        // re-registered (under the channel's lock) on every poll of its
        // connection, and a lock both workers take bounces between cores.
        let (local_tx, local_rx) = watch::channel(false);
        for (listener, kind) in listeners {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "listener unusable");
                    continue;
                }
            };
            tokio::spawn(this.clone().accept_loop(
                listener,
                kind,
                pool.clone(),
                local_rx.clone(),
                token.clone(),
            ));
        }
        tokio::spawn(this.clone().take_handoffs(
            inbox,
            pool.clone(),
            local_rx.clone(),
            token.clone(),
        ));
        drop(token);
        drop(local_rx);
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let _ = local_tx.send(true);
        let deadline = this.shared.settings.drain_timeout;
        if tokio::time::timeout(deadline, drained.recv())
            .await
            .is_err()
        {
            tracing::warn!(?deadline, "drain deadline passed; closing open connections");
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        kind: Kind,
        pool: Arc<Pool>,
        mut shutdown: watch::Receiver<bool>,
        token: DrainToken,
    ) {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the
                    // listener stays.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let permit = match self.limiter.acquire(peer.ip()) {
                Ok(p) => p,
                Err(why) => {
                    tracing::debug!(client = %peer, ?why, "connection refused by limit");
                    self.shared.metrics.refused_connections.inc();
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let target = self.balance.pick(self.index);
            if target != self.index {
                // Leaving this runtime takes the socket out of its epoll set.
                let sent = stream.into_std().ok().is_some_and(|stream| {
                    let handoff = Handoff {
                        stream,
                        peer,
                        kind,
                        permit,
                    };
                    self.balance.inboxes[target].send(handoff).is_ok()
                });
                if !sent {
                    // A worker that stopped takes nothing: the connection closes.
                    self.balance.assigned[target].fetch_sub(1, Ordering::Relaxed);
                }
                continue;
            }
            let conn = Conn {
                worker: self.clone(),
                peer,
                pool: pool.clone(),
                shutdown: shutdown.clone(),
                permit,
                _token: token.clone(),
                _assigned: Assigned {
                    balance: self.balance.clone(),
                    worker: self.index,
                },
            };
            tokio::spawn(conn.serve(stream, kind));
        }
    }

    /// Serves the connections other workers handed over.
    async fn take_handoffs(
        self: Arc<Self>,
        mut inbox: mpsc::UnboundedReceiver<Handoff>,
        pool: Arc<Pool>,
        mut shutdown: watch::Receiver<bool>,
        token: DrainToken,
    ) {
        loop {
            let handoff = tokio::select! {
                h = inbox.recv() => match h {
                    Some(h) => h,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            let assigned = Assigned {
                balance: self.balance.clone(),
                worker: self.index,
            };
            let stream = match TcpStream::from_std(handoff.stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(client = %handoff.peer, error = %e, "handed-over connection unusable");
                    continue;
                }
            };
            let conn = Conn {
                worker: self.clone(),
                peer: handoff.peer,
                pool: pool.clone(),
                shutdown: shutdown.clone(),
                permit: handoff.permit,
                _token: token.clone(),
                _assigned: assigned,
            };
            tokio::spawn(conn.serve(stream, handoff.kind));
        }
    }
}

struct Conn {
    worker: Arc<Worker>,
    peer: SocketAddr,
    pool: Arc<Pool>,
    shutdown: watch::Receiver<bool>,
    permit: ConnPermit,
    _token: DrainToken,
    _assigned: Assigned,
}

impl Conn {
    async fn serve(self, stream: TcpStream, kind: Kind) {
        let metrics = self.worker.shared.metrics.clone();
        metrics.open_connections.inc();
        let settings = &self.worker.shared.settings;
        let pool = if settings.proxy_protocol {
            let local = stream.local_addr().unwrap_or(self.peer);
            let header = upstream::proxy_v2_header(self.peer, local);
            Pool::new(settings.connect_timeout, Some(header))
        } else {
            self.pool.clone()
        };
        let trusted = settings
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&self.peer.ip()));
        let ctx = ConnCtx {
            shared: self.worker.shared.clone(),
            routes: self.worker.routes.clone(),
            stats: self.worker.stats.clone(),
            peer: self.peer,
            tls: false,
            sni: None,
            h2: false,
            pool,
            peer_values: PeerValues::new(self.peer.ip()),
            trusted,
            forwarded: Default::default(),
            switch: None,
        };
        match (kind, &self.worker.tls) {
            // Boxed, as the TLS and HTTP/2 states are kilobytes that every
            // plain connection's task would otherwise carry (and tokio's
            // spawn copies).
            (Kind::Https, Some(acceptor)) => Box::pin(self.serve_tls(stream, acceptor, ctx)).await,
            _ => self.serve_h1(stream, ctx).await,
        }
        metrics.open_connections.dec();
    }

    async fn serve_tls(&self, stream: TcpStream, acceptor: &TlsAcceptor, mut ctx: ConnCtx) {
        let metrics = &self.worker.shared.metrics;
        let timeout = self.worker.shared.settings.header_read_timeout;
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                metrics.tls_handshakes.inc();
                tls
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed");
                metrics.tls_handshake_failures.inc();
                return;
            }
            Err(_) => {
                metrics.tls_handshake_failures.inc();
                return;
            }
        };
        let (_, session) = tls.get_ref();
        ctx.tls = true;
        ctx.sni = session
            .server_name()
            .and_then(normalize_host)
            .map(|s| s.into_owned().into_boxed_str());
        ctx.h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        if ctx.h2 {
            Box::pin(self.serve_h2(tls, ctx)).await;
        } else {
            self.serve_h1(tls, ctx).await;
        }
    }

    fn timeouts(&self) -> Timeouts {
        let s = &self.worker.shared.settings;
        Timeouts {
            header_read: s.header_read_timeout,
            idle: s.idle_timeout,
        }
    }

    async fn serve_h1<T>(&self, io: T, mut ctx: ConnCtx)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let s = &self.worker.shared.settings;
        let switch = Switch::default();
        ctx.switch = Some(switch.clone());
        let gate = Gate::new(s.max_header_bytes, switch);
        let io = GuardedStream::new(io, Some(gate), self.timeouts());
        let ctx = Arc::new(ctx);
        let svc = service_fn(move |req| forward::handle(ctx.clone(), req));
        let mut builder = http1::Builder::new();
        builder
            .max_buf_size(s.max_header_bytes.max(8192))
            .max_headers(s.max_headers)
            // GuardedStream times out slow heads and idle connections.
            .header_read_timeout(None)
            // One flat write per response: measured ~4% less CPU per
            // request than writev of head and body for small responses.
            .writev(false);
        let conn = builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let mut shutdown = self.shutdown.clone();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %self.peer, error = %e, "connection ended");
                }
                return;
            }
            _ = shutdown.changed() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }

    async fn serve_h2<T>(&self, io: T, ctx: ConnCtx)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let s = &self.worker.shared.settings;
        let io = GuardedStream::new(io, None, self.timeouts());
        let ctx = Arc::new(ctx);
        let budget = self.permit.stream_budget();
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            // Taken when the stream opens, given back when its response
            // body is done: a client that never reads keeps its places.
            let permit = budget.acquire();
            async move {
                let Some(permit) = permit else {
                    return Ok(forward::too_many_streams().map(|body| BudgetedBody {
                        body,
                        _permit: None,
                    }));
                };
                let resp = forward::handle(ctx, req).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| BudgetedBody {
                    body,
                    _permit: Some(permit),
                }))
            }
        });
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // Envoy's edge guidance: 64 KiB per stream, 1 MiB per connection
        // for what a client may send before we read it; and at most one
        // stream window of response queued per stream whatever windows the
        // client announces (hyper's default is 400 KiB: a client that
        // opens its windows and never reads pinned ~650 KiB per stream,
        // measured with benches/h2-memory).
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .adaptive_window(false)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_concurrent_streams(s.max_h2_streams)
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        let mut shutdown = self.shutdown.clone();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %self.peer, error = %e, "h2 connection ended");
                }
                return;
            }
            _ = shutdown.changed() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balance) -> Vec<usize> {
        b.assigned
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn connections_go_to_the_least_loaded_worker() {
        let (b, _inboxes) = Balance::new(3);
        // Equal loads: the accepting worker keeps its connection.
        assert_eq!(b.pick(0), 0);
        assert_eq!(counts(&b), [1, 0, 0]);
        assert_eq!(b.pick(0), 1);
        assert_eq!(counts(&b), [1, 1, 0]);
        assert_eq!(b.pick(0), 2);
        assert_eq!(b.pick(0), 0);
        assert_eq!(counts(&b), [2, 1, 1]);
        // A burst on one listener spreads evenly.
        for _ in 0..30 {
            b.pick(1);
        }
        let c = counts(&b);
        assert_eq!(c.iter().sum::<usize>(), 34);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
    }

    #[test]
    fn a_finished_connection_frees_its_place() {
        let (b, _inboxes) = Balance::new(2);
        let w = b.pick(1);
        let assigned = Assigned {
            balance: b.clone(),
            worker: w,
        };
        assert_eq!(counts(&b), [0, 1]);
        drop(assigned);
        assert_eq!(counts(&b), [0, 0]);
    }
}
