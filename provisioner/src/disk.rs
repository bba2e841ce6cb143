//! The tenant's disk: a sparse btrfs image (`tenants/NAME/disk.img`),
//! loop-mounted on `data/`, holding the data dirs and the overlay's upper
//! and work dirs, so that everything a tenant can write is bounded by the
//! image's size.
//!
//! btrfs rather than ext4 because growing a mounted ext4 needs
//! CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS), which hosts running vpsctl in a
//! container lack; btrfs grows and shrinks online with CAP_SYS_ADMIN. The
//! loop device is set up by util-linux `mount -o loop`, which marks it
//! autoclear: it disappears with the last unmount, so no path leaves one
//! behind.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{flock, FlockOperation};
use rustix::io::{fcntl_setfd, FdFlags};
use rustix::mount::{mount_change, unmount, MountPropagationFlags, UnmountFlags};
use sotolito_config::atomic;

use crate::bundle::TenantLayout;
use crate::overlay::{is_mounted, unescape};
use crate::{io_err, Error};

const MKFS: &str = "mkfs.btrfs";
const BTRFS: &str = "btrfs";
const LOOP_CONTROL: &str = "/dev/loop-control";

/// Checks that this host can enforce a quota: the tools, loop devices and
/// btrfs. Each failure says what to install or load.
pub fn check_enforceable() -> Result<(), Error> {
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    missing_support(
        |tool| find_program(tool).is_some(),
        Path::new(LOOP_CONTROL).exists(),
        &filesystems,
    )
}

/// What the host lacks for quotas (pure, for tests).
fn missing_support(
    has_tool: impl Fn(&str) -> bool,
    loop_control: bool,
    proc_filesystems: &str,
) -> Result<(), Error> {
    let unenforceable = |reason: String, fix: &str| Error::DiskUnenforceable {
        reason,
        fix: fix.to_owned(),
    };
    for (tool, package) in [
        (MKFS, "btrfs-progs"),
        (BTRFS, "btrfs-progs"),
        ("losetup", "mount"),
    ] {
        if !has_tool(tool) {
            return Err(unenforceable(
                format!("{tool} is not installed"),
                &format!("apt-get install {package}"),
            ));
        }
    }
    if !loop_control {
        return Err(unenforceable(
            format!("{LOOP_CONTROL} is missing (no loop device support)"),
            "modprobe loop, or give the container /dev/loop-control and /dev/loop*",
        ));
    }
    if !proc_filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("btrfs"))
    {
        return Err(unenforceable(
            "the kernel has no btrfs".into(),
            "modprobe btrfs",
        ));
    }
    Ok(())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run(program: &str, package: &'static str, args: &[&str]) -> Result<(), Error> {
    let exe = find_program(program).unwrap_or_else(|| PathBuf::from(program));
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: program.into(),
            package,
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            program: program.into(),
            action: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

pub fn has_image(layout: &TenantLayout) -> bool {
    layout.disk_image().is_file()
}

/// The image's size in bytes (the quota it enforces), if there is one.
pub fn image_size(layout: &TenantLayout) -> Option<u64> {
    fs::metadata(layout.disk_image()).ok().map(|m| m.len())
}

/// Makes the tenant's image of `bytes` unless it exists. Returns whether it
/// made one now. Built under a temporary name and renamed into place, so a
/// killed run leaves no half-made image that a later run would trust.
pub fn create_image(layout: &TenantLayout, bytes: u64) -> Result<bool, Error> {
    let img = layout.disk_image();
    if img.is_file() {
        return Ok(false);
    }
    let tmp = make_temporary_image(layout, bytes)?;
    atomic::commit(&tmp, &img)?;
    Ok(true)
}

fn make_temporary_image(layout: &TenantLayout, bytes: u64) -> Result<PathBuf, Error> {
    fs::create_dir_all(&layout.dir).map_err(io_err("create", &layout.dir))?;
    remove_stale(&layout.dir);
    let tmp = layout
        .dir
        .join(format!(".disk.img.tmp-{}", std::process::id()));
    let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", &tmp))?;
    file.set_len(bytes).map_err(io_err("size", &tmp))?;
    drop(file);
    let tmp_str = tmp.display().to_string();
    // Mixed block groups: data and metadata share the space, so the tenant
    // gets ENOSPC at about the quota whatever it writes (with separate
    // groups, a full data area left a 512M image unable to create a file
    // at 400M). Single, not DUP: the image is one file on the host's disk,
    // a second copy protects nothing and halves the space.
    if let Err(e) = run(
        MKFS,
        "btrfs-progs",
        &[
            "-q",
            "-f",
            "--mixed",
            "--metadata",
            "single",
            "--data",
            "single",
            &tmp_str,
        ],
    ) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Puts a tenant without a quota under one: its plain data dir is copied
/// into a new image of `bytes`, the image renamed into place (from then on
/// it is the data), the plain dir moved aside, the image mounted, the old
/// dir removed. The tenant must be stopped. A rerun after a failure at any
/// step converges.
pub fn adopt_data(tenant: &str, layout: &TenantLayout, bytes: u64) -> Result<(), Error> {
    let data = layout.data();
    let img = layout.disk_image();
    if !img.is_file() {
        let used = crate::image::tree_size(&data)?;
        // btrfs keeps some of the image for itself.
        if used > bytes / 10 * 9 {
            return Err(Error::DiskShrink {
                tenant: tenant.to_owned(),
                bytes,
                message: format!("its data holds {used} bytes"),
            });
        }
        let tmp = make_temporary_image(layout, bytes)?;
        let mnt = layout
            .dir
            .join(format!(".data.adopt-{}", std::process::id()));
        let copied = (|| {
            fs::create_dir_all(&mnt).map_err(io_err("create", &mnt))?;
            run(
                "mount",
                "mount",
                &[
                    "-t",
                    "btrfs",
                    "-o",
                    "loop,nodev",
                    &tmp.display().to_string(),
                    &mnt.display().to_string(),
                ],
            )?;
            let r = crate::image::copy_tree(&data, &mnt);
            let u =
                unmount(&mnt, UnmountFlags::empty()).map_err(|e| io_err("unmount", &mnt)(e.into()));
            r.and(u)
        })();
        let _ = fs::remove_dir(&mnt);
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        atomic::commit(&tmp, &img)?;
    }
    if !is_mounted(&data)
        && fs::read_dir(&data)
            .map_err(io_err("read", &data))?
            .next()
            .is_some()
    {
        let aside = layout
            .dir
            .join(format!(".data.unquoted-{}", std::process::id()));
        fs::rename(&data, &aside).map_err(io_err("rename", &data))?;
        fs::create_dir(&data).map_err(io_err("create", &data))?;
    }
    mount_data(tenant, layout)?;
    remove_stale(&layout.dir);
    Ok(())
}

/// Images and copies left by killed runs (an orphaned mkfs or cp only
/// writes into a file we unlink). Mount points in use are left alone.
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(".disk.img.tmp-") {
            let _ = fs::remove_file(&path);
        } else if (name.starts_with(".data.unquoted-") || name.starts_with(".data.adopt-"))
            && !is_mounted(&path)
        {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Mounts the tenant's image on `data/` unless it is mounted already (a
/// tenant without an image, `--disk unlimited`, has a plain data dir).
pub fn mount_data(tenant: &str, layout: &TenantLayout) -> Result<(), Error> {
    let img = layout.disk_image();
    let data = layout.data();
    if !img.is_file() || is_mounted(&data) {
        return Ok(());
    }
    // One mount at a time per image, including an orphaned `mount` of a
    // killed run: the child inherits the locked descriptor and holds the
    // lock until it exits. Two `mount -o loop` racing on one image made
    // two loop devices for it (seen in the crash test).
    let lock = fs::File::open(&img).map_err(io_err("open", &img))?;
    flock(&lock, FlockOperation::LockExclusive).map_err(|e| io_err("lock", &img)(e.into()))?;
    if is_mounted(&data) {
        return Ok(());
    }
    fcntl_setfd(&lock, FdFlags::empty()).map_err(|e| io_err("lock", &img)(e.into()))?;
    fs::create_dir_all(&data).map_err(io_err("create", &data))?;
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod", &data))?;
    // A plain data dir with files would be hidden under the mount.
    if fs::read_dir(&data)
        .map_err(io_err("read", &data))?
        .next()
        .is_some()
    {
        return Err(Error::DiskHidden {
            tenant: tenant.to_owned(),
            data,
        });
    }
    let mounted = run(
        "mount",
        "mount",
        &[
            "-t",
            "btrfs",
            "-o",
            "loop,nodev,noatime",
            &img.display().to_string(),
            &data.display().to_string(),
        ],
    );
    drop(lock);
    if let Err(e) = mounted {
        if !is_mounted(&data) {
            return Err(Error::DiskMount {
                tenant: tenant.to_owned(),
                path: data,
                message: e.to_string(),
            });
        }
    }
    // Shared, so that our unmount reaches the copies that mount namespaces
    // made meanwhile hold as slaves (runc's init, `ip netns exec`): else a
    // copy keeps the autoclear loop device after deprovision.
    mount_change(&data, MountPropagationFlags::SHARED)
        .map_err(|e| io_err("make shared", &data)(e.into()))?;
    // The image's root is the data dir: keep it private.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", &data))
}

/// Unmounts `data/` if it is the image's mount (lazily if busy); the
/// autoclear loop device goes with the last unmount. Loops because a killed
/// run's orphaned `mount` may have stacked a second mount of the same image.
pub fn unmount_data(layout: &TenantLayout) -> Result<(), Error> {
    let data = layout.data();
    for _ in 0..4 {
        if !is_mounted(&data) {
            return Ok(());
        }
        match unmount(&data, UnmountFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => unmount(&data, UnmountFlags::DETACH)
                .map_err(|e| io_err("unmount", &data)(e.into()))?,
            Err(e) => return Err(io_err("unmount", &data)(e.into())),
        }
    }
    if is_mounted(&data) {
        return Err(io_err("unmount", &data)(std::io::Error::other(
            "still mounted after 4 unmounts",
        )));
    }
    Ok(())
}

/// The filesystem type and source of the mount on `path` in a mountinfo
/// text (pure, for tests): the last mount there wins, as the kernel stacks.
pub fn mount_source(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    let want = path.display().to_string();
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(want.as_str()))
        .filter_map(|l| {
            let (_, tail) = l.split_once(" - ")?;
            let mut f = tail.split(' ');
            Some((f.next()?.to_owned(), unescape(f.next()?)))
        })
        .next_back()
}

/// Resizes a mounted image to `bytes`, online. Growing: the file, then the
/// loop device's capacity, then the filesystem. Shrinking: the filesystem
/// first (btrfs moves data out of the cut and refuses if it does not fit),
/// then the device and the file. Each step is idempotent, so a rerun after
/// a failure converges.
pub fn resize(tenant: &str, layout: &TenantLayout, bytes: u64) -> Result<(), Error> {
    let img = layout.disk_image();
    let data = layout.data();
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", "/proc/self/mountinfo"))?;
    let Some((_, dev)) = mount_source(&info, &data).filter(|(t, _)| t == "btrfs") else {
        return Err(Error::DiskNotMounted {
            tenant: tenant.to_owned(),
            data,
        });
    };
    let current = fs::metadata(&img).map_err(io_err("read", &img))?.len();
    let data_str = data.display().to_string();
    let set_len = |len: u64| -> Result<(), Error> {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .map_err(io_err("open", &img))?;
        f.set_len(len).map_err(io_err("resize", &img))
    };
    if bytes >= current {
        set_len(bytes)?;
        run("losetup", "mount", &["-c", &dev])?;
        run(
            BTRFS,
            "btrfs-progs",
            &["filesystem", "resize", "max", &data_str],
        )
    } else {
        run(
            BTRFS,
            "btrfs-progs",
            &["filesystem", "resize", &bytes.to_string(), &data_str],
        )
        .map_err(|e| Error::DiskShrink {
            tenant: tenant.to_owned(),
            bytes,
            message: e.to_string(),
        })?;
        set_len(bytes)?;
        run("losetup", "mount", &["-c", &dev])
    }
}

/// Bytes in use inside the tenant's image: the filesystem's own count
/// while it is mounted, else the image file's allocated blocks (after a
/// reboot, until the tenant's next start). None without an image.
pub fn used_bytes(layout: &TenantLayout) -> Option<u64> {
    let img = layout.disk_image();
    let meta = fs::metadata(&img).ok()?;
    let data = layout.data();
    if is_mounted(&data) {
        if let Ok(st) = rustix::fs::statvfs(&data) {
            return Some(st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize);
        }
    }
    Some(meta.blocks() * 512)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
91 22 7:0 / /s/tenants/a\\040b/data rw,nodev,noatime shared:50 - btrfs /dev/loop0 rw,space_cache=v2
92 22 0:44 / /s/tenants/acme/rootfs rw,relatime shared:51 - overlay overlay rw,lowerdir=/x
93 22 7:1 / /s/tenants/acme/data rw,nodev shared:52 - btrfs /dev/loop1 rw
94 93 7:1 / /s/tenants/acme/data rw,nodev shared:53 - btrfs /dev/loop2 rw
";

    #[test]
    fn unenforceable_quotas_say_how_to_fix() {
        let fs = "nodev\tproc\n\tbtrfs\n";
        assert!(missing_support(|_| true, true, fs).is_ok());
        let e = missing_support(|t| t != "mkfs.btrfs", true, fs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a disk quota cannot be enforced here: mkfs.btrfs is not installed (apt-get install btrfs-progs, or provision with --disk unlimited)"
        );
        let e = missing_support(|_| true, false, fs).unwrap_err();
        assert!(e.to_string().contains("modprobe loop"), "{e}");
        let e = missing_support(|_| true, true, "nodev\tproc\n\text4\n").unwrap_err();
        assert!(e.to_string().contains("modprobe btrfs"), "{e}");
    }

    #[test]
    fn mount_sources() {
        assert_eq!(
            mount_source(INFO, Path::new("/s/tenants/a b/data")),
            Some(("btrfs".into(), "/dev/loop0".into()))
        );
        // Stacked mounts: the top one.
        assert_eq!(
            mount_source(INFO, Path::new("/s/tenants/acme/data")),
            Some(("btrfs".into(), "/dev/loop2".into()))
        );
        assert_eq!(
            mount_source(INFO, Path::new("/s/tenants/acme/rootfs"))
                .unwrap()
                .0,
            "overlay"
        );
        assert_eq!(mount_source(INFO, Path::new("/s/tenants/none/data")), None);
    }
}
