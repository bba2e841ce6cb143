//! `vpsctl remap NAME`: moves a stopped tenant's own files (data dirs and
//! upper layer) into a user namespace id range and records the range.
//! Converts a tenant made before tenants ran in a user namespace, finishes
//! an interrupted remap, and moves a tenant between the shared range and
//! one of its own.

use anyhow::Context as _;
use clap::Args;
use sotolito_config::TenantName;

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
    let isolated = if args.isolated_idmap {
        Some(true)
    } else if args.shared_idmap {
        Some(false)
    } else {
        None
    };
    let (tenant, shifted) = ctx
        .host
        .remap(name, isolated)
        .with_context(|| format!("failed to remap tenant {name}"))?;
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
