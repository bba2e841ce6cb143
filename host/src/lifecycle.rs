//! Start, stop, restart, kill, run and exec: a tenant's container through
//! systemd where systemd manages it, else detached; the lock order (host,
//! then tenant) and the recovery of stale containers and lost races.

use std::time::Duration;

use sotolito_config::{Desired, Idmap, Tenant, TenantName};
use sotolito_provisioner::runtime::ContainerStatus;
use sotolito_provisioner::supervise::{Stopped, DEFAULT_STOP_TIMEOUT};
use sotolito_provisioner::units;

use crate::failpoint;
use crate::{Error, Host};

#[derive(Debug, Clone)]
pub struct StopRequest {
    pub name: TenantName,
    /// After the stop signal, before KILL.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KillRequest {
    pub name: TenantName,
    pub signal: i32,
}

/// How a start went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Its container was started now.
    Now,
    /// It ran already (or a concurrent start won the race).
    Already,
}

/// How long `start` waits for systemd's unit to show a running container.
const SYSTEMD_START_WAIT: Duration = Duration::from_secs(30);

impl Host {
    /// Refuses a tenant made before tenants ran in a user namespace: its
    /// root would be host root. `vpsctl remap` converts it.
    pub fn require_idmap(tenant: &Tenant) -> Result<Idmap, Error> {
        tenant
            .idmap
            .ok_or_else(|| Error::NoIdmap(tenant.name.clone()))
    }

    fn set_desired(&self, name: &TenantName, desired: Desired) -> Result<Tenant, Error> {
        Ok(self.store.modify(name, |t| {
            let change = t.desired != desired;
            t.desired = desired;
            change
        })?)
    }

    fn running(&self, name: &TenantName) -> Result<bool, Error> {
        Ok(self
            .sys
            .runtime
            .state(name)?
            .is_some_and(|s| s.status == ContainerStatus::Running))
    }

    /// Once its data is mounted: refuses a tenant whose files are not in
    /// its id range (an interrupted remap), or whose files its mapped root
    /// cannot reach on the host.
    fn require_owned(&self, tenant: &Tenant, map: &Idmap) -> Result<(), Error> {
        if !self.sys.files.owned_by(&tenant.name, map)? {
            return Err(Error::NotOwned {
                name: tenant.name.clone(),
                map: *map,
            });
        }
        Ok(())
    }

    /// Starts a tenant and records that it should run (boot link too).
    pub fn start(&self, name: &TenantName) -> Result<Started, Error> {
        let sys = &self.sys;
        sys.files.ensure_layout()?;
        let map = Host::require_idmap(&self.store.require(name)?.tenant)?;
        let tenant = self.set_desired(name, Desired::Running)?;
        failpoint::hit("start.after-desired");
        // Even when it runs already: start is when an upgrade tightens it.
        sys.files.restrict(&tenant)?;
        // Started at boot again (see stop).
        sys.systemd.enable(name)?;
        if sys.systemd.manages() {
            sys.systemd.systemctl("start", name)?;
            let deadline = std::time::Instant::now() + SYSTEMD_START_WAIT;
            while !self.running(name)? {
                if std::time::Instant::now() >= deadline {
                    return Err(Error::NotRunningUnderSystemd {
                        unit: units::instance(name),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(Started::Now);
        }
        let _lock = self.lock_tenant(name)?;
        match sys.runtime.state(name)?.map(|s| s.status) {
            Some(ContainerStatus::Running) | Some(ContainerStatus::Paused) => {
                return Ok(Started::Already)
            }
            // Stale: left by a crash or an init that exited on its own.
            Some(_) => sys.runtime.delete(name)?,
            None => {}
        }
        let image = sys.files.image(&tenant.image)?;
        // The disk first: the overlay's upper layer lives on it, and
        // writing the bundle sets the modes of its root. It stays mounted
        // while the tenant is provisioned (this mounts it after a reboot).
        sys.mounts.mount_data(name)?;
        // After the disk: writing the bundle sets the modes of data/.
        sys.files.write_bundle(&tenant)?;
        self.require_owned(&tenant, &map)?;
        // Read again under the tenant lock: a `set` may have changed them.
        sys.runtime
            .apply_limits(&self.store.require(name)?.tenant)?;
        sys.mounts.mount_root(&tenant, &image, &map)?;
        failpoint::hit("start.after-mounts");
        if let Err(e) = sys.runtime.start_detached(&tenant) {
            // A concurrent start won the race: its container uses the mount.
            if self.running(name).unwrap_or(false) {
                return Ok(Started::Already);
            }
            let _ = sys.mounts.unmount_root(name);
            let _ = sys.runtime.teardown_cgroup(name);
            return Err(e);
        }
        failpoint::hit("start.after-container");
        Ok(Started::Now)
    }

    /// Stops the container by name (no record needed): the stop signal,
    /// KILL after `timeout`, delete, unmount, cgroups gone.
    pub fn stop_container(
        &self,
        name: &TenantName,
        signal: i32,
        timeout: Duration,
    ) -> Result<Stopped, Error> {
        let sys = &self.sys;
        if sys.systemd.manages() {
            sys.systemd.systemctl("stop", name)?;
        }
        let _lock = self.lock_tenant(name)?;
        let outcome = sys.runtime.stop(name, signal, timeout)?;
        failpoint::hit("stop.after-container");
        sys.mounts.unmount_root(name)?;
        sys.runtime.teardown_cgroup(name)?;
        Ok(outcome)
    }

    /// Stops a tenant and records that it should stay stopped (no boot
    /// link).
    pub fn stop(&self, req: &StopRequest) -> Result<Stopped, Error> {
        let tenant = self.set_desired(&req.name, Desired::Stopped)?;
        failpoint::hit("stop.after-desired");
        self.sys.systemd.disable(&req.name)?;
        self.stop_container(&req.name, self.sys.files.stop_signal(&tenant), req.timeout)
    }

    pub fn restart(&self, req: &StopRequest) -> Result<(), Error> {
        let name = &req.name;
        let tenant = self.store.require(name)?.tenant;
        // Refused before it is stopped, not after.
        Host::require_idmap(&tenant)?;
        if self.sys.systemd.manages() {
            self.set_desired(name, Desired::Running)?;
            return self.sys.systemd.systemctl("restart", name);
        }
        self.stop_container(name, self.sys.files.stop_signal(&tenant), req.timeout)?;
        self.start(name).map(|_| ())
    }

    /// Sends a signal to a running tenant's init.
    pub fn kill(&self, req: &KillRequest) -> Result<(), Error> {
        self.store.require(&req.name)?;
        if !self.running(&req.name)? {
            return Err(Error::NotRunning(req.name.clone()));
        }
        self.sys.runtime.kill(&req.name, req.signal)
    }

    /// `runc exec` in a running tenant with the caller's stdio; returns the
    /// command's exit code.
    pub fn exec(&self, name: &TenantName, cmd: &[String], tty: bool) -> Result<i32, Error> {
        self.store.require(name)?;
        if !self.running(name)? {
            return Err(Error::NotRunning(name.clone()));
        }
        self.sys.runtime.exec(name, cmd, tty)
    }

    /// `vpsctl run`, the unit's ExecStart: network, mounts and `runc run`
    /// in the foreground; SIGTERM becomes the image's stop signal.
    /// `on_running` is called once the container runs (systemd's
    /// readiness). Returns the container's exit code.
    pub fn run(&self, name: &TenantName, on_running: &dyn Fn()) -> Result<i32, Error> {
        let sys = &self.sys;
        sys.files.ensure_layout()?;
        let tenant = self.store.require(name)?.tenant;
        let map = Host::require_idmap(&tenant)?;
        let image = sys.files.image(&tenant.image)?;
        // Bridge and tables (if missing); sotolito-net.service reconciles
        // at boot.
        self.ensure_network()?;
        // Held while preparing, released before the container runs (a
        // stop must be able to get it).
        let prep_lock = self.lock_tenant(name)?;
        match sys.runtime.state(name)?.map(|s| s.status) {
            // Left by a `run` that was killed (its container lives in a
            // cgroup of its own): stop it rather than fail on every
            // Restart=always.
            Some(ContainerStatus::Running) | Some(ContainerStatus::Paused) => {
                tracing::warn!(tenant = %name, "a container of a previous run is still running; stopping it");
                sys.runtime
                    .stop(name, image.meta.stop_signal, DEFAULT_STOP_TIMEOUT)?;
            }
            Some(_) => sys.runtime.delete(name)?,
            None => {}
        }
        sys.mounts.mount_data(name)?;
        sys.files.write_bundle(&tenant)?;
        self.require_owned(&tenant, &map)?;
        sys.runtime
            .apply_limits(&self.store.require(name)?.tenant)?;
        sys.mounts.mount_root(&tenant, &image, &map)?;
        drop(prep_lock);
        tracing::info!(tenant = %name, "running");
        let result = sys
            .runtime
            .run_foreground(&tenant, image.meta.stop_signal, on_running);
        sys.mounts.unmount_root(name)?;
        let cleaned = sys.runtime.teardown_cgroup(name);
        let code = result?;
        cleaned?;
        tracing::info!(tenant = %name, code, "exited");
        Ok(code)
    }
}
