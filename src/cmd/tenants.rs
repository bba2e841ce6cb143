//! `vpsctl list` and `vpsctl status`: the records joined with runc's view.

use anyhow::Context as _;
use sotolito_config::TenantName;

use crate::context::Context;
use crate::output::{self, TenantView};

pub fn list(ctx: &Context) -> anyhow::Result<()> {
    let tenants = ctx.host.store.list().context("failed to list tenants")?;
    let views: Vec<TenantView> = tenants.iter().map(|t| ctx.view(t)).collect();
    if ctx.json {
        output::print_json(&views)
    } else {
        output::print_table(&views)
    }
}

pub fn status(ctx: &Context, name: &TenantName) -> anyhow::Result<()> {
    let tenant = ctx
        .host
        .store
        .require(name)
        .with_context(|| format!("failed to show tenant {name}"))?
        .tenant;
    let v = ctx.view(&tenant);
    if ctx.json {
        output::print_json(&v)
    } else {
        output::print_status(&v)
    }
}
