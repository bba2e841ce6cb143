//! `vpsctl provision` and `vpsctl deprovision`: arguments in, a request to
//! sotolito-host, its outcome printed.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sotolito_config::names::parse_connections;
use sotolito_config::{
    CpuWeight, DiskQuota, HostName, HttpPort, ImageName, MemorySize, Pids, SshPort, SwapLimit,
    TenantName,
};
use sotolito_host::{DeprovisionRequest, Outcome, ProvisionRequest};

use crate::context::Context;

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    pub name: TenantName,
    /// Image to boot (see vpsctl image list).
    #[arg(long)]
    pub image: ImageName,
    /// Host name the proxy routes to this tenant (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<HostName>,
    /// Public SSH port [default: the first free one in network.ssh_ports]
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<SshPort>,
    /// OpenSSH public key file for root (repeatable).
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// Tenant address [default: the first free one in network.subnet]
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<Ipv4Addr>,
    /// Port the tenant serves HTTP on.
    #[arg(long, value_name = "PORT", default_value = "80")]
    pub http_port: HttpPort,
    /// Memory limit, e.g. 512M, 2G [default: config defaults.memory]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<MemorySize>,
    /// CPU weight 1-10000 [default: config defaults.cpu_weight]
    #[arg(long, value_name = "WEIGHT")]
    pub cpu_weight: Option<CpuWeight>,
    /// Process limit [default: config defaults.pids]
    #[arg(long, value_name = "N")]
    pub pids: Option<Pids>,
    /// Concurrent connections the tenant may open (a tenant over it is
    /// refused new ones) [default: config defaults.connections]
    #[arg(long, value_name = "N", value_parser = parse_connections)]
    pub connections: Option<u32>,
    /// Writable storage (overlay upper layer plus /etc, /var, /home, /root
    /// together), e.g. 10G, or `unlimited` [default: config defaults.disk]
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<DiskQuota>,
    /// Swap beyond the memory limit: 0, a size, or unlimited [default:
    /// config defaults.swap]
    #[arg(long, value_name = "SIZE")]
    pub swap: Option<SwapLimit>,
    /// Never request an ACME certificate for this host (repeatable; one of
    /// the --host names).
    #[arg(long = "no-acme", value_name = "HOST")]
    pub no_acme: Vec<HostName>,
    /// Let the tenant create user, network and mount namespaces (Docker or
    /// Podman inside the VPS). This opens the kernel's unprivileged
    /// user-namespace surface to it; io_uring and the keyring stay refused.
    #[arg(long)]
    pub nesting: bool,
    /// Give the tenant a host id range of its own instead of the shared
    /// one (runtime.idmap_base): its root is then a different host user
    /// from every other tenant's.
    #[arg(long)]
    pub isolated_idmap: bool,
    /// Start it once provisioned.
    #[arg(long)]
    pub start: bool,
}

#[derive(Debug, Args)]
pub struct DeprovisionArgs {
    pub name: TenantName,
    /// Also delete the tenant's data (its /etc, /var, /home, /root and
    /// overlay upper layer).
    #[arg(long)]
    pub purge: bool,
    /// Seconds to wait after the stop signal before KILL.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

pub fn run(ctx: &Context, args: ProvisionArgs) -> anyhow::Result<()> {
    let name = args.name.clone();
    let start = args.start;
    let p = (|| -> anyhow::Result<_> {
        let req = request(args)?;
        Ok(ctx.host.provision(&req)?)
    })()
    .with_context(|| format!("failed to provision tenant {name}"))?;
    if start {
        ctx.host
            .start(&name)
            .with_context(|| format!("provisioned tenant {name} but failed to start it"))?;
    }
    let tenant = p.tenant;
    if ctx.json {
        return crate::output::print_json(&ctx.view(&tenant));
    }
    let what = match p.outcome {
        Outcome::Unchanged => "already provisioned with these settings",
        Outcome::ReusedData => {
            "provisioned, reusing its kept data (its /etc, /root and authorized_keys as they were)"
        }
        Outcome::New => "provisioned",
    };
    println!(
        "{} {what}: ip {}, ssh port {}, image {}{}",
        tenant.name,
        tenant.ip,
        tenant.ssh_port,
        tenant.image,
        if start { ", running" } else { "" }
    );
    Ok(())
}

/// The request the arguments make; key files are read here.
fn request(args: ProvisionArgs) -> anyhow::Result<ProvisionRequest> {
    let mut ssh_keys = Vec::new();
    for f in &args.ssh_keys {
        ssh_keys.extend(sotolito_provisioner::data::read_key_file(f)?);
    }
    Ok(ProvisionRequest {
        name: args.name,
        image: args.image,
        hosts: args.hosts,
        ssh_port: args.ssh_port,
        ssh_keys,
        ip: args.ip,
        http_port: args.http_port,
        memory: args.memory,
        cpu_weight: args.cpu_weight,
        pids: args.pids,
        connections: args.connections,
        disk: args.disk,
        swap: args.swap,
        no_acme: args.no_acme,
        nesting: args.nesting,
        isolated_idmap: args.isolated_idmap,
        start: args.start,
    })
}

pub fn deprovision(ctx: &Context, args: DeprovisionArgs) -> anyhow::Result<()> {
    let name = args.name.clone();
    let d = ctx
        .host
        .deprovision(&DeprovisionRequest {
            name: args.name,
            purge: args.purge,
            timeout: Duration::from_secs(args.timeout),
        })
        .with_context(|| format!("failed to deprovision tenant {name}"))?;
    if ctx.json {
        return crate::output::print_json(
            &serde_json::json!({"deprovisioned": name.to_string(), "data_kept": d.kept.is_some()}),
        );
    }
    match d.kept {
        Some(place) => println!(
            "deprovisioned {name}; its data is kept in {} (remove it with --purge)",
            place.display()
        ),
        None => println!("deprovisioned {name}; its data is removed"),
    }
    Ok(())
}
