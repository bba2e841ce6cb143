//! `vpsctl nodes`: the fleet's nodes, their health and tenant counts.

use anyhow::Context as _;
use serde::Serialize;

use crate::context::Context;
use crate::output;

#[derive(Serialize)]
struct NodeView {
    name: String,
    /// `up` while the node renews its lease (its proxy runs), else `down`.
    health: &'static str,
    private_address: String,
    public_address: String,
    subnet: String,
    tenants: usize,
}

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let fail = "failed to list nodes";
    let fleet = ctx.fleet.as_ref().ok_or_else(|| {
        anyhow::anyhow!("this host is not in a fleet (add a [cluster] table to its config, see docs/fleet.md)")
    }).context(fail)?;
    let store = fleet.store.fleet();
    let nodes = fleet.store.block_on(store.nodes()).context(fail)?;
    let views: Vec<NodeView> = nodes
        .into_iter()
        .map(|n| NodeView {
            name: n.record.name.to_string(),
            health: if n.up { "up" } else { "down" },
            private_address: n.record.private_address.to_string(),
            public_address: n.record.public_address.to_string(),
            subnet: n.record.subnet.to_string(),
            tenants: n.tenants,
        })
        .collect();
    if ctx.json {
        return output::print_json(&views);
    }
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                v.health.to_owned(),
                v.private_address.clone(),
                v.public_address.clone(),
                v.subnet.clone(),
                v.tenants.to_string(),
            ]
        })
        .collect();
    output::print_rows(
        ["NODE", "HEALTH", "PRIVATE", "PUBLIC", "SUBNET", "TENANTS"],
        &rows,
    )
}
