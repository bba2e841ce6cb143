//! The one module of the workspace allowed `unsafe`: the calls no safe
//! crate offers, each wrapped in a safe function whose arguments make the
//! call sound. Anything added here says why no safe crate does it.
//!
//! - `mount_setattr(2)` with `MOUNT_ATTR_IDMAP`, for the idmapped image
//!   mount: rustix 1.1 lists it as not implemented and nix has no
//!   wrapper, so it goes through `libc::syscall`.
//! - tokio's `AsyncFd::register_with_interest`, for a listening socket
//!   whose accepted connections must not be registered with the poller
//!   (the proxy's accept path): it is `unsafe` since tokio 1.54 (the
//!   caller vouches that the descriptor stays open while registered), and
//!   tokio's `TcpListener` has no way to accept without registering what
//!   it accepts.
//! - `setsockopt(TCP_DEFER_ACCEPT)` on the proxy's listening sockets:
//!   std's `set_deferaccept` is unstable (rust-lang issue 119639) and
//!   socket2 0.6, nix 0.31 (BSD's accept filter only) and rustix 1.1 have
//!   no wrapper.

#![allow(unsafe_code)]

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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

/// Registers a listening socket for readability with the current tokio
/// runtime. `listener` should be non-blocking.
pub fn register_listener(listener: TcpListener) -> io::Result<AsyncFd<TcpListener>> {
    // SAFETY: the AsyncFd owns `listener` for its whole life and never
    // hands it out mutably; std's TcpListener returns the same descriptor
    // on every `as_raw_fd` and closes it only when dropped, which AsyncFd
    // does after deregistering it.
    let fd = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
    fd.map_err(|e| e.into_parts().1)
}

/// Sets `TCP_DEFER_ACCEPT` on a listening TCP socket: a connection is
/// handed to `accept` once its first data arrives, or after about
/// `seconds` without any (the kernel then accepts it anyway).
pub fn set_defer_accept(listener: impl AsFd, seconds: u32) -> io::Result<()> {
    let value =
        libc::c_int::try_from(seconds).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: setsockopt reads `optlen` bytes at `optval`, a c_int that
    // outlives the call; the descriptor is borrowed, so it stays open.
    let ret = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
