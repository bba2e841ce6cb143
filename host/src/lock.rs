//! The host lock: an exclusive flock on STATE/host.lock, held by every
//! command that changes this host's tenants or tables (provision,
//! deprovision, set, remap, net reconcile, the network part of boot, and
//! the runc hook when it must rebuild missing tables). It is local to the
//! host: the store's records are claimed by the store itself, so a fleet
//! store needs no lock shared between hosts. Order: host lock, then a
//! tenant lock, then (inside a store call, briefly) the store's own; never
//! a container's `runc create` while holding it (its hook may take it).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{io_err, Error};

/// Held while it lives.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

impl HostLock {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("host.lock")
    }

    /// Blocks until this process holds the host lock. 0600: nobody else
    /// may take it and stall every writer.
    pub fn take(state_dir: &Path) -> Result<HostLock, Error> {
        std::fs::create_dir_all(state_dir).map_err(io_err("create", state_dir))?;
        let path = HostLock::path(state_dir);
        let file = sotolito_provisioner::lock::lock_exclusive(&path)?;
        Ok(HostLock { _file: file })
    }
}
