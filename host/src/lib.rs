//! sotolito-host: the tenant lifecycle of one host (provision, deprovision,
//! start, stop, run, boot, ...) as a library, between vpsctl and the crates
//! that act (config, net, provisioner). A [`Host`] holds the config, the
//! [`Store`] of records and the [`System`] of side-effect traits; requests
//! are plain structs, so any caller (vpsctl, a test with fakes, an API)
//! drives the same rules.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod boot;
pub mod failpoint;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
mod lifecycle;
mod lock;
mod network;
mod provision;
pub mod real;
mod settings;
pub mod store;
pub mod sys;
#[cfg(test)]
mod testdata;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use sotolito_config::{HostConfig, HostName, TenantName};

pub use boot::Booted;
pub use lifecycle::{KillRequest, Started, StopRequest};
pub use lock::HostLock;
pub use provision::{DeprovisionRequest, Deprovisioned, Outcome, ProvisionRequest, Provisioned};
pub use settings::SetRequest;
pub use store::{Claim, EtcdStore, FileStore, Revision, Store, StoreError, Versioned};
pub use sys::System;

/// Errors of the lifecycle: each names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] sotolito_config::Error),
    #[error(transparent)]
    Net(#[from] sotolito_net::Error),
    #[error(transparent)]
    Provisioner(#[from] sotolito_provisioner::Error),
    #[error(transparent)]
    Idmap(#[from] sotolito_config::idmap::PoolExhausted),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("our nft tables are missing")]
    TablesMissing,
    #[error("--no-acme {0} is not one of the tenant's hosts (add it with --host {0})")]
    NoAcmeNotAHost(HostName),
    #[error("tenant {name} exists with other settings: {differences} (provision it with its current settings, or deprovision it first)")]
    Differs {
        name: TenantName,
        differences: String,
    },
    #[error("its kept data in {data} is not on a disk image (provision it with --disk unlimited, then put it under a quota with vpsctl set {name} --disk SIZE while it is stopped)")]
    KeptDataNotOnDisk { name: TenantName, data: PathBuf },
    #[error("its kept data is on a disk image of {size} (provision it with --disk {size})")]
    KeptDataOnDisk { size: sotolito_config::DiskQuota },
    #[error("{failures} (rerun deprovision to finish)")]
    Teardown { failures: String },
    #[error("tenant {0} was made before tenants ran in a user namespace and would run as host root (convert it, stopped, with: vpsctl remap {0})")]
    NoIdmap(TenantName),
    #[error("tenant {name}'s files are not owned by its id range {map} yet (an interrupted provision or remap; finish it with: vpsctl remap {name})")]
    NotOwned {
        name: TenantName,
        map: sotolito_config::Idmap,
    },
    #[error("its root, host uid {uid}, may not pass through {} (mode {mode:o}) on the way to its files (chmod o+x {}, or put paths.state_dir where every user may pass)", dir.display(), dir.display())]
    Blocked { uid: u32, dir: PathBuf, mode: u32 },
    #[error("{unit} started but the container is not running (see journalctl -u {unit})")]
    NotRunningUnderSystemd { unit: String },
    #[error("tenant {0} is not running (start it with vpsctl start {0})")]
    NotRunning(TenantName),
    #[error("systemctl {verb} {unit} failed: {stderr}")]
    Systemctl {
        verb: String,
        unit: String,
        stderr: String,
    },
    #[error(
        "nothing to change (give --memory, --cpu-weight, --pids, --swap, --disk or --connections)"
    )]
    NothingToSet,
    #[error("its data lives on a disk image of {0} and cannot be taken off it (give a larger size instead)")]
    DiskCannotBeRemoved(sotolito_config::DiskQuota),
    #[error("it is running (stop it first: vpsctl stop {0})")]
    Running(TenantName),
    #[error("it has no seeded data in {} (provision it again to seed it)", data.display())]
    NotSeeded { name: TenantName, data: PathBuf },
    #[error("putting a tenant's data under a quota moves it onto a disk image, which needs the tenant stopped (vpsctl stop {0}, then run this again)")]
    DiskNeedsStop(TenantName),
}

/// Attaches a path to an io::Error.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// One host: its config, its store of records, its side effects.
pub struct Host {
    pub config: HostConfig,
    pub store: Box<dyn Store>,
    pub sys: System,
}

impl Host {
    pub fn new(config: HostConfig, store: Box<dyn Store>, sys: System) -> Host {
        Host { config, store, sys }
    }

    /// The host-local lock that serializes commands changing this host's
    /// tenants and tables (see [`HostLock`]).
    pub fn lock(&self) -> Result<HostLock, Error> {
        HostLock::take(&self.config.paths.state_dir)
    }

    /// The lock of one tenant's lifecycle (start, stop, run's preparation).
    pub fn lock_tenant(
        &self,
        name: &TenantName,
    ) -> Result<sotolito_provisioner::lock::TenantLock, Error> {
        Ok(sotolito_provisioner::lock::lock_tenant(
            &self.config.tenants_dir(),
            name,
        )?)
    }
}
