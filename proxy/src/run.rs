//! `vpsctl proxy`: serve the registry's tenants until SIGTERM or SIGINT,
//! swapping routes in as the registry changes.

use std::net::SocketAddr;
use std::time::Duration;

use sotolito_config::{Loaded, Registry};
use tokio::sync::{mpsc, watch};

use crate::route::RouteTable;
use crate::server::{Listen, ProxyHandle};
use crate::source::{FileSource, RouteSource, SourceEvent, TenantRoute, Watcher, CERT_POLL};
use crate::{Error, Settings};

/// How long a starting proxy waits for the fleet's store before it serves
/// with no routes (the watch fills them in when etcd answers).
const FLEET_FIRST_READ: Duration = Duration::from_secs(5);

/// Command line overrides of the `[proxy]` addresses.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Runs the proxy for the host described by `loaded` until SIGTERM or
/// SIGINT, then drains. Builds its own runtimes; call it from a plain thread.
pub fn run(loaded: &Loaded, opts: RunOptions) -> Result<(), Error> {
    let config = &loaded.config;
    let challenges = crate::acme::Challenges::new();
    let settings = Settings {
        trusted_proxies: config.proxy.trusted_proxies.clone(),
        proxy_protocol: config.proxy.proxy_protocol,
        redirect_https: config.proxy.redirect_https,
        certs_dir: Some(config.certs_dir()),
        upstream_timeout: config.proxy.upstream_timeout,
        header_read_timeout: config.proxy.header_read_timeout,
        idle_timeout: config.proxy.idle_timeout,
        access_log: config.proxy.access_log,
        engine: config.proxy.engine,
        acme_challenges: challenges.clone(),
        ..Settings::default()
    };
    let listen = Listen {
        http: Some(opts.http.unwrap_or(config.proxy.http)),
        https: Some(opts.https.unwrap_or(config.proxy.https)),
        admin: Some(opts.admin.unwrap_or(config.proxy.admin)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Start {
            what: "signal runtime",
            source,
        })?;
    // One source feeds routes, certificates and ACME (source.rs): with
    // [cluster] the fleet's etcd watch, its tasks on this runtime; without,
    // the file registry. Either way the certs dir is polled here.
    let certs = FileSource::new().certs(config.certs_dir(), CERT_POLL);
    let (source, tenants) = match &config.cluster {
        Some(cluster) => {
            let mut fleet = rt.block_on(crate::fleet::Fleet::start(
                cluster,
                certs,
                challenges.clone(),
                config.certs_dir(),
            ))?;
            let tenants = rt.block_on(fleet.first(FLEET_FIRST_READ));
            tracing::info!(node = %cluster.node, "fleet store followed");
            (HostSource::Fleet(fleet), tenants)
        }
        None => {
            let registry = Registry::new(config.registry_dir());
            let generation = registry.generation().map_err(Error::Registry)?;
            let tenants: Vec<TenantRoute> = registry
                .list()
                .map_err(Error::Registry)?
                .iter()
                .map(TenantRoute::from)
                .collect();
            (
                HostSource::File(certs.registry(registry, generation)),
                tenants,
            )
        }
    };
    let table = RouteTable::from_records(&tenants);
    tracing::info!(
        tenants = tenants.len(),
        routes = table.len(),
        "routes loaded"
    );
    let proxy = ProxyHandle::start(settings, listen, table)?;
    tracing::info!(
        http = ?proxy.http_addr(),
        https = ?proxy.https_addr(),
        admin = ?proxy.admin_addr(),
        "proxy listening"
    );
    let watcher = Watcher::start(source, proxy.updater(), tenants)?;
    // Automatic HTTPS when [acme] enabled; a broken [acme] section leaves
    // the proxy serving without it. The manager stops when dropped.
    let acme = crate::acme::start(config, challenges, watcher.tenants()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "automatic HTTPS is off");
        None
    });

    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| Error::Start {
                what: "SIGTERM handler",
                source,
            })?;
        notify(sd_notify::NotifyState::Ready);
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), Error>(())
    })?;
    tracing::info!("draining");
    notify(sd_notify::NotifyState::Stopping);
    // No route swaps while draining.
    drop(watcher);
    proxy.shutdown();
    drop(acme);
    Ok(())
}

/// Where this host's tenants come from.
enum HostSource {
    File(FileSource),
    Fleet(crate::fleet::Fleet),
}

impl RouteSource for HostSource {
    async fn run(self, events: mpsc::Sender<SourceEvent>, stop: watch::Receiver<bool>) {
        match self {
            HostSource::File(s) => s.run(events, stop).await,
            HostSource::Fleet(s) => s.run(events, stop).await,
        }
    }
}

/// Tells systemd (the unit is Type=notify) our state, with the sd-notify
/// crate; nothing without $NOTIFY_SOCKET.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
