//! `vpsctl set NAME [--memory M] [--cpu-weight W] [--pids N] [--swap S]
//! [--disk SIZE] [--connections N]`: a tenant's limits, changed in its
//! record and, while it runs, live (the cgroup that holds them, its disk
//! image, its nft map element): no restart.

use anyhow::Context as _;
use clap::Args;
use sotolito_config::names::parse_connections;
use sotolito_config::{CpuWeight, DiskQuota, MemorySize, Pids, SwapLimit, TenantName};
use sotolito_host::SetRequest;

use crate::context::Context;

#[derive(Debug, Args)]
pub struct SetArgs {
    pub name: TenantName,
    /// Memory limit, e.g. 512M, 2G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<MemorySize>,
    /// CPU weight 1-10000.
    #[arg(long, value_name = "WEIGHT")]
    pub cpu_weight: Option<CpuWeight>,
    /// Process limit.
    #[arg(long, value_name = "N")]
    pub pids: Option<Pids>,
    /// Swap beyond the memory limit: 0, a size, or unlimited.
    #[arg(long, value_name = "SIZE")]
    pub swap: Option<SwapLimit>,
    /// Writable storage, e.g. 20G: grows (or shrinks, if the data fits) a
    /// running tenant's disk without a restart. A tenant without a quota is
    /// put under one while it is stopped.
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<DiskQuota>,
    /// Concurrent connections the tenant may open (a tenant over it is
    /// refused new ones); applies at once, running or not.
    #[arg(long, value_name = "N", value_parser = parse_connections)]
    pub connections: Option<u32>,
}

pub fn run(ctx: &Context, args: &SetArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let (tenant, live) = ctx
        .host
        .set(&SetRequest {
            name: name.clone(),
            memory: args.memory,
            cpu_weight: args.cpu_weight,
            pids: args.pids,
            swap: args.swap,
            disk: args.disk,
            connections: args.connections,
        })
        .with_context(|| format!("failed to set limits of tenant {name}"))?;
    let view = ctx.view(&tenant);
    if ctx.json {
        return crate::output::print_json(&view);
    }
    let connections = tenant.limits.connections.map_or_else(
        || format!("{} (default)", ctx.config().defaults.connections),
        |n| n.to_string(),
    );
    println!(
        "{name}: memory {}, cpu weight {}, pids {}, swap {}, disk {}, connections {connections} ({})",
        view.memory,
        view.cpu_weight,
        view.pids,
        view.swap,
        view.disk,
        if live {
            "applied to the running tenant"
        } else {
            "applied at its next start"
        }
    );
    Ok(())
}
