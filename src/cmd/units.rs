//! `vpsctl units install`: the systemd units of this instance.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;
use clap::Subcommand;
use sotolito_provisioner::proxy_user;
use sotolito_provisioner::supervise::DEFAULT_STOP_TIMEOUT;
use sotolito_provisioner::units::{self, UnitContext};

use crate::context::Context;

#[derive(Debug, Subcommand)]
pub enum UnitsCommand {
    /// Write sotolito-vps@.service, sotolito-vps.target, sotolito-net.service
    /// and sotolito-proxy.service (and on a fleet node
    /// sotolito-fleet-net.service), and enable them.
    Install,
}

pub fn run(ctx: &Context, cmd: UnitsCommand) -> anyhow::Result<()> {
    match cmd {
        UnitsCommand::Install => install(ctx).context("failed to install units"),
    }
}

fn install(ctx: &Context) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the vpsctl binary")?;
    let u = UnitContext {
        vpsctl: std::fs::canonicalize(&exe).unwrap_or(exe),
        config: ctx.loaded.path.clone(),
        state_dir: ctx.loaded.state_dir_override.clone(),
        tenant_cfg_dir: ctx.config().tenant_cfg_dir(),
        stop_timeout_secs: DEFAULT_STOP_TIMEOUT.as_secs(),
        registry_dir: ctx.config().registry_dir(),
        certs_dir: ctx.config().certs_dir(),
        fleet: ctx.fleet.is_some(),
    };
    let dir = &ctx.config().paths.systemd_dir;
    let changed = units::install(dir, &u)?;
    // The proxy's unit runs as its own user: create it, and let it read
    // the registry and own the certificates.
    ctx.host.sys.files.ensure_layout()?;
    let ids = proxy_user::ensure_user()?;
    let c = ctx.config();
    proxy_user::grant_access(
        &proxy_user::ProxyPaths {
            state_dir: &c.paths.state_dir,
            registry_dir: &c.registry_dir(),
            certs_dir: &c.certs_dir(),
            config_file: &ctx.loaded.path,
        },
        ids,
    )?;
    // Only a systemd that reads this dir needs to hear of it.
    if !changed.is_empty()
        && Path::new("/run/systemd/system").is_dir()
        && dir.starts_with("/etc/systemd")
    {
        let st = Command::new("systemctl")
            .arg("daemon-reload")
            .stdin(Stdio::null())
            .status()
            .context("cannot run systemctl daemon-reload")?;
        if !st.success() {
            anyhow::bail!("systemctl daemon-reload failed");
        }
    }
    if ctx.json {
        return crate::output::print_json(&serde_json::json!({ "changed": changed }));
    }
    if changed.is_empty() {
        println!("units in {} are up to date", dir.display());
    }
    for p in changed {
        println!("wrote {}", p.display());
    }
    Ok(())
}
