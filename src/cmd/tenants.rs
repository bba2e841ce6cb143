//! `vpsctl list` and `vpsctl status`: the registry joined with runc's view.

use anyhow::Context as _;
use sotolito_config::{Tenant, TenantName};

use crate::context::Context;
use crate::output::{self, TenantView};

pub fn view(ctx: &Context, tenant: &Tenant) -> TenantView {
    let state = ctx.runc().state(tenant.name.as_str());
    let layout = crate::cmd::provision::layout(ctx, &tenant.name);
    let mut v = TenantView::new(
        tenant,
        state,
        sotolito_provisioner::disk::used_bytes(&layout),
    );
    v.swap = tenant
        .limits
        .swap_or(ctx.config().defaults.swap)
        .to_string();
    v
}

pub fn list(ctx: &Context) -> anyhow::Result<()> {
    let tenants = ctx.registry().list().context("failed to list tenants")?;
    let views: Vec<TenantView> = tenants.iter().map(|t| view(ctx, t)).collect();
    if ctx.json {
        output::print_json(&views)
    } else {
        output::print_table(&views)
    }
}

pub fn status(ctx: &Context, name: &TenantName) -> anyhow::Result<()> {
    let tenant = ctx
        .registry()
        .require(name)
        .with_context(|| format!("failed to show tenant {name}"))?;
    let v = view(ctx, &tenant);
    if ctx.json {
        output::print_json(&v)
    } else {
        output::print_status(&v)
    }
}
