//! Provision and deprovision: the record planned from a request and the
//! store, the tenant's files, disk and unit link applied idempotently, the
//! record claimed, the forward added; and the teardown that goes on past
//! errors.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sotolito_config::tenant::FORMAT_VERSION;
use sotolito_config::{
    CpuWeight, Desired, DiskQuota, HostName, HttpPort, ImageName, Limits, MemorySize, Pids,
    SshPort, SwapLimit, Tenant, TenantName,
};
use sotolito_provisioner::Image;

use crate::failpoint;
use crate::store::{first_conflict, StoreError};
use crate::{Error, Host};

/// What `vpsctl provision` asks for. `None` and empty mean "the record's
/// value, or the host's default for a new tenant".
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub name: TenantName,
    pub image: ImageName,
    pub hosts: Vec<HostName>,
    pub ssh_port: Option<SshPort>,
    /// OpenSSH public key lines for root.
    pub ssh_keys: Vec<String>,
    pub ip: Option<Ipv4Addr>,
    pub http_port: HttpPort,
    pub memory: Option<MemorySize>,
    pub cpu_weight: Option<CpuWeight>,
    pub pids: Option<Pids>,
    pub connections: Option<u32>,
    pub disk: Option<DiskQuota>,
    pub swap: Option<SwapLimit>,
    pub no_acme: Vec<HostName>,
    pub nesting: bool,
    pub isolated_idmap: bool,
    /// Desired running (a new record): it gets its boot link. Starting it
    /// is a separate call.
    pub start: bool,
}

impl ProvisionRequest {
    /// A plain request: HTTP on 80, everything else from the defaults.
    pub fn new(name: TenantName, image: ImageName) -> ProvisionRequest {
        ProvisionRequest {
            name,
            image,
            hosts: Vec::new(),
            ssh_port: None,
            ssh_keys: Vec::new(),
            ip: None,
            http_port: HttpPort::default(),
            memory: None,
            cpu_weight: None,
            pids: None,
            connections: None,
            disk: None,
            swap: None,
            no_acme: Vec::new(),
            nesting: false,
            isolated_idmap: false,
            start: false,
        }
    }
}

/// What a provision did, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    New,
    /// A new record over data kept by an earlier deprovision.
    ReusedData,
    /// The record existed with the same settings.
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Provisioned {
    pub tenant: Tenant,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub struct DeprovisionRequest {
    pub name: TenantName,
    /// Also delete its data.
    pub purge: bool,
    /// After the stop signal, before KILL.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Deprovisioned {
    /// Where its data is kept; None when removed (or there was none).
    pub kept: Option<PathBuf>,
}

/// How many times a provision plans again when another writer took an
/// address or port it picked (a fleet store's race; the file store's
/// callers are serialized by the host lock).
const CLAIM_ATTEMPTS: u32 = 4;

impl Host {
    /// Provisions a tenant, or converges one provisioned with the same
    /// settings; refuses other settings for an existing record. Idempotent
    /// below the checks: a rerun after a failure or crash converges.
    pub fn provision(&self, req: &ProvisionRequest) -> Result<Provisioned, Error> {
        self.sys.files.ensure_layout()?;
        if let Some(h) = req.no_acme.iter().find(|h| !req.hosts.contains(h)) {
            return Err(Error::NoAcmeNotAHost(h.clone()));
        }
        let image = self.sys.files.image(&req.image)?;
        let _lock = self.lock()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let existing = self.store.get(&req.name)?.map(|v| v.tenant);
            let all = self.store.claimed()?;
            let tenant = self.plan(req, existing.as_ref(), &all)?;
            if let Some(old) = &existing {
                let diff = old.differences(&tenant);
                if !diff.is_empty() {
                    return Err(Error::Differs {
                        name: tenant.name.clone(),
                        differences: diff.join(", "),
                    });
                }
            }
            // Refused before anything changes.
            if let Some((claim, owner)) = first_conflict(&all, &tenant) {
                return Err(StoreError::Conflict { claim, owner }.into());
            }
            self.check_disk(&tenant)?;
            // Everything below is idempotent: a rerun after a failure
            // converges, and a rerun with the same settings changes nothing.
            let seeded = self.apply(&tenant, &image)?;
            if existing.is_none() {
                match self.store.create(&tenant) {
                    Ok(_) => {}
                    // Another writer got in since the plan: what this run
                    // made for the tenant goes, then plan again (new free
                    // address and port) or say who holds it.
                    Err(e @ (StoreError::Conflict { .. } | StoreError::Exists(_))) => {
                        self.undo_new(&tenant.name, seeded);
                        if attempt < CLAIM_ATTEMPTS {
                            tracing::info!(tenant = %tenant.name, error = %e, "claim lost; planning again");
                            continue;
                        }
                        return Err(e.into());
                    }
                    // The store failed (a fleet's etcd unreachable): what
                    // this run made goes too, nothing half-made stays.
                    Err(e) => {
                        self.undo_new(&tenant.name, seeded);
                        return Err(e.into());
                    }
                }
            }
            failpoint::hit("provision.after-record");
            self.add_forward(&tenant, true)?;
            failpoint::hit("provision.after-forward");
            let outcome = match (existing.is_some(), seeded) {
                (true, _) => Outcome::Unchanged,
                (false, true) => Outcome::New,
                (false, false) => Outcome::ReusedData,
            };
            return Ok(Provisioned { tenant, outcome });
        }
    }

    /// The record a request makes, given the existing one and all others.
    fn plan(
        &self,
        req: &ProvisionRequest,
        existing: Option<&Tenant>,
        all: &[Tenant],
    ) -> Result<Tenant, Error> {
        let config = &self.config;
        // An existing record keeps its quota unless one is given (`set
        // --disk` changes it); a new one gets the configured default.
        let disk = req
            .disk
            .or(existing.map(|t| t.disk))
            .unwrap_or(config.defaults.disk);
        let (ip, ssh_port) = match existing {
            Some(t) => (req.ip.unwrap_or(t.ip), req.ssh_port.unwrap_or(t.ssh_port)),
            None => {
                let lease = sotolito_net::allocate(config, all, &req.name, req.ip, req.ssh_port)?;
                (lease.ip, lease.ssh_port)
            }
        };
        // A record keeps its range (its files are owned by it); a new one
        // gets the shared range or a free one of its own.
        let others: Vec<Tenant> = all.iter().filter(|t| t.name != req.name).cloned().collect();
        let idmap = match existing {
            Some(t) if t.idmap.is_some_and(|m| m.isolated) == req.isolated_idmap => t.idmap,
            _ => Some(
                config
                    .runtime
                    .idmap_pool()
                    .plan(&others, req.isolated_idmap)?,
            ),
        };
        // A limit left out keeps the record's value (it may have been
        // changed by `set`), or takes the host's default for a new record.
        let base = existing.map_or_else(|| config.defaults.limits(), |t| t.limits);
        Ok(Tenant {
            version: FORMAT_VERSION,
            name: req.name.clone(),
            image: req.image.clone(),
            ip,
            ssh_port,
            http_port: req.http_port,
            hosts: req.hosts.clone(),
            ssh_keys: req.ssh_keys.clone(),
            created: existing.map_or_else(SystemTime::now, |t| t.created),
            desired: existing.map_or(
                if req.start {
                    Desired::Running
                } else {
                    Desired::Stopped
                },
                |t| t.desired,
            ),
            acme_opt_out: req.no_acme.clone(),
            limits: Limits {
                memory: req.memory.unwrap_or(base.memory),
                cpu_weight: req.cpu_weight.unwrap_or(base.cpu_weight),
                pids: req.pids.unwrap_or(base.pids),
                swap: req.swap.or(base.swap),
                connections: req.connections.or(base.connections),
            },
            nesting: req.nesting,
            disk,
            idmap,
        })
    }

    /// Refuses, before anything changes, a quota this host cannot enforce
    /// and kept data that does not match the quota asked for.
    fn check_disk(&self, tenant: &Tenant) -> Result<(), Error> {
        let m = &self.sys.mounts;
        match tenant.disk {
            DiskQuota::Limit(_) => {
                m.check_quota()?;
                if m.disk_size(&tenant.name).is_none() && self.sys.files.is_seeded(&tenant.name) {
                    return Err(Error::KeptDataNotOnDisk {
                        name: tenant.name.clone(),
                        data: self.sys.files.data_place(&tenant.name),
                    });
                }
            }
            DiskQuota::Unlimited => {
                if let Some(size) = m.disk_size(&tenant.name) {
                    return Err(Error::KeptDataOnDisk {
                        size: DiskQuota::Limit(size),
                    });
                }
            }
        }
        Ok(())
    }

    /// The tenant's disk, bundle, data, cfg and boot link; returns whether
    /// the data was seeded now. The boot link is `start`'s and `stop`'s to
    /// set (a stopped tenant stays stopped across a reboot); a running one
    /// that lost it gets it back.
    fn apply(&self, tenant: &Tenant, image: &Image) -> Result<bool, Error> {
        let name = &tenant.name;
        let (files, mounts) = (&self.sys.files, &self.sys.mounts);
        // The disk before the bundle: writing the bundle sets the modes of
        // data/, which is then the image's root.
        if let Some(bytes) = tenant.disk.bytes() {
            mounts.create_disk(name, bytes)?;
            mounts.mount_data(name)?;
            // A kept image of another size (or a `set --disk` cut short).
            if mounts.disk_size(name) != Some(bytes) {
                mounts.resize_disk(name, bytes)?;
            }
        }
        failpoint::hit("provision.after-disk");
        files.write_bundle(tenant)?;
        failpoint::hit("provision.after-bundle");
        let seeded = files.seed(tenant, image)?;
        if seeded {
            tracing::info!(tenant = %name, image = %tenant.image, "data seeded");
        } else if let Some(map) = &tenant.idmap {
            // Data kept from a tenant that had another range (or none): it
            // was stopped by its deprovision, so its files can move.
            if let Some(s) = files.shift_into(name, map)? {
                tracing::info!(tenant = %name, idmap = %map, changed = s.changed, "kept data moved into the tenant's id range");
            }
        }
        failpoint::hit("provision.after-seed");
        files.write_cfg(tenant)?;
        failpoint::hit("provision.after-cfg");
        // The boot link follows the desired state: a tenant provisioned
        // without --start is not started at boot.
        if tenant.desired == Desired::Running {
            self.sys.systemd.enable(name)?;
        }
        Ok(seeded)
    }

    /// After a lost claim: what this run made for a tenant that has no
    /// record goes again; data seeded by an earlier run stays.
    fn undo_new(&self, name: &TenantName, seeded_now: bool) {
        let mut failures = self.sys.files.remove_derived(name);
        if let Err(e) = self.sys.systemd.disable(name) {
            failures.push(format!("unit link: {e}"));
        }
        if seeded_now {
            if let Err(e) = self.sys.mounts.unmount_data(name) {
                failures.push(format!("disk image: {e}"));
            }
            if let Err(e) = self.sys.files.purge(name) {
                failures.push(format!("data: {e}"));
            }
        }
        for f in failures {
            tracing::warn!(tenant = %name, failure = %f, "cannot undo a provision that lost its claim");
        }
    }

    /// Removes everything of a tenant by name, record or not (so a
    /// provision that failed midway can always be cleared), going on past
    /// errors. A tenant that cannot be stopped keeps everything: removing
    /// its record would leave a running container no command knows.
    pub fn deprovision(&self, req: &DeprovisionRequest) -> Result<Deprovisioned, Error> {
        let name = &req.name;
        let sys = &self.sys;
        sys.files.ensure_layout()?;
        let _lock = self.lock()?;
        let tenant = self.store.get(name)?.map(|v| v.tenant);
        let found = tenant.is_some()
            || sys.files.exists(name)
            || sys.systemd.is_enabled(name)
            || sys.runtime.state(name).ok().flatten().is_some();
        if !found {
            return Err(StoreError::NotFound(name.clone()).into());
        }
        let signal = tenant
            .as_ref()
            .map_or(sotolito_provisioner::signal::DEFAULT_STOP_SIGNAL, |t| {
                sys.files.stop_signal(t)
            });
        self.stop_container(name, signal, req.timeout)?;
        failpoint::hit("deprovision.after-stop");

        let mut errors: Vec<String> = Vec::new();
        if let Some(t) = &tenant {
            note(&mut errors, "ssh forward", sys.firewall.remove_forward(t));
            failpoint::hit("deprovision.after-forward");
        }
        note(&mut errors, "unit link", sys.systemd.disable(name));
        note(&mut errors, "disk image", sys.mounts.unmount_data(name));
        let derived = sys.files.remove_derived(name);
        failpoint::hit("deprovision.after-files");
        if req.purge {
            note(&mut errors, "data", sys.files.purge(name));
        }
        errors.extend(derived);
        // The record last, and only when all else went: it is what lets a
        // rerun find the forward (its port and address) to remove.
        if tenant.is_some() && errors.is_empty() {
            note(
                &mut errors,
                "record",
                self.store.remove(name).map(|_| ()).map_err(Into::into),
            );
            failpoint::hit("deprovision.after-record");
        }
        let kept = sys.files.has_data(name);
        if !errors.is_empty() {
            return Err(Error::Teardown {
                failures: errors.join("; "),
            });
        }
        Ok(Deprovisioned {
            kept: kept.then(|| sys.files.data_place(name)),
        })
    }
}

/// Keeps a teardown going past a failure: one line per failure.
fn note(errors: &mut Vec<String>, what: &str, r: Result<(), Error>) {
    if let Err(e) = r {
        errors.push(format!("{what}: {}", crate::real::chain(&e)));
    }
}
