//! A tiny bootable rootfs from Debian's busybox-static, for tests and the
//! demo: busybox init, an HTTP server on 80 and an ssh-port banner on 22.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::{io_err, Error};

/// Where Debian's busybox-static installs busybox.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

const INITTAB: &str = "\
::sysinit:/bin/sh /etc/init.d/rcS
::respawn:/usr/sbin/httpd -f -p 80 -h /run/www
::respawn:/usr/bin/nc -ll -p 22 -e /usr/sbin/ssh-banner
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/true
";

/// Writes only to /run (a tmpfs): tenant data stays untouched by a boot.
const RC_S: &str = "\
#!/bin/sh
mkdir -p /run/www
echo \"hello from $(hostname)\" > /run/www/index.html
";

const BANNER: &str = "\
#!/bin/sh
echo \"SSH-2.0-sotolito-busybox $(hostname)\"
";

/// Builds the rootfs in `dir` (created; must not exist) from the host's
/// static busybox.
pub fn busybox_rootfs(dir: &Path) -> Result<(), Error> {
    busybox_rootfs_from(Path::new(HOST_BUSYBOX), dir)
}

pub fn busybox_rootfs_from(busybox: &Path, dir: &Path) -> Result<(), Error> {
    let bin = fs::read(busybox)
        .map_err(|e| Error::Busybox(format!("cannot read {}: {e}", busybox.display())))?;
    // A dynamic busybox (Debian's `busybox` package) names its loader in
    // the first page; it cannot run in a rootfs without libc.
    let head = &bin[..bin.len().min(4096)];
    if head.windows(7).any(|w| w == b"ld-linu") {
        return Err(Error::Busybox(format!(
            "{} is dynamically linked; need a static busybox",
            busybox.display()
        )));
    }
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| Error::Spawn {
            program: busybox.display().to_string(),
            package: "busybox-static",
            source,
        })?;
    if !list.status.success() {
        return Err(Error::Busybox(format!(
            "{} --list-full failed",
            busybox.display()
        )));
    }
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/init.d",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/log",
        "home",
        "root",
    ] {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(io_err("create", &p))?;
    }
    set_mode(&dir.join("tmp"), 0o1777)?;
    set_mode(&dir.join("root"), 0o700)?;
    write(&dir.join("bin/busybox"), &bin, 0o755)?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = dir.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        if fs::symlink_metadata(&link).is_err() {
            symlink("/bin/busybox", &link).map_err(io_err("link", &link))?;
        }
    }
    write(&dir.join("etc/inittab"), INITTAB.as_bytes(), 0o644)?;
    write(&dir.join("etc/init.d/rcS"), RC_S.as_bytes(), 0o755)?;
    write(&dir.join("usr/sbin/ssh-banner"), BANNER.as_bytes(), 0o755)?;
    write(
        &dir.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write(
        &dir.join("etc/group"),
        b"root:x:0:\nnogroup:x:65534:\n",
        0o644,
    )?;
    // No password, ever: `*` cannot be matched.
    write(
        &dir.join("etc/shadow"),
        b"root:*:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n",
        0o640,
    )?;
    write(&dir.join("etc/hostname"), b"busybox\n", 0o644)?;
    Ok(())
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    fs::write(path, data).map_err(io_err("write", path))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_bootable_tree() {
        if !Path::new(HOST_BUSYBOX).exists() {
            panic!("{HOST_BUSYBOX} is missing: apt-get install busybox-static");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        busybox_rootfs(&root).unwrap();
        assert_eq!(
            fs::read_link(root.join("sbin/init")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(root.join("bin/sh").symlink_metadata().is_ok());
        assert!(fs::read_to_string(root.join("etc/inittab"))
            .unwrap()
            .contains("httpd"));
        assert!(fs::read_to_string(root.join("etc/shadow"))
            .unwrap()
            .starts_with("root:*:"));
    }
}
