//! Tenant data: seeded once from the image, then never touched again by
//! anything but an explicit command.
//!
//! `data/.seeded` is written last: a seed that was interrupted is redone
//! from scratch, a finished one is never redone. Every file written into
//! the copied dirs goes through [`crate::tenantfs`]: the image may be
//! hostile (its /root/.ssh a symlink to a host directory).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sotolito_config::Idmap;

use crate::bundle::{TenantLayout, DATA_DIRS};
use crate::idmap::{self, Shifted};
use crate::image::copy_tree;
use crate::tenantfs::{Owner, TenantTree};
use crate::{io_err, Error};

pub const SEEDED_MARKER: &str = ".seeded";

/// What is written into a fresh tenant's /etc and /root.
#[derive(Debug, Clone)]
pub struct Seed {
    pub hostname: String,
    pub ip: std::net::Ipv4Addr,
    pub ssh_keys: Vec<String>,
    /// The whole /etc/resolv.conf.
    pub resolv_conf: String,
    /// Owner of the files written (the tenant's root as the host sees it).
    pub owner: Owner,
}

pub fn is_seeded(layout: &TenantLayout) -> bool {
    layout.data().join(SEEDED_MARKER).exists()
}

/// Seeds the data dirs from `image_rootfs` unless that was done already,
/// owned by `idmap`'s ids when the tenant runs in a user namespace.
/// Returns whether it seeded now.
pub fn seed(
    layout: &TenantLayout,
    image_rootfs: &Path,
    seed: &Seed,
    idmap: Option<&Idmap>,
) -> Result<bool, Error> {
    let data = layout.data();
    remove_stale_partials(&data);
    if is_seeded(layout) {
        return Ok(false);
    }
    fs::create_dir_all(&data).map_err(io_err("create", &data))?;
    // A seed redone from scratch copies host-owned files again.
    remove_any(&data.join(idmap::MARKER))?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod", &data))?;
    for d in DATA_DIRS {
        let dest = data.join(d);
        remove_any(&dest)?;
        let src = image_rootfs.join(d);
        if fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir()) {
            // `cp` is a child process: a vpsctl killed mid-seed leaves it
            // running. Copying into a name of this run's own and renaming
            // keeps such an orphan out of the way of the next run.
            let partial = data.join(format!(".{d}.partial-{}", std::process::id()));
            remove_any(&partial)?;
            copy_tree(&src, &partial)?;
            fs::rename(&partial, &dest).map_err(io_err("rename", &dest))?;
        } else {
            fs::create_dir(&dest).map_err(io_err("create", &dest))?;
            let mode = if d == "root" { 0o700 } else { 0o755 };
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &dest))?;
        }
    }
    for d in [layout.upper(), layout.work()] {
        remove_any(&d)?;
        fs::create_dir(&d).map_err(io_err("create", &d))?;
    }
    let etc = TenantTree::open(&data.join("etc"), seed.owner)?;
    etc.write_file(
        Path::new("hostname"),
        format!("{}\n", seed.hostname).as_bytes(),
        0o644,
    )?;
    etc.write_file(
        Path::new("hosts"),
        hosts_file(&seed.hostname, seed.ip).as_bytes(),
        0o644,
    )?;
    etc.write_file(Path::new("resolv.conf"), seed.resolv_conf.as_bytes(), 0o644)?;
    install_keys(
        &TenantTree::open(&data.join("root"), seed.owner)?,
        &seed.ssh_keys,
    )?;
    if let Some(map) = idmap {
        // Everything above was written as host root, from an image owned by
        // host ids: all of it moves into the tenant's range in one pass.
        shift_into(layout, map)?;
    }
    let marker = data.join(SEEDED_MARKER);
    // Durable before it is trusted: a seed is never redone once it is here.
    sotolito_config::atomic::write(&marker, b"", 0o644)?;
    Ok(true)
}

/// Moves the tenant's own files (data dirs and upper layer) into `map`'s
/// range unless the marker says they are there: after seeding, for data
/// kept from a tenant that had another range, and for a tenant made before
/// user namespaces (`vpsctl remap`). The tenant must be stopped. The
/// marker is written last; an interrupted shift is finished by a rerun.
/// Returns what changed, or None when nothing had to.
pub fn shift_into(layout: &TenantLayout, map: &Idmap) -> Result<Option<Shifted>, Error> {
    let data = layout.data();
    let from = idmap::read_marker(&data)?;
    if from == map.host_id && data.join(idmap::MARKER).exists() {
        return Ok(None);
    }
    let t0 = std::time::Instant::now();
    let mut total = Shifted::default();
    let trees = DATA_DIRS
        .iter()
        .map(|d| data.join(d))
        .chain([layout.upper()]);
    for tree in trees {
        if fs::symlink_metadata(&tree).is_ok_and(|m| m.is_dir()) {
            let s = idmap::shift_tree(&tree, from, map)?;
            total.entries += s.entries;
            total.changed += s.changed;
        }
    }
    // runc's init, as the mapped root, must pass through data/ to bind its
    // dirs; nobody else on the host may.
    std::os::unix::fs::lchown(&data, Some(0), Some(map.host_id)).map_err(io_err("chown", &data))?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o710))
        .map_err(io_err("chmod", &data))?;
    idmap::write_marker(&data, map)?;
    tracing::debug!(data = %data.display(), idmap = %map, entries = total.entries, changed = total.changed, elapsed_us = t0.elapsed().as_micros() as u64, "shifted into the id range");
    Ok(Some(total))
}

/// Whether the tenant's own files are in `map`'s range (the marker says so).
pub fn owned_by(layout: &TenantLayout, map: &Idmap) -> Result<bool, Error> {
    let data = layout.data();
    Ok(data.join(idmap::MARKER).exists() && idmap::read_marker(&data)? == map.host_id)
}

pub fn hosts_file(hostname: &str, ip: std::net::Ipv4Addr) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n")
}

/// The host's nameservers that a tenant can reach (not loopback ones such
/// as systemd-resolved's stub), falling back to resolved's upstream list.
pub fn resolv_conf_for_tenants() -> String {
    let pick = |path: &str| -> Vec<String> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .map(str::trim)
            .filter(|ip| !ip.starts_with("127.") && *ip != "::1")
            .map(str::to_owned)
            .collect()
    };
    let mut servers = pick("/etc/resolv.conf");
    if servers.is_empty() {
        servers = pick("/run/systemd/resolve/resolv.conf");
    }
    let mut out = String::from("# written once by vpsctl provision; yours to edit\n");
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    out
}

fn install_keys(root_home: &TenantTree, keys: &[String]) -> Result<(), Error> {
    let ssh = Path::new(".ssh");
    root_home.create_dir_all(ssh, 0o700)?;
    root_home.chmod_dir(ssh, 0o700)?;
    let mut text = String::new();
    for k in keys {
        text.push_str(k.trim());
        text.push('\n');
    }
    root_home.write_file(&ssh.join("authorized_keys"), text.as_bytes(), 0o600)
}

/// Best effort: copies left by killed runs (one may still be written by an
/// orphaned `cp`; it is removed by a later run).
fn remove_stale_partials(data: &Path) {
    let Ok(entries) = fs::read_dir(data) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().contains(".partial-") {
            if let Err(err) = remove_any(&e.path()) {
                tracing::debug!(path = %e.path().display(), error = %err, "stale partial copy not removed yet");
            }
        }
    }
}

fn remove_any(path: &Path) -> Result<(), Error> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    r.map_err(io_err("remove", path))
}

/// Reads and checks OpenSSH public key files: every non-comment line must
/// look like `TYPE BASE64 [comment]`; at least one key per file.
pub fn read_key_file(path: &Path) -> Result<Vec<String>, Error> {
    let bad = |message: String| Error::SshKey {
        path: PathBuf::from(path),
        message,
    };
    let text = fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let typ = words.next().unwrap_or_default();
        let body = words.next().unwrap_or_default();
        let typ_ok = typ.starts_with("ssh-") || typ.starts_with("ecdsa-") || typ.starts_with("sk-");
        let body_ok = body.len() >= 16
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if !typ_ok || !body_ok {
            return Err(bad(format!(
                "line {} is not an OpenSSH public key (expected e.g. ssh-ed25519 AAAA... comment)",
                i + 1
            )));
        }
        keys.push(line.to_owned());
    }
    if keys.is_empty() {
        return Err(bad("holds no public key".into()));
    }
    Ok(keys)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sotolito_config::TenantName;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyKeyKeyKeyKey test@example";

    fn image(tmp: &Path) -> PathBuf {
        let img = tmp.join("image");
        fs::create_dir_all(img.join("etc")).unwrap();
        fs::create_dir_all(img.join("var/log")).unwrap();
        fs::write(img.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../run/resolv.conf", img.join("etc/resolv.conf")).unwrap();
        img
    }

    fn seed_input() -> Seed {
        Seed {
            hostname: "acme".into(),
            ip: "172.18.0.2".parse().unwrap(),
            ssh_keys: vec![KEY.into()],
            resolv_conf: "nameserver 192.0.2.53\n".into(),
            owner: Owner {
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
            },
        }
    }

    #[test]
    fn seeds_once_and_never_again() {
        let tmp = tempfile::tempdir().unwrap();
        let img = image(tmp.path());
        let layout = TenantLayout::new(
            &tmp.path().join("tenants"),
            &TenantName::new("acme").unwrap(),
        );
        assert!(seed(&layout, &img, &seed_input(), None).unwrap());
        let etc = layout.data().join("etc");
        assert_eq!(fs::read_to_string(etc.join("hostname")).unwrap(), "acme\n");
        assert!(fs::read_to_string(etc.join("hosts"))
            .unwrap()
            .contains("172.18.0.2\tacme"));
        assert!(fs::symlink_metadata(etc.join("resolv.conf"))
            .unwrap()
            .is_file());
        let keys = layout.data().join("root/.ssh/authorized_keys");
        assert_eq!(fs::read_to_string(&keys).unwrap(), format!("{KEY}\n"));
        assert_eq!(
            fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(layout.data().join("var/log").is_dir());
        assert!(layout.data().join("home").is_dir());
        assert!(layout.upper().is_dir() && layout.work().is_dir());

        // Tenant edits survive a second seed.
        fs::write(etc.join("passwd"), "changed").unwrap();
        assert!(!seed(&layout, &img, &seed_input(), None).unwrap());
        assert_eq!(fs::read_to_string(etc.join("passwd")).unwrap(), "changed");
    }

    #[test]
    fn an_interrupted_seed_is_redone() {
        let tmp = tempfile::tempdir().unwrap();
        let img = image(tmp.path());
        let layout = TenantLayout::new(
            &tmp.path().join("tenants"),
            &TenantName::new("acme").unwrap(),
        );
        fs::create_dir_all(layout.data().join("etc")).unwrap();
        fs::write(layout.data().join("etc/half"), "x").unwrap();
        assert!(seed(&layout, &img, &seed_input(), None).unwrap());
        assert!(!layout.data().join("etc/half").exists());
        assert!(layout.data().join("etc/passwd").exists());
    }

    #[test]
    fn key_files_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("k.pub");
        fs::write(&good, format!("# mine\n{KEY}\n")).unwrap();
        assert_eq!(read_key_file(&good).unwrap(), vec![KEY.to_owned()]);
        let bad = tmp.path().join("bad.pub");
        fs::write(&bad, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        assert!(read_key_file(&bad)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(read_key_file(&tmp.path().join("missing")).is_err());
        fs::write(&bad, "\n").unwrap();
        assert!(read_key_file(&bad)
            .unwrap_err()
            .to_string()
            .contains("no public key"));
    }
}
