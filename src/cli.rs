//! The command line contract (docs/architecture.md "Command line"): clap
//! definitions only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sotolito_config::TenantName;

/// sotolito: one Linux host, many VPSs, one edge.
#[derive(Debug, Parser)]
#[command(name = "vpsctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Host config file [default: /etc/sotolito/sotolito.toml; env SOTOLITO_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory, overriding the config's paths.state_dir [env SOTOLITO_STATE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the state layout (idempotent; every command that needs it runs it).
    Init,
    /// After a reboot without systemd: network, then every tenant whose
    /// desired state is running (idempotent; exit 1 if any fails to start).
    Boot(crate::cmd::boot::BootArgs),
    /// Before a reboot without systemd: stop every tenant gracefully,
    /// keeping its desired state for the next boot.
    Shutdown(crate::cmd::boot::ShutdownArgs),
    /// List tenants (on a fleet node: every node's, with their node).
    List,
    /// The fleet's nodes, their health and tenant counts (`[cluster]` only).
    Nodes,
    /// Show one tenant.
    Status { name: TenantName },
    /// Images: import, debootstrap, list, rm.
    #[command(subcommand)]
    Image(crate::cmd::image::ImageCommand),
    /// Provision a tenant: lease, bundle, data seeded once, unit, forward.
    Provision(crate::cmd::provision::ProvisionArgs),
    /// Stop a tenant and remove it; its data is kept unless --purge.
    Deprovision(crate::cmd::provision::DeprovisionArgs),
    /// Start a tenant (through systemd where systemd manages it).
    Start { name: TenantName },
    /// Stop a tenant: its image's stop signal, KILL after the timeout.
    Stop(crate::cmd::lifecycle::StopArgs),
    /// Stop and start a tenant.
    Restart(crate::cmd::lifecycle::StopArgs),
    /// Send a signal to a tenant's init.
    Kill(crate::cmd::lifecycle::KillArgs),
    /// Move a stopped tenant's files into a user namespace id range (converts
    /// a tenant made before tenants ran in a user namespace).
    Remap(crate::cmd::remap::RemapArgs),
    /// Run a tenant in the foreground (the systemd unit's ExecStart).
    Run { name: TenantName },
    /// Run a command in a tenant; exits with its status.
    Exec(crate::cmd::lifecycle::ExecArgs),
    /// Change a tenant's limits, live, and keep them in its record.
    Set(crate::cmd::set::SetArgs),
    /// systemd units.
    #[command(subcommand)]
    Units(crate::cmd::units::UnitsCommand),
    /// Tenant networking: reconcile, show, and the runc hooks attach/detach.
    #[command(subcommand)]
    Net(crate::cmd::net::NetCommand),
    /// The edge proxy: routes HTTP/HTTPS by Host and SNI to tenants (foreground).
    Proxy(crate::cmd::proxy::ProxyArgs),
    /// TLS certificates: what the proxy serves and ACME manages.
    #[command(subcommand)]
    Certs(crate::cmd::certs::CertsCommand),
    /// Copy stdin into a tenant's capped, rotated console log until EOF
    /// (the console pump that `start` leaves beside a detached container).
    #[command(hide = true)]
    ConsoleLog {
        /// Rotate past this many bytes.
        #[arg(long)]
        max: sotolito_config::LogSize,
        path: PathBuf,
    },
    /// The whole flow in a sandbox: two tenants, the proxy, DNAT, proven by itself.
    Demo {
        /// Use a Debian image with systemd and sshd (debootstrap; cached).
        #[arg(long)]
        debian: bool,
        /// Prove the flow, clean up and exit 0 or 1 (for scripts and CI).
        #[arg(long)]
        check: bool,
    },
}

impl Command {
    /// Commands log at warn by default; long-running services at info.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Run { .. } | Command::Proxy(_) | Command::ConsoleLog { .. } => "info",
            Command::Net(crate::cmd::net::NetCommand::Reconcile { watch: true }) => "info",
            _ if self.hook_tenant().is_some() => "info",
            _ => "warn",
        }
    }

    /// The tenant of one of runc's hooks: runc keeps a hook's output and
    /// shows it only when the hook fails, so hooks log to the journal too.
    pub fn hook_tenant(&self) -> Option<&sotolito_config::TenantName> {
        use crate::cmd::net::NetCommand;
        match self {
            Command::Net(NetCommand::Attach { name, .. } | NetCommand::Detach { name }) => {
                Some(name)
            }
            _ => None,
        }
    }
}
