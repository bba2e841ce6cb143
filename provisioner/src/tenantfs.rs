//! Host-side writes into a tenant's tree (a data dir, its rootfs): every
//! path is resolved inside the tree with openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS), so a symlink planted by the tenant or by a hostile
//! image can never redirect a write of root on the host out of the tree.
//!
//! Directories on the way are never followed through a symlink: such a
//! write is refused with an error naming the path (the model is runc's
//! libpathrs). The file itself is replaced atomically by a rename, which
//! replaces a symlink in its place rather than following it.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::Error;

/// Who owns what the host creates in a tenant's tree: the tenant's root as
/// the host sees it (0:0 without a user namespace, the mapped root with one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Host root: a tenant without a user namespace.
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// One tenant tree, held open by a directory fd.
#[derive(Debug)]
pub struct TenantTree {
    root: OwnedFd,
    path: PathBuf,
    owner: Owner,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// No O_NOFOLLOW: with O_DIRECTORY it turns a symlink into ENOTDIR;
/// RESOLVE_NO_SYMLINKS refuses it with ELOOP, which says what it is.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

impl TenantTree {
    /// Opens the tree at `path`, a host path of ours (the tenant cannot
    /// write to its parents), refusing a symlink in its last component.
    pub fn open(path: &Path, owner: Owner) -> Result<TenantTree, Error> {
        let root = rustix::fs::open(path, dir_flags() | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| unsafe_path(path, e, "open"))?;
        Ok(TenantTree {
            root,
            path: path.to_owned(),
            owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory `rel` (relative, no `..`) inside the tree.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, Error> {
        let rel = check_relative(&self.path, rel)?;
        if rel.as_os_str().is_empty() {
            return rustix::fs::openat2(&self.root, ".", dir_flags(), Mode::empty(), RESOLVE)
                .map_err(|e| unsafe_path(&self.path, e, "open"));
        }
        rustix::fs::openat2(&self.root, &rel, dir_flags(), Mode::empty(), RESOLVE)
            .map_err(|e| unsafe_path(&self.path.join(&rel), e, "open"))
    }

    /// `mkdir -p rel` inside the tree: each missing directory is made with
    /// `mode` and the tree's owner; existing ones are kept as they are.
    pub fn create_dir_all(&self, rel: &Path, mode: u32) -> Result<OwnedFd, Error> {
        let rel = check_relative(&self.path, rel)?;
        let mut cur = self.open_dir(Path::new(""))?;
        let mut at = self.path.clone();
        for comp in rel.components() {
            at.push(comp);
            match rustix::fs::mkdirat(&cur, comp.as_os_str(), Mode::from_raw_mode(mode)) {
                Ok(()) => {
                    let fd = open_beneath_dir(&cur, comp.as_os_str(), &at)?;
                    self.own(&fd, mode, &at)?;
                    cur = fd;
                }
                Err(Errno::EXIST) => cur = open_beneath_dir(&cur, comp.as_os_str(), &at)?,
                Err(e) => return Err(unsafe_path(&at, e, "create")),
            }
        }
        Ok(cur)
    }

    /// Sets the mode of the directory `rel` (say, 0700 on `.ssh`).
    pub fn chmod_dir(&self, rel: &Path, mode: u32) -> Result<(), Error> {
        let fd = self.open_dir(rel)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| unsafe_path(&self.path.join(rel), e, "chmod"))
    }

    /// Replaces the file `rel` atomically: a temp file in the same
    /// directory (owner, mode, data, fsync), renamed over whatever was
    /// there (a symlink there is replaced, not followed), then the
    /// directory is synced. The directory must exist.
    pub fn write_file(&self, rel: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
        let rel = check_relative(&self.path, rel)?;
        let target = self.path.join(&rel);
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(refused(&target, "not a file name"));
        };
        let dir = self.open_dir(parent)?;
        if rustix::fs::statat(&dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
        {
            return Err(refused(&target, "is a directory"));
        }
        let tmp = format!(
            ".{}.sotolito-tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        );
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| unsafe_path(&target, e, "create"))?;
        let written = (|| -> Result<(), Errno> {
            self.own(&fd, mode, &target).map_err(|_| Errno::PERM)?;
            let mut f = std::fs::File::from(fd);
            f.write_all(data)
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
            rustix::fs::fsync(&f)?;
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)?;
            rustix::fs::fsync(&dir)
        })();
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
            return Err(unsafe_path(&target, e, "write"));
        }
        Ok(())
    }

    /// Owner and exact mode (not masked by the umask) on a new inode.
    fn own(&self, fd: &impl AsFd, mode: u32, at: &Path) -> Result<(), Error> {
        std::os::unix::fs::fchown(fd, Some(self.owner.uid), Some(self.owner.gid))
            .map_err(|e| crate::io_err("chown", at)(e))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| unsafe_path(at, e, "chmod"))
    }
}

fn open_beneath_dir(dir: &OwnedFd, name: &std::ffi::OsStr, at: &Path) -> Result<OwnedFd, Error> {
    rustix::fs::openat2(dir, name, dir_flags(), Mode::empty(), RESOLVE)
        .map_err(|e| unsafe_path(at, e, "open"))
}

/// Only plain names: no root, no `..` (RESOLVE_BENEATH would refuse them
/// anyway; this says why in the message).
fn check_relative(tree: &Path, rel: &Path) -> Result<PathBuf, Error> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(refused(
                    &tree.join(rel),
                    "not a plain path inside the tenant's tree",
                ))
            }
        }
    }
    Ok(out)
}

fn refused(path: &Path, why: &str) -> Error {
    Error::UnsafePath {
        path: path.to_owned(),
        message: why.to_owned(),
    }
}

/// ELOOP/ENOTDIR/EXDEV from a beneath, no-symlink walk mean a symlink (or
/// a non-directory) on the way: say so plainly.
fn unsafe_path(path: &Path, e: Errno, action: &'static str) -> Error {
    match e {
        Errno::LOOP | Errno::XDEV => refused(
            path,
            "it is or passes through a symlink, which could lead the write out of the tenant's tree (make it a plain directory, in the image or inside the tenant)",
        ),
        Errno::NOTDIR => refused(path, "a part of the path is not a directory"),
        other => crate::io_err(action, path)(other.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn me() -> Owner {
        Owner {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    #[test]
    fn writes_inside_and_replaces_a_final_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("etc");
        fs::create_dir(&tree).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "host").unwrap();
        symlink(&outside, tree.join("resolv.conf")).unwrap();
        let t = TenantTree::open(&tree, me()).unwrap();
        t.write_file(Path::new("resolv.conf"), b"nameserver 192.0.2.1\n", 0o644)
            .unwrap();
        let meta = fs::symlink_metadata(tree.join("resolv.conf")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_to_string(&outside).unwrap(), "host");

        t.create_dir_all(Path::new("a/b"), 0o700).unwrap();
        t.write_file(Path::new("a/b/f"), b"x", 0o600).unwrap();
        assert_eq!(fs::read_to_string(tree.join("a/b/f")).unwrap(), "x");
        let m = fs::metadata(tree.join("a/b")).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o700, me().uid));
        // No temp file is left behind.
        assert_eq!(fs::read_dir(tree.join("a/b")).unwrap().count(), 1);
    }

    #[test]
    fn refuses_a_symlinked_directory_and_dot_dot() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("root");
        let host = tmp.path().join("hostdir");
        fs::create_dir_all(&tree).unwrap();
        fs::create_dir_all(&host).unwrap();
        symlink(&host, tree.join(".ssh")).unwrap();
        symlink("../hostdir", tree.join("rel")).unwrap();
        let t = TenantTree::open(&tree, me()).unwrap();
        for rel in [".ssh/authorized_keys", "rel/x", ".ssh/deeper/x"] {
            let err = t.write_file(Path::new(rel), b"key", 0o600).unwrap_err();
            assert!(err.to_string().contains("symlink"), "{rel}: {err}");
        }
        let err = t
            .create_dir_all(Path::new(".ssh/deeper"), 0o700)
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let err = t
            .write_file(Path::new("../hostdir/x"), b"key", 0o600)
            .unwrap_err();
        assert!(err.to_string().contains("not a plain path"), "{err}");
        assert_eq!(fs::read_dir(&host).unwrap().count(), 0);
        // A directory where the file goes is not replaced.
        fs::create_dir(tree.join("d")).unwrap();
        let err = t.write_file(Path::new("d"), b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}
