//! Three fleet nodes end to end (root): each node a network namespace with
//! its own state dir, an etcd member on its private address, `vpsctl
//! proxy` and `vpsctl net reconcile --watch` (routes and firewall from the
//! node list); a client namespace as the internet, linked to every node's
//! public address. Real tenants: a Debian one (sshd, nginx) on node 1, a
//! busybox one on node 2 that attacks.
//!
//! The fleet's range here is 198.19.0.0/16 and the nodes allow their
//! private network as an egress exception: outside the built-in deny list,
//! so that the fleet's own rule is the only thing between a tenant and
//! the other nodes (with the default 172.18.0.0/16 the deny list would
//! hide a missing rule).

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::nodes::Node;
use crate::proxy::{get, wait_for};
use crate::support::{Etcd, Lan};

const NETWORK: &str = "subnet = \"198.19.0.0/16\"\negress_allow = [\"10.89.0.0/24\"]\n";
const RANGE: &str = "198.19.0.0/16";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The internet: a client namespace with a bridge, and a link from it to
/// every node (`wan0` there, with the node's public address).
pub struct Internet {
    ns: String,
}

impl Internet {
    pub fn new(lan: &Lan) -> Internet {
        let ns = format!(
            "fne{}x{}-cl",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &ns]));
        let me = Internet { ns };
        let ns = &me.ns;
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        run(Command::new("ip").args(["-n", ns, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", ns, "addr", "add", "203.0.113.100/24", "dev", "br0"]));
        run(Command::new("ip").args(["-n", ns, "link", "set", "br0", "up"]));
        for (i, node_ns) in lan.nodes.iter().enumerate() {
            let port = format!("w{i}");
            run(Command::new("ip").args([
                "-n", ns, "link", "add", &port, "type", "veth", "peer", "name", "wan0", "netns",
                node_ns,
            ]));
            run(Command::new("ip").args(["-n", ns, "link", "set", &port, "master", "br0", "up"]));
            let addr = format!("{}/24", Node::public_address(i));
            run(Command::new("ip").args(["-n", node_ns, "addr", "add", &addr, "dev", "wan0"]));
            run(Command::new("ip").args(["-n", node_ns, "link", "set", "wan0", "up"]));
        }
        me
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns))
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg(program);
        c
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A long-running vpsctl of a node (proxy, route watch), its stderr in a
/// file; killed by PID on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(node: &Node, args: &[&str], log: PathBuf) -> Daemon {
        let child = node
            .cmd(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET / with `host` from inside the namespace at `ns`.
pub fn get_in(ns: &Path, addr: SocketAddr, host: &str) -> Option<(u16, String)> {
    sotolito_net::netns::run_in(ns, || Ok(get(addr, host))).unwrap()
}

/// What a TCP connection from the namespace at `ns` to `addr` reads
/// within 3 s (an SSH banner, say), or the error connecting.
pub fn probe_in(ns: &Path, addr: SocketAddr) -> Result<String, std::io::Error> {
    sotolito_net::netns::run_in(ns, || {
        Ok((|| {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })())
    })
    .unwrap()
}

/// The probe was dropped on the way: no answer at all (a refusal would
/// mean the packet reached something).
pub fn dropped(got: &Result<String, std::io::Error>) -> bool {
    matches!(got, Err(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

/// The routes sotolito made in a node (`ip route show proto 83`).
pub fn our_routes(node: &Node) -> String {
    let out = run(Command::new("nsenter")
        .arg(format!("--net={}", node.netns()))
        .args(["ip", "route", "show", "proto", "83"]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fleet of three nodes with etcd, proxies and route watches running.
pub struct Fleet {
    // Fields drop in order: daemons, then nodes (containers), then etcd,
    // the internet and the lan.
    pub proxies: Vec<Daemon>,
    pub watchers: Vec<Daemon>,
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    pub internet: Internet,
    pub _lan: Lan,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    pub fn new() -> Fleet {
        crate::common::require_root_and_tools();
        for (tool, package) in [("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "{tool} is missing: apt-get install {package}");
        }
        let lan = Lan::new(3);
        let etcd = Etcd::in_lan(&lan);
        let internet = Internet::new(&lan);
        let dir = tempfile::Builder::new()
            .prefix("sotolito-fleet-e2e")
            .tempdir()
            .unwrap();
        let nodes: Vec<Node> = (0..3)
            .map(|i| Node::with_network(&lan, &etcd, i, dir.path(), NETWORK))
            .collect();
        // Each node joins while the earlier ones' route watches run: they
        // learn of it from the watch, not from their first read.
        let watchers = nodes
            .iter()
            .map(|n| {
                n.ok(&["init"]);
                let d = Daemon::start(
                    n,
                    &["net", "reconcile", "--watch"],
                    dir.path().join(format!("{}-net.log", n.name)),
                );
                wait_for(&format!("{}'s route watch", n.name), || {
                    d.log().contains("following the fleet's nodes")
                });
                d
            })
            .collect::<Vec<_>>();
        // Node 1 heard of nodes 2 and 3 through its watch.
        wait_for("node 1's watch to see both other nodes", || {
            watchers[0]
                .log()
                .matches("the fleet's nodes changed")
                .count()
                >= 2
        });
        let proxies = nodes
            .iter()
            .map(|n| {
                Daemon::start(
                    n,
                    &["proxy"],
                    dir.path().join(format!("{}-proxy.log", n.name)),
                )
            })
            .collect();
        let fleet = Fleet {
            proxies,
            watchers,
            nodes,
            etcd,
            internet,
            _lan: lan,
            dir,
        };
        // Every node routes the other two nodes' subnets, via their
        // private addresses, from its own.
        for (i, n) in fleet.nodes.iter().enumerate() {
            wait_for(&format!("{}'s routes to the other nodes", n.name), || {
                let r = our_routes(n);
                (0..3)
                    .filter(|j| *j != i)
                    .all(|j| r.contains(&format!("via {} ", Lan::address(j))))
            });
            let r = our_routes(n);
            assert!(
                r.lines()
                    .all(|l| l.contains(&format!("src {}", Lan::address(i)))),
                "{r}"
            );
        }
        fleet
    }

    pub fn public(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::from((Node::public_address(i), port))
    }

    /// GET / with `host` from the internet through node i's proxy.
    pub fn get_via(&self, i: usize, host: &str) -> Option<(u16, String)> {
        get_in(&self.internet.path(), self.public(i, 80), host)
    }

    pub fn logs(&self) -> String {
        self.watchers
            .iter()
            .chain(&self.proxies)
            .map(|d| format!("--- {}\n{}", d.log.display(), d.log()))
            .collect()
    }

    /// An ed25519 key pair for ssh into tenants.
    pub fn key(&self) -> (PathBuf, PathBuf) {
        let key = self.dir.path().join("id_ed25519");
        if !key.exists() {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key));
        }
        (key.clone(), key.with_extension("pub"))
    }

    /// The Debian image (systemd, sshd, nginx) from the tarball the
    /// end-to-end tests cache, imported on node i.
    pub fn debian_image(&self, i: usize) {
        let tarball = std::env::var_os("SOTOLITO_DEBIAN_TARBALL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/sotolito/debian-bookworm.tar.gz"));
        if !tarball.is_file() {
            // debootstrap needs the mirror: run it in the test's own
            // namespace (it only downloads and writes files).
            let out = Command::new(env!("CARGO_BIN_EXE_vpsctl"))
                .arg("--config")
                .arg(self.nodes[i].config())
                .args(["image", "debootstrap", "deb", "--include", "nginx-light"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "vpsctl image debootstrap failed (apt-get install debootstrap; a route to the mirror): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Cached for the next run and the other end-to-end tests.
            let dir = tarball.parent().expect("cache dir");
            std::fs::create_dir_all(dir).unwrap();
            let tmp = tarball.with_extension(format!("tmp{}", std::process::id()));
            run(Command::new("tar")
                .arg("-czf")
                .arg(&tmp)
                .arg("-C")
                .arg(self.nodes[i].root.join("state/images/deb/rootfs"))
                .arg("."));
            std::fs::rename(&tmp, &tarball).unwrap();
            return;
        }
        self.nodes[i].ok(&["image", "import", "deb", tarball.to_str().unwrap()]);
    }

    /// ssh from the internet to node i's public address and `port`; bounded
    /// retries while sshd starts.
    pub fn ssh(&self, i: usize, port: u16, cmd: &str) -> String {
        let (key, _) = self.key();
        let mut last = String::new();
        for _ in 0..100 {
            let out = self
                .internet
                .cmd("ssh")
                .arg("-i")
                .arg(&key)
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
                    &port.to_string(),
                    &format!("root@{}", Node::public_address(i)),
                    cmd,
                ])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            last = text(&out);
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("ssh to node{} port {port} failed: {last}", i + 1);
    }
}

/// `nc -w 3 ADDR PORT` run inside tenant `name` of `node` (busybox): what
/// it read, and whether it connected.
fn nc_from_tenant(node: &Node, name: &str, addr: &str, port: u16, request: &str) -> (bool, String) {
    let script = format!("printf '{request}' | nc -w 3 {addr} {port}");
    let out = node.run(&["exec", name, "--", "sh", "-c", &script]);
    (out.status.success(), text(&out))
}

fn tenant_ip(node: &Node, name: &str) -> String {
    node.json(&["status", name])["ip"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn three_nodes_route_every_tenant_and_keep_tenants_apart() {
    let f = Fleet::new();
    let (n1, n2) = (&f.nodes[0], &f.nodes[1]);
    let (_, pubkey) = f.key();
    f.debian_image(0);
    n2.busybox_image();

    // A Debian tenant on node 1: sshd, and nginx on its HTTP port.
    let web = n1.json(&[
        "provision",
        "web",
        "--image",
        "deb",
        "--host",
        "web.test",
        "--ssh-key",
        pubkey.to_str().unwrap(),
        "--ssh-port",
        "2201",
        "--start",
    ]);
    assert_eq!(web["node"], "node1", "{web}");
    assert_eq!(web["ssh"], "203.0.113.1:2201", "{web}");
    let web_ip = web["ip"].as_str().unwrap().to_owned();
    let web_ip_v4: Ipv4Addr = web_ip.parse().unwrap();
    assert!(web_ip.starts_with("198.19."), "{web_ip}");
    // Real ssh through node 1's DNAT port, from the internet.
    assert_eq!(f.ssh(0, 2201, "hostname").trim(), "web");
    f.ssh(0, 2201, "echo web-on-node1 > /var/www/html/index.html");

    // Served by Host through every node's proxy: nodes 2 and 3 reach it
    // over their routes to node 1's subnet.
    for i in [1, 2, 0] {
        wait_for(&format!("web.test through node{}'s proxy", i + 1), || {
            f.get_via(i, "web.test") == Some((200, "web-on-node1\n".into()))
        });
    }

    // A busybox tenant on node 2: the attacker.
    n2.ok(&[
        "provision",
        "evil",
        "--image",
        "busybox",
        "--host",
        "evil.test",
        "--ssh-port",
        "2202",
        "--start",
    ]);
    let evil_gw = {
        let ip: Ipv4Addr = tenant_ip(n2, "evil").parse().unwrap();
        let o = ip.octets();
        format!("{}.{}.{}.1", o[0], o[1], o[2])
    };

    // Tenant on node 2 -> node 1's tenant and node 1 itself.
    // Controls: the same probe from the same tenant reaches node 1's
    // tenant the way the internet does (its DNAT port, the proxies).
    let (ok, out) = nc_from_tenant(n2, "evil", "203.0.113.1", 2201, "");
    assert!(
        ok && out.contains("SSH-2.0-OpenSSH"),
        "control: DNAT from a tenant: {out}"
    );
    let req = "GET / HTTP/1.0\\r\\nHost: web.test\\r\\n\\r\\n";
    let (ok, out) = nc_from_tenant(n2, "evil", &evil_gw, 80, req);
    assert!(
        ok && out.contains("web-on-node1"),
        "control: its own node's proxy: {out}"
    );
    let (ok, out) = nc_from_tenant(n2, "evil", "203.0.113.1", 80, req);
    assert!(
        ok && out.contains("web-on-node1"),
        "control: node 1's public proxy: {out}"
    );
    for (addr, port, what) in [
        (
            web_ip.as_str(),
            80,
            "node 1's tenant's HTTP port, past the proxy",
        ),
        (web_ip.as_str(), 22, "node 1's tenant's ssh"),
        ("10.89.0.1", 2379, "node 1's etcd on its private address"),
        ("10.89.0.1", 80, "node 1's proxy on its private address"),
        ("10.89.0.3", 22, "node 3's private address"),
    ] {
        let (ok, out) = nc_from_tenant(n2, "evil", addr, port, req);
        // Refused by node 2's firewall (ICMP admin-prohibited), not by
        // whatever is at the address.
        assert!(
            !ok && out.contains("No route to host"),
            "a tenant on node 2 reached {what} ({addr}:{port}): {out}"
        );
    }

    // Node 2's host -> node 1's tenant: its HTTP port only.
    let n2_ns = PathBuf::from(n2.netns());
    assert_eq!(
        get_in(&n2_ns, SocketAddr::from((web_ip_v4, 80)), "web.test"),
        Some((200, "web-on-node1\n".into())),
        "control: node 2 reaches node 1's tenant's HTTP port"
    );
    for port in [22, 8080, 2201] {
        let got = probe_in(&n2_ns, SocketAddr::from((web_ip_v4, port)));
        assert!(
            dropped(&got),
            "node 2's host reached node 1's tenant on port {port}: {got:?}"
        );
    }

    // The internet -> a tenant address through a node: dropped, even with
    // a route that sends the tenant range to node 1.
    run(f
        .internet
        .cmd("ip")
        .args(["route", "add", RANGE, "via", "203.0.113.1"]));
    let got = get_in(
        &f.internet.path(),
        SocketAddr::from((web_ip_v4, 80)),
        "web.test",
    );
    assert_eq!(
        got, None,
        "the internet reached node 1's tenant's HTTP port past the proxy"
    );
    for port in [80, 22] {
        let got = probe_in(&f.internet.path(), SocketAddr::from((web_ip_v4, port)));
        assert!(
            dropped(&got),
            "the internet reached node 1's tenant directly on port {port}: {got:?}"
        );
    }
    // Control: the same client still reaches it through the proxy and
    // the DNAT port.
    assert_eq!(
        f.get_via(0, "web.test"),
        Some((200, "web-on-node1\n".into()))
    );
    assert!(probe_in(&f.internet.path(), f.public(0, 2201))
        .is_ok_and(|b| b.starts_with("SSH-2.0-OpenSSH")));

    // `net reconcile` once: our routes only. A stale one of ours goes, a
    // route someone else made to a node's subnet stays and is named.
    let ip = |args: &[&str]| {
        run(Command::new("nsenter")
            .arg(format!("--net={}", n1.netns()))
            .arg("ip")
            .args(args))
    };
    let node3_subnet = f.nodes[2].json(&["init"])["node"]["subnet"]
        .as_str()
        .unwrap()
        .to_owned();
    ip(&[
        "route",
        "add",
        "198.19.200.0/24",
        "via",
        "10.89.0.2",
        "proto",
        "83",
    ]);
    ip(&["route", "del", &node3_subnet]);
    ip(&[
        "route",
        "add",
        &node3_subnet,
        "via",
        "10.89.0.3",
        "proto",
        "static",
    ]);
    let out = n1.run(&["net", "reconcile"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!("vpsctl: failed to reconcile the tenant network: a route to {node3_subnet} exists that sotolito did not make, so it cannot route it via 10.89.0.3 (that node's private address; remove the route and run vpsctl net reconcile again)")
    );
    let routes = our_routes(n1);
    assert!(
        !routes.contains("198.19.200.0/24"),
        "stale route of ours removed: {routes}"
    );
    assert!(!routes.contains(&node3_subnet), "{routes}");
    let all = String::from_utf8_lossy(&ip(&["route", "show", &node3_subnet]).stdout).into_owned();
    assert!(
        all.contains("via 10.89.0.3") && all.contains("proto static"),
        "left alone: {all}"
    );
    ip(&["route", "del", &node3_subnet]);
    let rep = n1.json(&["net", "reconcile"]);
    assert_eq!(rep["routes"].as_array().unwrap().len(), 2, "{rep}");
    assert_eq!(rep["foreign"], serde_json::json!([]), "{rep}");
    assert!(our_routes(n1).contains(&format!("{node3_subnet} via 10.89.0.3")));

    // The propagation figure's path, as a smoke (no timing asserted).
    n1.busybox_image();
    assert_eq!(propagation(&f, 2, "smoke").len(), 2);
    // Deprovision takes the tenant out of what other nodes may reach.
    let http_set = || {
        let out = run(Command::new("nsenter")
            .arg(format!("--net={}", n1.netns()))
            .args(["nft", "list", "set", "inet", "sotolito", "tenant_http"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let smoke_ip = tenant_ip(n1, "smoke0");
    assert!(
        http_set().contains(&format!("{smoke_ip} . 80")),
        "{}",
        http_set()
    );
    n1.ok(&["deprovision", "smoke0"]);
    assert!(
        !http_set().contains(&format!("{smoke_ip} . 80")),
        "{}",
        http_set()
    );
    assert!(
        http_set().contains(&format!("{web_ip} . 80")),
        "{}",
        http_set()
    );

    // `status` on another node says where to ssh.
    let st = n2.json(&["status", "web"]);
    assert_eq!(st["ssh"], "203.0.113.1:2201", "{st}");
    assert_eq!(st["state"], "remote", "{st}");
    let _ = f.logs();
}

fn hello(name: &str) -> Option<(u16, String)> {
    Some((200, format!("hello from {name}\n")))
}

/// Runs `vpsctl provision NAME --start` of a busybox tenant on `node`.
fn provision_busybox(node: &Node, name: &str, port: u16) -> std::process::Output {
    node.run(&[
        "provision",
        name,
        "--image",
        "busybox",
        "--host",
        &format!("{name}.test"),
        "--ssh-port",
        &port.to_string(),
        "--start",
    ])
}

fn runc_ids(node: &Node) -> Vec<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(node.root.join("run/runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_fleet_rides_out_etcd_outages_and_a_dead_node() {
    let mut f = Fleet::new();
    for n in &f.nodes {
        n.busybox_image();
    }
    for (i, name, port) in [(0, "alpha", 2301), (2, "gamma", 2303)] {
        let out = provision_busybox(&f.nodes[i], name, port);
        assert!(out.status.success(), "{}", text(&out));
    }
    for (host, via) in [("alpha", [0, 1, 2]), ("gamma", [0, 1, 2])] {
        for i in via {
            wait_for(&format!("{host} through node{}", i + 1), || {
                f.get_via(i, &format!("{host}.test")) == hello(host)
            });
        }
    }

    // One member down (node 3's): serving goes on, and a provision
    // succeeds and is routed everywhere.
    f.etcd.kill(2);
    for i in 0..3 {
        assert_eq!(f.get_via(i, "alpha.test"), hello("alpha"), "node{}", i + 1);
    }
    let out = provision_busybox(&f.nodes[1], "beta", 2302);
    assert!(
        out.status.success(),
        "provision with one member down: {}",
        text(&out)
    );
    for i in [2, 0] {
        wait_for(
            &format!("beta through node{} (one member down)", i + 1),
            || f.get_via(i, "beta.test") == hello("beta"),
        );
    }

    // Every member down: the proxies serve their last-known routes, and
    // provision fails on one line naming the store, leaving nothing.
    f.etcd.kill(0);
    f.etcd.kill(1);
    for d in &f.proxies {
        wait_for("the proxies to say their routes are stale", || {
            d.log().contains("stale")
        });
    }
    for (host, i) in [
        ("alpha", 1),
        ("alpha", 2),
        ("beta", 0),
        ("beta", 2),
        ("gamma", 0),
    ] {
        assert_eq!(
            f.get_via(i, &format!("{host}.test")),
            hello(host),
            "{host} through node{} with etcd down",
            i + 1
        );
    }
    let n1 = &f.nodes[0];
    let out = provision_busybox(n1, "delta", 2304);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("provision with every member down: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("vpsctl: failed to provision tenant delta: ")
            && err.contains("etcd store https://10.89.0.1:2379"),
        "{err}"
    );
    assert!(
        !n1.root.join("state/tenants/delta").exists(),
        "no tenant dir left"
    );
    assert!(
        !runc_ids(n1).contains(&"delta".to_owned()),
        "no container left"
    );
    assert!(
        !std::fs::read_dir(n1.root.join("etc/tenants"))
            .map(|d| d
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("delta")))
            .unwrap_or(false),
        "no unit environment left"
    );

    // etcd back: everything converges without a restart.
    for i in 0..3 {
        f.etcd.restart(i);
    }
    for i in 0..3 {
        f.etcd.wait_healthy(i);
    }
    let out = provision_busybox(n1, "delta", 2304);
    assert!(
        out.status.success(),
        "provision after etcd returned: {}",
        text(&out)
    );
    for i in [2, 1] {
        wait_for(
            &format!("delta through node{} after the outage", i + 1),
            || f.get_via(i, "delta.test") == hello("delta"),
        );
    }

    // Node 3 dies: its proxy, route watch and tenants stop, its links go
    // down. Its lease expires, the others keep serving theirs, and its
    // tenant shows as unreachable.
    f.proxies[2].kill();
    f.watchers[2].kill();
    for id in runc_ids(&f.nodes[2]) {
        run(Command::new("runc")
            .arg("--root")
            .arg(f.nodes[2].root.join("run/runc"))
            .args(["delete", "-f", &id]));
    }
    for link in ["eth0", "wan0"] {
        run(Command::new("nsenter")
            .arg(format!("--net={}", f.nodes[2].netns()))
            .args(["ip", "link", "set", link, "down"]));
    }
    wait_for("node3 to show down", || {
        f.nodes[0]
            .json(&["nodes"])
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "node3" && n["health"] == "down")
    });
    let nodes = f.nodes[1].json(&["nodes"]);
    let health: Vec<(&str, &str)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["health"].as_str().unwrap()))
        .collect();
    assert_eq!(
        health,
        [("node1", "up"), ("node2", "up"), ("node3", "down")]
    );
    for (host, i) in [
        ("alpha", 0),
        ("alpha", 1),
        ("beta", 0),
        ("beta", 1),
        ("delta", 1),
    ] {
        assert_eq!(
            f.get_via(i, &format!("{host}.test")),
            hello(host),
            "{host} through node{} with node3 dead",
            i + 1
        );
    }
    let list = f.nodes[0].json(&["list"]);
    let gamma = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gamma")
        .unwrap_or_else(|| panic!("node3's tenant is still listed: {list}"));
    assert_eq!(gamma["node"], "node3", "{gamma}");
    assert_eq!(gamma["state"], "unreachable", "{gamma}");
}

/// Provisions `count` busybox tenants on node 1 (`--start`, one after the
/// other) and returns, for each, the time from spawning the provision to
/// the first 200 through node 3's proxy, and the provision's own time.
/// Polls start every 10 ms on threads of their own, so that one request
/// stuck on an address that does not answer ARP yet delays none of the
/// others. The caller imported the busybox image on node 1.
fn propagation(f: &Fleet, count: usize, prefix: &str) -> Vec<(Duration, Duration)> {
    let ns = f.internet.path();
    let via = f.public(2, 80);
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let name = format!("{prefix}{k}");
        let host = format!("{name}.test");
        let port = (2400 + k).to_string();
        let t0 = Instant::now();
        let mut child = f.nodes[0]
            .cmd(&[
                "provision",
                &name,
                "--image",
                "busybox",
                "--host",
                &host,
                "--ssh-port",
                &port,
                "--disk",
                "unlimited",
                "--start",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let want = hello(&name);
        let mut provisioned = None;
        let served = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{name} not served within 60 s"
            );
            if provisioned.is_none() {
                if let Some(st) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                    assert!(st.success(), "provision {name}: {err}");
                    provisioned = Some(t0.elapsed());
                }
            }
            let (tx, ns, host, want) = (tx.clone(), ns.clone(), host.clone(), want.clone());
            std::thread::spawn(move || {
                if get_in(&ns, via, &host) == want {
                    let _ = tx.send(Instant::now());
                }
            });
            if let Ok(at) = rx.recv_timeout(Duration::from_millis(10)) {
                break at.duration_since(t0);
            }
        };
        let provisioned = match provisioned {
            Some(p) => p,
            None => {
                let st = child.wait().unwrap();
                assert!(st.success(), "provision {name}");
                t0.elapsed()
            }
        };
        out.push((served, provisioned));
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The route propagation figure, recorded in docs/architecture.md
/// "Fleet (etcd store)": `SOTOLITO_FIGURE_COUNT=50 cargo test --test
/// fleet route_propagation -- --nocapture`. CI runs it with 3 provisions:
/// each must be served through node 3's proxy; it prints the times and
/// asserts none.
#[test]
fn route_propagation() {
    let count: usize = std::env::var("SOTOLITO_FIGURE_COUNT")
        .ok()
        .map(|c| {
            c.parse()
                .ok()
                .filter(|n| *n > 0)
                .expect("SOTOLITO_FIGURE_COUNT: a number of provisions, 1 or more")
        })
        .unwrap_or(3);
    let f = Fleet::new();
    f.nodes[0].busybox_image();
    let before = loadavg();
    let runs = propagation(&f, count, "p");
    assert_eq!(runs.len(), count);
    let load_after = loadavg();
    let mut served: Vec<Duration> = runs.iter().map(|r| r.0).collect();
    let mut provisioned: Vec<Duration> = runs.iter().map(|r| r.1).collect();
    let mut after: Vec<Duration> = runs.iter().map(|r| r.0.saturating_sub(r.1)).collect();
    served.sort();
    provisioned.sort();
    after.sort();
    for (what, v) in [
        (
            "provision --start on node1 until 200 through node3's proxy",
            &served,
        ),
        ("the provision command itself", &provisioned),
        (
            "200 through node3's proxy after the provision returned",
            &after,
        ),
    ] {
        eprintln!(
            "{what}: n={} p50={:?} p99={:?} min={:?} max={:?}",
            v.len(),
            percentile(v, 50.0),
            percentile(v, 99.0),
            v[0],
            v[v.len() - 1]
        );
    }
    eprintln!("load average before: {before}; after: {load_after}");
}
