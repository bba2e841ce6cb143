//! The real side effects: each trait of [`crate::sys`] on sotolito-net
//! (nft, rtnetlink), sotolito-provisioner (runc, mounts, units, files) and
//! `systemctl`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sotolito_config::host::CgroupManager;
use sotolito_config::{Desired, HostConfig, Idmap, ImageName, Tenant, TenantName};
use sotolito_provisioner::cgroup::{Hierarchies, TenantCgroup};
use sotolito_provisioner::data::{self, Seed};
use sotolito_provisioner::idmap::Shifted;
use sotolito_provisioner::runtime::ContainerState;
use sotolito_provisioner::supervise::{self, Stopped};
use sotolito_provisioner::tenantfs::Owner;
use sotolito_provisioner::{
    bundle, disk, overlay, units, HookCommand, Image, ImageStore, Runc, TenantLayout,
};

use crate::sys::{Files, Firewall, Links, Mounts, Runtime, System, Systemd};
use crate::{io_err, Error};

/// What the real parts share: the config and how runc calls back.
#[derive(Debug, Clone)]
pub struct Real {
    pub config: HostConfig,
    /// The vpsctl the hooks and the console pump run, with this
    /// instance's config.
    pub hook: HookCommand,
}

impl Real {
    /// Every side effect, for real.
    pub fn system(config: &HostConfig, hook: HookCommand) -> System {
        let r = Real {
            config: config.clone(),
            hook,
        };
        System {
            firewall: Box::new(r.clone()),
            links: Box::new(r.clone()),
            runtime: Box::new(r.clone()),
            systemd: Box::new(r.clone()),
            mounts: Box::new(r.clone()),
            files: Box::new(r),
        }
    }

    fn layout(&self, name: &TenantName) -> TenantLayout {
        layout(&self.config, name)
    }

    pub fn runc(&self) -> Runc {
        runc(&self.config)
    }

    fn cgroup(&self, name: &TenantName) -> Result<TenantCgroup, Error> {
        tenant_cgroup(&self.config, name)
    }

    fn cfg_path(&self, name: &TenantName) -> PathBuf {
        self.config.tenant_cfg_dir().join(format!("{name}.cfg"))
    }
}

pub fn layout(config: &HostConfig, name: &TenantName) -> TenantLayout {
    TenantLayout::new(&config.tenants_dir(), name)
}

/// How to call runc for this instance.
pub fn runc(config: &HostConfig) -> Runc {
    let rt = &config.runtime;
    Runc {
        binary: rt.runc.clone(),
        root: config.runc_root(),
        systemd_cgroup: use_systemd_cgroup(rt.cgroup_manager),
    }
}

/// `auto` means systemd only where systemd is PID 1 (runc's systemd
/// driver fails elsewhere: docs/architecture.md, "Chosen parts").
fn use_systemd_cgroup(m: CgroupManager) -> bool {
    match m {
        CgroupManager::Systemd => true,
        CgroupManager::Cgroupfs => false,
        CgroupManager::Auto => Path::new("/run/systemd/system").is_dir(),
    }
}

/// Where tenant `name`'s limits and container live in this host's cgroups.
pub fn tenant_cgroup(config: &HostConfig, name: &TenantName) -> Result<TenantCgroup, Error> {
    Ok(TenantCgroup {
        hierarchies: Hierarchies::detect()?,
        prefix: bundle::cgroup_prefix(&config.tenants_dir()),
        name: name.clone(),
        systemd: runc(config).systemd_cgroup,
    })
}

/// The tenant's root as the host sees it: its mapped root; host root only
/// for a tenant made before user namespaces.
pub fn tenant_owner(tenant: &Tenant) -> Owner {
    tenant.idmap.map_or(Owner::ROOT, |m| Owner {
        uid: m.host_id,
        gid: m.host_id,
    })
}

impl Firewall for Real {
    fn replace(&self, tenants: &[Tenant]) -> Result<(), Error> {
        sotolito_net::nft::apply_ruleset(&sotolito_net::ruleset_for(&self.config, tenants))?;
        Ok(())
    }
    fn tables_present(&self) -> Result<bool, Error> {
        Ok(sotolito_net::nft::tables_present()?)
    }
    fn add_forward(&self, tenant: &Tenant) -> Result<(), Error> {
        match sotolito_net::nft::add_forward(&self.config, tenant) {
            Err(e) if sotolito_net::nft::is_missing(&e) => Err(Error::TablesMissing),
            other => Ok(other?),
        }
    }
    fn remove_forward(&self, tenant: &Tenant) -> Result<(), Error> {
        Ok(sotolito_net::remove_forward(&self.config, tenant)?)
    }
}

impl Links for Real {
    fn ensure_bridge(&self) -> Result<(), Error> {
        Ok(sotolito_net::link::ensure_bridge(&self.config)?)
    }
    fn secure_ports(&self, tenants: &[Tenant]) -> Result<(), Error> {
        Ok(sotolito_net::link::secure_ports(tenants)?)
    }
    fn attach(&self, tenant: &Tenant, pid: u32) -> Result<(), Error> {
        Ok(sotolito_net::link::attach(&self.config, tenant, pid)?)
    }
    fn detach(&self, name: &TenantName) -> Result<(), Error> {
        Ok(sotolito_net::detach(&self.config, name)?)
    }
}

impl Runtime for Real {
    fn state(&self, name: &TenantName) -> Result<Option<ContainerState>, Error> {
        Ok(self.runc().state(name.as_str())?)
    }
    fn stop(&self, name: &TenantName, signal: i32, timeout: Duration) -> Result<Stopped, Error> {
        Ok(supervise::stop(
            &self.runc(),
            name.as_str(),
            signal,
            timeout,
        )?)
    }
    fn delete(&self, name: &TenantName) -> Result<(), Error> {
        Ok(self.runc().delete(name.as_str(), true)?)
    }
    fn kill(&self, name: &TenantName, signal: i32) -> Result<(), Error> {
        Ok(self.runc().kill(name.as_str(), signal)?)
    }
    fn start_detached(&self, tenant: &Tenant) -> Result<(), Error> {
        let layout = self.layout(&tenant.name);
        // `vpsctl console-log --max SIZE PATH`: the pump of a detached
        // container's console, this very binary.
        let mut pump = Command::new(&self.hook.vpsctl);
        pump.arg("console-log")
            .arg("--max")
            .arg(self.config.runtime.console_log_max.to_string())
            .arg(layout.console_log())
            .env_remove("RUST_LOG");
        Ok(supervise::start_detached(
            &self.runc(),
            tenant.name.as_str(),
            layout.bundle(),
            &layout.console_log(),
            pump,
            tenant_owner(tenant),
        )?)
    }
    fn apply_limits(&self, tenant: &Tenant) -> Result<(), Error> {
        let swap = tenant.limits.swap_or(self.config.defaults.swap);
        Ok(self.cgroup(&tenant.name)?.apply(&tenant.limits, swap)?)
    }
    fn teardown_cgroup(&self, name: &TenantName) -> Result<(), Error> {
        Ok(self.cgroup(name)?.teardown()?)
    }
    fn run_foreground(
        &self,
        tenant: &Tenant,
        stop_signal: i32,
        on_running: &dyn Fn(),
    ) -> Result<i32, Error> {
        let layout = self.layout(&tenant.name);
        Ok(supervise::run_foreground(
            &self.runc(),
            tenant.name.as_str(),
            layout.bundle(),
            &layout.console_log(),
            self.config.runtime.console_log_max.bytes(),
            stop_signal,
            supervise::DEFAULT_STOP_TIMEOUT,
            tenant_owner(tenant),
            on_running,
        )?)
    }
    fn exec(&self, name: &TenantName, cmd: &[String], tty: bool) -> Result<i32, Error> {
        use std::os::unix::process::ExitStatusExt;
        let runc = self.runc();
        let status = runc
            .exec_command(name.as_str(), cmd, tty)
            .status()
            .map_err(|e| runc.spawn_error(e))?;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
    fn delegate_cgroups(&self, pid: u32) -> Result<(), Error> {
        // Read from the init itself: runc made its cgroups, its init has
        // not exec'd yet.
        if let Some(root) = sotolito_provisioner::idmap::mapped_root(pid)? {
            sotolito_provisioner::idmap::delegate_cgroups(pid, root)?;
        }
        Ok(())
    }
}

impl Systemd for Real {
    /// systemd manages tenants when it is PID 1 and our units are
    /// installed where it reads them; then start and stop go through
    /// systemctl so that Restart=always neither fights a stop nor misses a
    /// start.
    fn manages(&self) -> bool {
        let dir = &self.config.paths.systemd_dir;
        Path::new("/run/systemd/system").is_dir()
            && (dir.starts_with("/etc/systemd/system") || dir.starts_with("/run/systemd/system"))
            && dir.join(units::TEMPLATE).exists()
    }
    fn systemctl(&self, verb: &str, name: &TenantName) -> Result<(), Error> {
        let unit = units::instance(name);
        let out = Command::new("systemctl")
            .args([verb, &unit])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run systemctl for", &unit))?;
        if !out.status.success() {
            return Err(Error::Systemctl {
                verb: verb.to_owned(),
                unit,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
    fn enable(&self, name: &TenantName) -> Result<(), Error> {
        units::enable_instance(&self.config.paths.systemd_dir, name)?;
        Ok(())
    }
    fn disable(&self, name: &TenantName) -> Result<(), Error> {
        Ok(units::disable_instance(
            &self.config.paths.systemd_dir,
            name,
        )?)
    }
    fn is_enabled(&self, name: &TenantName) -> bool {
        fs::symlink_metadata(units::instance_link(&self.config.paths.systemd_dir, name)).is_ok()
    }
}

impl Mounts for Real {
    fn check_quota(&self) -> Result<(), Error> {
        Ok(disk::check_enforceable()?)
    }
    fn disk_size(&self, name: &TenantName) -> Option<u64> {
        disk::image_size(&self.layout(name))
    }
    fn create_disk(&self, name: &TenantName, bytes: u64) -> Result<(), Error> {
        disk::create_image(&self.layout(name), bytes)?;
        Ok(())
    }
    fn mount_data(&self, name: &TenantName) -> Result<(), Error> {
        Ok(disk::mount_data(name.as_str(), &self.layout(name))?)
    }
    fn resize_disk(&self, name: &TenantName, bytes: u64) -> Result<(), Error> {
        Ok(disk::resize(name.as_str(), &self.layout(name), bytes)?)
    }
    fn adopt_data(&self, name: &TenantName, bytes: u64) -> Result<(), Error> {
        Ok(disk::adopt_data(name.as_str(), &self.layout(name), bytes)?)
    }
    fn unmount_data(&self, name: &TenantName) -> Result<(), Error> {
        Ok(disk::unmount_data(&self.layout(name))?)
    }
    fn mount_root(&self, tenant: &Tenant, image: &Image, map: &Idmap) -> Result<(), Error> {
        let layout = self.layout(&tenant.name);
        Ok(overlay::mount_root(
            tenant.name.as_str(),
            &image.rootfs(),
            &layout,
            Some(map),
        )?)
    }
    fn unmount_root(&self, name: &TenantName) -> Result<(), Error> {
        Ok(overlay::unmount_root(&self.layout(name))?)
    }
    fn root_mounted(&self, name: &TenantName) -> bool {
        overlay::is_mounted(&self.layout(name).rootfs())
    }
}

impl Files for Real {
    fn ensure_layout(&self) -> Result<(), Error> {
        let c = &self.config;
        sotolito_config::Registry::new(c.registry_dir()).create()?;
        for dir in [
            c.images_dir(),
            c.tenants_dir(),
            c.runc_root(),
            c.tenant_cfg_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        // Private keys live in the certs dir.
        let certs = c.certs_dir();
        fs::create_dir_all(&certs).map_err(io_err("create", &certs))?;
        fs::set_permissions(
            &certs,
            <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
        )
        .map_err(io_err("restrict", &certs))?;
        sotolito_provisioner::private::restrict_tenants_dir(&c.tenants_dir())?;
        sotolito_provisioner::private::restrict_images_dir(&c.images_dir())?;
        Ok(())
    }
    fn image(&self, name: &ImageName) -> Result<Image, Error> {
        Ok(ImageStore::new(self.config.images_dir()).require(name)?)
    }
    fn stop_signal(&self, tenant: &Tenant) -> i32 {
        ImageStore::new(self.config.images_dir())
            .get(&tenant.image)
            .ok()
            .flatten()
            .map_or(sotolito_provisioner::signal::DEFAULT_STOP_SIGNAL, |i| {
                i.meta.stop_signal
            })
    }
    fn write_bundle(&self, tenant: &Tenant) -> Result<(), Error> {
        let layout = self.layout(&tenant.name);
        let cgroup = self.cgroup(&tenant.name)?.container();
        let spec = bundle::render_spec(tenant, &layout, Some(&self.hook), &cgroup)?;
        bundle::write_spec(&layout, &spec)?;
        self.restrict(tenant)
    }
    fn restrict(&self, tenant: &Tenant) -> Result<(), Error> {
        let layout = self.layout(&tenant.name);
        sotolito_provisioner::private::restrict_tenant(&layout, tenant_owner(tenant))?;
        Ok(())
    }
    fn is_seeded(&self, name: &TenantName) -> bool {
        data::is_seeded(&self.layout(name))
    }
    fn seed(&self, tenant: &Tenant, image: &Image) -> Result<bool, Error> {
        let seed = Seed {
            hostname: tenant.name.to_string(),
            ip: tenant.ip,
            ssh_keys: tenant.ssh_keys.clone(),
            resolv_conf: data::resolv_conf_for_tenants(),
            owner: tenant_owner(tenant),
        };
        Ok(data::seed(
            &self.layout(&tenant.name),
            &image.rootfs(),
            &seed,
            tenant.idmap.as_ref(),
        )?)
    }
    fn shift_into(&self, name: &TenantName, map: &Idmap) -> Result<Option<Shifted>, Error> {
        Ok(data::shift_into(&self.layout(name), map)?)
    }
    fn owned_by(&self, name: &TenantName, map: &Idmap) -> Result<bool, Error> {
        let layout = self.layout(name);
        if !data::owned_by(&layout, map)? {
            return Ok(false);
        }
        if let Some((dir, mode)) =
            sotolito_provisioner::idmap::blocked_for(&layout.data(), map.host_id)
        {
            return Err(Error::Blocked {
                uid: map.host_id,
                dir,
                mode,
            });
        }
        Ok(true)
    }
    fn write_cfg(&self, tenant: &Tenant) -> Result<(), Error> {
        let cfg = self.cfg_path(&tenant.name);
        let text = units::render_tenant_cfg(tenant.ip, &self.config.network.bridge);
        if fs::read_to_string(&cfg).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        sotolito_config::atomic::write(&cfg, text.as_bytes(), 0o644)
            .map_err(sotolito_config::Error::from)?;
        Ok(())
    }
    fn exists(&self, name: &TenantName) -> bool {
        self.layout(name).dir.exists() || self.cfg_path(name).exists()
    }
    fn remove_derived(&self, name: &TenantName) -> Vec<String> {
        let layout = self.layout(name);
        let mut errors = Vec::new();
        let mut note = |what: &str, r: Result<(), Error>| {
            if let Err(e) = r {
                errors.push(format!("{what}: {}", chain(&e)));
            }
        };
        note("unit cfg", remove_file(&self.cfg_path(name)));
        note("config.json", remove_file(&layout.config_json()));
        note("console log", remove_file(&layout.console_log()));
        let view = layout.image_view();
        if !overlay::is_mounted(&view) && view.exists() {
            note(
                "image view",
                fs::remove_dir(&view).map_err(io_err("remove", &view)),
            );
        }
        let root = layout.rootfs();
        if overlay::is_mounted(&root) {
            errors.push(format!("rootfs: {} is still mounted", root.display()));
        } else if root.exists() {
            note(
                "rootfs",
                fs::remove_dir(&root).map_err(io_err("remove", &root)),
            );
        }
        // An empty dir (no data kept) goes too.
        if !self.has_data(name) && layout.dir.exists() {
            let _ = fs::remove_dir(&layout.dir);
        }
        errors
    }
    fn has_data(&self, name: &TenantName) -> bool {
        let layout = self.layout(name);
        layout.data().exists() || disk::has_image(&layout)
    }
    fn purge(&self, name: &TenantName) -> Result<(), Error> {
        let layout = self.layout(name);
        remove_file(&sotolito_provisioner::lock::lock_path(
            &self.config.tenants_dir(),
            name,
        ))?;
        if overlay::is_mounted(&layout.rootfs()) || overlay::is_mounted(&layout.data()) {
            return Err(Error::Teardown {
                failures: format!("data: {} is still mounted", layout.data().display()),
            });
        }
        if layout.dir.exists() {
            fs::remove_dir_all(&layout.dir).map_err(io_err("remove", &layout.dir))?;
        }
        Ok(())
    }
    fn data_place(&self, name: &TenantName) -> PathBuf {
        let l = self.layout(name);
        if disk::has_image(&l) {
            l.disk_image()
        } else {
            l.data()
        }
    }
}

/// Whether a desired state asks for the boot link.
pub fn wants_boot_link(d: Desired) -> bool {
    d == Desired::Running
}

fn remove_file(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// An error with its causes on one line, for lists of failures.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
