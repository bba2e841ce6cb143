//! The running proxy, split by stage: [`listen`] binds the sockets and
//! runs each worker's accept loops, [`balance`] spreads connections over
//! the workers, [`conn`] serves one connection (TLS, HTTP/1, HTTP/2) and
//! [`control`] runs the admin listener. This
//! module owns the [`ProxyHandle`]: start, route swaps and shutdown.
//!
//! One thread per worker, each with its own single-threaded runtime,
//! SO_REUSEPORT listening sockets and upstream pool, so a request never
//! crosses threads; plus a control thread.

mod accept;
mod balance;
mod conn;
mod control;
mod listen;
mod park;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::forward::Shared;
use crate::limit::ConnLimiter;
use crate::metrics::Metrics;
use crate::route::{RouteDiff, RouteTable};
use crate::tls::{self, CertStore};
use crate::{Error, Settings};

use balance::Balance;
use listen::Worker;

/// Where to listen; `None` leaves that listener out. Port 0 picks a free one.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Which listener accepted a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
}

/// A running proxy. Dropping it stops it without draining.
pub struct ProxyHandle {
    updater: ProxyUpdater,
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

        let listen::Bound {
            per_worker,
            admin_listener,
            http,
            https,
            admin,
        } = listen::bind(&listen, workers, tls_config.is_some())?;

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
            let (park, parked) = tokio::sync::mpsc::unbounded_channel();
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
                local: crate::h1::Local::new(
                    shared.settings.max_header_bytes.max(8192),
                    crate::upstream::UPSTREAM_READ_BUFFER,
                ),
                park,
            };
            let shutdown = shutdown_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || rt.block_on(worker.run(listeners, inbox, parked, shutdown)))
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
            .spawn(move || {
                rt.block_on(control::control(
                    control_shared,
                    admin_listener,
                    shutdown_rx,
                ))
            })
            .map_err(|source| Error::Start {
                what: "control thread",
                source,
            })?;
        threads.push(control);
        Ok(ProxyHandle {
            updater: ProxyUpdater {
                shared,
                worker_routes,
            },
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
        self.updater.routes()
    }

    /// See [`ProxyUpdater::set_routes`].
    pub fn set_routes(&self, table: RouteTable) -> RouteDiff {
        self.updater.set_routes(table)
    }

    /// What changes the running proxy's routes and certificates, for a
    /// [`Watcher`](crate::source::Watcher) on another thread.
    pub fn updater(&self) -> ProxyUpdater {
        self.updater.clone()
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

/// Swaps routes and re-reads certificates of a running proxy; clones
/// share it.
#[derive(Clone)]
pub struct ProxyUpdater {
    shared: Arc<Shared>,
    /// Each worker's copy of the table, swapped along with the shared one.
    worker_routes: Vec<Arc<ArcSwap<RouteTable>>>,
}

impl std::fmt::Debug for ProxyUpdater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUpdater")
            .field("workers", &self.worker_routes.len())
            .finish_non_exhaustive()
    }
}

impl ProxyUpdater {
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

    /// Re-reads the certificates whose files changed (none without a
    /// certs dir). Returns whether anything changed. Blocks on file reads.
    pub fn reload_certs(&self) -> bool {
        self.shared.certs.as_ref().is_some_and(|c| c.reload())
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
