//! Test support: real etcd members (Debian's etcd-server) with mutual TLS,
//! on loopback or each in a network namespace of its own on a private
//! network the test makes. Certificates come from scripts/fleet-certs, the
//! recipe docs/fleet.md gives operators. Everything started is stopped by
//! PID and removed on drop.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sotolito_config::{Cluster, NodeName};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: apt-get install {package} (or run scripts/install-deps)"
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The workspace root (this module is used from the fleet crate's tests
/// and from the workspace's own).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("scripts/fleet-certs").is_file())
        .expect("scripts/fleet-certs above the crate")
        .to_owned()
}

/// A private network of namespaces: a "lan" namespace with a bridge, and
/// one namespace per node wired to it by a veth, at 10.89.0.(i+1)/24.
pub struct Lan {
    prefix: String,
    pub nodes: Vec<String>,
}

impl Lan {
    pub fn new(n: usize) -> Lan {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test makes network namespaces: run it as root"
        );
        require("ip", "iproute2");
        require("nsenter", "util-linux");
        let prefix = format!(
            "flt{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let lan = format!("{prefix}-lan");
        let mut me = Lan {
            prefix,
            nodes: Vec::new(),
        };
        run(Command::new("ip").args(["netns", "add", &lan]));
        run(Command::new("ip").args(["-n", &lan, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", &lan, "link", "set", "br0", "up"]));
        for i in 0..n {
            let ns = format!("{}-n{i}", me.prefix);
            run(Command::new("ip").args(["netns", "add", &ns]));
            me.nodes.push(ns.clone());
            let port = format!("p{i}");
            run(Command::new("ip").args([
                "-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]));
            run(Command::new("ip").args(["-n", &lan, "link", "set", &port, "master", "br0", "up"]));
            let addr = format!("{}/24", Lan::address(i));
            run(Command::new("ip").args(["-n", &ns, "addr", "add", &addr, "dev", "eth0"]));
            run(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]));
            run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        }
        me
    }

    /// Node i's private address.
    pub fn address(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            89,
            0,
            u8::try_from(i + 1).expect("fewer than 255 nodes"),
        )
    }

    pub fn netns_path(&self, i: usize) -> String {
        format!("/run/netns/{}", self.nodes[i])
    }

    /// A command run inside node i's network namespace only.
    pub fn cmd(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path(i))).arg(program);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&format!("{}-lan", self.prefix)]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub struct Member {
    pub name: String,
    pub ip: Ipv4Addr,
    pub client_port: u16,
    peer_port: u16,
    /// Node index in the Lan, or None on loopback.
    node: Option<usize>,
    netns: Option<String>,
    child: Option<Child>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.peer_port)
    }
}

/// An etcd cluster of real members.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

impl Etcd {
    /// `n` members on 127.0.0.1 (no root needed).
    pub fn loopback(n: usize) -> Etcd {
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                ip: Ipv4Addr::LOCALHOST,
                client_port: free_port(),
                peer_port: free_port(),
                node: None,
                netns: None,
                child: None,
            })
            .collect();
        Etcd::start(members)
    }

    /// One member in each of the lan's node namespaces, on its private
    /// address.
    pub fn in_lan(lan: &Lan) -> Etcd {
        let members = (0..lan.nodes.len())
            .map(|i| Member {
                name: format!("m{i}"),
                ip: Lan::address(i),
                client_port: 2379,
                peer_port: 2380,
                node: Some(i),
                netns: Some(lan.netns_path(i)),
                child: None,
            })
            .collect();
        Etcd::start(members)
    }

    /// One member in each of the given lan nodes' namespaces (the other
    /// nodes run none), on its private address.
    pub fn in_lan_nodes(lan: &Lan, nodes: &[usize]) -> Etcd {
        let members = nodes
            .iter()
            .map(|&i| Member {
                name: format!("m{i}"),
                ip: Lan::address(i),
                client_port: 2379,
                peer_port: 2380,
                node: Some(i),
                netns: Some(lan.netns_path(i)),
                child: None,
            })
            .collect();
        Etcd::start(members)
    }

    fn start(members: Vec<Member>) -> Etcd {
        require("etcd", "etcd-server");
        require("etcdctl", "etcd-client");
        require("openssl", "openssl");
        let dir = tempfile::Builder::new()
            .prefix("sotolito-etcd")
            .tempdir()
            .expect("temp dir");
        let mut certs = Command::new(repo_root().join("scripts/fleet-certs"));
        certs.arg(dir.path().join("certs"));
        for m in &members {
            certs.arg(format!("{}={}", m.name, m.ip));
        }
        run(&mut certs);
        let mut etcd = Etcd { dir, members };
        for i in 0..etcd.members.len() {
            etcd.spawn(i);
        }
        for i in 0..etcd.members.len() {
            etcd.wait_healthy(i);
        }
        etcd
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `[cluster]` table of a node of this fleet.
    pub fn cluster(&self, node: &str, private: Ipv4Addr, public: Ipv4Addr) -> Cluster {
        let certs = self.certs();
        Cluster {
            etcd: self
                .endpoints()
                .iter()
                .map(|e| e.parse().expect("endpoint"))
                .collect(),
            node: NodeName::new(node).expect("node name"),
            private_address: private,
            public_address: public,
            etcd_ca: certs.join("ca.pem"),
            etcd_cert: certs.join("client.pem"),
            etcd_key: certs.join("client-key.pem"),
            node_prefix: 24,
            lease_ttl: Duration::from_secs(3),
        }
    }

    /// The same table as config text, for vpsctl.
    pub fn cluster_toml(&self, node: &str, private: Ipv4Addr, public: Ipv4Addr) -> String {
        let c = self.cluster(node, private, public);
        format!(
            "[cluster]\netcd = [{}]\nnode = \"{node}\"\nprivate_address = \"{private}\"\npublic_address = \"{public}\"\netcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\nlease_ttl = \"3s\"\n",
            self.endpoints()
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", "),
            c.etcd_ca.display(),
            c.etcd_cert.display(),
            c.etcd_key.display(),
        )
    }

    fn spawn(&mut self, i: usize) {
        let certs = self.certs();
        let initial = self.initial_cluster();
        let m = &self.members[i];
        let data = self.dir.path().join(format!("{}.etcd", m.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("member log");
        let mut cmd = match &m.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg("etcd");
                c
            }
            None => Command::new("etcd"),
        };
        let pem = |f: &str| certs.join(f).display().to_string();
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "sotolito-test"])
            .arg("--client-cert-auth")
            .args(["--trusted-ca-file", &pem("ca.pem")])
            .args(["--cert-file", &pem(&format!("{}.pem", m.name))])
            .args(["--key-file", &pem(&format!("{}-key.pem", m.name))])
            .arg("--peer-client-cert-auth")
            .args(["--peer-trusted-ca-file", &pem("ca.pem")])
            .args(["--peer-cert-file", &pem(&format!("{}.pem", m.name))])
            .args(["--peer-key-file", &pem(&format!("{}-key.pem", m.name))])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .expect("etcd starts (apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    /// `etcdctl` against member i (with the client certificate).
    pub fn etcdctl(&self, i: usize) -> Command {
        let certs = self.certs();
        let m = &self.members[i];
        let mut c = match &m.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg("etcdctl");
                c
            }
            None => Command::new("etcdctl"),
        };
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &m.client_url()])
            .arg("--cacert")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("client.pem"))
            .arg("--key")
            .arg(certs.join("client-key.pem"))
            .args(["--command-timeout", "10s", "--dial-timeout", "5s"]);
        c
    }

    /// The last lines of member i's log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits (20 s at most) until member i answers as healthy.
    pub fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self
                .etcdctl(i)
                .args(["endpoint", "health"])
                .output()
                .expect("etcdctl");
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(
                    self.dir
                        .path()
                        .join(format!("{}.log", self.members[i].name)),
                )
                .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "etcd member {} did not become healthy in 20 s: {}\nlog tail:\n{}",
                    self.members[i].name,
                    String::from_utf8_lossy(&out.stderr),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the current leader, as member i reports it.
    pub fn leader(&self, i: usize) -> usize {
        let out = self
            .etcdctl(i)
            .args(["endpoint", "status", "--cluster", "-w", "json"])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("status JSON");
        let leader = all[0]["Status"]["leader"].as_u64().expect("leader id");
        let me = all
            .iter()
            .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
            .expect("the leader among the members");
        let url = me["Endpoint"].as_str().expect("endpoint");
        self.members
            .iter()
            .position(|m| m.client_url() == url)
            .expect("the leader is one of ours")
    }

    /// Kills member i (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member i again on its old data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
