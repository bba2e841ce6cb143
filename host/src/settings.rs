//! `set` and `remap`: a tenant's limits changed live and in its record; a
//! stopped tenant's files moved into an id range.

use sotolito_config::{CpuWeight, DiskQuota, MemorySize, Pids, SwapLimit, Tenant, TenantName};
use sotolito_provisioner::idmap::Shifted;
use sotolito_provisioner::runtime::ContainerStatus;

use crate::{Error, Host};

/// What `vpsctl set` asks for; `None` leaves a limit as it is.
#[derive(Debug, Clone)]
pub struct SetRequest {
    pub name: TenantName,
    pub memory: Option<MemorySize>,
    pub cpu_weight: Option<CpuWeight>,
    pub pids: Option<Pids>,
    pub swap: Option<SwapLimit>,
    pub disk: Option<DiskQuota>,
    pub connections: Option<u32>,
}

impl SetRequest {
    /// A limit that lives in the tenant's cgroup is given.
    fn cgroup_limits(&self) -> bool {
        self.memory.is_some()
            || self.cpu_weight.is_some()
            || self.pids.is_some()
            || self.swap.is_some()
    }
}

impl Host {
    /// Changes a tenant's limits in its record and, while it runs, live.
    /// Returns the new record and whether it was running.
    pub fn set(&self, req: &SetRequest) -> Result<(Tenant, bool), Error> {
        let name = &req.name;
        let sys = &self.sys;
        if !req.cgroup_limits() && req.disk.is_none() && req.connections.is_none() {
            return Err(Error::NothingToSet);
        }
        sys.files.ensure_layout()?;
        let _lock = self.lock()?;
        let current = self.store.require(name)?;
        let old = current.tenant;
        if let (DiskQuota::Limit(_), Some(DiskQuota::Unlimited)) = (old.disk, req.disk) {
            return Err(Error::DiskCannotBeRemoved(old.disk));
        }
        // Host, then tenant, the order every command keeps: a start in
        // progress finishes first (and applied the old record), or starts
        // after with the new one.
        let _tenant = self.lock_tenant(name)?;
        let mut t = old.clone();
        t.limits.memory = req.memory.unwrap_or(t.limits.memory);
        t.limits.cpu_weight = req.cpu_weight.unwrap_or(t.limits.cpu_weight);
        t.limits.pids = req.pids.unwrap_or(t.limits.pids);
        t.limits.swap = req.swap.or(t.limits.swap);
        let live = sys
            .runtime
            .state(name)?
            .is_some_and(|s| s.status != ContainerStatus::Stopped);
        // What undoes cleanly goes first (cgroup writes, the nft element),
        // the disk last; a failure undoes what was done.
        let applied = live && req.cgroup_limits();
        let undo = |why: &str| {
            if applied {
                if let Err(e) = sys.runtime.apply_limits(&old) {
                    tracing::warn!(tenant = %name, error = %e, why, "cannot restore the old limits");
                }
            }
            if req.connections.is_some() {
                if let Err(e) = self.add_forward(&old, true) {
                    tracing::warn!(tenant = %name, error = %e, why, "cannot restore the old connection cap");
                }
            }
        };
        if applied {
            sys.runtime.apply_limits(&t)?;
        }
        if let Some(n) = req.connections {
            // The cap is one element of the tenant's nft map: replaced at once.
            t.limits.connections = Some(n);
            if let Err(e) = self.add_forward(&t, true) {
                undo("connections");
                return Err(e);
            }
        }
        if let Some(new) = req.disk {
            if let Err(e) = self.set_disk(&old, new) {
                undo("disk");
                return Err(e);
            }
            t.disk = new;
        }
        if let Err(e) = self.store.update(&t, current.revision) {
            undo("record");
            return Err(e.into());
        }
        Ok((t, live))
    }

    fn set_disk(&self, tenant: &Tenant, new: DiskQuota) -> Result<(), Error> {
        let name = &tenant.name;
        let m = &self.sys.mounts;
        match (tenant.disk, new) {
            // Limit -> unlimited is refused by `set` before it locks anything.
            (_, DiskQuota::Unlimited) => Ok(()),
            (DiskQuota::Unlimited, DiskQuota::Limit(bytes)) => {
                m.check_quota()?;
                let running = self
                    .sys
                    .runtime
                    .state(name)?
                    .is_some_and(|s| s.status != ContainerStatus::Stopped);
                if running {
                    return Err(Error::DiskNeedsStop(name.clone()));
                }
                m.adopt_data(name, bytes)
            }
            (DiskQuota::Limit(_), DiskQuota::Limit(bytes)) => {
                m.check_quota()?;
                m.create_disk(name, bytes)?;
                m.mount_data(name)?;
                m.resize_disk(name, bytes)
            }
        }
    }

    /// Moves a stopped tenant's own files (data dirs and upper layer) into
    /// an id range and records it: `isolated` Some(true) a range of its
    /// own, Some(false) the shared one, None the kind it has. Returns the
    /// record and what moved (None: nothing had to).
    pub fn remap(
        &self,
        name: &TenantName,
        isolated: Option<bool>,
    ) -> Result<(Tenant, Option<Shifted>), Error> {
        let sys = &self.sys;
        sys.files.ensure_layout()?;
        let _lock = self.lock()?;
        let current = self.store.require(name)?;
        let mut tenant = current.tenant;
        let _tenant_lock = self.lock_tenant(name)?;
        let state = sys.runtime.state(name)?.map(|s| s.status);
        if matches!(state, Some(s) if s != ContainerStatus::Stopped)
            || sys.mounts.root_mounted(name)
        {
            return Err(Error::Running(name.clone()));
        }
        // Its data may be on a disk image, unmounted since a reboot.
        sys.mounts.mount_data(name)?;
        if !sys.files.is_seeded(name) {
            return Err(Error::NotSeeded {
                name: name.clone(),
                data: sys.files.data_place(name),
            });
        }
        let isolated = isolated.unwrap_or(tenant.idmap.is_some_and(|m| m.isolated));
        let map = match tenant.idmap {
            Some(m) if m.isolated == isolated => m,
            _ => {
                let others: Vec<Tenant> = self
                    .store
                    .list()?
                    .into_iter()
                    .filter(|t| &t.name != name)
                    .collect();
                self.config.runtime.idmap_pool().plan(&others, isolated)?
            }
        };
        // The record first: a remap interrupted below is finished by a
        // rerun into the same range (the shift is idempotent), and start
        // refuses the tenant until the marker says the files are there.
        if tenant.idmap != Some(map) {
            tenant.idmap = Some(map);
            self.store.update(&tenant, current.revision)?;
        }
        let shifted = sys.files.shift_into(name, &map)?;
        sys.files.write_bundle(&tenant)?;
        Ok((tenant, shifted))
    }
}
