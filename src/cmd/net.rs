//! `vpsctl net ...`: tenant networking (reconcile, show) and the runc hooks
//! (attach, detach). Thin: the work is in sotolito-host and sotolito-net.

use std::io::Read as _;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use sotolito_config::TenantName;

use crate::context::Context;

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Rebuild the bridge and the nft tables from the registry (after a
    /// reboot or `nft flush ruleset`); replaces only sotolito's tables. On
    /// a fleet node also the routes to the other nodes' tenant subnets and
    /// the firewall's view of those nodes.
    Reconcile {
        /// Fleet nodes: keep routes and firewall following the node list
        /// (an etcd watch) until stopped; what sotolito-fleet-net.service runs.
        #[arg(long)]
        watch: bool,
    },
    /// Show each tenant's lease, veth and whether its SSH forward is live.
    Show,
    /// runc createRuntime hook: give tenant NAME's container its eth0.
    /// Reads the OCI state JSON (with "pid") on stdin unless --pid is given.
    Attach {
        name: TenantName,
        /// The container's PID, instead of reading the OCI state on stdin.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// runc poststop hook: remove tenant NAME's veth (idempotent).
    Detach { name: TenantName },
}

pub fn run(ctx: &Context, cmd: NetCommand) -> anyhow::Result<()> {
    match cmd {
        NetCommand::Reconcile { watch: false } => match &ctx.fleet {
            Some(fleet) => crate::cmd::fleet_net::reconcile(ctx, fleet),
            None => reconcile(ctx),
        },
        NetCommand::Reconcile { watch: true } => match &ctx.fleet {
            Some(fleet) => crate::cmd::fleet_net::watch(ctx, fleet),
            None => Err(anyhow::anyhow!(
                "--watch follows the fleet's nodes, and this host is not in a fleet (run vpsctl net reconcile without it, or add a [cluster] table, see docs/fleet.md)"
            ))
            .context("failed to reconcile the tenant network"),
        },
        NetCommand::Show => show(ctx),
        NetCommand::Attach { name, pid } => attach(ctx, &name, pid),
        NetCommand::Detach { name } => {
            ctx.host
                .detach(&name)
                .with_context(|| format!("failed to detach tenant {name}"))?;
            tracing::info!(tenant = %name, "detached");
            Ok(())
        }
    }
}

fn reconcile(ctx: &Context) -> anyhow::Result<()> {
    let tenants = ctx
        .host
        .reconcile()
        .context("failed to reconcile the tenant network")?;
    if ctx.json {
        crate::output::print_json(&serde_json::json!({ "tenants": tenants.len() }))?;
    } else {
        println!(
            "reconciled bridge {} and {} forward(s)",
            ctx.config().network.bridge,
            tenants.len()
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct NetView {
    name: String,
    ip: String,
    ssh_port: u16,
    veth: String,
    veth_present: bool,
    /// The live map sends ssh_port to ip:22.
    forward_present: bool,
}

fn show(ctx: &Context) -> anyhow::Result<()> {
    let config = ctx.config();
    let tenants = ctx
        .host
        .store
        .list()
        .context("failed to read the tenant records")?;
    let live = sotolito_net::live_forwards(config).context("failed to read the nft map")?;
    let veths = sotolito_net::host_veths().context("failed to list links")?;
    let mut views = Vec::with_capacity(tenants.len());
    for t in &tenants {
        let present = live.as_ref().and_then(|m| m.get(&t.ssh_port.get()));
        views.push(NetView {
            name: t.name.to_string(),
            ip: t.ip.to_string(),
            ssh_port: t.ssh_port.get(),
            veth: sotolito_net::host_veth_name(&t.name),
            veth_present: veths.contains(&sotolito_net::host_veth_name(&t.name)),
            forward_present: present
                .is_some_and(|f| f.ip == t.ip && f.port == sotolito_net::ruleset::TENANT_SSH_PORT),
        });
    }
    if ctx.json {
        return crate::output::print_json(&views);
    }
    if live.is_none() {
        eprintln!("vpsctl: warning: nft table inet sotolito is missing (run vpsctl net reconcile)");
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                v.ip.clone(),
                v.ssh_port.to_string(),
                v.veth.clone(),
                yes(v.veth_present).to_owned(),
                yes(v.forward_present).to_owned(),
            ]
        })
        .collect();
    let header = ["NAME", "IP", "SSH", "VETH", "ATTACHED", "FORWARD"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    // Elements no tenant accounts for: left by a crash, fixed by reconcile.
    if let Some(live) = &live {
        for (port, f) in live {
            if !tenants
                .iter()
                .any(|t| t.ssh_port.get() == *port && t.ip == f.ip)
            {
                println!(
                    "stale forward {port} -> {}:{} (vpsctl net reconcile removes it)",
                    f.ip, f.port
                );
            }
        }
    }
    Ok(())
}

fn attach(ctx: &Context, name: &TenantName, pid: Option<u32>) -> anyhow::Result<()> {
    let fail = || format!("failed to attach tenant {name}");
    let pid = match pid {
        Some(p) => p,
        None => oci_state_pid().with_context(fail)?,
    };
    // This createRuntime hook runs inside `runc create` and `runc run`
    // alike, after runc made the container's cgroups and before its init
    // execs: the moment systemd in a user namespace needs its cgroups
    // handed to its mapped root.
    // sotolito-net logs "attached" with the veth and address.
    ctx.host.attach(name, pid).with_context(fail)
}

/// The `pid` of the OCI state JSON that runc writes to a hook's stdin.
fn oci_state_pid() -> anyhow::Result<u32> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the OCI state from stdin")?;
    let state: serde_json::Value = serde_json::from_str(&text)
        .context("stdin is not the OCI state JSON (run as a runc hook, or pass --pid)")?;
    state
        .get("pid")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
        .context(
            "the OCI state on stdin has no pid (run as a runc createRuntime hook, or pass --pid)",
        )
}
