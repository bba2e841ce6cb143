//! The side effects of the lifecycle, one small trait per kind (as
//! netavark's firewall drivers and youki's `Syscall`): nftables, links,
//! the container runtime, systemd, mounts and the tenant's files. The real
//! implementations ([`crate::real`]) call sotolito-net and
//! sotolito-provisioner; the recording fakes (`fake`, feature `fakes`)
//! let the orchestration be tested without root.

use std::time::Duration;

use sotolito_config::{Idmap, Tenant, TenantName};
use sotolito_provisioner::idmap::Shifted;
use sotolito_provisioner::runtime::ContainerState;
use sotolito_provisioner::supervise::Stopped;
use sotolito_provisioner::Image;

use crate::Error;

/// Our nftables tables (sotolito-net's ruleset and map elements).
pub trait Firewall: Send + Sync {
    /// Replaces our tables, whole, with the ruleset of `tenants`.
    fn replace(&self, tenants: &[Tenant]) -> Result<(), Error>;
    fn tables_present(&self) -> Result<bool, Error>;
    /// Adds (or replaces) one tenant's SSH forward, anti-spoofing element
    /// and connection cap. [`Error::TablesMissing`] when our tables are
    /// gone, for the caller to rebuild them from its store.
    fn add_forward(&self, tenant: &Tenant) -> Result<(), Error>;
    /// Removes them; idempotent (no tables, no forward).
    fn remove_forward(&self, tenant: &Tenant) -> Result<(), Error>;
}

/// The bridge and the tenants' veths (rtnetlink).
pub trait Links: Send + Sync {
    /// The bridge with the gateway address, and ip_forward.
    fn ensure_bridge(&self) -> Result<(), Error>;
    /// The bridge ports of attached tenants: no learning, static entries.
    fn secure_ports(&self, tenants: &[Tenant]) -> Result<(), Error>;
    fn attach(&self, tenant: &Tenant, pid: u32) -> Result<(), Error>;
    fn detach(&self, name: &TenantName) -> Result<(), Error>;
}

/// The tenant's container (runc) and the cgroup that holds its limits.
pub trait Runtime: Send + Sync {
    fn state(&self, name: &TenantName) -> Result<Option<ContainerState>, Error>;
    /// The stop signal, KILL after `timeout`, delete.
    fn stop(&self, name: &TenantName, signal: i32, timeout: Duration) -> Result<Stopped, Error>;
    /// Deletes a stopped container left behind (force).
    fn delete(&self, name: &TenantName) -> Result<(), Error>;
    fn kill(&self, name: &TenantName, signal: i32) -> Result<(), Error>;
    /// Creates and starts it detached from the bundle already written,
    /// its console piped to the capped log; returns once it runs.
    fn start_detached(&self, tenant: &Tenant) -> Result<(), Error>;
    /// Writes its limits to the cgroup that holds them.
    fn apply_limits(&self, tenant: &Tenant) -> Result<(), Error>;
    /// Removes its cgroups; idempotent.
    fn teardown_cgroup(&self, name: &TenantName) -> Result<(), Error>;
    /// `runc run` in the foreground (see [`crate::Host::run`]); returns
    /// the container's exit code.
    fn run_foreground(
        &self,
        tenant: &Tenant,
        stop_signal: i32,
        on_running: &dyn Fn(),
    ) -> Result<i32, Error>;
    /// `runc exec` with the caller's stdio; returns the command's exit
    /// code (128 + signal when killed).
    fn exec(&self, name: &TenantName, cmd: &[String], tty: bool) -> Result<i32, Error>;
    /// In the createRuntime hook: the container's cgroups handed to its
    /// mapped root (systemd in a user namespace needs them).
    fn delegate_cgroups(&self, pid: u32) -> Result<(), Error>;
}

/// systemd, where it manages tenants (PID 1 and our units installed).
pub trait Systemd: Send + Sync {
    fn manages(&self) -> bool;
    /// `systemctl VERB sotolito-vps@NAME.service`.
    fn systemctl(&self, verb: &str, name: &TenantName) -> Result<(), Error>;
    /// The boot link (`sotolito-vps.target.wants/...`), made or kept.
    fn enable(&self, name: &TenantName) -> Result<(), Error>;
    fn disable(&self, name: &TenantName) -> Result<(), Error>;
    fn is_enabled(&self, name: &TenantName) -> bool;
}

/// The tenant's mounts: its disk image on data/, its overlay root.
pub trait Mounts: Send + Sync {
    /// Refuses a quota this host cannot enforce.
    fn check_quota(&self) -> Result<(), Error>;
    /// The size of its disk image, if it has one.
    fn disk_size(&self, name: &TenantName) -> Option<u64>;
    /// Makes the image if missing; never shrinks or rewrites one.
    fn create_disk(&self, name: &TenantName, bytes: u64) -> Result<(), Error>;
    /// Mounts its disk image (if any) on data/; idempotent.
    fn mount_data(&self, name: &TenantName) -> Result<(), Error>;
    fn resize_disk(&self, name: &TenantName, bytes: u64) -> Result<(), Error>;
    /// Moves a stopped tenant's plain data dir onto a new disk image.
    fn adopt_data(&self, name: &TenantName, bytes: u64) -> Result<(), Error>;
    fn unmount_data(&self, name: &TenantName) -> Result<(), Error>;
    /// Its overlay root (image lower through an idmapped view, its upper).
    fn mount_root(&self, tenant: &Tenant, image: &Image, map: &Idmap) -> Result<(), Error>;
    fn unmount_root(&self, name: &TenantName) -> Result<(), Error>;
    fn root_mounted(&self, name: &TenantName) -> bool;
}

/// Files of the host and of the tenant's dir: state layout, bundle, data
/// seeded once, the unit's cfg.
pub trait Files: Send + Sync {
    /// Every state directory, created idempotently.
    fn ensure_layout(&self) -> Result<(), Error>;
    fn image(&self, name: &sotolito_config::ImageName) -> Result<Image, Error>;
    /// The image's stop signal; systemd's when the image is gone.
    fn stop_signal(&self, tenant: &Tenant) -> i32;
    /// config.json (derived, rewritten freely) and the private modes.
    fn write_bundle(&self, tenant: &Tenant) -> Result<(), Error>;
    /// The private modes on its dirs alone.
    fn restrict(&self, tenant: &Tenant) -> Result<(), Error>;
    fn is_seeded(&self, name: &TenantName) -> bool;
    /// Seeds data/ from the image unless done; returns whether it did now.
    fn seed(&self, tenant: &Tenant, image: &Image) -> Result<bool, Error>;
    /// Moves kept files into `map`'s range unless they are there.
    fn shift_into(&self, name: &TenantName, map: &Idmap) -> Result<Option<Shifted>, Error>;
    fn owned_by(&self, name: &TenantName, map: &Idmap) -> Result<bool, Error>;
    /// CONFIG_DIR/tenants/NAME.cfg, written only when it differs.
    fn write_cfg(&self, tenant: &Tenant) -> Result<(), Error>;
    /// Whether anything of the tenant is on disk (dir, cfg).
    fn exists(&self, name: &TenantName) -> bool;
    /// Removes what is derived (cfg, config.json, console log, empty
    /// mount points), going on past errors: one line per failure.
    fn remove_derived(&self, name: &TenantName) -> Vec<String>;
    /// Whether its data (dir or disk image) is kept.
    fn has_data(&self, name: &TenantName) -> bool;
    /// Removes its dir with its data and its lock file.
    fn purge(&self, name: &TenantName) -> Result<(), Error>;
    /// Where its data is kept, for messages.
    fn data_place(&self, name: &TenantName) -> std::path::PathBuf;
}

/// The host's side effects, each behind its trait.
pub struct System {
    pub firewall: Box<dyn Firewall>,
    pub links: Box<dyn Links>,
    pub runtime: Box<dyn Runtime>,
    pub systemd: Box<dyn Systemd>,
    pub mounts: Box<dyn Mounts>,
    pub files: Box<dyn Files>,
}
