//! One lifecycle operation per tenant at a time: start, stop and run's
//! preparation take an exclusive flock on STATE/tenants/.NAME.lock, so two
//! concurrent starts cannot delete each other's half-created container or
//! unmount each other's root. The lock file is 0600 (fixed on open when
//! an older one is 0644): no unprivileged user can take it and stall us.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use sotolito_config::TenantName;

use crate::{io_err, Error};

/// Held while it lives.
#[derive(Debug)]
pub struct TenantLock {
    _file: File,
    pub path: PathBuf,
}

pub fn lock_path(tenants_dir: &Path, name: &TenantName) -> PathBuf {
    tenants_dir.join(format!(".{name}.lock"))
}

/// Blocks until this process holds the tenant's lock.
pub fn lock_tenant(tenants_dir: &Path, name: &TenantName) -> Result<TenantLock, Error> {
    std::fs::create_dir_all(tenants_dir).map_err(io_err("create", tenants_dir))?;
    let path = lock_path(tenants_dir, name);
    let file = lock_exclusive(&path)?;
    Ok(TenantLock { _file: file, path })
}

/// Opens `path` (created 0600, a symlink refused, an older file's mode
/// fixed) and blocks until this process holds an exclusive flock on it:
/// the one way every lock file of the host is taken.
pub fn lock_exclusive(path: &Path) -> Result<File, Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("open", path))?;
    if meta.mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("restrict", path))?;
    }
    flock(&file, FlockOperation::LockExclusive).map_err(|e| io_err("lock", path)(e.into()))?;
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn excludes_other_holders() {
        let tmp = tempfile::tempdir().unwrap();
        let name = TenantName::new("acme").unwrap();
        std::fs::write(lock_path(tmp.path(), &name), "").unwrap();
        std::fs::set_permissions(
            lock_path(tmp.path(), &name),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let held = lock_tenant(tmp.path(), &name).unwrap();
        assert_eq!(held._file.metadata().unwrap().mode() & 0o777, 0o600);
        let other = File::open(&held.path).unwrap();
        assert!(flock(&other, FlockOperation::NonBlockingLockExclusive).is_err());
        drop(held);
        assert!(flock(&other, FlockOperation::NonBlockingLockExclusive).is_ok());
    }
}
