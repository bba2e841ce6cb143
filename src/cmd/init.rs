//! `vpsctl init`: the state layout, created idempotently.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::context::Context;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    ensure_layout(ctx).context("failed to initialize")?;
    restrict_tenants(ctx).context("failed to initialize")?;
    crate::cmd::net::ensure_network(ctx).context("failed to initialize")?;
    #[derive(Serialize)]
    struct Out<'a> {
        state_dir: &'a Path,
        config: &'a Path,
    }
    let out = Out {
        state_dir: &ctx.config().paths.state_dir,
        config: &ctx.loaded.path,
    };
    if ctx.json {
        crate::output::print_json(&out)?;
    } else {
        println!("initialized {}", out.state_dir.display());
    }
    Ok(())
}

/// Creates every directory sotolito writes to. Safe to run any number of
/// times; never removes or rewrites anything.
pub fn ensure_layout(ctx: &Context) -> anyhow::Result<()> {
    let c = ctx.config();
    ctx.registry().create()?;
    for dir in [
        c.images_dir(),
        c.tenants_dir(),
        c.runc_root(),
        c.tenant_cfg_dir(),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Private keys live in the certs dir.
    let certs = c.certs_dir();
    fs::create_dir_all(&certs).with_context(|| format!("cannot create {}", certs.display()))?;
    fs::set_permissions(&certs, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", certs.display()))?;
    sotolito_provisioner::private::restrict_tenants_dir(&c.tenants_dir())?;
    sotolito_provisioner::private::restrict_images_dir(&c.images_dir())?;
    Ok(())
}

/// Every tenant dir gets the private modes (those made before them, too).
fn restrict_tenants(ctx: &Context) -> anyhow::Result<()> {
    for t in ctx.registry().list()? {
        crate::cmd::provision::restrict(ctx, &t)?;
    }
    Ok(())
}
