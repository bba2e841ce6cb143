//! The fleet part of `vpsctl net reconcile [--watch]`: routes to the other
//! nodes' tenant subnets and the firewall's view of those nodes, kept from
//! the node list in etcd. It needs CAP_NET_ADMIN, which the proxy (its own
//! user) lacks: on a systemd host sotolito-fleet-net.service runs the watch.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sotolito_config::{FleetNetwork, FleetPeer, HostConfig};
use sotolito_fleet::NodeRecord;
use sotolito_net::route::{PeerRoute, RouteChanges};

use crate::context::{write_peers, Context, Fleet};

const FAIL: &str = "failed to reconcile the tenant network";

#[derive(Serialize)]
struct Report {
    tenants: usize,
    routes: Vec<RouteView>,
    /// Wanted routes that a route not made by sotolito stands in for.
    foreign: Vec<RouteView>,
}

#[derive(Serialize)]
struct RouteView {
    subnet: String,
    via: String,
}

fn views(routes: &[PeerRoute]) -> Vec<RouteView> {
    routes
        .iter()
        .map(|r| RouteView {
            subnet: r.subnet.to_string(),
            via: r.via.to_string(),
        })
        .collect()
}

/// The other nodes of `records` as the network sees them.
fn peers(fleet: &Fleet, records: &[NodeRecord]) -> Vec<FleetPeer> {
    records
        .iter()
        .filter(|r| r.name != fleet.node.name)
        .map(|r| FleetPeer {
            node: r.name.clone(),
            private_address: r.private_address,
            subnet: r.subnet,
        })
        .collect()
}

/// The config with the fleet's view replaced by `peers`.
fn with_peers(ctx: &Context, peers: Vec<FleetPeer>) -> HostConfig {
    let mut config = ctx.config().clone();
    let fleet = config.network.fleet.get_or_insert_with(|| FleetNetwork {
        range: config.network.subnet,
        private_address: config
            .cluster
            .as_ref()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED, |c| c.private_address),
        peers: Vec::new(),
    });
    fleet.peers = peers;
    config
}

fn fleet_of(config: &HostConfig) -> &FleetNetwork {
    config
        .network
        .fleet
        .as_ref()
        .expect("a fleet node's config has its fleet view")
}

/// `vpsctl net reconcile` on a fleet node: the node list read from etcd
/// (and cached), the bridge and our tables rebuilt with it under the host
/// lock, then the routes converged.
pub fn reconcile(ctx: &Context, fleet: &Fleet) -> anyhow::Result<()> {
    let (records, _) = fleet
        .store
        .block_on(fleet.store.fleet().node_records())
        .context(FAIL)?;
    let config = with_peers(ctx, peers(fleet, &records));
    let tenants = rebuild(ctx, &config).context(FAIL)?;
    let changes = routes(&config, false).context(FAIL)?;
    let want = sotolito_net::route::plan_routes(fleet_of(&config), config.network.subnet);
    let report = Report {
        tenants: tenants.len(),
        routes: views(&want),
        foreign: views(&changes.foreign),
    };
    if ctx.json {
        crate::output::print_json(&report)?;
    } else {
        println!(
            "reconciled bridge {} and {} forward(s); routes to {} other node(s)",
            config.network.bridge,
            report.tenants,
            want.len() - changes.foreign.len()
        );
    }
    if let Some(r) = changes.foreign.first() {
        anyhow::bail!(
            "{FAIL}: a route to {} exists that sotolito did not make, so it cannot route it via {} (that node's private address; remove the route and run vpsctl net reconcile again)",
            r.subnet,
            r.via
        );
    }
    Ok(())
}

/// The peers cached, then our tables rebuilt from the store with them,
/// under the host lock (no provision adds a forward this would drop).
fn rebuild(ctx: &Context, config: &HostConfig) -> anyhow::Result<Vec<sotolito_config::Tenant>> {
    let _lock = ctx.host.lock()?;
    write_peers(config, &fleet_of(config).peers)?;
    let tenants = ctx
        .host
        .store
        .list()
        .context("cannot read this node's tenants")?;
    sotolito_net::reconcile(config, &tenants)?;
    Ok(tenants)
}

/// Only the fleet's sets (a changed node list), under the host lock; our
/// tables are rebuilt from the store when they are missing.
fn refresh(ctx: &Context, config: &HostConfig) -> anyhow::Result<()> {
    let lock = ctx.host.lock()?;
    write_peers(config, &fleet_of(config).peers)?;
    if !sotolito_net::apply_fleet(config)? {
        drop(lock);
        rebuild(ctx, config)?;
    }
    Ok(())
}

/// Converges the routes and logs what changed; `watching`: also what was
/// left alone (once, `net reconcile` returns it as its error instead).
fn routes(config: &HostConfig, watching: bool) -> anyhow::Result<RouteChanges> {
    let changes = sotolito_net::route::reconcile_routes(fleet_of(config), config.network.subnet)?;
    for r in &changes.added {
        tracing::info!(subnet = %r.subnet, via = %r.via, "route to a node's tenants");
    }
    for r in &changes.removed {
        tracing::info!(subnet = %r.subnet, via = %r.via, "stale route removed");
    }
    for r in changes.foreign.iter().filter(|_| watching) {
        tracing::warn!(subnet = %r.subnet, via = %r.via, "a route to this subnet exists that sotolito did not make; left alone");
    }
    Ok(changes)
}

/// `vpsctl net reconcile --watch`: the routes and the fleet's sets
/// follow the node list (an etcd watch) until the process is stopped.
/// While etcd is unreachable the last-known nodes stay routed, and the
/// watch resumes when it returns.
pub fn watch(ctx: &Context, fleet: &Fleet) -> anyhow::Result<()> {
    // Whatever etcd says, the routes of the last-known nodes first (a
    // reboot while etcd is down still reaches the other nodes).
    let cached = ctx.config().clone();
    if let Err(e) = routes(&cached, true) {
        tracing::warn!(error = format!("{e:#}"), "routes of the last-known nodes");
    }
    let mut first = true;
    let mut backoff = Duration::from_millis(250);
    loop {
        let step = (|| -> anyhow::Result<(i64, usize)> {
            let (records, revision) = fleet.store.block_on(fleet.store.fleet().node_records())?;
            let config = with_peers(ctx, peers(fleet, &records));
            if first {
                rebuild(ctx, &config)?;
            } else {
                refresh(ctx, &config)?;
            }
            routes(&config, true)?;
            Ok((revision, fleet_of(&config).peers.len()))
        })();
        match step {
            Ok((revision, peers)) => {
                if first {
                    tracing::info!(peers, "following the fleet's nodes");
                } else {
                    tracing::info!(peers, "the fleet's nodes changed");
                }
                first = false;
                backoff = Duration::from_millis(250);
                if let Err(e) = fleet
                    .store
                    .block_on(fleet.store.fleet().wait_node_change(revision))
                {
                    tracing::warn!(error = %e, "node watch interrupted; reading again");
                    std::thread::sleep(backoff);
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot follow the fleet's nodes now; trying again"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
