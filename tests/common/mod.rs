//! A throwaway VPS host for root tests: a "host" network namespace with its
//! own config, state dir and runc root, a "client" namespace acting as the
//! internet, and vpsctl run inside the host namespace. Everything it made is
//! removed on drop, containers first.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sotolito_net::sandbox::Sandbox;

/// The host's and the client's address on the sandbox link.
pub use sotolito_net::sandbox::{CLIENT_ADDR, HOST_ADDR};

/// Fails the test (never skips it) when the machine cannot run root tests.
pub fn require_root_and_tools() {
    assert!(
        rustix::process::geteuid().is_root(),
        "root tests need root: run the suite with sudo (scripts/test)"
    );
    for tool in ["runc", "nft", "ip", "nsenter", "curl", "nc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(found, "{tool} is missing: run scripts/install-deps");
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
}

pub struct Host {
    /// Removed after `drop` has cleared what runs in them, before the
    /// temporary directory (fields drop in order).
    net: Sandbox,
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    /// Names of the host's and the client's network namespaces.
    pub ns: String,
    pub client_ns: String,
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

impl Host {
    pub fn new(extra_config: &str) -> Host {
        require_root_and_tools();
        let tmp = tempfile::Builder::new()
            .prefix("sotolito-test-")
            .tempdir()
            .unwrap();
        let root = tmp.path().to_owned();
        let net = Sandbox::create("sotolito-t")
            .unwrap_or_else(|e| panic!("cannot make the test's network sandbox: {e}"));
        let config = root.join("sotolito.toml");
        std::fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\nconfig_dir = \"{d}/etc\"\nsystemd_dir = \"{d}/systemd\"\n\
                 [runtime]\ncgroup_manager = \"cgroupfs\"\n{extra_config}",
                d = root.display()
            ),
        )
        .unwrap();
        Host {
            _tmp: tmp,
            root,
            config,
            ns: net.host.name().to_owned(),
            client_ns: net.client.name().to_owned(),
            net,
        }
    }

    /// The host's and the client's network namespaces.
    pub fn net(&self) -> &Sandbox {
        &self.net
    }

    /// A command whose network is the host namespace's; the mount namespace
    /// stays the real one, so overlay mounts persist between commands.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.net.host.command(program)
    }

    pub fn vpsctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(env!("CARGO_BIN_EXE_vpsctl"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("SOTOLITO_CONFIG")
            .env_remove("SOTOLITO_STATE_DIR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn vpsctl(&self, args: &[&str]) -> Output {
        self.vpsctl_cmd(args).output().expect("spawn vpsctl")
    }

    /// Runs vpsctl and fails the test with its stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.vpsctl(args);
        assert!(
            o.status.success(),
            "vpsctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.ok(&a);
        serde_json::from_slice(&o.stdout).expect("vpsctl printed JSON")
    }

    /// Runs in the client's network namespace only (`nsenter --net`): `ip
    /// netns exec` would also copy every mount into a new mount namespace,
    /// holding other tests' tenant disks mounted while the command runs.
    pub fn in_client(&self, args: &[&str]) -> Output {
        self.net
            .client
            .command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("spawn in client netns")
    }

    pub fn in_host(&self, args: &[&str]) -> Output {
        self.cmd(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("spawn in host netns")
    }

    /// Imports a busybox image named `busybox` (HTTP on 80 says
    /// "hello from NAME", port 22 prints an SSH-style banner).
    pub fn busybox_image(&self) {
        let rootfs = self.root.join("busybox-rootfs");
        if !rootfs.exists() {
            sotolito_provisioner::busybox::busybox_rootfs(&rootfs).unwrap();
        }
        self.ok(&["image", "import", "busybox", rootfs.to_str().unwrap()]);
    }

    /// Imports a Debian image with systemd and sshd named `deb`, from the
    /// cache tarball the end-to-end test keeps (SOTOLITO_DEBIAN_TARBALL or
    /// /var/cache/sotolito/debian-bookworm.tar.gz), made with debootstrap
    /// from the test's own namespace (the host namespace has no route out)
    /// when missing.
    pub fn debian_image(&self) {
        let tarball = std::env::var_os("SOTOLITO_DEBIAN_TARBALL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/sotolito/debian-bookworm.tar.gz"));
        if tarball.is_file() {
            self.ok(&["image", "import", "deb", tarball.to_str().unwrap()]);
            return;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_vpsctl"))
            .arg("--config")
            .arg(&self.config)
            .args(["image", "debootstrap", "deb", "--include", "nginx-light"])
            .stdin(Stdio::null())
            .output()
            .expect("spawn vpsctl");
        assert!(
            out.status.success(),
            "vpsctl image debootstrap failed (apt-get install debootstrap; a route to the mirror): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = tarball.parent().expect("cache dir");
        std::fs::create_dir_all(dir).unwrap();
        let tmp = tarball.with_extension(format!("tmp{}", std::process::id()));
        run(Command::new("tar")
            .arg("-czf")
            .arg(&tmp)
            .arg("-C")
            .arg(self.state().join("images/deb/rootfs"))
            .arg("."));
        std::fs::rename(&tmp, &tarball).unwrap();
    }

    /// Provisions busybox tenant `name` with host `NAME.test`, SSH port
    /// `ssh_port` and the test key; `extra` adds flags (`--start`, ...).
    pub fn provision_busybox(&self, name: &str, ssh_port: u16, extra: &[&str]) -> Output {
        let key = self.write_key();
        let host = format!("{name}.test");
        let port = ssh_port.to_string();
        let mut args = vec![
            "provision",
            name,
            "--image",
            "busybox",
            "--host",
            &host,
            "--ssh-port",
            &port,
            "--ssh-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    pub fn write_key(&self) -> PathBuf {
        let p = self.root.join("key.pub");
        std::fs::write(&p, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qta2V5LW5vdC1yZWFsLWF0LWFsbC0wMDAwMDAw test@sotolito\n").unwrap();
        p
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn runc_ids(&self) -> Vec<String> {
        let o = Command::new("runc")
            .arg("--root")
            .arg(self.root.join("run/runc"))
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Containers first (they hold mounts and cgroups), then mounts under
        // our temp dir, then the namespaces.
        let runc_root = self.root.join("run/runc");
        for id in self.runc_ids() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "-f", &id])
                .output();
        }
        remove_instance_cgroups(&self.state().join("tenants"));
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(&self.root))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = Command::new("umount").args(["-l", m]).output();
            }
        }
        // The namespaces go with `self.net`, after this.
    }
}

/// Removes the cgroups an instance left (tenants still running when a test
/// ended: runc removes only the container's own cgroup), deepest first.
pub fn remove_instance_cgroups(tenants_dir: &Path) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let prefix = sotolito_provisioner::bundle::cgroup_prefix(tenants_dir);
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            rmdir_tree(&h.path().join(&prefix));
        }
    }
    rmdir_tree(&Path::new("/sys/fs/cgroup").join(&prefix));
}

/// Every file under `dir` with its contents (directories with none):
/// "state before equals state after".
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            // A tenant's disk image is the store of the filesystem mounted
            // on its data/, whose files are compared instead: btrfs commits
            // to the image on its own schedule.
            if p.file_name().is_some_and(|n| n == "disk.img") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.push((p.clone(), Vec::new()));
                stack.push(p);
            } else if meta.is_symlink() {
                out.push((
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Loop devices backed by a file under `dir` (`NAME BACK-FILE` lines).
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let o = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .expect("losetup (apt-get install mount)");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|f| Path::new(f).starts_with(dir))
        })
        .map(str::to_owned)
        .collect()
}
