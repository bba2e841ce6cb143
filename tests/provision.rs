//! Root tests of the provisioner through the vpsctl CLI: busybox tenants in
//! a throwaway network namespace with their own state, runc root, config,
//! and systemd dirs. They fail (never skip) without root or a tool.
//!
//! vpsctl runs under `nsenter --net`, not `ip netns exec`: the latter also
//! remounts /sys, which hides the cgroup mounts that runc needs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sotolito_net::sandbox::{self, End, Netns};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXk test@example";

fn require_root_and_tools() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .expect("cannot run id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "these tests need root (they make network namespaces and run runc)"
    );
    for (tool, package) in [
        ("runc", "runc"),
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("nsenter", "util-linux"),
        ("busybox", "busybox-static"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: apt-get install {package}");
    }
}

/// One isolated sotolito instance in its own network namespace.
struct Sandbox {
    /// Removed after `drop` has cleared what runs in it, before the
    /// temporary directory (fields drop in order).
    net: Netns,
    tmp: tempfile::TempDir,
    ns: String,
    config: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        require_root_and_tools();
        let tmp = tempfile::Builder::new()
            .prefix("sotolito-prov-")
            .tempdir()
            .expect("tempdir");
        let net = Netns::unique("sotoprov")
            .unwrap_or_else(|e| panic!("cannot make the test's network namespace: {e}"));
        let ns = net.name().to_owned();
        let config = tmp.path().join("sotolito.toml");
        fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = \"{0}/state\"\nrun_dir = \"{0}/run\"\nconfig_dir = \"{0}/etc\"\nsystemd_dir = \"{0}/systemd\"\n\n[network]\nbridge = \"sotoprov0\"\n",
                tmp.path().display()
            ),
        )
        .expect("write config");
        let sb = Sandbox {
            net,
            tmp,
            ns,
            config,
        };
        sb.ok(&["image", "busybox", "bb"]);
        sb
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn vpsctl(&self, args: &[&str]) -> Output {
        self.net
            .command(env!("CARGO_BIN_EXE_vpsctl"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run vpsctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.vpsctl(args);
        assert!(
            out.status.success(),
            "vpsctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a failing command; returns its one-line error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.vpsctl(args);
        assert!(!out.status.success(), "vpsctl {args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(!err.is_empty(), "vpsctl {args:?} failed silently");
        err
    }

    fn status(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["--json", "status", name])).expect("status JSON")
    }

    fn in_ns(&self, cmd: &[&str]) -> Output {
        self.net
            .command(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    fn key_file(&self) -> PathBuf {
        let p = self.path("key.pub");
        fs::write(&p, format!("{KEY}\n")).expect("write key");
        p
    }

    fn nft_map(&self) -> String {
        let out = self.in_ns(&["nft", "list", "map", "inet", "sotolito", "ssh_ports"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every file under the instance's state, config and systemd dirs with
    /// its type, mode, owner and content hash: "nothing changed" means
    /// this is equal before and after.
    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for d in ["state", "etc", "systemd"] {
            snapshot_into(&self.path(d), self.tmp.path(), &mut out);
        }
        out
    }
}

fn snapshot_into(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let md = fs::symlink_metadata(&p).expect("stat");
        let rel = p.strip_prefix(base).expect("prefix").display().to_string();
        // The lock file is rewritten by every locking command; the
        // registry generation counter only by writers.
        if rel.ends_with("registry/.lock") {
            continue;
        }
        // A tenant's disk image is the store of the filesystem mounted on
        // its data/, whose files are compared instead: btrfs commits to the
        // image on its own schedule.
        if rel.ends_with("/disk.img") {
            continue;
        }
        let what = if md.file_type().is_symlink() {
            format!("link {}", fs::read_link(&p).expect("readlink").display())
        } else if md.is_dir() {
            snapshot_into(&p, base, out);
            "dir".to_owned()
        } else {
            let data = fs::read(&p).unwrap_or_default();
            format!("file {:x}", fnv(&data))
        };
        out.insert(
            rel,
            format!("{what} {:o} {}:{}", md.mode(), md.uid(), md.gid()),
        );
    }
}

/// Asserts two snapshots are equal, printing only what differs.
#[track_caller]
fn assert_same(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, what: &str) {
    let mut diff = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push(format!("removed {k}")),
            Some(w) if w != v => diff.push(format!("changed {k}: {v} -> {w}")),
            _ => {}
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        diff.push(format!("added {k}"));
    }
    assert!(diff.is_empty(), "{what} changed files: {diff:#?}");
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Containers first (by id, under our own runc root), then mounts
        // under our temp dir, then the namespace.
        let root = self.path("run/runc");
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let base = self.tmp.path().display().to_string();
        if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
            let mut mounts: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&base))
                .collect();
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
        // The namespace goes with `self.net`, after this.
    }
}

fn banner(sb: &Sandbox, ip: &str) -> String {
    // A bounded number of tries: the tenant's nc may not listen yet.
    for _ in 0..30 {
        let out = sb.in_ns(&["busybox", "nc", "-w", "2", ip, "22"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("SSH-2.0") {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no banner from {ip}:22");
}

#[test]
fn busybox_tenant_lifecycle() {
    let sb = Sandbox::new();
    let key = sb.key_file();
    let key = key.to_str().expect("utf-8 path");
    sb.ok(&[
        "provision",
        "acme",
        "--image",
        "bb",
        "--ssh-key",
        key,
        "--host",
        "acme.test",
    ]);
    let s = sb.status("acme");
    assert_eq!(s["state"], "stopped");
    assert_eq!(s["desired"], "stopped");
    assert!(s["pid"].is_null());
    let ip = s["ip"].as_str().expect("ip").to_owned();

    // Provisioned: bundle, data seeded with the key, cfg, unit link, forward.
    let t = sb.path("state/tenants/acme");
    assert!(t.join("config.json").is_file());
    assert_eq!(
        fs::read_to_string(t.join("data/root/.ssh/authorized_keys")).expect("keys"),
        format!("{KEY}\n")
    );
    assert_eq!(
        fs::read_to_string(t.join("data/etc/hostname")).expect("hostname"),
        "acme\n"
    );
    let cfg = fs::read_to_string(sb.path("etc/tenants/acme.cfg")).expect("cfg");
    assert!(
        cfg.contains(&format!("VPS_IP={ip}\n")) && cfg.contains("VPS_NET=sotoprov0\n"),
        "{cfg}"
    );
    // Never started: desired stopped, no boot link (start makes it).
    let wants = sb.path("systemd/sotolito-vps.target.wants/sotolito-vps@acme.service");
    assert!(fs::symlink_metadata(&wants).is_err());
    let port = s["ssh_port"].as_u64().expect("port");
    assert!(
        sb.nft_map().contains(&format!("{port} : {ip} . 22")),
        "{}",
        sb.nft_map()
    );

    sb.ok(&["start", "acme"]);
    assert_eq!(
        fs::read_link(&wants).expect("link"),
        Path::new("../sotolito-vps@.service")
    );
    let s = sb.status("acme");
    assert_eq!(s["state"], "running");
    assert_eq!(s["desired"], "running");
    assert!(s["pid"].as_u64().is_some_and(|p| p > 1), "{s}");
    assert!(s["started_at"].is_string());
    sb.ok(&["start", "acme"]); // already running: fine

    assert_eq!(sb.ok(&["exec", "acme", "--", "hostname"]).trim(), "acme");
    let out = sb.vpsctl(&["exec", "acme", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(banner(&sb, &ip).contains("acme"));

    // Writes to the data dirs and to the overlay survive a restart.
    sb.ok(&["exec", "acme", "--", "sh", "-c", "echo kept > /root/f && mkdir -p /home/u && echo h > /home/u/f && echo o > /usr/overlay-file"]);
    sb.ok(&["restart", "acme", "--timeout", "1"]);
    assert_eq!(sb.status("acme")["state"], "running");
    assert_eq!(
        sb.ok(&[
            "exec",
            "acme",
            "--",
            "cat",
            "/root/f",
            "/home/u/f",
            "/usr/overlay-file"
        ]),
        "kept\nh\no\n"
    );
    assert!(
        !sb.path("state/images/bb/rootfs/usr/overlay-file").exists(),
        "the image stays read-only"
    );

    // kill: the container dies; start cleans the stale state.
    sb.ok(&["kill", "acme", "KILL"]);
    let mut state = String::new();
    for _ in 0..50 {
        state = sb.status("acme")["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if state == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(state, "stopped");
    sb.ok(&["start", "acme"]);
    assert_eq!(sb.status("acme")["state"], "running");

    sb.ok(&["stop", "acme", "--timeout", "1"]);
    let s = sb.status("acme");
    assert_eq!(
        (s["state"].as_str(), s["desired"].as_str()),
        (Some("stopped"), Some("stopped"))
    );
    // Stopped stays stopped across a reboot: no boot link; start restores it.
    let link = sb.path("systemd/sotolito-vps.target.wants/sotolito-vps@acme.service");
    assert!(fs::symlink_metadata(&link).is_err());
    let before = sb.snapshot();
    sb.ok(&[
        "provision",
        "acme",
        "--image",
        "bb",
        "--ssh-key",
        key,
        "--host",
        "acme.test",
    ]);
    assert_same(&before, &sb.snapshot(), "re-provisioning a stopped tenant");
    sb.ok(&["start", "acme"]);
    assert!(fs::symlink_metadata(&link).is_ok());
    sb.ok(&["stop", "acme", "--timeout", "1"]);
    assert!(s["pid"].is_null());
    assert!(sb
        .fails(&["exec", "acme", "--", "true"])
        .contains("not running"));

    // deprovision keeps data byte for byte; provisioning again reuses it.
    let data_before = {
        let mut m = BTreeMap::new();
        snapshot_into(&t.join("data"), &t, &mut m);
        m
    };
    sb.ok(&["deprovision", "acme"]);
    assert!(sb.fails(&["status", "acme"]).contains("does not exist"));
    assert!(!sb.path("etc/tenants/acme.cfg").exists());
    assert!(fs::symlink_metadata(
        sb.path("systemd/sotolito-vps.target.wants/sotolito-vps@acme.service")
    )
    .is_err());
    assert!(!t.join("config.json").exists());
    assert!(!sb.nft_map().contains(&format!("{port} :")));
    // The data is kept in its disk image, unmounted: data/ is an empty
    // mount point until the tenant is provisioned again.
    let image = fs::read(t.join("disk.img")).expect("the disk image is kept");
    assert_eq!(fs::read_dir(t.join("data")).expect("data").count(), 0);
    // With no tenant on it, the image may be removed and imported again:
    // the kept data does not change either.
    sb.ok(&["image", "rm", "bb"]);
    sb.ok(&["image", "busybox", "bb"]);
    assert!(
        fs::read(t.join("disk.img")).expect("disk image") == image,
        "image rm + import changed the kept disk image"
    );
    let out = sb.ok(&[
        "provision",
        "acme",
        "--image",
        "bb",
        "--ssh-key",
        key,
        "--host",
        "acme.test",
    ]);
    assert!(out.contains("reusing its kept data"), "{out}");
    let data_after = {
        let mut m = BTreeMap::new();
        snapshot_into(&t.join("data"), &t, &mut m);
        m
    };
    assert_same(&data_before, &data_after, "deprovision and provision again");
    sb.ok(&["start", "acme"]);
    assert_eq!(sb.ok(&["exec", "acme", "--", "cat", "/root/f"]), "kept\n");

    // --purge stops it and removes everything.
    sb.ok(&["deprovision", "acme", "--purge", "--timeout", "1"]);
    assert!(!t.exists());
    assert!(sb.ok(&["--json", "list"]).trim() == "[]");
}

#[test]
fn bad_inputs_change_nothing() {
    let sb = Sandbox::new();
    let key = sb.key_file();
    let key = key.to_str().expect("utf-8 path");
    let out = sb.ok(&[
        "--json",
        "provision",
        "acme",
        "--image",
        "bb",
        "--ssh-key",
        key,
        "--host",
        "acme.test",
    ]);
    let acme: Value = serde_json::from_str(&out).expect("JSON");
    let ip = acme["ip"].as_str().expect("ip");
    let port = acme["ssh_port"].as_u64().expect("port").to_string();
    let before = sb.snapshot();
    let map_before = sb.nft_map();

    // Same settings again: success, nothing changed.
    sb.ok(&[
        "provision",
        "acme",
        "--image",
        "bb",
        "--ssh-key",
        key,
        "--host",
        "acme.test",
    ]);
    assert_same(
        &before,
        &sb.snapshot(),
        "provisioning again with the same settings",
    );

    let bad_key = sb.path("bad.pub");
    fs::write(&bad_key, "not a key\n").expect("write");
    let bad_key = bad_key.to_str().expect("utf-8");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["provision", "beta", "--image", "nope"],
            "image nope does not exist",
        ),
        (
            vec![
                "provision",
                "beta",
                "--image",
                "bb",
                "--ssh-key",
                "/nonexistent.pub",
            ],
            "/nonexistent.pub",
        ),
        (
            vec!["provision", "beta", "--image", "bb", "--ssh-key", bad_key],
            "not an OpenSSH public key",
        ),
        (
            vec!["provision", "beta", "--image", "bb", "--ssh-port", &port],
            "taken by tenant acme",
        ),
        (
            vec!["provision", "beta", "--image", "bb", "--ip", ip],
            "taken by tenant acme",
        ),
        (
            vec!["provision", "beta", "--image", "bb", "--host", "acme.test"],
            "taken by tenant acme",
        ),
        (
            vec![
                "provision",
                "acme",
                "--image",
                "bb",
                "--ssh-key",
                key,
                "--host",
                "acme.test",
                "--memory",
                "1G",
            ],
            "memory 512M -> 1G",
        ),
        (vec!["image", "rm", "bb"], "used by tenant(s) acme"),
        (vec!["image", "busybox", "bb"], "already exists"),
        (
            vec!["image", "import", "other", "/nonexistent"],
            "cannot import /nonexistent",
        ),
        (vec!["deprovision", "ghost"], "does not exist"),
        (vec!["start", "ghost"], "does not exist"),
    ];
    for (args, want) in cases {
        let err = sb.fails(&args);
        assert!(err.starts_with("vpsctl: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        assert_same(&before, &sb.snapshot(), &format!("{args:?}"));
        assert_eq!(sb.nft_map(), map_before, "{args:?} changed the nft map");
    }
    // A bad size is a usage error (clap, exit 2).
    let out = sb.vpsctl(&["provision", "beta", "--image", "bb", "--memory", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert_same(&before, &sb.snapshot(), "a bad size");
}

/// A gzipped tarball of the tree at `rootfs`.
fn tar_rootfs(rootfs: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-czf")
        .arg(out)
        .arg("-C")
        .arg(rootfs)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success());
}

#[test]
fn image_import_and_list() {
    let sb = Sandbox::new();
    // A rootfs tarball made from the busybox image.
    let tarball = sb.path("bb.tar.gz");
    tar_rootfs(&sb.path("state/images/bb/rootfs"), &tarball);
    sb.ok(&[
        "image",
        "import",
        "fromtar",
        tarball.to_str().expect("utf-8"),
        "--stop-signal",
        "SIGTERM",
    ]);
    sb.ok(&[
        "image",
        "import",
        "fromdir",
        sb.path("state/images/bb/rootfs").to_str().expect("utf-8"),
    ]);
    let list: Value = serde_json::from_str(&sb.ok(&["--json", "image", "list"])).expect("JSON");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["bb", "fromdir", "fromtar"]);
    let by = |n: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == n))
            .cloned()
            .expect("image")
    };
    assert_eq!(by("fromtar")["stop_signal"], 15);
    assert_eq!(by("fromtar")["format"], "rootfs-tar");
    assert_eq!(by("fromdir")["stop_signal"], 37, "SIGRTMIN+3 by default");
    assert!(sb
        .path("state/images/fromtar/rootfs/sbin/init")
        .symlink_metadata()
        .is_ok());
    sb.ok(&["image", "rm", "fromdir"]);
    assert!(!sb.path("state/images/fromdir").exists());
    // Nothing left behind by any import.
    let leftovers: Vec<_> = fs::read_dir(sb.path("state/images"))
        .expect("images")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Runs a tool of the image tests, failing the test with its stderr.
fn tool(program: &str, package: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (apt-get install {package})"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Images as real tools write them (umoci's OCI layout, as a directory and
/// as a tarball, and skopeo's `docker save` archive of it) import with the
/// StopSignal of their config, and a tenant of one boots.
#[test]
fn images_made_by_umoci_and_skopeo_import_and_boot() {
    let sb = Sandbox::new();
    let layout = sb.path("layout");
    let bundle = sb.path("bundle");
    let (l, b) = (
        layout.to_str().expect("utf-8"),
        bundle.to_str().expect("utf-8"),
    );
    let tagged = format!("{l}:latest");
    tool("umoci", "umoci", &["init", "--layout", l]);
    tool("umoci", "umoci", &["new", "--image", &tagged]);
    tool("umoci", "umoci", &["unpack", "--image", &tagged, b]);
    tool(
        "cp",
        "coreutils",
        &[
            "-a",
            &format!("{}/.", sb.path("state/images/bb/rootfs").display()),
            &format!("{b}/rootfs/"),
        ],
    );
    tool("umoci", "umoci", &["repack", "--image", &tagged, b]);
    tool(
        "umoci",
        "umoci",
        &[
            "config",
            "--image",
            &tagged,
            "--config.stopsignal",
            "SIGTERM",
        ],
    );
    let oci_tar = sb.path("layout.tar");
    tool(
        "tar",
        "tar",
        &["-cf", oci_tar.to_str().expect("utf-8"), "-C", l, "."],
    );
    let docker_tar = sb.path("saved.tar");
    tool(
        "skopeo",
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{tagged}"),
            &format!("docker-archive:{}:x:latest", docker_tar.display()),
        ],
    );
    for (name, src) in [
        ("ocidir", layout.as_path()),
        ("ocitar", oci_tar.as_path()),
        ("saved", docker_tar.as_path()),
    ] {
        sb.ok(&["image", "import", name, src.to_str().expect("utf-8")]);
    }
    let list: Value = serde_json::from_str(&sb.ok(&["--json", "image", "list"])).expect("JSON");
    let by = |n: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == n))
            .cloned()
            .unwrap_or_else(|| panic!("image {n} is listed: {list}"))
    };
    for (name, format) in [
        ("ocidir", "oci-layout"),
        ("ocitar", "oci-layout"),
        ("saved", "docker-archive"),
    ] {
        assert_eq!(by(name)["format"], format, "{name}");
        // SIGTERM from the image's config, not the default SIGRTMIN+3.
        assert_eq!(by(name)["stop_signal"], 15, "{name}");
        assert_eq!(
            fs::read(sb.path(&format!("state/images/{name}/rootfs/etc/passwd"))).expect(name),
            fs::read(sb.path("state/images/bb/rootfs/etc/passwd")).expect("bb"),
            "{name}"
        );
    }
    sb.ok(&["provision", "acme", "--image", "saved"]);
    sb.ok(&["start", "acme"]);
    assert_eq!(sb.status("acme")["state"], "running");
}

#[test]
fn parallel_provisions_get_distinct_leases() {
    let sb = Sandbox::new();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let sb = &sb;
                s.spawn(move || {
                    sb.vpsctl(&["--json", "provision", &format!("t{i}"), "--image", "bb"])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for out in outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert!(ips.insert(v["ip"].as_str().expect("ip").to_owned()));
        assert!(ports.insert(v["ssh_port"].as_u64().expect("port")));
    }
    assert_eq!(ips.len(), 10);
}

/// Runs `args` `n` times at once; every run must succeed.
fn all_succeed(sb: &Sandbox, n: usize, args: &[&str]) {
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n).map(|_| s.spawn(|| sb.vpsctl(args))).collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for out in &outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn concurrent_starts_and_stops_converge() {
    let sb = Sandbox::new();
    sb.ok(&["provision", "acme", "--image", "bb"]);
    all_succeed(&sb, 4, &["start", "acme"]);
    assert_eq!(sb.status("acme")["state"], "running");
    assert_eq!(sb.ok(&["exec", "acme", "--", "hostname"]).trim(), "acme");
    all_succeed(&sb, 3, &["stop", "acme", "--timeout", "1"]);
    assert_eq!(sb.status("acme")["state"], "stopped");
    sb.ok(&["start", "acme"]);
    assert_eq!(sb.status("acme")["state"], "running");
}

#[test]
fn run_in_the_foreground_stops_on_sigterm() {
    let sb = Sandbox::new();
    sb.ok(&["provision", "acme", "--image", "bb"]);
    let mut child = sb
        .net
        .command(env!("CARGO_BIN_EXE_vpsctl"))
        .arg("--config")
        .arg(&sb.config)
        .args(["run", "acme"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vpsctl run");
    let mut running = false;
    for _ in 0..50 {
        if sb.status("acme")["state"] == "running" {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !running {
        let _ = child.kill();
        let _ = child.wait();
        panic!("vpsctl run did not start the container");
    }
    assert_eq!(sb.ok(&["exec", "acme", "--", "hostname"]).trim(), "acme");
    let rootfs = sb.path("state/tenants/acme/rootfs");
    let mounted = |p: &Path| {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap_or_default()))
    };
    assert!(mounted(&rootfs));
    // nsenter execs vpsctl: the child's pid is vpsctl's.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    // The image's stop signal, then KILL after 30 s at most: bounded wait.
    let mut status = None;
    for _ in 0..400 {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("vpsctl run did not exit after SIGTERM");
    };
    assert!(status.success(), "{status}");
    assert_eq!(sb.status("acme")["state"], "stopped");
    assert!(
        !mounted(&rootfs),
        "run unmounts the root after the container"
    );
    assert!(sb.path("state/tenants/acme/console.log").is_file());
}

#[test]
fn units_install_and_verify() {
    let sb = Sandbox::new();
    sb.ok(&["units", "install"]);
    sb.ok(&["units", "install"]); // idempotent
    let dir = sb.path("systemd");
    let template = fs::read_to_string(dir.join("sotolito-vps@.service")).expect("template");
    let exe = fs::canonicalize(env!("CARGO_BIN_EXE_vpsctl")).expect("exe");
    assert!(template.contains(&format!(
        "ExecStart={} --config {} run %i\n",
        exe.display(),
        sb.config.display()
    )));
    assert!(
        Command::new("sh")
            .args(["-c", "command -v systemd-analyze"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: apt-get install systemd"
    );
    // A template is verified through an instance of it.
    fs::copy(
        dir.join("sotolito-vps@.service"),
        dir.join("sotolito-vps@acme.service"),
    )
    .expect("copy");
    for unit in [
        "sotolito-vps@acme.service",
        "sotolito-vps.target",
        "sotolito-net.service",
        "sotolito-proxy.service",
    ] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join(unit))
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
            .output()
            .expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{unit}: {stderr}"
        );
    }
}

/// Where the end-to-end test caches its Debian rootfs tarball (outside the
/// checkout; ~80 MB, extracts in under a second).
fn debian_tarball() -> PathBuf {
    std::env::var_os("SOTOLITO_DEBIAN_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sotolito/debian-bookworm.tar.gz"))
}

/// A "client" namespace acting as the internet: a veth to the host
/// namespace, 192.0.2.2 here and 192.0.2.1 (the host's "public" address)
/// there; removed on drop.
struct Client {
    net: Netns,
}

const PUBLIC: &str = "192.0.2.1";

impl Client {
    fn new(sb: &Sandbox) -> Client {
        let net = Netns::create(format!("{}c", sb.ns))
            .unwrap_or_else(|e| panic!("cannot make the client namespace: {e}"));
        sandbox::wire(
            End {
                ns: &sb.net,
                ifname: "pub0",
                addr: format!("{PUBLIC}/24").parse().expect("an address"),
            },
            End {
                ns: &net,
                ifname: "eth0",
                addr: "192.0.2.2/24".parse().expect("an address"),
            },
        )
        .unwrap_or_else(|e| panic!("cannot link the client: {e}"));
        Client { net }
    }

    fn ssh(&self, key: &Path, port: &str, cmd: &str) -> Output {
        self.net
            .command("ssh")
            .arg("-i")
            .arg(key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=3",
                "-o",
                "LogLevel=ERROR",
                "-p",
                port,
                &format!("root@{PUBLIC}"),
                cmd,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("ssh (apt-get install openssh-client)")
    }

    fn ssh_ok(&self, key: &Path, port: &str, cmd: &str) -> String {
        // Bounded retries: sshd may still be starting.
        let mut last = String::new();
        for _ in 0..50 {
            let out = self.ssh(key, port, cmd);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("ssh {cmd:?} failed: {last}");
    }
}

/// A real systemd VPS: boots to `running`, ssh with the key from a client
/// namespace through the DNAT port, data survives stop/start and deprovision + provision, and
/// --purge removes it. Needs debootstrap (first run only) and openssh-client.
#[test]
fn debian_systemd_vps_end_to_end() {
    let sb = Sandbox::new();
    let client = Client::new(&sb);
    let tarball = debian_tarball();
    if tarball.is_file() {
        sb.ok(&["image", "import", "deb", tarball.to_str().expect("utf-8")]);
    } else {
        // The sandbox namespace has no route to the mirror: debootstrap runs
        // in the test's own namespace (it only downloads and writes files).
        let out = Command::new(env!("CARGO_BIN_EXE_vpsctl"))
            .arg("--config")
            .arg(&sb.config)
            .args(["image", "debootstrap", "deb", "--include", "nginx-light"])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run vpsctl");
        assert!(
            out.status.success(),
            "vpsctl image debootstrap failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = tarball.parent().expect("cache dir");
        fs::create_dir_all(dir).expect("cache dir");
        let tmp = tarball.with_extension("tmp");
        tar_rootfs(&sb.path("state/images/deb/rootfs"), &tmp);
        fs::rename(&tmp, &tarball).expect("cache the rootfs");
    }
    let key = sb.path("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(st.success());
    let pubkey = sb.path("id_ed25519.pub");
    let pubkey = pubkey.to_str().expect("utf-8");

    let t0 = std::time::Instant::now();
    let v: Value = serde_json::from_str(&sb.ok(&[
        "--json",
        "provision",
        "web",
        "--image",
        "deb",
        "--ssh-key",
        pubkey,
        "--host",
        "web.test",
        "--start",
    ]))
    .expect("JSON");
    let port = v["ssh_port"].as_u64().expect("port").to_string();
    assert_eq!(client.ssh_ok(&key, &port, "hostname").trim(), "web");
    eprintln!("provision --start to ssh login: {:?}", t0.elapsed());

    let mut state = String::new();
    for _ in 0..100 {
        let out = sb.vpsctl(&["exec", "web", "--", "systemctl", "is-system-running"]);
        state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if state == "running" || state == "degraded" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        state,
        "running",
        "failed units: {}",
        sb.ok(&["exec", "web", "--", "systemctl", "--failed", "--no-legend"])
    );

    client.ssh_ok(&key, &port, "useradd -m alice && echo kept > /home/alice/f");
    let t1 = std::time::Instant::now();
    sb.ok(&["stop", "web"]);
    eprintln!("graceful stop (SIGRTMIN+3): {:?}", t1.elapsed());
    sb.ok(&["start", "web"]);
    assert_eq!(
        client.ssh_ok(&key, &port, "id -un alice && cat /home/alice/f"),
        "alice\nkept\n"
    );

    sb.ok(&["deprovision", "web"]);
    sb.ok(&[
        "provision",
        "web",
        "--image",
        "deb",
        "--ssh-key",
        pubkey,
        "--host",
        "web.test",
        "--ssh-port",
        &port,
        "--start",
    ]);
    assert_eq!(
        client.ssh_ok(&key, &port, "id -un alice && cat /home/alice/f"),
        "alice\nkept\n"
    );

    sb.ok(&["deprovision", "web", "--purge"]);
    assert!(!sb.path("state/tenants/web").exists());
    sb.ok(&[
        "provision",
        "web",
        "--image",
        "deb",
        "--ssh-key",
        pubkey,
        "--start",
    ]);
    let port = sb.status("web")["ssh_port"]
        .as_u64()
        .expect("port")
        .to_string();
    let out = client.ssh_ok(&key, &port, "id alice 2>&1 || true; ls /home");
    assert!(out.contains("no such user"), "{out}");
}
