//! The registry: one TOML record per tenant, the source of truth.
//!
//! Every writer holds an exclusive flock on `registry/.lock`; records are
//! replaced atomically (temp file, fsync, rename, fsync of the directory), so
//! a reader without the lock sees the old or the new record, never a torn
//! one. Cross-tenant invariants (no IP, SSH port or host owned twice) are
//! checked under the same lock. `registry/generation` is bumped on every
//! change, so a long-running reader (the proxy) learns of changes by
//! polling one small file. The lock file is 0600 (fixed on open when an
//! older one is 0644): an unprivileged reader could otherwise flock it and
//! stall every writer.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::names::TenantName;
use crate::tenant::Tenant;
use crate::Error;

#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

/// Proof that the caller holds the registry's write lock; dropping it
/// releases the lock.
#[derive(Debug)]
pub struct RegistryLock {
    _file: File,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The lock file, 0600 whatever mode an older one had.
fn open_lock(path: &Path) -> Result<File, Error> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("open", path))?;
    if meta.mode() & 0o777 != 0o600 {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("restrict", path))?;
    }
    Ok(file)
}

impl Registry {
    /// A registry rooted at `dir` (STATE_DIR/registry). Nothing is touched
    /// until [`Registry::create`] or a read.
    pub fn new(dir: impl Into<PathBuf>) -> Registry {
        Registry { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tenants_dir(&self) -> PathBuf {
        self.dir.join("tenants")
    }

    pub fn record_path(&self, name: &TenantName) -> PathBuf {
        self.tenants_dir().join(format!("{name}.toml"))
    }

    /// Creates the directories and lock file; idempotent.
    pub fn create(&self) -> Result<(), Error> {
        let tenants = self.tenants_dir();
        fs::create_dir_all(&tenants).map_err(io_err("create", &tenants))?;
        open_lock(&self.dir.join(".lock"))?;
        Ok(())
    }

    /// Takes the exclusive write lock, waiting for another writer to finish.
    pub fn lock(&self) -> Result<RegistryLock, Error> {
        self.create()?;
        let path = self.dir.join(".lock");
        let file = open_lock(&path)?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(RegistryLock { _file: file })
    }

    /// All tenants, sorted by name. A missing registry is an empty one.
    pub fn list(&self) -> Result<Vec<Tenant>, Error> {
        let dir = self.tenants_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        let mut out = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &dir))?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".toml")) else {
                continue;
            };
            // Temp files of a writer start with '.'; they are never records.
            let Ok(name) = TenantName::new(stem) else {
                continue;
            };
            if let Some(t) = self.get(&name)? {
                out.insert(name, t);
            }
        }
        Ok(out.into_values().collect())
    }

    pub fn get(&self, name: &TenantName) -> Result<Option<Tenant>, Error> {
        let path = self.record_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let t = Tenant::from_toml(&text).map_err(|message| Error::Record {
            path: path.clone(),
            message,
        })?;
        if &t.name != name {
            return Err(Error::Record {
                path,
                message: format!("it names tenant {}", t.name),
            });
        }
        Ok(Some(t))
    }

    /// Like [`Registry::get`], but a missing tenant is an error.
    pub fn require(&self, name: &TenantName) -> Result<Tenant, Error> {
        self.get(name)?.ok_or_else(|| Error::NotFound(name.clone()))
    }

    /// Checks that `tenant` may be written: no other tenant holds its IP,
    /// SSH port or any of its hosts.
    pub fn check_conflicts(&self, tenant: &Tenant) -> Result<(), Error> {
        let others = self.list()?;
        check_conflicts(&others, tenant)
    }

    /// Writes `tenant` atomically after checking invariants.
    pub fn put(&self, _lock: &RegistryLock, tenant: &Tenant) -> Result<(), Error> {
        self.check_conflicts(tenant)?;
        let path = self.record_path(&tenant.name);
        write_atomic(&path, tenant.to_toml().as_bytes())?;
        self.bump_generation()?;
        tracing::debug!(tenant = %tenant.name, "registry record written");
        Ok(())
    }

    /// Removes a record; returns whether it existed.
    pub fn remove(&self, _lock: &RegistryLock, name: &TenantName) -> Result<bool, Error> {
        let path = self.record_path(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.tenants_dir())?;
                self.bump_generation()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// A number that changes whenever a record is written or removed.
    pub fn generation(&self) -> Result<u64, Error> {
        let path = self.dir.join("generation");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn bump_generation(&self) -> Result<(), Error> {
        let next = self.generation()?.wrapping_add(1);
        write_atomic(&self.dir.join("generation"), format!("{next}\n").as_bytes())
    }
}

/// The invariant check on its own, for callers that already hold a list.
pub fn check_conflicts(others: &[Tenant], tenant: &Tenant) -> Result<(), Error> {
    for other in others.iter().filter(|o| o.name != tenant.name) {
        if other.ip == tenant.ip {
            return Err(Error::Conflict {
                what: format!("address {}", tenant.ip),
                owner: other.name.clone(),
                hint: "pick another with --ip, or leave it out to get a free one",
            });
        }
        if other.ssh_port == tenant.ssh_port {
            return Err(Error::Conflict {
                what: format!("ssh port {}", tenant.ssh_port),
                owner: other.name.clone(),
                hint: "pick another with --ssh-port",
            });
        }
        if let Some(h) = tenant.hosts.iter().find(|h| other.hosts.contains(h)) {
            return Err(Error::Conflict {
                what: format!("host {h}"),
                owner: other.name.clone(),
                hint: "a host routes to one tenant; remove it there first",
            });
        }
    }
    Ok(())
}

/// Registry files are 0640: the proxy's user reads them through its group
/// (the setgid directory gives the group), whatever the writer's umask.
const RECORD_MODE: u32 = 0o640;

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    Ok(crate::atomic::write(path, data, RECORD_MODE)?)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::tests::sample;

    #[test]
    fn put_get_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::new(tmp.path().join("registry"));
        assert!(reg.list().unwrap().is_empty());
        assert_eq!(reg.generation().unwrap(), 0);
        // An older 0644 lock file is made private on open.
        fs::create_dir_all(reg.dir()).unwrap();
        fs::write(reg.dir().join(".lock"), "").unwrap();
        fs::set_permissions(reg.dir().join(".lock"), fs::Permissions::from_mode(0o644)).unwrap();
        let lock = reg.lock().unwrap();
        assert_eq!(
            fs::metadata(reg.dir().join(".lock")).unwrap().mode() & 0o777,
            0o600
        );
        let a = sample("alpha", [172, 18, 0, 2], 2200, &["alpha.example"]);
        let b = sample("beta", [172, 18, 0, 3], 2201, &["beta.example"]);
        reg.put(&lock, &b).unwrap();
        reg.put(&lock, &a).unwrap();
        assert_eq!(reg.generation().unwrap(), 2);
        let names: Vec<_> = reg
            .list()
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(names, ["alpha", "beta"]);
        assert_eq!(reg.get(&a.name).unwrap().unwrap(), a);
        // Re-putting a tenant does not conflict with itself.
        reg.put(&lock, &a).unwrap();
        assert!(reg.remove(&lock, &a.name).unwrap());
        assert!(!reg.remove(&lock, &a.name).unwrap());
        assert_eq!(reg.list().unwrap().len(), 1);
        assert_eq!(
            reg.require(&a.name).unwrap_err().to_string(),
            "tenant alpha does not exist (see vpsctl list)"
        );
    }

    #[test]
    fn conflicts_name_the_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::new(tmp.path());
        let lock = reg.lock().unwrap();
        reg.put(
            &lock,
            &sample("beta", [172, 18, 0, 3], 2201, &["beta.example"]),
        )
        .unwrap();
        let cases = [
            (
                sample("acme", [172, 18, 0, 3], 2202, &[]),
                "address 172.18.0.3 is taken by tenant beta (pick another with --ip, or leave it out to get a free one)",
            ),
            (
                sample("acme", [172, 18, 0, 4], 2201, &[]),
                "ssh port 2201 is taken by tenant beta (pick another with --ssh-port)",
            ),
            (
                sample("acme", [172, 18, 0, 4], 2202, &["x.example", "beta.example"]),
                "host beta.example is taken by tenant beta (a host routes to one tenant; remove it there first)",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(reg.put(&lock, &t).unwrap_err().to_string(), want);
            assert!(reg.get(&t.name).unwrap().is_none());
        }
    }

    #[test]
    fn stray_files_are_not_records() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::new(tmp.path());
        reg.create().unwrap();
        fs::write(tmp.path().join("tenants/.acme.toml.tmp"), "half a rec").unwrap();
        fs::write(tmp.path().join("tenants/notes.txt"), "x").unwrap();
        assert!(reg.list().unwrap().is_empty());
        fs::write(tmp.path().join("tenants/acme.toml"), "name = 3").unwrap();
        let err = reg.list().unwrap_err().to_string();
        assert!(err.starts_with("tenant record "), "{err}");
        assert!(err.ends_with("(fix or remove the file)"), "{err}");
    }
}
