//! `vpsctl set NAME [--memory M] [--cpu-weight W] [--pids N] [--swap S]
//! [--disk SIZE] [--connections N]`: a tenant's limits, changed in its
//! record and, while it runs, live (the cgroup that holds them, its disk
//! image, its nft map element): no restart.

use anyhow::{bail, Context as _};
use clap::Args;
use sotolito_config::names::parse_connections;
use sotolito_config::{CpuWeight, DiskQuota, MemorySize, Pids, SwapLimit, Tenant, TenantName};
use sotolito_provisioner::disk;
use sotolito_provisioner::runtime::ContainerStatus;

use crate::cmd::{lifecycle, provision};
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

impl SetArgs {
    /// A limit that lives in the tenant's cgroup is given.
    fn cgroup_limits(&self) -> bool {
        self.memory.is_some()
            || self.cpu_weight.is_some()
            || self.pids.is_some()
            || self.swap.is_some()
    }
}

pub fn run(ctx: &Context, args: &SetArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let live = set(ctx, args).with_context(|| format!("failed to set limits of tenant {name}"))?;
    let tenant = ctx.registry().require(name)?;
    let view = crate::cmd::tenants::view(ctx, &tenant);
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

/// Returns whether the tenant was running (the limits applied live).
fn set(ctx: &Context, args: &SetArgs) -> anyhow::Result<bool> {
    let name = &args.name;
    if !args.cgroup_limits() && args.disk.is_none() && args.connections.is_none() {
        bail!(
            "nothing to change (give --memory, --cpu-weight, --pids, --swap, --disk or --connections)"
        );
    }
    crate::cmd::init::ensure_layout(ctx)?;
    let registry = ctx.registry();
    let lock = registry.lock()?;
    let old = registry.require(name)?;
    if let (DiskQuota::Limit(_), Some(DiskQuota::Unlimited)) = (old.disk, args.disk) {
        bail!(
            "its data lives on a disk image of {} and cannot be taken off it (give a larger size instead)",
            old.disk
        );
    }
    // Registry, then tenant, the order every command keeps: a start in
    // progress finishes first (and applied the old record), or starts after
    // with the new one.
    let _tenant = lifecycle::lock(ctx, name)?;
    let mut t = old.clone();
    t.limits.memory = args.memory.unwrap_or(t.limits.memory);
    t.limits.cpu_weight = args.cpu_weight.unwrap_or(t.limits.cpu_weight);
    t.limits.pids = args.pids.unwrap_or(t.limits.pids);
    t.limits.swap = args.swap.or(t.limits.swap);
    let live = ctx
        .runc()
        .state(name.as_str())?
        .is_some_and(|s| s.status != ContainerStatus::Stopped);
    // What undoes cleanly goes first (cgroup writes, the nft element), the
    // disk last; a failure undoes what was done.
    let applied = live && args.cgroup_limits();
    let undo = |why: &str| {
        if applied {
            if let Err(e) = ctx.apply_limits(&old) {
                tracing::warn!(tenant = %name, error = %e, why, "cannot restore the old limits");
            }
        }
        if args.connections.is_some() {
            if let Err(e) = sotolito_net::add_forward(ctx.config(), &old) {
                tracing::warn!(tenant = %name, error = %e, why, "cannot restore the old connection cap");
            }
        }
    };
    if applied {
        ctx.apply_limits(&t)?;
    }
    if let Some(n) = args.connections {
        // The cap is one element of the tenant's nft map: replaced at once.
        t.limits.connections = Some(n);
        if let Err(e) = sotolito_net::add_forward(ctx.config(), &t) {
            undo("connections");
            return Err(e.into());
        }
    }
    if let Some(new) = args.disk {
        if let Err(e) = set_disk(ctx, &old, new) {
            undo("disk");
            return Err(e);
        }
        t.disk = new;
    }
    if let Err(e) = registry.put(&lock, &t) {
        undo("record");
        return Err(e.into());
    }
    Ok(live)
}

fn set_disk(ctx: &Context, tenant: &Tenant, new: DiskQuota) -> anyhow::Result<()> {
    let name = &tenant.name;
    let layout = provision::layout(ctx, name);
    match (tenant.disk, new) {
        // Limit -> unlimited is refused by `set` before it locks anything.
        (_, DiskQuota::Unlimited) => Ok(()),
        (DiskQuota::Unlimited, DiskQuota::Limit(bytes)) => {
            disk::check_enforceable()?;
            let running = ctx
                .runc()
                .state(name.as_str())?
                .is_some_and(|s| s.status != ContainerStatus::Stopped);
            if running {
                bail!("putting a tenant's data under a quota moves it onto a disk image, which needs the tenant stopped (vpsctl stop {name}, then run this again)");
            }
            disk::adopt_data(name.as_str(), &layout, bytes)?;
            Ok(())
        }
        (DiskQuota::Limit(_), DiskQuota::Limit(bytes)) => {
            disk::check_enforceable()?;
            disk::create_image(&layout, bytes)?;
            disk::mount_data(name.as_str(), &layout)?;
            disk::resize(name.as_str(), &layout, bytes)?;
            Ok(())
        }
    }
}
