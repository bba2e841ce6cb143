//! Recording fakes of the store and of every side-effect trait, sharing
//! one [`World`]: what a real host would hold after the calls. Every call
//! that changes something is a numbered step; [`Fake::fail_at`] makes step
//! k fail (changing nothing), so a test can fail each step in turn and
//! check that the next call converges on the world of a run without
//! failures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sotolito_config::{HostConfig, Idmap, ImageName, Limits, Tenant, TenantName};
use sotolito_provisioner::idmap::Shifted;
use sotolito_provisioner::runtime::{ContainerState, ContainerStatus};
use sotolito_provisioner::supervise::Stopped;
use sotolito_provisioner::{Image, ImageMeta};

use crate::store::{first_conflict, Revision, Store, StoreError, Versioned};
use crate::sys::{Files, Firewall, Links, Mounts, Runtime, System, Systemd};
use crate::{Error, Host};

/// A tenant's data dir as the fakes keep it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Data {
    /// Path under data/ -> content.
    pub files: BTreeMap<String, String>,
    /// The range its files are owned by.
    pub idmap: Option<Idmap>,
}

/// One forward in the fake tables: SSH port, address, connection cap.
pub type Forward = (u16, Ipv4Addr, Option<u32>);

/// The state of a fake host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct World {
    pub records: BTreeMap<TenantName, Tenant>,
    pub generation: u64,
    pub layout: bool,
    /// None: our nft tables are missing. Else tenant -> (port, ip, cap).
    pub tables: Option<BTreeMap<TenantName, Forward>>,
    pub bridge: bool,
    pub secured: BTreeSet<TenantName>,
    pub veths: BTreeSet<TenantName>,
    pub containers: BTreeMap<TenantName, String>,
    pub cgroups: BTreeMap<TenantName, Limits>,
    pub boot_links: BTreeSet<TenantName>,
    pub disks: BTreeMap<TenantName, u64>,
    pub data_mounted: BTreeSet<TenantName>,
    pub root_mounted: BTreeSet<TenantName>,
    /// config.json, as the tenant it was rendered from.
    pub bundles: BTreeMap<TenantName, Tenant>,
    pub data: BTreeMap<TenantName, Data>,
    pub cfgs: BTreeMap<TenantName, Ipv4Addr>,
    pub restricted: BTreeSet<TenantName>,
}

impl World {
    /// The world with what differs between two equal runs (creation
    /// times) made equal.
    pub fn normalized(&self) -> World {
        let mut w = self.clone();
        for t in w.records.values_mut().chain(w.bundles.values_mut()) {
            t.created = std::time::UNIX_EPOCH;
        }
        // The counter of changes counts retries too.
        w.generation = 0;
        w
    }
}

#[derive(Debug, Default)]
struct Inner {
    world: World,
    journal: Vec<String>,
    steps: usize,
    fail_at: Option<usize>,
    images: BTreeMap<ImageName, i32>,
    systemd_manages: bool,
    quota_supported: bool,
    /// Written into the store just before the next create: another
    /// writer winning a race.
    steal: Option<Tenant>,
}

/// A handle on the shared fake host; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
}

/// The message of an injected failure.
pub const INJECTED: &str = "injected failure";

impl Fake {
    pub fn new() -> Fake {
        let f = Fake::default();
        f.lock().quota_supported = true;
        f
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A host on these fakes with `config` (its paths hold only the
    /// host's and tenants' lock files).
    pub fn host(&self, config: HostConfig) -> Host {
        Host::new(config, Box::new(self.clone()), self.system())
    }

    pub fn system(&self) -> System {
        System {
            firewall: Box::new(self.clone()),
            links: Box::new(self.clone()),
            runtime: Box::new(self.clone()),
            systemd: Box::new(self.clone()),
            mounts: Box::new(self.clone()),
            files: Box::new(self.clone()),
        }
    }

    pub fn add_image(&self, name: &str, stop_signal: i32) {
        let name = ImageName::new(name).unwrap_or_else(|e| panic!("{e}"));
        self.lock().images.insert(name, stop_signal);
    }

    pub fn set_systemd_manages(&self, yes: bool) {
        self.lock().systemd_manages = yes;
    }

    pub fn set_quota_supported(&self, yes: bool) {
        self.lock().quota_supported = yes;
    }

    /// Step `k` (1-based, counted from now) fails; None: none does.
    pub fn fail_at(&self, k: Option<usize>) {
        let mut i = self.lock();
        i.steps = 0;
        i.fail_at = k;
    }

    /// The next create finds `t` written by someone else first.
    pub fn steal_next_create(&self, t: Tenant) {
        self.lock().steal = Some(t);
    }

    /// Steps since the last [`Fake::fail_at`] or [`Fake::take_journal`].
    pub fn steps(&self) -> usize {
        self.lock().steps
    }

    pub fn take_journal(&self) -> Vec<String> {
        let mut i = self.lock();
        i.steps = 0;
        std::mem::take(&mut i.journal)
    }

    pub fn world(&self) -> World {
        self.lock().world.clone()
    }

    pub fn with_world<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.lock().world)
    }

    /// One change: journaled and counted; fails (changing nothing) when
    /// it is the step to fail; else `f` changes the world.
    fn step<T>(
        &self,
        what: String,
        f: impl FnOnce(&mut World) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut i = self.lock();
        i.steps += 1;
        if i.fail_at == Some(i.steps) {
            i.journal.push(format!("{what} (failed)"));
            return Err(injected(&what));
        }
        i.journal.push(what);
        f(&mut i.world)
    }
}

fn injected(what: &str) -> Error {
    Error::Io {
        action: "do (fake)",
        path: PathBuf::from(what),
        source: std::io::Error::other(INJECTED),
    }
}

fn store_err(e: Error) -> StoreError {
    match e {
        Error::Io {
            action,
            path,
            source,
        } => StoreError::Backend(sotolito_config::Error::Io {
            action,
            path,
            source,
        }),
        Error::Store(s) => s,
        other => StoreError::Backend(sotolito_config::Error::Io {
            action: "store (fake)",
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        }),
    }
}

fn revision(t: &Tenant) -> Revision {
    // The text of the record, hashed as the file store does.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t.to_toml().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Revision(h)
}

impl Store for Fake {
    fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        Ok(self.lock().world.records.values().cloned().collect())
    }
    fn get(&self, name: &TenantName) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().world.records.get(name).map(|t| Versioned {
            tenant: t.clone(),
            revision: revision(t),
        }))
    }
    fn create(&self, tenant: &Tenant) -> Result<Revision, StoreError> {
        let stolen = self.lock().steal.take();
        if let Some(t) = stolen {
            self.lock().world.records.insert(t.name.clone(), t);
        }
        let t = tenant.clone();
        self.step(format!("store.create {}", tenant.name), move |w| {
            if w.records.contains_key(&t.name) {
                return Err(StoreError::Exists(t.name.clone()).into());
            }
            let all: Vec<Tenant> = w.records.values().cloned().collect();
            if let Some((claim, owner)) = first_conflict(&all, &t) {
                return Err(StoreError::Conflict { claim, owner }.into());
            }
            let rev = revision(&t);
            w.records.insert(t.name.clone(), t);
            w.generation += 1;
            Ok(rev)
        })
        .map_err(store_err)
    }
    fn update(&self, tenant: &Tenant, expected: Revision) -> Result<Revision, StoreError> {
        let t = tenant.clone();
        self.step(format!("store.update {}", tenant.name), move |w| {
            let Some(cur) = w.records.get(&t.name) else {
                return Err(StoreError::NotFound(t.name.clone()).into());
            };
            if revision(cur) != expected {
                return Err(StoreError::Stale(t.name.clone()).into());
            }
            let all: Vec<Tenant> = w.records.values().cloned().collect();
            if let Some((claim, owner)) = first_conflict(&all, &t) {
                return Err(StoreError::Conflict { claim, owner }.into());
            }
            let rev = revision(&t);
            w.records.insert(t.name.clone(), t);
            w.generation += 1;
            Ok(rev)
        })
        .map_err(store_err)
    }
    fn remove(&self, name: &TenantName) -> Result<bool, StoreError> {
        self.step(format!("store.remove {name}"), |w| {
            let had = w.records.remove(name).is_some();
            if had {
                w.generation += 1;
            }
            Ok(had)
        })
        .map_err(store_err)
    }
    fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.lock().world.generation)
    }
    fn describe(&self) -> String {
        "fake store".into()
    }
}

impl Firewall for Fake {
    fn replace(&self, tenants: &[Tenant]) -> Result<(), Error> {
        let map = tenants
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    (t.ssh_port.get(), t.ip, t.limits.connections),
                )
            })
            .collect();
        self.step("firewall.replace".into(), |w| {
            w.tables = Some(map);
            Ok(())
        })
    }
    fn tables_present(&self) -> Result<bool, Error> {
        Ok(self.lock().world.tables.is_some())
    }
    fn add_forward(&self, t: &Tenant) -> Result<(), Error> {
        self.step(format!("firewall.add_forward {}", t.name), |w| {
            let Some(tables) = &mut w.tables else {
                return Err(Error::TablesMissing);
            };
            tables.insert(
                t.name.clone(),
                (t.ssh_port.get(), t.ip, t.limits.connections),
            );
            Ok(())
        })
    }
    fn remove_forward(&self, t: &Tenant) -> Result<(), Error> {
        self.step(format!("firewall.remove_forward {}", t.name), |w| {
            if let Some(tables) = &mut w.tables {
                tables.remove(&t.name);
            }
            Ok(())
        })
    }
}

impl Links for Fake {
    fn ensure_bridge(&self) -> Result<(), Error> {
        self.step("links.ensure_bridge".into(), |w| {
            w.bridge = true;
            Ok(())
        })
    }
    fn secure_ports(&self, tenants: &[Tenant]) -> Result<(), Error> {
        let names: BTreeSet<TenantName> = tenants.iter().map(|t| t.name.clone()).collect();
        self.step("links.secure_ports".into(), |w| {
            w.secured = names.intersection(&w.veths).cloned().collect();
            Ok(())
        })
    }
    fn attach(&self, t: &Tenant, _pid: u32) -> Result<(), Error> {
        self.step(format!("links.attach {}", t.name), |w| {
            w.veths.insert(t.name.clone());
            Ok(())
        })
    }
    fn detach(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("links.detach {name}"), |w| {
            w.veths.remove(name);
            Ok(())
        })
    }
}

impl Runtime for Fake {
    fn state(&self, name: &TenantName) -> Result<Option<ContainerState>, Error> {
        Ok(self
            .lock()
            .world
            .containers
            .get(name)
            .map(|s| ContainerState {
                status: match s.as_str() {
                    "running" => ContainerStatus::Running,
                    "created" => ContainerStatus::Created,
                    "paused" => ContainerStatus::Paused,
                    _ => ContainerStatus::Stopped,
                },
                pid: (s == "running").then_some(4242),
                created: None,
            }))
    }
    fn stop(&self, name: &TenantName, _signal: i32, _timeout: Duration) -> Result<Stopped, Error> {
        self.step(format!("runtime.stop {name}"), |w| {
            Ok(match w.containers.remove(name).as_deref() {
                None => Stopped::NotRunning,
                Some("running") => {
                    w.veths.remove(name);
                    Stopped::Gracefully
                }
                Some(_) => Stopped::NotRunning,
            })
        })
    }
    fn delete(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("runtime.delete {name}"), |w| {
            w.containers.remove(name);
            Ok(())
        })
    }
    fn kill(&self, name: &TenantName, signal: i32) -> Result<(), Error> {
        self.step(format!("runtime.kill {name} {signal}"), |w| {
            if signal == sotolito_provisioner::signal::SIGKILL {
                w.containers.insert(name.clone(), "stopped".into());
            }
            Ok(())
        })
    }
    fn start_detached(&self, t: &Tenant) -> Result<(), Error> {
        self.step(format!("runtime.start_detached {}", t.name), |w| {
            w.containers.insert(t.name.clone(), "running".into());
            // Its createRuntime hook.
            w.veths.insert(t.name.clone());
            Ok(())
        })
    }
    fn apply_limits(&self, t: &Tenant) -> Result<(), Error> {
        self.step(format!("runtime.apply_limits {}", t.name), |w| {
            w.cgroups.insert(t.name.clone(), t.limits);
            Ok(())
        })
    }
    fn teardown_cgroup(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("runtime.teardown_cgroup {name}"), |w| {
            w.cgroups.remove(name);
            Ok(())
        })
    }
    fn run_foreground(
        &self,
        t: &Tenant,
        _stop_signal: i32,
        on_running: &dyn Fn(),
    ) -> Result<i32, Error> {
        self.step(format!("runtime.run_foreground {}", t.name), |w| {
            w.containers.insert(t.name.clone(), "running".into());
            Ok(())
        })?;
        on_running();
        self.with_world(|w| w.containers.remove(&t.name));
        Ok(0)
    }
    fn exec(&self, name: &TenantName, cmd: &[String], _tty: bool) -> Result<i32, Error> {
        self.step(format!("runtime.exec {name} {}", cmd.join(" ")), |_| Ok(0))
    }
    fn delegate_cgroups(&self, pid: u32) -> Result<(), Error> {
        self.step(format!("runtime.delegate_cgroups {pid}"), |_| Ok(()))
    }
}

impl Systemd for Fake {
    fn manages(&self) -> bool {
        self.lock().systemd_manages
    }
    fn systemctl(&self, verb: &str, name: &TenantName) -> Result<(), Error> {
        let verb = verb.to_owned();
        self.step(format!("systemd.{verb} {name}"), move |w| {
            match verb.as_str() {
                "start" | "restart" => {
                    w.containers.insert(name.clone(), "running".into());
                }
                "stop" => {
                    w.containers.remove(name);
                }
                _ => {}
            }
            Ok(())
        })
    }
    fn enable(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("systemd.enable {name}"), |w| {
            w.boot_links.insert(name.clone());
            Ok(())
        })
    }
    fn disable(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("systemd.disable {name}"), |w| {
            w.boot_links.remove(name);
            Ok(())
        })
    }
    fn is_enabled(&self, name: &TenantName) -> bool {
        self.lock().world.boot_links.contains(name)
    }
}

impl Mounts for Fake {
    fn check_quota(&self) -> Result<(), Error> {
        if self.lock().quota_supported {
            Ok(())
        } else {
            Err(sotolito_provisioner::Error::DiskUnenforceable {
                reason: "no loop devices (fake)".into(),
                fix: "use a host with them".into(),
            }
            .into())
        }
    }
    fn disk_size(&self, name: &TenantName) -> Option<u64> {
        self.lock().world.disks.get(name).copied()
    }
    fn create_disk(&self, name: &TenantName, bytes: u64) -> Result<(), Error> {
        self.step(format!("mounts.create_disk {name}"), |w| {
            w.disks.entry(name.clone()).or_insert(bytes);
            Ok(())
        })
    }
    fn mount_data(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("mounts.mount_data {name}"), |w| {
            if w.disks.contains_key(name) {
                w.data_mounted.insert(name.clone());
            }
            Ok(())
        })
    }
    fn resize_disk(&self, name: &TenantName, bytes: u64) -> Result<(), Error> {
        self.step(format!("mounts.resize_disk {name}"), |w| {
            w.disks.insert(name.clone(), bytes);
            Ok(())
        })
    }
    fn adopt_data(&self, name: &TenantName, bytes: u64) -> Result<(), Error> {
        self.step(format!("mounts.adopt_data {name}"), |w| {
            w.disks.insert(name.clone(), bytes);
            w.data_mounted.insert(name.clone());
            Ok(())
        })
    }
    fn unmount_data(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("mounts.unmount_data {name}"), |w| {
            w.data_mounted.remove(name);
            Ok(())
        })
    }
    fn mount_root(&self, t: &Tenant, _image: &Image, _map: &Idmap) -> Result<(), Error> {
        self.step(format!("mounts.mount_root {}", t.name), |w| {
            w.root_mounted.insert(t.name.clone());
            Ok(())
        })
    }
    fn unmount_root(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("mounts.unmount_root {name}"), |w| {
            w.root_mounted.remove(name);
            Ok(())
        })
    }
    fn root_mounted(&self, name: &TenantName) -> bool {
        self.lock().world.root_mounted.contains(name)
    }
}

impl Files for Fake {
    fn ensure_layout(&self) -> Result<(), Error> {
        self.step("files.ensure_layout".into(), |w| {
            w.layout = true;
            Ok(())
        })
    }
    fn image(&self, name: &ImageName) -> Result<Image, Error> {
        let signal = self
            .lock()
            .images
            .get(name)
            .copied()
            .ok_or_else(|| sotolito_provisioner::Error::ImageNotFound(name.to_string()))?;
        Ok(Image {
            dir: PathBuf::from("/fake/images").join(name.as_str()),
            meta: ImageMeta {
                name: name.to_string(),
                source: "fake".into(),
                format: "rootfs-dir".into(),
                stop_signal: signal,
                created: "2026-11-29T00:00:00Z".into(),
                size: 0,
            },
        })
    }
    fn stop_signal(&self, t: &Tenant) -> i32 {
        self.lock()
            .images
            .get(&t.image)
            .copied()
            .unwrap_or(sotolito_provisioner::signal::DEFAULT_STOP_SIGNAL)
    }
    fn write_bundle(&self, t: &Tenant) -> Result<(), Error> {
        self.step(format!("files.write_bundle {}", t.name), |w| {
            w.bundles.insert(t.name.clone(), t.clone());
            w.restricted.insert(t.name.clone());
            Ok(())
        })
    }
    fn restrict(&self, t: &Tenant) -> Result<(), Error> {
        self.step(format!("files.restrict {}", t.name), |w| {
            w.restricted.insert(t.name.clone());
            Ok(())
        })
    }
    fn is_seeded(&self, name: &TenantName) -> bool {
        self.lock()
            .world
            .data
            .get(name)
            .is_some_and(|d| d.files.contains_key(".seeded"))
    }
    fn seed(&self, t: &Tenant, _image: &Image) -> Result<bool, Error> {
        self.step(format!("files.seed {}", t.name), |w| {
            let d = w.data.entry(t.name.clone()).or_default();
            if d.files.contains_key(".seeded") {
                return Ok(false);
            }
            d.files.insert("etc/hostname".into(), t.name.to_string());
            d.files
                .insert("root/.ssh/authorized_keys".into(), t.ssh_keys.join("\n"));
            d.idmap = t.idmap;
            // The marker last, as the real seed writes it.
            d.files.insert(".seeded".into(), String::new());
            Ok(true)
        })
    }
    fn shift_into(&self, name: &TenantName, map: &Idmap) -> Result<Option<Shifted>, Error> {
        if self
            .lock()
            .world
            .data
            .get(name)
            .is_some_and(|d| d.idmap == Some(*map))
        {
            return Ok(None);
        }
        self.step(format!("files.shift_into {name}"), |w| {
            let d = w.data.entry(name.clone()).or_default();
            d.idmap = Some(*map);
            let n = d.files.len() as u64;
            Ok(Some(Shifted {
                entries: n,
                changed: n,
            }))
        })
    }
    fn owned_by(&self, name: &TenantName, map: &Idmap) -> Result<bool, Error> {
        Ok(self
            .lock()
            .world
            .data
            .get(name)
            .is_some_and(|d| d.idmap == Some(*map)))
    }
    fn write_cfg(&self, t: &Tenant) -> Result<(), Error> {
        self.step(format!("files.write_cfg {}", t.name), |w| {
            w.cfgs.insert(t.name.clone(), t.ip);
            Ok(())
        })
    }
    fn exists(&self, name: &TenantName) -> bool {
        let i = self.lock();
        let w = &i.world;
        w.bundles.contains_key(name)
            || w.data.contains_key(name)
            || w.cfgs.contains_key(name)
            || w.disks.contains_key(name)
    }
    fn remove_derived(&self, name: &TenantName) -> Vec<String> {
        match self.step(format!("files.remove_derived {name}"), |w| {
            w.cfgs.remove(name);
            w.bundles.remove(name);
            w.restricted.remove(name);
            Ok(())
        }) {
            Ok(()) => Vec::new(),
            Err(e) => vec![format!("derived files: {}", crate::real::chain(&e))],
        }
    }
    fn has_data(&self, name: &TenantName) -> bool {
        let i = self.lock();
        i.world.data.contains_key(name) || i.world.disks.contains_key(name)
    }
    fn purge(&self, name: &TenantName) -> Result<(), Error> {
        self.step(format!("files.purge {name}"), |w| {
            w.data.remove(name);
            w.disks.remove(name);
            w.data_mounted.remove(name);
            Ok(())
        })
    }
    fn data_place(&self, name: &TenantName) -> PathBuf {
        PathBuf::from("/fake/tenants")
            .join(name.as_str())
            .join("data")
    }
}
