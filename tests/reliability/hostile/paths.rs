//! Hostile tenant, private host paths and symlink-safe host-side writes into tenant trees.
//!
//! Tenant root plants a setuid shell, a block device node and a secret; an
//! unprivileged host user must reach none of them through the state dir.
//! A hostile image plants symlinks where provision writes; nothing outside
//! the tenant's tree may change. A tenant floods its console; the host's log
//! stays within its cap.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{snapshot, Host};

/// The unprivileged host user every probe runs as.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv is missing: apt-get install util-linux")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn exec(h: &Host, tenant: &str, script: &str) -> Output {
    h.vpsctl(&["exec", tenant, "--", "sh", "-c", script])
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A loop device over a file holding `marker`: a block device whose
/// contents the test knows, to see whether a node for it can be read.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(dir: &Path, marker: &str) -> Loop {
        let img = dir.join("disk.img");
        let mut data = marker.as_bytes().to_vec();
        data.resize(1 << 20, 0);
        std::fs::write(&img, data).unwrap();
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .expect("losetup is missing: apt-get install mount");
        assert!(o.status.success(), "losetup failed: {}", text(&o));
        Loop {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        }
    }

    fn major_minor(&self) -> (u64, u64) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (libc::major(rdev) as u64, libc::minor(rdev) as u64)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

/// A host made reachable the way /var/lib is: its temp root is 0700 by
/// default, which would hide everything from the probes.
fn open_host(extra: &str) -> Host {
    let h = Host::new(extra);
    std::fs::set_permissions(&h.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    h
}

#[test]
fn host_users_cannot_reach_tenant_files() {
    let h = open_host("");
    h.ok(&["init"]);
    h.busybox_image();
    // A hostile image: a setuid-root shell in its rootfs.
    image_with(&h, "suidimg", |r: &Path| {
        std::fs::copy("/bin/busybox", r.join("rootsh")).unwrap();
        std::fs::set_permissions(r.join("rootsh"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
    });
    let shipped = h.state().join("images/suidimg/rootfs/rootsh");
    assert_eq!(mode(&shipped), 0o4755, "the import kept the setuid bit");
    h.provision_busybox("planter", 2201, &["--start"]);
    let open = h.root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let marker = "HOST-DISK-MARKER-7d1f";
    let disk = Loop::new(&open, marker);
    let (maj, min) = disk.major_minor();

    // Tenant root plants its keys: on the overlay's root and in /root (a
    // data dir), each a setuid shell, a device node for the host's disk
    // and a world-readable secret.
    let plant = format!(
        "set -e; for d in / /root/; do cp /bin/busybox ${{d}}busybox; chmod 4755 ${{d}}busybox; \
         echo tenant-secret > ${{d}}secret; chmod 644 ${{d}}secret; \
         if mknod ${{d}}disk b {maj} {min} 2>/tmp/mknod.err; then chmod 666 ${{d}}disk; echo MKNOD-OK; fi; done; \
         chmod 755 /root; cat /tmp/mknod.err 2>/dev/null; true"
    );
    let o = exec(&h, "planter", &plant);
    assert!(o.status.success(), "planting failed: {}", text(&o));
    let planted_nodes = text(&o).contains("MKNOD-OK");
    eprintln!("tenant root made device nodes: {planted_nodes}");
    if !planted_nodes {
        // Only a user namespace refuses mknod to tenant root: then there
        // is no node to reach, which is what this test wants.
        assert!(
            text(&o).contains("Operation not permitted"),
            "mknod failed for another reason: {}",
            text(&o)
        );
    }
    // Tenant root still reads its own files.
    let o = exec(&h, "planter", "cat /secret /root/secret");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "tenant-secret\ntenant-secret\n",
        "tenant root cannot read its own files: {}",
        text(&o)
    );

    // Positive controls: the same probes work on the same kinds of files
    // in a directory the host user may enter.
    let bb = "/bin/busybox";
    std::fs::write(open.join("secret"), "tenant-secret\n").unwrap();
    std::fs::set_permissions(open.join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::copy(bb, open.join("busybox")).unwrap();
    std::fs::set_permissions(
        open.join("busybox"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let node = open.join("disk");
    let mk = Command::new("mknod")
        .arg(&node)
        .args(["b", &maj.to_string(), &min.to_string()])
        .output()
        .unwrap();
    assert!(mk.status.success(), "mknod on the host: {}", text(&mk));
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    let read_secret = |p: &Path| as_nobody(&[bb, "cat", p.to_str().unwrap()]);
    // Through a shell: it says whether the exec itself was allowed.
    let run_suid = |p: &Path| {
        as_nobody(&[
            bb,
            "sh",
            "-c",
            "exec \"$0\" echo SUID-RAN",
            p.to_str().unwrap(),
        ])
    };
    let read_disk = |p: &Path| as_nobody(&[bb, "head", "-c", "64", p.to_str().unwrap()]);
    let o = read_secret(&open.join("secret"));
    assert!(text(&o).contains("tenant-secret"), "control: {}", text(&o));
    let o = run_suid(&open.join("busybox"));
    assert!(text(&o).contains("SUID-RAN"), "control: {}", text(&o));
    let o = read_disk(&node);
    assert!(text(&o).contains(marker), "control: {}", text(&o));

    // The attacks, through every host path that leads to the files.
    let t = h.state().join("tenants/planter");
    let places = [t.join("rootfs"), t.join("data/upper"), t.join("data/root")];
    for dir in &places {
        let o = read_secret(&dir.join("secret"));
        assert!(
            !o.status.success() && !text(&o).contains("tenant-secret"),
            "a host user read the tenant's secret at {}: {}",
            dir.display(),
            text(&o)
        );
        let o = run_suid(&dir.join("busybox"));
        assert!(
            !o.status.success() && !text(&o).contains("SUID-RAN"),
            "a host user ran the tenant's setuid shell at {}: {}",
            dir.display(),
            text(&o)
        );
        if planted_nodes {
            let o = read_disk(&dir.join("disk"));
            assert!(
                !text(&o).contains(marker),
                "a host user read the host's disk through the tenant's node at {}: {}",
                dir.display(),
                text(&o)
            );
        }
    }
    let o = run_suid(&shipped);
    assert!(
        !o.status.success() && !text(&o).contains("SUID-RAN"),
        "a host user ran the image's setuid shell at {}: {}",
        shipped.display(),
        text(&o)
    );
    // nodev: even host root cannot use the node through the mounted root.
    if planted_nodes {
        let o = Command::new(bb)
            .args(["head", "-c", "64"])
            .arg(t.join("rootfs/disk"))
            .output()
            .unwrap();
        assert!(
            !text(&o).contains(marker),
            "the tenant's device node works through its mounted rootfs (not nodev): {}",
            text(&o)
        );
        let o = Command::new(bb)
            .args(["head", "-c", "64"])
            .arg(&node)
            .output()
            .unwrap();
        assert!(text(&o).contains(marker), "control: {}", text(&o));
    }
    for (p, want) in [
        (h.state().join("tenants"), 0o711),
        // 0710: group = the tenant's mapped root (user namespace), whom
        // runc's init runs as on its way to the rootfs and data binds.
        (t.clone(), 0o710),
        (t.join("data"), 0o710),
        (h.state().join("images"), 0o700),
    ] {
        assert_eq!(mode(&p), want, "{} is mode {:o}", p.display(), mode(&p));
    }
}

#[test]
fn lock_files_are_private_even_when_made_before() {
    let h = open_host("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("locky", 2201, &["--start"]);
    let locks = [
        h.state().join("registry/.lock"),
        h.state().join("tenants/.locky.lock"),
    ];
    let t = h.state().join("tenants/locky");
    // As an older install left them: locks and tenant dirs open to all.
    for p in locks
        .iter()
        .chain([&t, &t.join("data"), &h.state().join("tenants")])
    {
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    // start takes both locks and rewrites the bundle (a running tenant:
    // nothing else happens).
    h.ok(&["start", "locky"]);
    for (p, want) in [
        (h.state().join("tenants"), 0o711),
        // 0710: group = the tenant's mapped root (user namespace), whom
        // runc's init runs as on its way to the rootfs and data binds.
        (t.clone(), 0o710),
        (t.join("data"), 0o710),
    ] {
        assert_eq!(
            mode(&p),
            want,
            "start left {} at mode {:o}",
            p.display(),
            mode(&p)
        );
    }
    let control = h.root.join("open.lock");
    std::fs::write(&control, "").unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = as_nobody(&["flock", "-n", control.to_str().unwrap(), "true"]);
    assert!(o.status.success(), "control: {}", text(&o));
    for l in &locks {
        let o = as_nobody(&["flock", "-n", l.to_str().unwrap(), "true"]);
        assert!(
            !o.status.success(),
            "a host user took the lock {}",
            l.display()
        );
        assert_eq!(mode(l), 0o600, "{}", l.display());
    }
}

#[test]
fn purge_follows_no_tenant_symlink() {
    let h = open_host("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("leaver", 2201, &["--start"]);
    let host_dir = h.root.join("host-dir");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("precious"), "host data\n").unwrap();
    let before = snapshot(&host_dir);
    // Tenant root points links at the host dir from its upper layer and
    // from a data dir, by absolute host path and by climbing.
    let hd = host_dir.display().to_string();
    let o = exec(
        &h,
        "leaver",
        &format!(
            "ln -s {hd} /up-abs && ln -s {hd}/precious /up-file && mkdir -p /root/d && \
             ln -s {hd} /root/d/abs && ln -s ../../../../../../../../../../..{hd} /root/d/rel && \
             ls -ld /up-abs /root/d/rel"
        ),
    );
    assert!(o.status.success(), "planting links failed: {}", text(&o));
    h.ok(&["deprovision", "leaver", "--purge", "--timeout", "1"]);
    // Control: the purge did remove the tenant's tree, links included.
    let t = h.state().join("tenants/leaver");
    assert!(!t.exists(), "{} is still there", t.display());
    assert_eq!(
        snapshot(&host_dir),
        before,
        "purge changed {}",
        host_dir.display()
    );
}

/// Imports `rootfs` with `plant` applied to a copy, as image `name`.
fn image_with(h: &Host, name: &str, plant: impl FnOnce(&Path)) {
    let base = h.root.join("busybox-rootfs");
    if !base.exists() {
        sotolito_provisioner::busybox::busybox_rootfs(&base).unwrap();
    }
    let dir = h.root.join(format!("rootfs-{name}"));
    let o = Command::new("cp")
        .arg("-a")
        .arg(&base)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "cp: {}", text(&o));
    plant(&dir);
    h.ok(&["image", "import", name, dir.to_str().unwrap()]);
}

fn replace_with_link(p: &Path, target: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if m.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::os::unix::fs::symlink(target, p).unwrap();
}

#[test]
fn provision_writes_nothing_through_image_symlinks() {
    let h = open_host("");
    h.ok(&["init"]);
    let host_dir = h.root.join("host-dir");
    std::fs::create_dir(&host_dir).unwrap();
    for f in ["authorized_keys", "hostname", "hosts", "resolv.conf"] {
        std::fs::write(host_dir.join(f), format!("host's own {f}\n")).unwrap();
    }
    let before = snapshot(&host_dir);
    let key = h.write_key();
    let key_text = std::fs::read_to_string(&key).unwrap();
    let hd = host_dir.clone();
    let cases: Vec<(&str, Box<dyn Fn(&Path)>)> = vec![
        (
            "sshdir",
            Box::new(move |r: &Path| replace_with_link(&r.join("root/.ssh"), &hd)),
        ),
        ("sshrel", {
            let hd = host_dir.clone();
            Box::new(move |r: &Path| {
                // As deep as needed to climb out of data/root.
                let up = "../".repeat(r.components().count() + 8);
                replace_with_link(
                    &r.join("root/.ssh"),
                    Path::new(&format!("{up}{}", hd.display())),
                )
            })
        }),
        ("sshkeys", {
            let hd = host_dir.clone();
            Box::new(move |r: &Path| {
                replace_with_link(
                    &r.join("root/.ssh/authorized_keys"),
                    &hd.join("authorized_keys"),
                )
            })
        }),
        ("rootdir", {
            let hd = host_dir.clone();
            Box::new(move |r: &Path| replace_with_link(&r.join("root"), &hd))
        }),
        ("etcfiles", {
            let hd = host_dir.clone();
            Box::new(move |r: &Path| {
                for f in ["hostname", "hosts", "resolv.conf"] {
                    replace_with_link(&r.join("etc").join(f), &hd.join(f));
                }
            })
        }),
        ("etcdir", {
            let hd = host_dir.clone();
            Box::new(move |r: &Path| replace_with_link(&r.join("etc"), &hd))
        }),
    ];
    for (i, (name, plant)) in cases.iter().enumerate() {
        image_with(&h, name, plant);
        let tenant = format!("t{name}");
        let port = (2210 + i).to_string();
        let o = h.vpsctl(&[
            "provision",
            &tenant,
            "--image",
            name,
            "--ssh-port",
            &port,
            "--ssh-key",
            key.to_str().unwrap(),
        ]);
        assert_eq!(
            snapshot(&host_dir),
            before,
            "provision from image {name} changed the host dir {}",
            host_dir.display()
        );
        let data = h.state().join("tenants").join(&tenant).join("data");
        eprintln!("image {name}: provision {}", text(&o).trim());
        if o.status.success() {
            // Written inside the tenant's own tree, as regular files.
            let keys = data.join("root/.ssh/authorized_keys");
            let meta = std::fs::symlink_metadata(&keys).unwrap();
            assert!(meta.is_file(), "{name}: {} is not a file", keys.display());
            assert_eq!(std::fs::read_to_string(&keys).unwrap(), key_text, "{name}");
            for f in ["hostname", "hosts", "resolv.conf"] {
                assert!(
                    std::fs::symlink_metadata(data.join("etc").join(f))
                        .unwrap()
                        .is_file(),
                    "{name}: etc/{f}"
                );
            }
        } else {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            assert_eq!(err.lines().count(), 1, "{name}: not one line: {err}");
            assert!(
                err.contains("refusing to write") && err.contains("symlink"),
                "{name}: {err}"
            );
            assert!(
                err.contains(&data.display().to_string()),
                "{name}: the error does not name the path: {err}"
            );
        }
    }
    // Positive control: a plain image gets the key.
    h.busybox_image();
    h.provision_busybox("plain", 2230, &[]);
    let keys = h
        .state()
        .join("tenants/plain/data/root/.ssh/authorized_keys");
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), key_text);
}

fn wait_for(log: &Path, marker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::fs::read(log).is_ok_and(|b| String::from_utf8_lossy(&b).contains(marker)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The tenant writes ~2.6 MB to its console: the log stays within the cap
/// plus one rotated copy, 0600, and ends with the last line written.
fn flood_and_check(h: &Host, tenant: &str, cap: u64, marker: &str) {
    let flood = format!(
        "out=/dev/console; [ -w $out ] || out=/proc/1/fd/1; i=0; \
         while [ $i -lt 20000 ]; do echo \"flood $i ..........................................................................................................\"; i=$((i+1)); done > $out; \
         echo {marker} > $out"
    );
    // set -e: a write that fails must fail the exec, not hide behind the echo.
    let o = exec(h, tenant, &format!("set -e; {flood}; echo wrote to $out"));
    eprintln!("{}", text(&o).trim());
    assert!(o.status.success(), "flood: {}", text(&o));
    let log = h.state().join("tenants").join(tenant).join("console.log");
    assert!(
        wait_for(&log, marker),
        "the last line written is not in {}",
        log.display()
    );
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    let (cur, old) = (
        std::fs::metadata(&log).unwrap().len(),
        std::fs::metadata(&rotated).map_or(0, |m| m.len()),
    );
    assert!(
        cur <= cap && old <= cap,
        "console log {cur} + rotated {old} bytes, cap {cap} each"
    );
    assert!(old > 0, "a 2.6 MB flood did not rotate the log");
    for p in [&log, &rotated] {
        assert_eq!(
            mode(p),
            0o600,
            "{} is mode {:o}, not 600",
            p.display(),
            mode(p)
        );
    }
}

#[test]
fn console_log_is_capped() {
    let cap = 64 * 1024;
    // Host::new's config ends in its [runtime] table.
    let h = open_host("console_log_max = \"64K\"\n");
    h.ok(&["init"]);
    h.busybox_image();
    // Detached: start leaves a console pump beside the container.
    h.provision_busybox("noisy", 2201, &["--start"]);
    flood_and_check(&h, "noisy", cap, "LAST-LINE-DETACHED");
    // There is no /dev/console (terminal: false), and the host's own
    // console is not the tenant's to make: its stdout is all it has.
    let o = exec(
        &h,
        "noisy",
        "mknod /dev/console c 5 1 && echo to-host-console > /dev/console",
    );
    assert!(
        !o.status.success(),
        "the tenant wrote to the host's console"
    );
    // Control: writing to a device the tenant has works. Under the user
    // namespace no mknod works at all (not even /dev/null's numbers), so
    // the tenant's devices are those runc binds in.
    let o = exec(&h, "noisy", "echo probe > /dev/null && echo wrote");
    assert!(
        o.status.success() && text(&o).contains("wrote"),
        "control: {}",
        text(&o)
    );
    let o = exec(&h, "noisy", "mknod /dev/null2 c 1 3");
    assert!(
        !o.status.success() && text(&o).contains("not permitted"),
        "mknod in a user namespace: {}",
        text(&o)
    );
    let pumps = || {
        let log = h.state().join("tenants/noisy/console.log");
        let o = Command::new("pgrep")
            .args(["-f", &format!("console-log .*{}", log.display())])
            .output()
            .expect("pgrep is missing: apt-get install procps");
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert_eq!(pumps(), 1, "a detached start leaves one console pump");
    h.ok(&["kill", "noisy", "KILL"]);
    h.ok(&["stop", "noisy", "--timeout", "1"]);
    // The pump ends with the container (its pipe's last writer gone).
    let deadline = Instant::now() + Duration::from_secs(5);
    while pumps() > 0 {
        assert!(
            Instant::now() < deadline,
            "the console pump outlived its container"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // In the foreground, as the systemd unit runs it.
    let mut run = h
        .vpsctl_cmd(&["run", "noisy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.json(&["status", "noisy"])["state"] != "running" {
        assert!(
            Instant::now() < deadline,
            "vpsctl run did not start the tenant"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    flood_and_check(&h, "noisy", cap, "LAST-LINE-FOREGROUND");
    h.ok(&["kill", "noisy", "KILL"]);
    let _ = run.wait();
}

#[test]
fn init_tightens_tenants_made_before() {
    let h = open_host("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("old", 2201, &[]);
    let t = h.state().join("tenants/old");
    let log = t.join("console.log");
    std::fs::write(&log, "boot\n").unwrap();
    // As an install from before the private modes left them.
    for (p, m) in [
        (h.state().join("tenants"), 0o755),
        (h.state().join("images"), 0o755),
        (t.clone(), 0o755),
        (t.join("data"), 0o755),
        (log.clone(), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let o = read_as_nobody(&log);
    assert!(text(&o).contains("boot"), "control: {}", text(&o));
    h.ok(&["init"]);
    let o = read_as_nobody(&log);
    assert!(
        !text(&o).contains("boot"),
        "a host user read the console log after init: {}",
        text(&o)
    );
    assert_eq!(mode(&h.state().join("tenants")), 0o711);
    assert_eq!(mode(&h.state().join("images")), 0o700);
    assert_eq!(mode(&log), 0o600);
    for p in [&t, &t.join("data")] {
        let m = mode(p);
        assert!(m == 0o700 || m == 0o710, "{} is mode {m:o}", p.display());
    }
}

fn read_as_nobody(p: &Path) -> Output {
    as_nobody(&["/bin/busybox", "cat", p.to_str().unwrap()])
}
