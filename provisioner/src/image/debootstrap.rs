//! `vpsctl image debootstrap`: a Debian rootfs with systemd and sshd, made
//! fit to be shared by many tenants (no machine id, no ssh host keys).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{io_err, Error};

/// What debootstrap is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debootstrap {
    pub suite: String,
    pub mirror: String,
    /// Packages on top of [`Debootstrap::BASE`].
    pub include: Vec<String>,
}

impl Debootstrap {
    /// What a VPS needs to boot and be reached.
    pub const BASE: &'static [&'static str] =
        &["systemd", "systemd-sysv", "dbus", "openssh-server"];

    /// The debootstrap argument list for `target`.
    pub fn args(&self, target: &Path) -> Vec<String> {
        let mut pkgs: Vec<String> = Self::BASE.iter().map(|s| s.to_string()).collect();
        for p in &self.include {
            if !pkgs.contains(p) {
                pkgs.push(p.clone());
            }
        }
        vec![
            "--variant=minbase".into(),
            format!("--include={}", pkgs.join(",")),
            self.suite.clone(),
            target.display().to_string(),
            self.mirror.clone(),
        ]
    }
}

/// The host's Debian mirror, read from apt's sources (one-line `.list` and
/// deb822 `.sources`), skipping security mirrors; Debian's CDN otherwise.
pub fn host_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| fs::read_to_string(p).ok()));
    }
    mirror_from_sources(&texts).unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

fn mirror_from_sources(texts: &[String]) -> Option<String> {
    let usable = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://")) && !u.contains("security")
    };
    for text in texts {
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("deb ") {
                // deb [opts] URI suite components
                let uri = rest
                    .split_whitespace()
                    .skip_while(|w| w.starts_with('['))
                    .find(|w| !w.ends_with(']'));
                if let Some(u) = uri.filter(|u| usable(u)) {
                    return Some(u.trim_end_matches('/').to_owned());
                }
            }
            if let Some(rest) = line.strip_prefix("URIs:") {
                if let Some(u) = rest.split_whitespace().find(|u| usable(u)) {
                    return Some(u.trim_end_matches('/').to_owned());
                }
            }
        }
    }
    None
}

/// Runs debootstrap into `rootfs` (output to our stderr), then makes the
/// result shareable.
pub fn debootstrap(plan: &Debootstrap, rootfs: &Path) -> Result<(), Error> {
    let status = Command::new("debootstrap")
        .args(plan.args(rootfs))
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|source| Error::Spawn {
            program: "debootstrap".into(),
            package: "debootstrap",
            source,
        })?;
    if !status.success() {
        return Err(Error::Command {
            program: "debootstrap".into(),
            action: plan.suite.clone(),
            stderr: format!("{status} (its output is above)"),
        });
    }
    make_shareable(rootfs)
}

/// Each tenant gets its own /etc copy: an empty machine-id makes systemd
/// generate one per tenant on first boot, and host keys are generated per
/// tenant by `ssh-keygen -A` before sshd starts, instead of every tenant
/// sharing the keys made when the image was built.
fn make_shareable(rootfs: &Path) -> Result<(), Error> {
    let mid = rootfs.join("etc/machine-id");
    fs::write(&mid, "").map_err(io_err("write", &mid))?;
    let _ = fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    if let Ok(entries) = fs::read_dir(rootfs.join("etc/ssh")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let unit_dir = rootfs.join("etc/systemd/system");
    let wants = unit_dir.join("ssh.service.wants");
    fs::create_dir_all(&wants).map_err(io_err("create", &wants))?;
    let unit = unit_dir.join("sotolito-ssh-keygen.service");
    fs::write(
        &unit,
        "[Unit]\nDescription=Generate this VPS's SSH host keys\nBefore=ssh.service\n\
         ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n\
         [Install]\nWantedBy=ssh.service\n",
    )
    .map_err(io_err("write", &unit))?;
    let link = wants.join("sotolito-ssh-keygen.service");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("../sotolito-ssh-keygen.service", &link)
        .map_err(io_err("link", &link))?;
    // Package lists are ~50 MB that every tenant would copy into its /var
    // and that are stale by the time it is used: as in Docker's Debian
    // images, a tenant runs `apt update` before `apt install`.
    if let Ok(entries) = fs::read_dir(rootfs.join("var/lib/apt/lists")) {
        for e in entries.flatten() {
            if e.path().is_file() && e.file_name() != "lock" {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    // Downloaded .debs are of no use to a tenant.
    if let Ok(entries) = fs::read_dir(rootfs.join("var/cache/apt/archives")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_mirrors_from_both_formats() {
        let list =
            "# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n".to_owned();
        assert_eq!(
            mirror_from_sources(&[list]).as_deref(),
            Some("http://mirror.example/debian")
        );
        let deb822 = "Types: deb\nURIs: http://security.example/debian-security\n\nTypes: deb\nURIs: http://deb.example/debian\nSuites: bookworm\n".to_owned();
        assert_eq!(
            mirror_from_sources(&[deb822]).as_deref(),
            Some("http://deb.example/debian")
        );
        assert_eq!(mirror_from_sources(&[]), None);
    }

    #[test]
    fn shareable_images_hold_no_per_host_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for d in ["etc/ssh", "var/lib/apt/lists", "var/cache/apt/archives"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("etc/machine-id"), "0123456789abcdef\n").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        fs::write(r.join("etc/ssh/sshd_config"), "").unwrap();
        fs::write(r.join("var/lib/apt/lists/deb_dists_bookworm_Packages"), "x").unwrap();
        fs::write(r.join("var/cache/apt/archives/x.deb"), "x").unwrap();
        make_shareable(r).unwrap();
        make_shareable(r).unwrap();
        assert_eq!(fs::read_to_string(r.join("etc/machine-id")).unwrap(), "");
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(r.join("etc/ssh/sshd_config").exists());
        assert!(!r
            .join("var/lib/apt/lists/deb_dists_bookworm_Packages")
            .exists());
        assert!(!r.join("var/cache/apt/archives/x.deb").exists());
        let unit =
            fs::read_to_string(r.join("etc/systemd/system/sotolito-ssh-keygen.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/ssh-keygen -A"));
        assert_eq!(
            fs::read_link(
                r.join("etc/systemd/system/ssh.service.wants/sotolito-ssh-keygen.service")
            )
            .unwrap(),
            Path::new("../sotolito-ssh-keygen.service")
        );
    }

    #[test]
    fn args_include_the_base_once() {
        let p = Debootstrap {
            suite: "bookworm".into(),
            mirror: "http://m/debian".into(),
            include: vec!["nginx-light".into(), "dbus".into()],
        };
        assert_eq!(
            p.args(Path::new("/t")),
            [
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus,openssh-server,nginx-light",
                "bookworm",
                "/t",
                "http://m/debian"
            ]
        );
    }
}
