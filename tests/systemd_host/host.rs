//! A VPS host with systemd as PID 1: a Debian test host booted with
//! `systemd-nspawn --boot` in a network namespace of its own, a client
//! namespace as the internet, tenants as runc containers inside it under
//! our units. It is rebooted (its PID 1 halted, booted again from the same
//! disk in a fresh network namespace) and what should run comes back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::{CLIENT_ADDR, HOST_ADDR};

/// The tenant image (Debian with systemd, sshd, nginx-light); `vpsctl
/// demo --debian` builds it the same way.
const DEBIAN_CACHE: &str = "debian-bookworm.tar.gz";
/// The test host's disk: the tenant image plus what a sotolito host needs.
/// Bump the suffix when the package list changes. Not compressed: gzip
/// cost a cold run about a minute, and every run its extraction.
const HOST_CACHE: &str = "test-host-bookworm-v2.tar";
const HOST_PACKAGES: &str = "runc nftables busybox-static curl iproute2";
/// Where the test host sees the cache dir (read-only).
const CACHE_IN_HOST: &str = "/var/cache/sotolito";

/// The cache dir: /var/cache/sotolito, or SOTOLITO_CACHE_DIR (an empty
/// one measures a fresh machine's cold run).
fn cache(file: &str) -> PathBuf {
    std::env::var_os("SOTOLITO_CACHE_DIR")
        .map_or_else(|| PathBuf::from(CACHE_IN_HOST), PathBuf::from)
        .join(file)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn sh(cmd: &mut Command) -> Output {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn require_tools() {
    crate::common::require_root_and_tools();
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("debootstrap", "debootstrap"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: apt-get install {package} (scripts/install-deps)"
        );
    }
}

/// Builds `path` once with `build(partial)` under a lock, so that
/// concurrent test runs build it once.
fn cached(path: &Path, build: impl FnOnce(&Path)) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(path.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    if !path.exists() {
        let t0 = Instant::now();
        let partial = path.with_extension("partial");
        build(&partial);
        std::fs::rename(&partial, path).unwrap();
        eprintln!("built {} in {:?}", path.display(), t0.elapsed());
    }
}

fn debian_image() {
    cached(&cache(DEBIAN_CACHE), |partial| {
        let tmp = tempfile::tempdir().unwrap();
        sh(Command::new(env!("CARGO_BIN_EXE_vpsctl"))
            .arg("--state-dir")
            .arg(tmp.path())
            .args(["image", "debootstrap", "debian", "--include", "nginx-light"]));
        sh(Command::new("tar")
            .arg("-C")
            .arg(tmp.path().join("images/debian/rootfs"))
            .arg("-czf")
            .arg(partial)
            .arg("."));
    });
}

fn host_image() {
    debian_image();
    cached(&cache(HOST_CACHE), |partial| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        sh(Command::new("tar")
            .arg("-xzf")
            .arg(cache(DEBIAN_CACHE))
            .arg("-C")
            .arg(&root));
        std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        sh(Command::new("chroot").arg(&root).args([
            "sh",
            "-c",
            &format!(
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {HOST_PACKAGES} \
                 && apt-get clean && systemctl mask nginx.service"
            ),
        ]));
        // nspawn mounts the cgroup v1 controllers read-only; a sotolito host
        // needs them writable to give tenants their limits. Its own
        // namespaces make them the test host's subtree, not the machine's.
        std::fs::write(
            root.join("etc/systemd/system/test-host-cgroups.service"),
            "[Unit]\nDescription=test host: cgroup controllers writable (delegated by the machine)\n\
             DefaultDependencies=no\nBefore=sysinit.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStart=/bin/sh -c 'mount -o remount,bind,rw /sys/fs/cgroup; for c in /sys/fs/cgroup/*/; do mount -o remount,bind,rw \"$c\"; done'\n\n\
             [Install]\nWantedBy=sysinit.target\n",
        )
        .unwrap();
        sh(Command::new("chroot").arg(&root).args([
            "systemctl",
            "enable",
            "test-host-cgroups.service",
        ]));
        std::fs::write(root.join("etc/hostname"), "testhost\n").unwrap();
        sh(Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(partial)
            .arg("."));
    });
}

/// The test host: its disk, its cgroups, its namespaces and, while booted,
/// its systemd-nspawn. Drop halts it and removes everything.
struct TestHost {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    machine: String,
    ns: String,
    client_ns: String,
    cgroups: Vec<PathBuf>,
    nspawn: Option<Child>,
    boots: u32,
}

impl TestHost {
    fn new() -> TestHost {
        require_tools();
        host_image();
        let tmp = tempfile::Builder::new()
            .prefix("sotolito-systemd-host-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().to_owned();
        let root = dir.join("rootfs");
        std::fs::create_dir(&root).unwrap();
        sh(Command::new("tar")
            .arg("-xf")
            .arg(cache(HOST_CACHE))
            .arg("-C")
            .arg(&root));
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut h = TestHost {
            _tmp: tmp,
            dir,
            root,
            machine: format!("sotolito-th-{id}"),
            ns: format!("sotolito-th-host-{id}"),
            client_ns: format!("sotolito-th-client-{id}"),
            cgroups: Vec::new(),
            nspawn: None,
            boots: 0,
        };
        sh(Command::new("ip").args(["netns", "add", &h.client_ns]));
        sh(Command::new("ip").args(["-n", &h.client_ns, "link", "set", "lo", "up"]));
        // The host's cgroups: a subtree of its own in every hierarchy, so
        // that its tenants' cgroups (machine.slice/...) are not the machine's.
        for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let cg = ctrl.path().join(&h.machine);
            if !ctrl.path().join("cgroup.procs").exists() {
                continue;
            }
            std::fs::create_dir(&cg).unwrap();
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(ctrl.path().join(f)) {
                    std::fs::write(cg.join(f), v.trim()).unwrap();
                }
            }
            h.cgroups.push(cg);
        }
        h.key();
        h
    }

    /// A fresh "host" network namespace wired to the client one: what a
    /// reboot gives (no bridge, veth or nft rule of the last boot).
    fn wire(&self) {
        // The last boot's uplink first: a deleted namespace's devices go
        // asynchronously.
        let _ = Command::new("ip")
            .args(["-n", &self.client_ns, "link", "del", "eth0"])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        sh(Command::new("ip").args(["netns", "add", &self.ns]));
        sh(Command::new("ip").args([
            "-n",
            &self.ns,
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.client_ns,
        ]));
        sh(Command::new("ip").args([
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{HOST_ADDR}/24"),
            "dev",
            "uplink",
        ]));
        sh(Command::new("ip").args(["-n", &self.ns, "link", "set", "uplink", "up"]));
        sh(Command::new("ip").args([
            "-n",
            &self.client_ns,
            "addr",
            "add",
            &format!("{CLIENT_ADDR}/24"),
            "dev",
            "eth0",
        ]));
        sh(Command::new("ip").args(["-n", &self.client_ns, "link", "set", "eth0", "up"]));
        // The host's default route (the proxy and DNAT need none, but
        // `public_interface` = the default route's interface).
        sh(Command::new("ip").args([
            "-n",
            &self.ns,
            "route",
            "add",
            "default",
            "via",
            CLIENT_ADDR,
        ]));
    }

    /// Boots the host and waits until its systemd says running; returns
    /// the time from the nspawn start to that.
    fn boot(&mut self) -> Duration {
        assert!(self.nspawn.is_none(), "already booted");
        self.wire();
        let log =
            std::fs::File::create(self.dir.join(format!("console-{}.log", self.boots))).unwrap();
        self.boots += 1;
        let procs: Vec<String> = self
            .cgroups
            .iter()
            .map(|c| c.join("cgroup.procs").display().to_string())
            .collect();
        let t0 = Instant::now();
        // Into the host's cgroups first, then exec nspawn (it and all it
        // starts stay there).
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for f in {}; do echo $$ > \"$f\" || exit 1; done; exec \"$@\"",
                procs.join(" ")
            ))
            .arg("sh")
            .args([
                "systemd-nspawn",
                "--quiet",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=read-only",
                // Nesting: runc inside needs every capability and the
                // keyring calls nspawn's seccomp filter denies.
                "--capability=all",
                "--system-call-filter=@keyring",
                &format!("--network-namespace-path=/run/netns/{}", self.ns),
                &format!(
                    "--bind-ro={}:{CACHE_IN_HOST}",
                    cache(DEBIAN_CACHE).parent().unwrap().display()
                ),
                &format!(
                    "--bind-ro={}:/usr/local/bin/vpsctl",
                    env!("CARGO_BIN_EXE_vpsctl")
                ),
                "-M",
                &self.machine,
                "-D",
            ])
            .arg(&self.root)
            // /proc/sys writable: the host sets ip_forward and bridge
            // sysctls in its own network namespace.
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn systemd-nspawn");
        self.nspawn = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = self.pid1() {
                let o = Command::new("nsenter")
                    .args([
                        "-t",
                        &pid.to_string(),
                        "-a",
                        "systemctl",
                        "is-system-running",
                    ])
                    .output()
                    .unwrap();
                let state = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                if state == "running" {
                    return t0.elapsed();
                }
                if state == "degraded" {
                    panic!(
                        "the test host booted degraded: {}",
                        String::from_utf8_lossy(
                            &self.run(&["systemctl", "--failed", "--no-legend"]).stdout
                        )
                    );
                }
            }
            if let Some(status) = self.nspawn.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "systemd-nspawn exited ({status}) while booting: {}",
                    self.console()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the test host did not boot in 60 s: {}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("console-{}.log", self.boots - 1)))
            .unwrap_or_default()
    }

    /// The host's PID 1 (nspawn's child), once it runs systemd.
    fn pid1(&self) -> Option<u32> {
        let nspawn = self.nspawn.as_ref()?.id();
        let children =
            std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .find(|p: &u32| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            })
    }

    /// Halts the host as a reboot does (systemd stops every unit) and
    /// waits for nspawn to exit; returns how long the shutdown took.
    fn halt(&mut self) -> Duration {
        let mut child = self.nspawn.take().expect("booted");
        let t0 = Instant::now();
        // nspawn turns SIGTERM into the host's orderly poweroff.
        sh(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "the test host's shutdown failed ({status}): {}",
                    self.console()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test host did not halt in 120 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = t0.elapsed();
        let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.machine));
        took
    }

    /// A command in the test host, in all its namespaces.
    fn run(&self, args: &[&str]) -> Output {
        let pid = self.pid1().expect("the test host runs");
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-a", "--"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "in the test host, {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn vpsctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["vpsctl", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("vpsctl printed JSON")
    }

    fn client(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_ns))
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter client")
    }

    /// The test's ssh key pair (private key on the machine, public key
    /// inside the host as /root/tenant-key.pub).
    fn key(&self) -> PathBuf {
        let key = self.dir.join("id_ed25519");
        if !key.exists() {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key));
            std::fs::copy(
                key.with_extension("pub"),
                self.root.join("root/tenant-key.pub"),
            )
            .unwrap();
        }
        key
    }

    /// `hostname` of the tenant behind `port`, logged in with ssh through
    /// the host's DNAT port from the client namespace.
    fn ssh(&self, port: u16, cmd: &str) -> Result<String, String> {
        let key = self.key();
        let o = self.client(&[
            "ssh",
            "-i",
            key.to_str().unwrap(),
            "-p",
            &port.to_string(),
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
            &format!("root@{HOST_ADDR}"),
            cmd,
        ]);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "ssh -p {port}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    /// The page the proxy serves for `host` to the client namespace.
    fn http(&self, host: &str) -> Result<String, String> {
        let o = self.client(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{HOST_ADDR}/"),
        ]);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "HTTP {host}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    fn banner(&self, port: u16) -> Result<String, String> {
        let o = self.client(&["nc", "-w", "2", HOST_ADDR, &port.to_string()]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if out.contains("SSH-2.0") {
            Ok(out)
        } else {
            Err(format!(
                "no banner on {port}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // Halt; if it hangs, KILL takes the whole pid namespace.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.machine));
        for n in [&self.ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        // Deepest first: a cgroup goes only once its children are gone.
        for cg in &self.cgroups {
            let mut dirs = Vec::new();
            let mut stack = vec![cg.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(entries) = std::fs::read_dir(&d) {
                    stack.extend(
                        entries
                            .flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.path()),
                    );
                }
                dirs.push(d);
            }
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Every running tenant reachable from the client: ssh into `deb` (its
/// data file read back), HTTP by Host through the proxy to `web` and
/// `deb`, the banner of each busybox tenant through its DNAT port
/// (`busybox`). Returns how long it took since `t0`.
fn all_reachable(h: &TestHost, t0: Instant, busybox: &[u16]) -> Duration {
    let marker = eventually(Duration::from_secs(60), || h.ssh(2202, "cat /root/marker")).unwrap();
    assert_eq!(marker, "written before the reboot\n");
    let page = eventually(Duration::from_secs(60), || h.http("web.test")).unwrap();
    assert!(page.contains("hello from web"), "{page}");
    let page = eventually(Duration::from_secs(60), || h.http("deb.test")).unwrap();
    assert!(
        page.to_lowercase().contains("nginx"),
        "deb's page through the proxy: {page}"
    );
    for port in busybox {
        eventually(Duration::from_secs(60), || h.banner(*port)).unwrap();
    }
    t0.elapsed()
}

/// deb went down with the host by its own halt (signal 37, exit 0), and
/// its container's scope was not stopped under it first: that SIGTERMs
/// every process of the tenant, its systemd re-executes on it and drops
/// the 37 that follows (docs/architecture.md "Boot").
fn assert_clean_halt(h: &TestHost, round: u32, took: Duration) {
    let journal = h.ok(&[
        "journalctl",
        "-b",
        "-1",
        "--no-pager",
        "-o",
        "short-precise",
    ]);
    // From the host's halt on (its PID 1 took nspawn's SIGTERM as a halt).
    let lines: Vec<&str> = journal.lines().collect();
    let halt = lines
        .iter()
        .position(|l| l.contains("systemd[1]: Activating special unit"))
        .unwrap_or_else(|| panic!("reboot {round}: no halt in the host's journal:\n{journal}"));
    let deb: Vec<&str> = lines[halt..]
        .iter()
        .copied()
        .filter(|l| l.contains("deb"))
        .collect();
    let at = |needle: &str| deb.iter().position(|l| l.contains(needle));
    let shown = deb.join("\n");
    let Some(exited) = at("exited tenant=deb code=0") else {
        panic!("reboot {round}: deb did not shut down cleanly with the host:\n{shown}");
    };
    let signalled = at("stopping container=\"deb\" signal=37")
        .unwrap_or_else(|| panic!("reboot {round}: deb got no signal 37:\n{shown}"));
    assert!(signalled < exited, "{shown}");
    if let Some(scope) = at("Stopping sotolito-deb.scope") {
        assert!(
            scope > exited,
            "reboot {round}: the host stopped deb's scope (SIGTERM to all of it) before deb halted:\n{shown}"
        );
    }
    eprintln!("reboot {round}, deb in the host's journal during the halt:\n{shown}");
    // A figure, not a check: what a slow halt waited for.
    if took > Duration::from_secs(10) {
        let waits: Vec<&str> = lines[halt..]
            .iter()
            .copied()
            .filter(|l| {
                ["Stopping", "Stopped", "Timed out", "Killing", "Deactivated"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        eprintln!(
            "reboot {round}: the halt took {took:?}; its units:\n{}",
            waits.join("\n")
        );
    }
}

/// This boot's journal of `unit`, messages only.
fn journal_of(h: &TestHost, unit: &str) -> String {
    h.ok(&["journalctl", "-b", "--no-pager", "-o", "cat", "-u", unit])
}

/// A busybox tenant per port (`bbPORT`, host `bbPORT.test`), started, by
/// four provisions at a time.
fn provision_busybox(h: &TestHost, ports: std::ops::Range<u16>) {
    let ports: Vec<u16> = ports.collect();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for chunk in ports.chunks(ports.len().div_ceil(4)) {
            s.spawn(move || {
                for port in chunk {
                    let name = format!("bb{port}");
                    h.ok(&[
                        "vpsctl",
                        "provision",
                        &name,
                        "--image",
                        "busybox",
                        "--host",
                        &format!("{name}.test"),
                        "--ssh-port",
                        &port.to_string(),
                        "--ssh-key",
                        "/root/tenant-key.pub",
                        "--disk",
                        "unlimited",
                        "--start",
                    ]);
                }
            });
        }
    });
    eprintln!(
        "provisioned and started {} busybox tenants under systemd in {:?}",
        ports.len(),
        t0.elapsed()
    );
    for port in ports {
        assert_eq!(is_active(h, &format!("sotolito-vps@bb{port}")), "active");
    }
}

fn is_active(h: &TestHost, unit: &str) -> String {
    String::from_utf8_lossy(&h.run(&["systemctl", "is-active", unit]).stdout)
        .trim()
        .to_owned()
}

#[test]
fn systemd_host_runs_tenants_and_brings_them_back_after_reboots() {
    let mut h = TestHost::new();
    let booted = h.boot();
    eprintln!("test host: systemd running {booted:?} after nspawn started");
    assert_eq!(h.ok(&["cat", "/proc/1/comm"]).trim(), "systemd");

    // Disk images need loop devices, which nspawn does not give the host.
    h.ok(&["vpsctl", "units", "install"]);
    h.ok(&["systemctl", "daemon-reload"]);
    h.ok(&["vpsctl", "init"]);
    // busybox rootfs built inside the host from its own busybox-static.
    let bb = h.root.join("root/busybox-rootfs");
    sotolito_provisioner::busybox::busybox_rootfs_from(&h.root.join("bin/busybox"), &bb).unwrap();
    // busybox init honours no signal from outside its pid namespace: KILL
    // is its honest stop signal (else every stop waits the timeout).
    h.ok(&[
        "vpsctl",
        "image",
        "import",
        "busybox",
        "/root/busybox-rootfs",
        "--stop-signal",
        "KILL",
    ]);
    h.ok(&[
        "vpsctl",
        "image",
        "import",
        "debian",
        &format!("{CACHE_IN_HOST}/debian-bookworm.tar.gz"),
    ]);
    let key = "/root/tenant-key.pub";
    h.ok(&[
        "vpsctl",
        "provision",
        "web",
        "--image",
        "busybox",
        "--host",
        "web.test",
        "--ssh-port",
        "2201",
        "--ssh-key",
        key,
        "--disk",
        "unlimited",
        "--start",
    ]);
    h.ok(&[
        "vpsctl",
        "provision",
        "deb",
        "--image",
        "debian",
        "--host",
        "deb.test",
        "--ssh-port",
        "2202",
        "--ssh-key",
        key,
        "--disk",
        "unlimited",
        "--start",
    ]);
    h.ok(&[
        "vpsctl",
        "provision",
        "idle",
        "--image",
        "busybox",
        "--host",
        "idle.test",
        "--ssh-port",
        "2203",
        "--ssh-key",
        key,
        "--disk",
        "unlimited",
    ]);
    h.ok(&["systemctl", "start", "sotolito-proxy.service"]);

    assert_eq!(is_active(&h, "sotolito-vps@web"), "active");
    assert_eq!(is_active(&h, "sotolito-vps@deb"), "active");
    assert_eq!(is_active(&h, "sotolito-vps@idle"), "inactive");
    assert_eq!(is_active(&h, "sotolito-proxy"), "active");
    assert_eq!(is_active(&h, "sotolito-net"), "active");
    let hostname = eventually(Duration::from_secs(60), || h.ssh(2202, "hostname")).unwrap();
    assert_eq!(hostname.trim(), "deb");
    h.ssh(2202, "echo 'written before the reboot' > /root/marker && mkdir -p /var/log/journal && journalctl --flush")
        .unwrap();
    all_reachable(&h, Instant::now(), &[2201]);
    assert!(
        h.banner(2203).is_err(),
        "idle answers although it was never started"
    );

    // Tenants run in the units' cgroups, under systemd's cgroup driver.
    let web_pid = h.vpsctl_json(&["status", "web"])["pid"]
        .as_u64()
        .unwrap()
        .to_string();
    let cgroup = h.ok(&["cat", &format!("/proc/{web_pid}/cgroup")]);
    assert!(
        cgroup
            .lines()
            .any(|l| l.starts_with("9:name=systemd:/") && l.ends_with("/sotolito-web.scope")),
        "web's cgroups: {cgroup}"
    );

    // What the stop must remove is there while deb runs.
    let left = |h: &TestHost| {
        let links = h.ok(&["ip", "-o", "link", "show"]);
        let mounts = h.ok(&["cat", "/proc/self/mountinfo"]);
        let ps = h.ok(&["ps", "-eo", "pid,args"]);
        [
            ("veth", links.contains("sv-deb"), links),
            ("mounts", mounts.contains("/tenants/deb/"), mounts),
            ("processes", ps.contains("run deb"), ps),
            (
                "scope",
                is_active(h, "sotolito-deb.scope") == "active",
                String::new(),
            ),
        ]
    };
    for (what, there, shown) in left(&h) {
        assert!(there, "deb runs but its {what} cannot be seen: {shown}");
    }

    // A graceful stop of the systemd tenant: SIGRTMIN+3, its own shutdown.
    let t0 = Instant::now();
    h.ok(&["systemctl", "stop", "sotolito-vps@deb"]);
    let stop_took = t0.elapsed();
    eprintln!("systemctl stop sotolito-vps@deb took {stop_took:?}");
    let deb = h.vpsctl_json(&["status", "deb"]);
    assert_eq!(deb["state"], "stopped", "{deb}");
    let journal = journal_of(&h, "sotolito-vps@deb");
    assert!(
        journal.contains("stopping") && journal.contains("signal=37"),
        "no graceful stop in deb's journal:\n{journal}"
    );
    assert!(
        !journal.contains("killing"),
        "deb was killed, not stopped:\n{journal}"
    );
    assert!(
        journal.contains("exited tenant=deb code=0"),
        "deb's exit in the journal:\n{journal}"
    );
    for (what, there, shown) in left(&h) {
        assert!(!there, "deb's {what} left after systemctl stop: {shown}");
    }
    // Its hooks logged to the journal (runc keeps their output), under
    // deb's unit and its name: attach when it started, detach when it
    // stopped.
    let hooks = h.ok(&[
        "journalctl",
        "-b",
        "--no-pager",
        "-o",
        "cat",
        "-u",
        "sotolito-vps@deb",
        "TENANT=deb",
    ]);
    for (verb, why) in [("attached", "its start"), ("detached", "its stop")] {
        assert!(
            hooks.lines().any(|l| l == verb),
            "the hook of {why} logged nothing to deb's journal:\n{}",
            h.ok(&[
                "journalctl",
                "-b",
                "--no-pager",
                "-o",
                "cat",
                "-t",
                "vpsctl-hook"
            ])
        );
    }
    // `systemctl start` returns once the container runs.
    h.ok(&["systemctl", "start", "sotolito-vps@deb"]);
    assert_eq!(
        h.vpsctl_json(&["status", "deb"])["state"],
        "running",
        "right after systemctl start"
    );
    eprintln!(
        "deb's journal (start, stop, start):\n{}",
        h.ok(&["journalctl", "-b", "--no-pager", "-u", "sotolito-vps@deb"])
    );

    // The proxy's log in the host's journal: its start and the requests
    // it routed.
    let proxy = journal_of(&h, "sotolito-proxy");
    assert!(
        proxy.contains("proxy listening")
            && proxy.contains("tenant=web host=web.test method=GET path=/ status=200"),
        "the proxy's journal:\n{proxy}"
    );

    let mut busybox = vec![2201];
    for round in 1..=3 {
        if round == 3 {
            // Scale: 20 busybox tenants (web and 19 more) and deb.
            provision_busybox(&h, 2211..2230);
            busybox.extend(2211..2230);
        }
        let down = h.halt();
        let up = h.boot();
        let t0 = Instant::now();
        let reachable = all_reachable(&h, t0, &busybox);
        eprintln!(
            "reboot {round} ({} busybox tenants and deb): shutdown {down:?}; systemd running {up:?} after nspawn started; every tenant reachable {reachable:?} after that, {:?} after nspawn started",
            busybox.len(),
            up + reachable
        );
        assert_eq!(is_active(&h, "sotolito-vps@web"), "active");
        assert_eq!(is_active(&h, "sotolito-vps@deb"), "active");
        assert_eq!(
            is_active(&h, "sotolito-vps@idle"),
            "inactive",
            "idle started at boot"
        );
        assert_eq!(h.vpsctl_json(&["status", "idle"])["state"], "stopped");
        assert!(h.banner(2203).is_err(), "idle answers after reboot {round}");
        assert_clean_halt(&h, round, down);
    }

    // A busybox tenant stops on KILL, its image's stop signal: a stop as
    // asked, so its unit ends inactive, not failed.
    let t0 = Instant::now();
    h.ok(&["systemctl", "stop", "sotolito-vps@bb2211"]);
    eprintln!(
        "systemctl stop sotolito-vps@bb2211 (busybox, KILL) took {:?}",
        t0.elapsed()
    );
    assert_eq!(is_active(&h, "sotolito-vps@bb2211"), "inactive");
    assert!(h.banner(2211).is_err(), "bb2211 answers after its stop");
}
