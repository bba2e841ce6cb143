//! User namespaces, host side: the idmapped mount that shows the shared
//! image to a tenant as owned by its mapped ids, shifting a tenant's own
//! files into its range, the marker saying which range they are in, and
//! handing a container's systemd and unified cgroups to its mapped root.

use std::fs;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
use sotolito_config::{atomic, Idmap};

use crate::{io_err, Error};

/// `data/.idmap`: the range the tenant's own files (data dirs, upper
/// layer) are owned by. Absent: owned by host ids as they are (a tenant
/// made before user namespaces).
pub const MARKER: &str = ".idmap";

/// Tenant id 65534: where ids outside the source range go.
const NOBODY: u32 = 65534;

pub fn marker_text(map: &Idmap) -> String {
    format!("host_id={} size={}\n", map.host_id, map.size)
}

/// The host id the files under `data` start at: the marker's, 0 without one.
pub fn read_marker(data: &Path) -> Result<u32, Error> {
    let path = data.join(MARKER);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("host_id="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Idmap(format!("{} is unreadable: {text:?}", path.display())))
}

/// Written after a shift has finished (and by a seed that made the files).
pub fn write_marker(data: &Path, map: &Idmap) -> Result<(), Error> {
    let path = data.join(MARKER);
    Ok(atomic::write(&path, marker_text(map).as_bytes(), 0o644)?)
}

/// Where host id `id` of files that start at host id `from` goes in `to`.
/// Idempotent (an id already in `to` stays), so an interrupted shift is
/// finished by running it again; ids outside both ranges become nobody.
pub fn shift_id(id: u32, from: u32, to: &Idmap) -> u32 {
    if (to.host_id..=to.last()).contains(&id) {
        id
    } else if id >= from && id - from < to.size {
        to.host_id + (id - from)
    } else {
        to.host_id + NOBODY
    }
}

/// What a shift changed, for logs and measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shifted {
    pub entries: u64,
    pub changed: u64,
}

/// Re-owns every file under `root` (itself included) from the range that
/// starts at host id `from` into `to`, never following a symlink. Runs on
/// a stopped tenant's own files only. chown(2) clears setuid and setgid
/// bits, so they are put back.
pub fn shift_tree(root: &Path, from: u32, to: &Idmap) -> Result<Shifted, Error> {
    if from != to.host_id && from != 0 && from < to.host_id + to.size && to.host_id < from + to.size
    {
        return Err(Error::Idmap(format!(
            "cannot shift {} from host id {from} into the overlapping range {to}",
            root.display()
        )));
    }
    let mut stats = Shifted::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        stats.entries += 1;
        let (uid, gid) = (
            shift_id(meta.uid(), from, to),
            shift_id(meta.gid(), from, to),
        );
        if (uid, gid) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(io_err("chown", &path))?;
            stats.changed += 1;
            if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode() & 0o7777))
                    .map_err(io_err("chmod", &path))?;
            }
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io_err("read", &path))? {
                stack.push(entry.map_err(io_err("read", &path))?.path());
            }
        }
    }
    Ok(stats)
}

/// A process parked in a new user namespace with `map`, whose namespace
/// is what an idmapped mount refers to. Killed on drop; the namespace
/// lives on as long as a mount or an fd holds it.
struct Parked(Child);

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An fd of a user namespace that maps ids 0..size to host ids
/// host_id..: `unshare --user` (util-linux) makes it, we write its maps
/// (as host root we may write any map), then keep only the fd.
pub fn userns_fd(map: &Idmap) -> Result<OwnedFd, Error> {
    let spawn_err = |source| Error::Spawn {
        program: "unshare".into(),
        package: "util-linux",
        source,
    };
    let child = Command::new("unshare")
        .args(["--user", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(spawn_err)?;
    let mut parked = Parked(child);
    let pid = parked.0.id();
    let own = fs::read_link("/proc/self/ns/user").map_err(io_err("read", "/proc/self/ns/user"))?;
    let ns = PathBuf::from(format!("/proc/{pid}/ns/user"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if fs::read_link(&ns).is_ok_and(|l| l != own) {
            break;
        }
        if let Ok(Some(status)) = parked.0.try_wait() {
            return Err(Error::Idmap(format!(
                "unshare --user exited ({status}) before making a user namespace (are user namespaces enabled? sysctl user.max_user_namespaces)"
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Idmap(
                "unshare --user made no user namespace within 5 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let line = format!("0 {} {}\n", map.host_id, map.size);
    for file in ["uid_map", "gid_map"] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(io_err("write", &path))?;
    }
    let fd = fs::File::open(&ns).map_err(io_err("open", &ns))?;
    Ok(fd.into())
}

/// Mounts `src` at `target` idmapped (host id 0 appears as `map.host_id`,
/// and so on) and read-only. The image on disk is unchanged.
pub fn mount_idmapped(src: &Path, target: &Path, map: &Idmap) -> Result<(), Error> {
    let userns = userns_fd(map)?;
    let failed = |what: &'static str| {
        move |e: rustix::io::Errno| Error::Idmap(format!("{what} {}: {e}", src.display()))
    };
    let tree = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(failed("open_tree"))?;
    sotolito_sys::set_idmapped_readonly(&tree, &userns).map_err(|e| {
        Error::Idmap(format!(
            "cannot idmap a mount of {} (the kernel needs idmapped mount support for its filesystem, Linux 5.12+): {e}",
            src.display()
        ))
    })?;
    move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(failed("move_mount"))
}

/// The first directory on the way to `path` (itself included) that host
/// id `id`, as uid and gid, may not pass through, with its mode: runc's
/// init runs as the tenant's mapped root when it mounts the root and binds
/// the data dirs, so the whole way must be open to it.
pub fn blocked_for(path: &Path, id: u32) -> Option<(PathBuf, u32)> {
    path.ancestors().find_map(|dir| {
        let meta = fs::metadata(dir).ok()?;
        let mode = meta.mode();
        let x = if meta.uid() == id {
            mode & 0o100
        } else if meta.gid() == id {
            mode & 0o010
        } else {
            mode & 0o001
        };
        (x == 0).then(|| (dir.to_path_buf(), mode & 0o7777))
    })
}

/// The host uid that uid 0 of process `pid` is, when it runs in a user
/// namespace that maps root elsewhere; None for host root.
pub fn mapped_root(pid: u32) -> Result<Option<u32>, Error> {
    let path = format!("/proc/{pid}/uid_map");
    let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
    Ok(parse_mapped_root(&text))
}

fn parse_mapped_root(uid_map: &str) -> Option<u32> {
    uid_map.lines().find_map(|l| {
        let f: Vec<u32> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match f[..] {
            [0, host, _] if host != 0 => Some(host),
            _ => None,
        }
    })
}

/// The cgroup dirs a container's init sits in that its mapped root gets:
/// the name=systemd v1 hierarchy and the unified (v2) one, from
/// `/proc/PID/cgroup` and the mount table. Never the controllers that
/// hold its limits, and never a hierarchy's root.
pub fn delegated_cgroups(proc_cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    let mut systemd_mount = None;
    let mut unified_mount = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, opts) = (r.next().unwrap_or(""), r.nth(1).unwrap_or(""));
        if fstype == "cgroup" && opts.split(',').any(|o| o == "name=systemd") {
            systemd_mount.get_or_insert_with(|| PathBuf::from(point));
        } else if fstype == "cgroup2" {
            unified_mount.get_or_insert_with(|| PathBuf::from(point));
        }
    }
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (id, ctrls, path) = (
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
        );
        let rel = path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            continue;
        }
        let mount = match (id, ctrls) {
            (_, "name=systemd") => &systemd_mount,
            ("0", "") => &unified_mount,
            _ => continue,
        };
        if let Some(m) = mount {
            dirs.push(m.join(rel));
        }
    }
    dirs
}

/// The files of a delegated cgroup dir its owner must write (cgroup v1 and
/// v2 names; the ones a hierarchy lacks are skipped). As in cgroups(7)
/// "Cgroups v2 delegation".
const DELEGATED_FILES: [&str; 5] = [
    "cgroup.procs",
    "tasks",
    "cgroup.clone_children",
    "cgroup.threads",
    "cgroup.subtree_control",
];

/// Hands the systemd and unified cgroup dirs of container init `pid` to
/// `root_id` (its mapped root, uid and gid): systemd inside a user
/// namespace boots only if it can make its own cgroups there. Returns the
/// dirs handed over.
pub fn delegate_cgroups(pid: u32, root_id: u32) -> Result<Vec<PathBuf>, Error> {
    let cg = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&cg).map_err(io_err("read", &cg))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", "/proc/self/mountinfo"))?;
    let dirs = delegated_cgroups(&text, &mountinfo);
    for dir in &dirs {
        if !dir.is_dir() {
            continue;
        }
        std::os::unix::fs::lchown(dir, Some(root_id), Some(root_id))
            .map_err(io_err("chown", dir))?;
        for f in DELEGATED_FILES {
            let p = dir.join(f);
            if p.exists() {
                std::os::unix::fs::lchown(&p, Some(root_id), Some(root_id))
                    .map_err(io_err("chown", &p))?;
            }
        }
    }
    Ok(dirs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SHARED: Idmap = Idmap {
        host_id: 1_000_000,
        size: 65536,
        isolated: false,
    };
    const OWN: Idmap = Idmap {
        host_id: 1_065_536,
        size: 65536,
        isolated: true,
    };

    #[test]
    fn ids_shift_once_and_strays_become_nobody() {
        assert_eq!(shift_id(0, 0, &SHARED), 1_000_000);
        assert_eq!(shift_id(33, 0, &SHARED), 1_000_033);
        assert_eq!(shift_id(1_000_033, 0, &SHARED), 1_000_033, "idempotent");
        assert_eq!(shift_id(70_000, 0, &SHARED), 1_065_534);
        assert_eq!(shift_id(1_000_033, 1_000_000, &OWN), 1_065_569);
        assert_eq!(shift_id(1_065_569, 1_000_000, &OWN), 1_065_569);
        assert_eq!(shift_id(5, 1_000_000, &OWN), 1_131_070);
    }

    #[test]
    fn finds_only_the_systemd_and_unified_dirs() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";
        let cg = "\
12:memory:/sotolito-1/acme
1:name=systemd:/sotolito-1/acme
0::/sotolito-1/acme
";
        assert_eq!(
            delegated_cgroups(cg, mountinfo),
            [
                PathBuf::from("/sys/fs/cgroup/systemd/sotolito-1/acme"),
                PathBuf::from("/sys/fs/cgroup/unified/sotolito-1/acme"),
            ]
        );
        // A process in a hierarchy's root, or a path that climbs: nothing.
        assert!(delegated_cgroups("1:name=systemd:/\n0::/../x\n", mountinfo).is_empty());
    }

    #[test]
    fn root_of_a_uid_map() {
        assert_eq!(
            parse_mapped_root("         0          0 4294967295\n"),
            None
        );
        assert_eq!(
            parse_mapped_root("         0    1000000      65536\n"),
            Some(1_000_000)
        );
    }

    #[test]
    fn marker_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_marker(tmp.path()).unwrap(), 0);
        write_marker(tmp.path(), &OWN).unwrap();
        assert_eq!(read_marker(tmp.path()).unwrap(), 1_065_536);
    }
}
