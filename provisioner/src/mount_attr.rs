//! mount_setattr(2) with MOUNT_ATTR_IDMAP: the one system call the idmapped
//! image mount needs that no safe crate offers.
//!
//! Why unsafe lives here: rustix 1.1 lists `mount_setattr` as not
//! implemented and nix has no wrapper, so this module calls it through
//! `libc::syscall`. This is the only module of the workspace allowed
//! `unsafe_code`; it holds one `unsafe` block whose arguments are all owned
//! here for the duration of the call: a borrowed mount fd, a static empty
//! C string, and a `mount_attr` on the stack with its exact size.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Marks the detached mount `mount` (from `open_tree(OPEN_TREE_CLONE)`) as
/// idmapped through the user namespace `userns`, and read-only: the image
/// is shared by every tenant and written by none.
pub fn set_idmapped_readonly(mount: impl AsFd, userns: impl AsFd) -> io::Result<()> {
    let fd = u64::try_from(userns.as_fd().as_raw_fd())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: fd,
    };
    // SAFETY: mount_setattr(dirfd, path, flags, attr, size) reads `size`
    // bytes at `attr` and the NUL-terminated `path`; both outlive the call
    // and the fds are borrowed, so none is closed during it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
