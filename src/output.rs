//! What vpsctl prints: the JSON shapes of the contract and their tables.

use std::io::Write;

use serde::Serialize;
use sotolito_config::Tenant;
use sotolito_provisioner::{ContainerState, ContainerStatus};

/// One tenant as `status --json` and `list --json` show it.
#[derive(Debug, Serialize)]
pub struct TenantView {
    pub name: String,
    /// running | stopped | created | paused | unknown
    pub state: &'static str,
    pub desired: &'static str,
    pub pid: Option<u32>,
    pub ip: String,
    pub ssh_port: u16,
    pub hosts: Vec<String>,
    pub http_port: u16,
    pub image: String,
    pub started_at: Option<String>,
    pub memory: String,
    pub cpu_weight: u64,
    pub pids: u32,
    /// The tenant's own connection cap; null: the host's
    /// `defaults.connections`.
    pub connections: Option<u32>,
    /// Whether the tenant may create namespaces (`provision --nesting`).
    pub nesting: bool,
    /// The disk quota as given (`10G`, `unlimited`).
    pub disk: String,
    /// Bytes used on the tenant's disk; null without a quota.
    pub disk_used: Option<u64>,
    /// The quota in bytes; null for unlimited.
    pub disk_limit: Option<u64>,
    /// Swap beyond memory: `0`, a size, or `unlimited` (the tenant's own or
    /// the host's `[defaults] swap`).
    pub swap: String,
    pub created: String,
    /// Host ids its ids 0.. map to; null for a tenant made before user
    /// namespaces (convert it with `vpsctl remap`).
    pub idmap: Option<sotolito_config::Idmap>,
    /// The fleet node it lives on; null on a host without `[cluster]`.
    pub node: Option<String>,
    /// Where clients reach its ssh (the node's public address and the
    /// port); null on a host without `[cluster]`.
    pub ssh: Option<String>,
}

impl TenantView {
    /// `disk_used`: bytes used on the tenant's disk image, if it has one.
    pub fn new<E: std::fmt::Display>(
        t: &Tenant,
        state: Result<Option<ContainerState>, E>,
        disk_used: Option<u64>,
    ) -> TenantView {
        let (state, pid, started_at) = match state {
            Ok(Some(s)) => {
                let started =
                    matches!(s.status, ContainerStatus::Running | ContainerStatus::Paused)
                        .then(|| s.created.clone())
                        .flatten();
                (s.status.as_str(), s.pid, started)
            }
            Ok(None) => ("stopped", None, None),
            Err(e) => {
                tracing::warn!(tenant = %t.name, error = %e, "cannot read container state");
                ("unknown", None, None)
            }
        };
        TenantView {
            name: t.name.to_string(),
            state,
            desired: t.desired.as_str(),
            pid,
            ip: t.ip.to_string(),
            ssh_port: t.ssh_port.get(),
            hosts: t.hosts.iter().map(|h| h.to_string()).collect(),
            http_port: t.http_port.get(),
            image: t.image.to_string(),
            started_at,
            memory: t.limits.memory.to_string(),
            cpu_weight: t.limits.cpu_weight.get(),
            pids: t.limits.pids.get(),
            connections: t.limits.connections,
            nesting: t.nesting,
            disk: t.disk.to_string(),
            disk_used: t.disk.bytes().and(disk_used),
            disk_limit: t.disk.bytes(),
            swap: t
                .limits
                .swap
                .unwrap_or(sotolito_config::SwapLimit::NONE)
                .to_string(),
            created: humantime::format_rfc3339_seconds(t.created).to_string(),
            idmap: t.idmap,
            node: None,
            ssh: None,
        }
    }
}

/// Bytes in the largest binary unit, one decimal: 1.5G, 312.0M.
pub fn human_bytes(b: u64) -> String {
    let units = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in units {
        if b >= 1u64 << shift {
            return format!("{:.1}{unit}", b as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{b}B")
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub fn print_table(views: &[TenantView]) -> anyhow::Result<()> {
    if views.iter().any(|v| v.node.is_some()) {
        return print_fleet_table(views);
    }
    let rows: Vec<[String; 7]> = views
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                v.state.to_owned(),
                v.desired.to_owned(),
                v.ip.clone(),
                v.ssh_port.to_string(),
                v.image.clone(),
                if v.hosts.is_empty() {
                    "-".into()
                } else {
                    v.hosts.join(",")
                },
            ]
        })
        .collect();
    print_rows(
        ["NAME", "STATE", "DESIRED", "IP", "SSH", "IMAGE", "HOSTS"],
        &rows,
    )
}

/// `list` on a fleet node: every node's tenants, with their node.
fn print_fleet_table(views: &[TenantView]) -> anyhow::Result<()> {
    let rows: Vec<[String; 7]> = views
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                v.node.clone().unwrap_or_default(),
                v.state.to_owned(),
                v.desired.to_owned(),
                v.ip.clone(),
                v.ssh.clone().unwrap_or_else(|| v.ssh_port.to_string()),
                if v.hosts.is_empty() {
                    "-".into()
                } else {
                    v.hosts.join(",")
                },
            ]
        })
        .collect();
    print_rows(
        ["NAME", "NODE", "STATE", "DESIRED", "IP", "SSH", "HOSTS"],
        &rows,
    )
}

/// A plain aligned table: a header and rows of the same width.
pub fn print_rows<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

pub fn print_status(v: &TenantView) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let pid = v.pid.map_or("-".to_owned(), |p| p.to_string());
    let hosts = if v.hosts.is_empty() {
        "-".to_owned()
    } else {
        v.hosts.join(", ")
    };
    writeln!(out, "name:       {}", v.name)?;
    if let Some(node) = &v.node {
        writeln!(out, "node:       {node}")?;
    }
    writeln!(out, "state:      {} (desired {})", v.state, v.desired)?;
    writeln!(out, "pid:        {pid}")?;
    writeln!(
        out,
        "started at: {}",
        v.started_at.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "image:      {}", v.image)?;
    writeln!(out, "ip:         {}", v.ip)?;
    writeln!(out, "ssh port:   {}", v.ssh_port)?;
    if let Some(ssh) = &v.ssh {
        writeln!(out, "ssh:        {ssh}")?;
    }
    writeln!(out, "http port:  {}", v.http_port)?;
    writeln!(out, "hosts:      {hosts}")?;
    let idmap = v.idmap.map_or_else(
        || "none: runs as host root (convert it with vpsctl remap)".to_owned(),
        |m| format!("host ids {m}"),
    );
    writeln!(out, "idmap:      {idmap}")?;
    writeln!(
        out,
        "limits:     memory {}, cpu weight {}, pids {}, swap {}, connections {}",
        v.memory,
        v.cpu_weight,
        v.pids,
        v.swap,
        v.connections
            .map_or_else(|| "default".to_owned(), |n| n.to_string())
    )?;
    if v.nesting {
        writeln!(out, "nesting:    on (may create namespaces)")?;
    }
    let disk = match (v.disk_used, v.disk_limit) {
        (Some(used), Some(limit)) => format!(
            "{} of {} used ({}%)",
            human_bytes(used),
            v.disk,
            used.saturating_mul(100) / limit.max(1)
        ),
        (None, Some(_)) => format!("{} (usage unknown)", v.disk),
        _ => "unlimited (no quota)".to_owned(),
    };
    writeln!(out, "disk:       {disk}")?;
    writeln!(out, "created:    {}", v.created)?;
    Ok(())
}
