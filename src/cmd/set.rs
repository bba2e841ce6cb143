//! `vpsctl set NAME [--disk SIZE] [--connections N]`: change a tenant's
//! limits, live, and persist them in its record.

use anyhow::{bail, Context as _};
use clap::Args;
use sotolito_config::names::parse_connections;
use sotolito_config::{DiskQuota, Tenant, TenantName};
use sotolito_provisioner::disk;
use sotolito_provisioner::runtime::ContainerStatus;

use crate::cmd::provision;
use crate::context::Context;

#[derive(Debug, Args)]
pub struct SetArgs {
    pub name: TenantName,
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
    let tenant =
        set(ctx, args).with_context(|| format!("failed to set limits of tenant {name}"))?;
    let view = crate::cmd::tenants::view(ctx, &tenant);
    if ctx.json {
        crate::output::print_json(&view)
    } else {
        let connections = tenant.limits.connections.map_or_else(
            || format!("{} (default)", ctx.config().defaults.connections),
            |n| n.to_string(),
        );
        println!("{name}: disk {}, connections {connections}", tenant.disk);
        Ok(())
    }
}

fn set(ctx: &Context, args: &SetArgs) -> anyhow::Result<Tenant> {
    let name = &args.name;
    if args.disk.is_none() && args.connections.is_none() {
        bail!("nothing to change (give --disk SIZE or --connections N)");
    }
    crate::cmd::init::ensure_layout(ctx)?;
    let registry = ctx.registry();
    let lock = registry.lock()?;
    let mut tenant = registry.require(name)?;
    if let (DiskQuota::Limit(_), Some(DiskQuota::Unlimited)) = (tenant.disk, args.disk) {
        bail!(
            "its data lives on a disk image of {} and cannot be taken off it (give a larger size instead)",
            tenant.disk
        );
    }
    // Registry, then tenant: the order every command keeps.
    let _tenant_lock = sotolito_provisioner::lock::lock_tenant(&ctx.config().tenants_dir(), name)?;
    if let Some(new) = args.disk {
        set_disk(ctx, &tenant, new)?;
        tenant.disk = new;
    }
    let old = tenant.clone();
    if let Some(n) = args.connections {
        // The cap is one element of the tenant's nft map: replaced at once.
        tenant.limits.connections = Some(n);
        sotolito_net::add_forward(ctx.config(), &tenant)?;
    }
    if let Err(e) = registry.put(&lock, &tenant) {
        if args.connections.is_some() {
            if let Err(undo) = sotolito_net::add_forward(ctx.config(), &old) {
                tracing::warn!(tenant = %name, error = %undo, "cannot restore the old connection cap");
            }
        }
        return Err(e.into());
    }
    Ok(tenant)
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
