//! The tenant's root: an overlay of the shared image (lower, read-only) and
//! the tenant's data/upper, mounted on tenants/NAME/rootfs, nodev: a device
//! node the tenant makes is no door to the host's disks through this mount.
//! Not nosuid: sudo and su inside the tenant need their setuid bit; the
//! directory modes (see [`crate::private`]) keep host users away from it.

use std::ffi::CString;
use std::fs;
use std::path::Path;

use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

use sotolito_config::Idmap;

use crate::bundle::TenantLayout;
use crate::{io_err, Error};

/// The overlay mount options (pure, for tests).
pub fn overlay_options(lower: &Path, layout: &TenantLayout) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        layout.upper().display(),
        layout.work().display()
    )
}

/// Whether `path` is a mount point, from /proc/self/mountinfo (field 5,
/// octal escapes as the kernel writes them).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want)
}

pub(crate) fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts the overlay unless it is mounted already. With `idmap`, the
/// image is seen through an idmapped mount (its root-owned files appear
/// owned by the tenant's mapped root) made on `layout.image_view()` just
/// for the overlay mount: the overlay keeps its own reference to it.
pub fn mount_root(
    tenant: &str,
    lower: &Path,
    layout: &TenantLayout,
    idmap: Option<&Idmap>,
) -> Result<(), Error> {
    let target = layout.rootfs();
    fs::create_dir_all(&target).map_err(io_err("create", &target))?;
    if is_mounted(&target) {
        return Ok(());
    }
    for d in [layout.upper(), layout.work()] {
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    let Some(map) = idmap else {
        return mount_overlay(tenant, lower, layout);
    };
    let view = layout.image_view();
    fs::create_dir_all(&view).map_err(io_err("create", &view))?;
    // Left by a run killed between the two mounts.
    if is_mounted(&view) {
        detach(&view)?;
    }
    let t0 = std::time::Instant::now();
    crate::idmap::mount_idmapped(lower, &view, map)?;
    tracing::debug!(tenant, idmap = %map, elapsed_us = t0.elapsed().as_micros() as u64, "image mounted idmapped");
    let mounted = mount_overlay(tenant, &view, layout);
    let detached = detach(&view);
    mounted.and(detached)
}

fn detach(path: &Path) -> Result<(), Error> {
    unmount(path, UnmountFlags::DETACH).map_err(|e| io_err("unmount", path)(e.into()))
}

fn mount_overlay(tenant: &str, lower: &Path, layout: &TenantLayout) -> Result<(), Error> {
    let target = layout.rootfs();
    let opts = CString::new(overlay_options(lower, layout)).map_err(|_| Error::Mount {
        tenant: tenant.to_owned(),
        path: target.clone(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    mount(
        "overlay",
        &target,
        "overlay",
        MountFlags::NODEV,
        Some(opts.as_c_str()),
    )
    .map_err(|e| Error::Mount {
        tenant: tenant.to_owned(),
        path: target.clone(),
        source: e.into(),
    })
}

/// Unmounts the overlay if mounted (lazily if busy: a process still in it
/// will not keep the next start from mounting afresh).
pub fn unmount_root(layout: &TenantLayout) -> Result<(), Error> {
    let target = layout.rootfs();
    if !is_mounted(&target) {
        return Ok(());
    }
    match unmount(&target, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            unmount(&target, UnmountFlags::DETACH).map_err(|e| io_err("unmount", &target)(e.into()))
        }
        Err(e) => Err(io_err("unmount", &target)(e.into())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sotolito_config::TenantName;

    #[test]
    fn options_and_mountinfo_escapes() {
        let layout = TenantLayout::new(Path::new("/s/tenants"), &TenantName::new("acme").unwrap());
        assert_eq!(
            overlay_options(Path::new("/s/images/deb/rootfs"), &layout),
            "lowerdir=/s/images/deb/rootfs,upperdir=/s/tenants/acme/data/upper,workdir=/s/tenants/acme/data/work"
        );
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/nonexistent/x")));
    }
}
