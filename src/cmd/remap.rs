//! `vpsctl remap NAME`: moves a stopped tenant's own files (data dirs and
//! upper layer) into a user namespace id range and records the range.
//! Converts a tenant made before tenants ran in a user namespace, finishes
//! an interrupted remap, and moves a tenant between the shared range and
//! one of its own.

use anyhow::{bail, Context as _};
use clap::Args;
use sotolito_config::{Tenant, TenantName};
use sotolito_provisioner::idmap::Shifted;
use sotolito_provisioner::overlay;
use sotolito_provisioner::runtime::ContainerStatus;
use sotolito_provisioner::{data, disk};

use crate::cmd::{lifecycle, provision};
use crate::context::Context;

#[derive(Debug, Args)]
pub struct RemapArgs {
    pub name: TenantName,
    /// Move it to a host id range of its own.
    #[arg(long, conflicts_with = "shared_idmap")]
    pub isolated_idmap: bool,
    /// Move it to the shared host id range.
    #[arg(long)]
    pub shared_idmap: bool,
}

pub fn run(ctx: &Context, args: &RemapArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let (tenant, shifted) =
        remap(ctx, args).with_context(|| format!("failed to remap tenant {name}"))?;
    let map = tenant.idmap.context("remap always records a range")?;
    let changed = shifted.map_or(0, |s| s.changed);
    if ctx.json {
        return crate::output::print_json(&serde_json::json!({
            "remapped": name.to_string(),
            "idmap": map,
            "changed": changed,
        }));
    }
    match shifted {
        Some(s) => println!(
            "remapped {name}: its ids 0-{} are host ids {map}; {} of {} files re-owned",
            map.size - 1,
            s.changed,
            s.entries
        ),
        None => println!("{name} already uses host ids {map}; nothing to do"),
    }
    Ok(())
}

fn remap(ctx: &Context, args: &RemapArgs) -> anyhow::Result<(Tenant, Option<Shifted>)> {
    crate::cmd::init::ensure_layout(ctx)?;
    let name = &args.name;
    let registry = ctx.registry();
    let lock = registry.lock()?;
    let mut tenant = registry.require(name)?;
    let _tenant_lock = lifecycle::lock(ctx, name)?;
    let layout = provision::layout(ctx, name);
    let state = ctx.runc().state(name.as_str())?.map(|s| s.status);
    if matches!(state, Some(s) if s != ContainerStatus::Stopped)
        || overlay::is_mounted(&layout.rootfs())
    {
        bail!("it is running (stop it first: vpsctl stop {name})");
    }
    // Its data may be on a disk image, unmounted since a reboot.
    disk::mount_data(name.as_str(), &layout)?;
    if !data::is_seeded(&layout) {
        bail!(
            "it has no seeded data in {} (provision it again to seed it)",
            layout.data().display()
        );
    }
    let isolated = if args.isolated_idmap {
        true
    } else if args.shared_idmap {
        false
    } else {
        tenant.idmap.is_some_and(|m| m.isolated)
    };
    let map = match tenant.idmap {
        Some(m) if m.isolated == isolated => m,
        _ => {
            let others: Vec<Tenant> = registry
                .list()?
                .into_iter()
                .filter(|t| &t.name != name)
                .collect();
            ctx.config().runtime.idmap_pool().plan(&others, isolated)?
        }
    };
    // The record first: a remap interrupted below is finished by a rerun
    // into the same range (the shift is idempotent), and start refuses the
    // tenant until the marker says the files are there.
    if tenant.idmap != Some(map) {
        tenant.idmap = Some(map);
        registry.put(&lock, &tenant)?;
    }
    let shifted = data::shift_into(&layout, &map)?;
    provision::write_bundle(ctx, &tenant)?;
    Ok((tenant, shifted))
}
