//! `vpsctl list` and `vpsctl status`: the records joined with runc's view;
//! on a fleet node, every node's tenants with the node each lives on.

use std::collections::BTreeMap;

use anyhow::Context as _;
use sotolito_config::{Tenant, TenantName};
use sotolito_fleet::{NodeStatus, TenantEntry};

use crate::context::{Context, Fleet};
use crate::output::{self, TenantView};

pub fn list(ctx: &Context) -> anyhow::Result<()> {
    let views: Vec<TenantView> = match &ctx.fleet {
        Some(fleet) => {
            let (entries, nodes) = fleet_view(fleet).context("failed to list tenants")?;
            entries
                .iter()
                .map(|e| fleet_tenant(ctx, fleet, &nodes, e))
                .collect()
        }
        None => {
            let tenants = ctx.host.store.list().context("failed to list tenants")?;
            tenants.iter().map(|t| ctx.view(t)).collect()
        }
    };
    if ctx.json {
        output::print_json(&views)
    } else {
        output::print_table(&views)
    }
}

pub fn status(ctx: &Context, name: &TenantName) -> anyhow::Result<()> {
    let fail = || format!("failed to show tenant {name}");
    let v = match &ctx.fleet {
        Some(fleet) => {
            let (entries, nodes) = fleet_view(fleet).with_context(fail)?;
            let entry = entries
                .iter()
                .find(|e| &e.tenant.name == name)
                .ok_or_else(|| sotolito_host::StoreError::NotFound(name.clone()))
                .with_context(fail)?;
            fleet_tenant(ctx, fleet, &nodes, entry)
        }
        None => {
            let tenant = ctx.host.store.require(name).with_context(fail)?.tenant;
            ctx.view(&tenant)
        }
    };
    if ctx.json {
        output::print_json(&v)
    } else {
        output::print_status(&v)
    }
}

type Nodes = BTreeMap<String, NodeStatus>;

fn fleet_view(fleet: &Fleet) -> anyhow::Result<(Vec<TenantEntry>, Nodes)> {
    let store = fleet.store.fleet();
    let (entries, _) = fleet.store.block_on(store.tenants())?;
    let nodes = fleet.store.block_on(store.nodes())?;
    let nodes = nodes
        .into_iter()
        .map(|n| (n.record.name.to_string(), n))
        .collect();
    Ok((entries, nodes))
}

/// This node's tenants as runc sees them; another node's as `remote`
/// while that node is up and `unreachable` while it is down.
fn fleet_tenant(ctx: &Context, fleet: &Fleet, nodes: &Nodes, e: &TenantEntry) -> TenantView {
    let t: &Tenant = &e.tenant;
    let node = nodes.get(e.node.as_str());
    let mut v = if e.node == fleet.node.name {
        ctx.view(t)
    } else {
        let mut v = TenantView::new(t, Ok::<_, String>(None), None);
        v.state = if node.is_some_and(|n| n.up) {
            "remote"
        } else {
            "unreachable"
        };
        v
    };
    v.node = Some(e.node.to_string());
    v.ssh = node.map(|n| format!("{}:{}", n.record.public_address, t.ssh_port.get()));
    v
}
