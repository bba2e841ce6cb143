//! `vpsctl demo`: the whole flow in a sandbox. A "host" network namespace
//! plays the VPS host, a "client" one the internet; the state lives in a
//! temporary directory. Everything is driven through vpsctl's own command
//! line, so the demo proves exactly what an operator runs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sotolito_net::sandbox::{self as netbox, HOST_ADDR, UPLINK};

/// Where `--debian` keeps its debootstrap result between runs.
const DEBIAN_CACHE: &str = "/var/cache/sotolito/debian-bookworm.tar.gz";

pub struct Options {
    pub debian: bool,
    pub check: bool,
}

struct Tenant {
    name: &'static str,
    host: &'static str,
    ssh_port: u16,
}

const TENANTS: [Tenant; 2] = [
    Tenant {
        name: "alpha",
        host: "alpha.localhost",
        ssh_port: 2201,
    },
    Tenant {
        name: "beta",
        host: "beta.localhost",
        ssh_port: 2202,
    },
];

pub fn run(opts: Options) -> anyhow::Result<bool> {
    preflight(opts.debian)?;
    let started = Instant::now();
    let mut sandbox = Sandbox::create().context("failed to create the demo sandbox")?;
    let result = sandbox.bring_up(&opts).and_then(|()| sandbox.prove(&opts));
    let ok = match result {
        Ok(report) => {
            println!("{report}");
            println!("demo ready in {:.1} s", started.elapsed().as_secs_f64());
            true
        }
        Err(e) => {
            eprintln!("vpsctl: demo failed: {e:#}");
            eprintln!("{}", sandbox.logs());
            false
        }
    };
    if ok && !opts.check {
        println!("{}", sandbox.try_by_hand());
        println!("press Ctrl-C to remove everything the demo made");
        wait_for_interrupt()?;
    }
    sandbox.teardown();
    Ok(ok)
}

fn preflight(debian: bool) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the demo needs root: it creates network namespaces and containers (run it with sudo)"
        );
    }
    let mut missing = Vec::new();
    for (tool, package) in [
        ("runc", "runc"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("curl", "curl"),
        ("nc", "netcat-openbsd"),
    ] {
        if which(tool).is_none() {
            missing.push(package);
        }
    }
    if !Path::new(sotolito_provisioner::busybox::HOST_BUSYBOX).exists() {
        missing.push("busybox-static");
    }
    if debian {
        for (tool, package) in [
            ("debootstrap", "debootstrap"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
        ] {
            if which(tool).is_none() {
                missing.push(package);
            }
        }
    }
    if !missing.is_empty() {
        missing.dedup();
        bail!(
            "the demo needs {} (apt-get install {}, or run scripts/install-deps)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

struct Sandbox {
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    config: PathBuf,
    /// The host and client network namespaces and their link.
    net: netbox::Sandbox,
    vpsctl: PathBuf,
    proxy: Option<Child>,
    provisioned: Vec<&'static str>,
    key: Option<PathBuf>,
}

impl Sandbox {
    fn create() -> anyhow::Result<Sandbox> {
        let tmp = tempfile::Builder::new()
            .prefix("sotolito-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let dir = tmp.path().to_owned();
        let config = dir.join("sotolito.toml");
        fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\nconfig_dir = \"{d}/etc\"\nsystemd_dir = \"{d}/systemd\"\n\
                 [network]\nbridge = \"sotolito0\"\npublic_interface = \"{UPLINK}\"\nssh_ports = \"2201-2299\"\n\
                 [proxy]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\nadmin = \"127.0.0.1:9180\"\n\
                 [runtime]\ncgroup_manager = \"cgroupfs\"\n",
                d = dir.display()
            ),
        )?;
        Ok(Sandbox {
            tmp: Some(tmp),
            dir,
            config,
            net: netbox::Sandbox::create("sotolito-demo")?,
            vpsctl: std::env::current_exe().context("cannot find the vpsctl binary")?,
            proxy: None,
            provisioned: Vec::new(),
            key: None,
        })
    }

    fn bring_up(&mut self, opts: &Options) -> anyhow::Result<()> {
        self.vpsctl_ok(&["init"])?;
        let image = if opts.debian {
            self.debian_image()?
        } else {
            self.busybox_image()?
        };

        let key = self.dir.join("demo_key");
        if opts.debian {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "sotolito-demo", "-f"])
                .arg(&key))?;
        } else {
            // busybox tenants run no sshd; a key still shows how keys are installed.
            fs::write(
                key.with_extension("pub"),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNvdG9saXRvLWRlbW8tbm90LWEtcmVhbC1rZXkAAAAA sotolito-demo\n",
            )?;
        }
        let pubkey = key.with_extension("pub");
        self.key = Some(key);
        for t in &TENANTS {
            self.provisioned.push(t.name);
            self.vpsctl_ok(&[
                "provision",
                t.name,
                "--image",
                image,
                "--host",
                t.host,
                "--ssh-port",
                &t.ssh_port.to_string(),
                "--ssh-key",
                pubkey.to_str().unwrap_or_default(),
                "--start",
            ])?;
        }

        let log = fs::File::create(self.dir.join("proxy.log"))?;
        let child = self
            .net
            .host
            .command(&self.vpsctl)
            .arg("--config")
            .arg(&self.config)
            .arg("proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the proxy")?;
        self.proxy = Some(child);
        Ok(())
    }

    fn busybox_image(&self) -> anyhow::Result<&'static str> {
        let rootfs = self.dir.join("busybox-rootfs");
        sotolito_provisioner::busybox::busybox_rootfs(&rootfs)?;
        self.vpsctl_ok(&[
            "image",
            "import",
            "busybox",
            rootfs.to_str().unwrap_or_default(),
        ])?;
        Ok("busybox")
    }

    fn debian_image(&self) -> anyhow::Result<&'static str> {
        let cache = Path::new(DEBIAN_CACHE);
        if !cache.exists() {
            println!(
                "building a Debian image with debootstrap (once; cached in {DEBIAN_CACHE})..."
            );
            // In the demo's own network namespace: the sandbox host has no
            // route to the Debian mirror.
            let o = Command::new(&self.vpsctl)
                .arg("--config")
                .arg(&self.config)
                .args(["image", "debootstrap", "debian", "--include", "nginx-light"])
                .stdin(Stdio::null())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .status()
                .context("cannot run vpsctl image debootstrap")?;
            if !o.success() {
                bail!("vpsctl image debootstrap failed (its output is above)");
            }
            let rootfs = self.dir.join("state/images/debian/rootfs");
            fs::create_dir_all(cache.parent().unwrap_or(Path::new("/")))?;
            let partial = cache.with_extension("partial");
            sh(Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-czf")
                .arg(&partial)
                .arg("."))?;
            sotolito_config::atomic::commit(&partial, cache)?;
            return Ok("debian");
        }
        self.vpsctl_ok(&["image", "import", "debian", DEBIAN_CACHE])?;
        Ok("debian")
    }

    /// Proves the flow from the client namespace, as the internet sees it.
    fn prove(&mut self, opts: &Options) -> anyhow::Result<String> {
        let mut table = String::new();
        writeln!(
            table,
            "{:<8} {:<12} {:<18} {:<9} {:<10} {:<10}",
            "TENANT", "IP", "HOST", "SSH PORT", "HTTP", "SSH"
        )?;
        let list = self.vpsctl_ok(&["list", "--json"])?;
        let tenants: serde_json::Value =
            serde_json::from_slice(&list.stdout).context("vpsctl list --json")?;
        for t in &TENANTS {
            let record = tenants
                .as_array()
                .and_then(|a| a.iter().find(|v| v["name"] == t.name))
                .with_context(|| format!("tenant {} is not in vpsctl list", t.name))?;
            if record["state"] != "running" {
                bail!("tenant {} is {}, not running", t.name, record["state"]);
            }
            let ip = record["ip"].as_str().unwrap_or("?").to_owned();
            let http = self.check_http(t, opts)?;
            let ssh = self.check_ssh(t, opts)?;
            writeln!(
                table,
                "{:<8} {:<12} {:<18} {:<9} {:<10} {:<10}",
                t.name, ip, t.host, t.ssh_port, http, ssh
            )?;
        }
        // An unknown host gets the proxy's 404, not some tenant's site.
        let code = self.client_curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: nobody.localhost",
        ])?;
        if code.trim() != "404" {
            bail!("an unknown host got HTTP {code}, want 404");
        }
        Ok(table)
    }

    fn check_http(&self, t: &Tenant, opts: &Options) -> anyhow::Result<&'static str> {
        // The proxy may still be starting: retry for a bounded while.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.client_curl(&["-H", &format!("Host: {}", t.host)]) {
                Ok(body) => {
                    let want = if opts.debian {
                        "nginx".to_owned()
                    } else {
                        format!("hello from {}", t.name)
                    };
                    if body.contains(&want) {
                        return Ok("ok");
                    }
                    last = format!(
                        "unexpected body {:?}",
                        body.chars().take(80).collect::<String>()
                    );
                }
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("HTTP to {} through the proxy failed: {last}", t.host)
    }

    fn check_ssh(&self, t: &Tenant, opts: &Options) -> anyhow::Result<&'static str> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = t.ssh_port.to_string();
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = if opts.debian {
                let key = self.key.as_ref().context("no demo key")?;
                self.in_client(&[
                    "ssh",
                    "-i",
                    key.to_str().unwrap_or_default(),
                    "-p",
                    &port,
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
                    "hostname",
                ])
            } else {
                self.in_client(&["nc", "-w", "3", HOST_ADDR, &port])
            };
            match out {
                Ok(o) if String::from_utf8_lossy(&o.stdout).contains(t.name) => {
                    return Ok(if opts.debian { "ssh ok" } else { "banner ok" })
                }
                Ok(o) => {
                    last = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                }
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "ssh port {port} did not reach tenant {}: {}",
            t.name,
            last.trim()
        )
    }

    fn client_curl(&self, extra: &[&str]) -> anyhow::Result<String> {
        let url = format!("http://{HOST_ADDR}/");
        let mut args = vec!["curl", "-sS", "--max-time", "3"];
        args.extend_from_slice(extra);
        args.push(&url);
        let o = self.in_client(&args)?;
        if !o.status.success() {
            bail!("curl: {}", String::from_utf8_lossy(&o.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// The client's network only (`nsenter --net`, as for the host): a
    /// copied mount namespace would hold the tenants' disks mounted.
    fn in_client(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.net
            .client
            .command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", args[0]))
    }

    /// vpsctl in the host namespace's network only (`nsenter --net`, see
    /// `sotolito_net::sandbox`): the tenants' overlay mounts it makes stay
    /// visible to the next command.
    fn vpsctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.net
            .host
            .command(&self.vpsctl)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("SOTOLITO_CONFIG")
            .env_remove("SOTOLITO_STATE_DIR")
            .stdin(Stdio::null())
            .output()
            .context("cannot run vpsctl")
    }

    fn vpsctl_ok(&self, args: &[&str]) -> anyhow::Result<Output> {
        let o = self.vpsctl(args)?;
        if !o.status.success() {
            bail!(
                "vpsctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(o)
    }

    fn try_by_hand(&self) -> String {
        let (h, c, v, cfg) = (
            self.net.host.name(),
            self.net.client.name(),
            self.vpsctl.display(),
            self.config.display(),
        );
        format!(
            "\ntry it by hand (another terminal, as root):\n\
             \x20 ip netns exec {c} curl -H 'Host: alpha.localhost' http://{HOST_ADDR}/\n\
             \x20 ip netns exec {c} curl -H 'Host: beta.localhost' http://{HOST_ADDR}/\n\
             \x20 ip netns exec {c} nc -w 3 {HOST_ADDR} 2201\n\
             \x20 nsenter --net=/run/netns/{h} {v} --config {cfg} list\n\
             \x20 nsenter --net=/run/netns/{h} {v} --config {cfg} exec alpha -- ps\n\
             \x20 ip netns exec {h} nft list ruleset\n"
        )
    }

    fn logs(&self) -> String {
        let log = fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        if tail.is_empty() {
            return String::new();
        }
        format!(
            "last proxy log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Best effort, in reverse order of creation; reports what it could not undo.
    fn teardown(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(p.id() as i32).expect("child pid is positive"),
                rustix::process::Signal::TERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(p.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        for name in std::mem::take(&mut self.provisioned).into_iter().rev() {
            // busybox init ignores polite signals from outside its pid
            // namespace: a short timeout keeps the cleanup quick.
            let _ = self.vpsctl(&["stop", name, "--timeout", "2"]);
            if let Err(e) = self.vpsctl_ok(&["deprovision", name, "--purge"]) {
                eprintln!("vpsctl: demo cleanup: {e:#}");
            }
        }
        if let Err(e) = self.net.delete() {
            eprintln!("vpsctl: demo cleanup: {e:#}");
        }
        if let Some(tmp) = self.tmp.take() {
            if let Err(e) = tmp.close() {
                eprintln!(
                    "vpsctl: demo cleanup: cannot remove {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

fn wait_for_interrupt() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    signals.forever().next();
    Ok(())
}
