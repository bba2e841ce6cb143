//! `vpsctl proxy`: serve the registry's tenants until SIGTERM or SIGINT,
//! swapping routes in as the registry changes.

use std::net::SocketAddr;
use std::time::Duration;

use sotolito_config::{Loaded, Registry};

use crate::route::RouteTable;
use crate::server::{Listen, ProxyHandle};
use crate::{Error, Settings};

/// How often the registry's generation is checked: a provision is routed
/// within this (plus one read of the records).
const REGISTRY_POLL: Duration = Duration::from_millis(100);

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
    let registry = Registry::new(config.registry_dir());
    // With [cluster] the routes come from the fleet's store, followed by a
    // watch on this runtime; without, from polling the file registry.
    let mut fleet = None;
    let mut generation = 0;
    let table = match &config.cluster {
        Some(cluster) => {
            let mut f = rt.block_on(crate::fleet::Fleet::start(cluster))?;
            let table = rt.block_on(f.first(FLEET_FIRST_READ));
            fleet = Some(f);
            tracing::info!(routes = table.len(), node = %cluster.node, "fleet routes loaded");
            table
        }
        None => {
            generation = registry.generation().map_err(Error::Registry)?;
            let tenants = registry.list().map_err(Error::Registry)?;
            let table = RouteTable::from_tenants(&tenants);
            tracing::info!(
                tenants = tenants.len(),
                routes = table.len(),
                "routes loaded"
            );
            table
        }
    };
    let proxy = ProxyHandle::start(settings, listen, table)?;
    tracing::info!(
        http = ?proxy.http_addr(),
        https = ?proxy.https_addr(),
        admin = ?proxy.admin_addr(),
        "proxy listening"
    );
    // Automatic HTTPS when [acme] enabled; a broken [acme] section leaves
    // the proxy serving without it. The manager stops when dropped.
    let _acme = crate::acme::start(config, challenges).unwrap_or_else(|e| {
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
        let mut tick = tokio::time::interval(REGISTRY_POLL);
        let mut last_problem: Option<String> = None;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                table = next_fleet_routes(&mut fleet) => {
                    let diff = proxy.set_routes(table);
                    tracing::info!(added = diff.added.len(), removed = diff.removed.len(), changed = diff.changed.len(), "fleet routes changed");
                    continue;
                }
                _ = tick.tick(), if fleet.is_none() => {}
            }
            // A broken registry is reported once per distinct problem, not
            // ten times a second; the routes in use stay.
            let problem = match registry.generation() {
                Ok(g) if g != generation => match registry.list() {
                    Ok(tenants) => {
                        generation = g;
                        proxy.set_routes(RouteTable::from_tenants(&tenants));
                        None
                    }
                    Err(e) => Some(e.to_string()),
                },
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(p) = &problem {
                if last_problem.as_ref() != Some(p) {
                    tracing::warn!(error = %p, "registry unreadable; keeping the current routes");
                }
            }
            last_problem = problem;
        }
        Ok::<(), Error>(())
    })?;
    tracing::info!("draining");
    notify(sd_notify::NotifyState::Stopping);
    proxy.shutdown();
    Ok(())
}

/// The next routes from the fleet's watch; never, without a fleet.
async fn next_fleet_routes(fleet: &mut Option<crate::fleet::Fleet>) -> RouteTable {
    match fleet {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

/// Tells systemd (the unit is Type=notify) our state, with the sd-notify
/// crate; nothing without $NOTIFY_SOCKET.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
