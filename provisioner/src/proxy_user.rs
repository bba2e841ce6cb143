//! The proxy's own system user, and what it may touch on the host: the
//! registry read-only (through its group), the certificate directory as
//! its own.
//!
//! Layout after [`grant_access`] (re-running converges):
//! - `STATE_DIR`: others may traverse (`o+x`), nothing more.
//! - `STATE_DIR/registry` and `registry/tenants`: `root:sotolito-proxy`,
//!   mode 2750; the setgid bit gives every file a writer creates the
//!   group, and the registry's writer makes its files 0640.
//! - registry files: `root:sotolito-proxy` 0640.
//! - `CERTS_DIR`: `sotolito-proxy:sotolito-proxy` 0700, everything in it
//!   owned by the proxy user (ACME writes keys there).
//! - the config file: group `sotolito-proxy` and `g+r` when others may not
//!   read it.

use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::{io_err, Error};

/// The system user (and group) `sotolito-proxy.service` runs as.
pub const PROXY_USER: &str = "sotolito-proxy";

/// A user's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// The ids of `name` from the passwd database, if it exists.
pub fn lookup(name: &str) -> Result<Option<Ids>, Error> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .map_err(|source| Error::Spawn {
            program: "getent".into(),
            package: "libc-bin",
            source,
        })?;
    // getent exits 2 for a name it does not know.
    if !out.status.success() {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.trim().split(':').collect();
    let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok());
    match (parse(2), parse(3)) {
        (Some(uid), Some(gid)) => Ok(Some(Ids { uid, gid })),
        _ => Err(Error::Output {
            program: "getent".into(),
            action: format!("passwd {name}"),
            message: format!("unexpected line {:?}", line.trim()),
        }),
    }
}

/// Creates the proxy's system user with its own group, no home and no
/// login shell, unless it exists. Returns its ids.
pub fn ensure_user() -> Result<Ids, Error> {
    if let Some(ids) = lookup(PROXY_USER)? {
        return Ok(ids);
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "sotolito edge proxy",
            PROXY_USER,
        ])
        .output()
        .map_err(|source| Error::Spawn {
            program: "useradd".into(),
            package: "passwd",
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            program: "useradd".into(),
            action: format!("of {PROXY_USER}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    lookup(PROXY_USER)?.ok_or_else(|| Error::Output {
        program: "getent".into(),
        action: format!("passwd {PROXY_USER}"),
        message: "the user useradd created is not there".into(),
    })
}

/// Where the proxy reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct ProxyPaths<'a> {
    pub state_dir: &'a Path,
    pub registry_dir: &'a Path,
    pub certs_dir: &'a Path,
    pub config_file: &'a Path,
}

/// Sets owners and modes as the module header describes; idempotent.
pub fn grant_access(p: &ProxyPaths<'_>, ids: Ids) -> Result<(), Error> {
    add_mode(p.state_dir, 0o001)?;
    for dir in [p.registry_dir.to_path_buf(), p.registry_dir.join("tenants")] {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        own(&dir, 0, ids.gid, 0o2750)?;
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let path = entry.map_err(io_err("read", &dir))?.path();
            if path.is_file() {
                own(&path, 0, ids.gid, 0o640)?;
            }
        }
    }
    fs::create_dir_all(p.certs_dir).map_err(io_err("create", p.certs_dir))?;
    own(p.certs_dir, ids.uid, ids.gid, 0o700)?;
    chown_tree(p.certs_dir, ids)?;
    if let Ok(meta) = fs::metadata(p.config_file) {
        if meta.mode() & 0o004 == 0 {
            chown(p.config_file, None, Some(ids.gid)).map_err(io_err("chown", p.config_file))?;
            add_mode(p.config_file, 0o040)?;
        }
    }
    Ok(())
}

fn own(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), Error> {
    chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

fn add_mode(path: &Path, bits: u32) -> Result<(), Error> {
    let mode = fs::metadata(path).map_err(io_err("stat", path))?.mode() & 0o7777;
    if mode & bits == bits {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode | bits))
        .map_err(io_err("chmod", path))
}

/// Everything under `dir` (not following symlinks) becomes the user's.
fn chown_tree(dir: &Path, ids: Ids) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let path = entry.map_err(io_err("read", dir))?.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        chown(&path, Some(ids.uid), Some(ids.gid)).map_err(io_err("chown", &path))?;
        if meta.is_dir() {
            chown_tree(&path, ids)?;
        }
    }
    Ok(())
}
