//! `vpsctl proxy`: the edge proxy, routes from the registry, until SIGTERM.

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::context::Context;

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Plain HTTP listen address [default: config proxy.http, 0.0.0.0:80]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// HTTPS listen address [default: config proxy.https, 0.0.0.0:443]
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// Admin address for /metrics; keep it private [default: config proxy.admin]
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

pub fn run(ctx: &Context, args: ProxyArgs) -> anyhow::Result<()> {
    // Under sotolito-proxy.service the proxy is its own user with the
    // registry read-only: `units install` made the layout. Only a proxy
    // started by hand on a fresh host creates it (as root).
    let c = ctx.config();
    if !(c.registry_dir().join("tenants").is_dir() && c.certs_dir().is_dir()) {
        ctx.host
            .sys
            .files
            .ensure_layout()
            .context("failed to start the proxy")?;
    }
    sotolito_proxy::run(
        &ctx.loaded,
        sotolito_proxy::RunOptions {
            http: args.http,
            https: args.https,
            admin: args.admin,
        },
    )
    .context("proxy failed")
}
