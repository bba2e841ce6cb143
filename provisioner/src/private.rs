//! Modes of the host directories that lead to a tenant's files, so that no
//! unprivileged host user reaches its rootfs, upper layer or data (where a
//! tenant's setuid binaries, device nodes and secrets live).
//!
//! `tenants/` is 0711 (traversable, not listable), `tenants/NAME/` and
//! `tenants/NAME/data/` are 0700, or 0710 with the tenant's mapped root
//! group when it runs in a user namespace (runc's init, as that group,
//! must traverse to the rootfs and to the data dirs it binds). The overlay's
//! upper dir keeps its own mode: the tenant sees it as the mode of `/`.
//! `images/` (the shared lower layers) is 0700.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::bundle::TenantLayout;
use crate::tenantfs::Owner;
use crate::{io_err, Error};

/// Mode of `tenants/`.
pub const TENANTS_DIR_MODE: u32 = 0o711;

/// Mode of a tenant's private dirs (its bundle dir and its data dir).
pub fn private_dir_mode(owner: Owner) -> u32 {
    if owner.gid == 0 {
        0o700
    } else {
        0o710
    }
}

/// Sets `mode` (and group `gid`) on `path` if it is a directory and not so
/// already; a missing one is fine. Never follows a symlink.
fn restrict(path: &Path, mode: u32, gid: u32) -> Result<(), Error> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.gid() != gid {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err("chown", path))?;
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("restrict", path))?;
    }
    Ok(())
}

/// `images/`: 0700. An image is the lower layer of every tenant made from
/// it, and an imported one may be hostile: a setuid-root shell in it must
/// not be a host user's way to root (nor an old, vulnerable setuid tool of
/// a distribution image). Only root reads images (overlay lower layers are
/// opened with the mounter's credentials).
pub fn restrict_images_dir(images_dir: &Path) -> Result<(), Error> {
    restrict(images_dir, 0o700, 0)
}

/// `tenants/` itself: run by `init` and every command that prepares the
/// layout.
pub fn restrict_tenants_dir(tenants_dir: &Path) -> Result<(), Error> {
    restrict(tenants_dir, TENANTS_DIR_MODE, 0)
}

/// A tenant's bundle and data dirs, and its console logs. Idempotent;
/// tightens a tenant made before these modes on its next provision or start.
pub fn restrict_tenant(layout: &TenantLayout, owner: Owner) -> Result<(), Error> {
    if let Some(parent) = layout.dir.parent() {
        restrict_tenants_dir(parent)?;
    }
    let mode = private_dir_mode(owner);
    restrict(&layout.dir, mode, owner.gid)?;
    restrict(&layout.data(), mode, owner.gid)?;
    for log in [
        layout.console_log(),
        crate::console::rotated(&layout.console_log()),
    ] {
        if std::fs::symlink_metadata(&log).is_ok_and(|m| m.is_file() && m.mode() & 0o777 != 0o600) {
            std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("restrict", &log))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sotolito_config::TenantName;
    use std::fs;

    #[test]
    fn tightens_an_old_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let tenants = tmp.path().join("tenants");
        let layout = TenantLayout::new(&tenants, &TenantName::new("acme").unwrap());
        fs::create_dir_all(layout.upper()).unwrap();
        for d in [&tenants, &layout.dir, &layout.data(), &layout.upper()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(layout.console_log(), "boot\n").unwrap();
        fs::set_permissions(layout.console_log(), fs::Permissions::from_mode(0o644)).unwrap();
        let me = Owner {
            uid: 0,
            gid: rustix::process::getegid().as_raw(),
        };
        restrict_tenant(&layout, me).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&tenants), 0o711);
        assert_eq!(mode(&layout.dir), private_dir_mode(me));
        assert_eq!(mode(&layout.data()), private_dir_mode(me));
        // The upper dir is the tenant's `/`: its mode is the tenant's.
        assert_eq!(mode(&layout.upper()), 0o755);
        assert_eq!(mode(&layout.console_log()), 0o600);
        assert_eq!(private_dir_mode(Owner::ROOT), 0o700);
        assert_eq!(
            private_dir_mode(Owner {
                uid: 100000,
                gid: 100000
            }),
            0o710
        );
    }
}
