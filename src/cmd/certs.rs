//! `vpsctl certs list`: every routed host and its certificate.

use anyhow::Context as _;
use clap::Subcommand;

use sotolito_proxy::TenantRoute;

use crate::context::Context;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Host, tenant, status, issuer and expiry of every certificate.
    List,
}

pub fn run(ctx: &Context, cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::List => list(ctx),
    }
}

fn list(ctx: &Context) -> anyhow::Result<()> {
    let certs = match &ctx.fleet {
        // Every node serves every tenant's certificates (copied from etcd).
        Some(fleet) => {
            let (entries, _) = fleet
                .store
                .block_on(fleet.store.fleet().tenants())
                .context("failed to list certificates")?;
            let tenants: Vec<TenantRoute> = entries
                .iter()
                .map(|e| TenantRoute {
                    node: Some(e.node.clone()),
                    ..TenantRoute::from(&e.tenant)
                })
                .collect();
            sotolito_proxy::acme::list_certs_for(ctx.config(), &tenants)
        }
        None => sotolito_proxy::acme::list_certs(ctx.config()),
    }
    .context("failed to list certificates")?;
    if ctx.json {
        return crate::output::print_json(&certs);
    }
    let rows: Vec<[String; 6]> = certs
        .iter()
        .map(|c| {
            let status = serde_json::to_value(c.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            [
                c.host.clone(),
                c.tenant.clone().unwrap_or_else(|| "-".into()),
                status,
                c.issuer.clone().unwrap_or_else(|| "-".into()),
                c.not_after.clone().unwrap_or_else(|| "-".into()),
                c.acme.clone(),
            ]
        })
        .collect();
    crate::output::print_rows(
        ["HOST", "TENANT", "STATUS", "ISSUER", "EXPIRES", "ACME"],
        &rows,
    )
}
