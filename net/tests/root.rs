//! Root tests: every test makes its own network namespaces (a "host", a
//! "client" acting as the internet) and `unshare -n sleep` children standing
//! in for containers, and removes them after, also on failure. Nothing here
//! touches the real host's interfaces, routes or firewall: the library runs
//! on threads that have entered the test's host namespace.
//!
//! These tests need root, nft, ip, unshare and nsenter, and fail (not skip)
//! without them.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sotolito_config::{HostConfig, ImageName, SshPort, Tenant, TenantName};
use sotolito_net::netns::run_in;
use sotolito_net::sandbox::{self, End, Netns};

const HOST_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const TIMEOUT: Duration = Duration::from_millis(1500);

fn require_root_and_tools() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (they create network namespaces); run them as root"
    );
    for (tool, args, package) in [
        ("nft", &["--version"][..], "nftables"),
        ("ip", &["-V"][..], "iproute2"),
        ("unshare", &["--version"][..], "util-linux"),
        ("nsenter", &["--version"][..], "util-linux"),
        ("python3", &["--version"][..], "python3"),
        ("bridge", &["-V"][..], "iproute2"),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "{tool} is missing: apt-get install {package}");
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_out(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace of this test run (`sotolito-test-ROLE-PID-N`), from the
/// sandbox that `vpsctl demo` uses too.
fn netns(role: &str) -> Netns {
    Netns::unique(&format!("sotolito-test-{role}")).unwrap()
}

/// Commands that read the namespace's own /sys (`/sys/class/net`) need
/// `ip netns exec`, which mounts it; nothing here mounts anything.
trait Exec {
    fn exec(&self, args: &[&str]) -> String;
}

impl Exec for Netns {
    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", self.name()];
        v.extend_from_slice(args);
        sh_out(&v)
    }
}

/// A process in a fresh network namespace, standing in for a container;
/// killed (by its PID) on drop.
struct Container {
    child: Child,
}

impl Container {
    fn start() -> Container {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare -n sleep");
        let c = Container { child };
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        // Bounded: unshare has created its namespace within milliseconds.
        for _ in 0..200 {
            if let Ok(ns) = std::fs::read_link(c.ns_path()) {
                if ns != ours {
                    return c;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("unshare -n did not enter a new network namespace");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    fn exec(&self, args: &[&str]) -> String {
        let t = format!("{}", self.pid());
        let mut v = vec!["nsenter", "-t", &t, "-n"];
        v.extend_from_slice(args);
        sh_out(&v)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tenant(name: &str, ip: Ipv4Addr, port: u64) -> Tenant {
    Tenant::new(
        TenantName::new(name).unwrap(),
        ImageName::new("busybox").unwrap(),
        ip,
        SshPort::new(port).unwrap(),
        HostConfig::default().defaults.limits(),
    )
}

/// The tenants of the config's registry: what vpsctl hands net when our
/// tables must be rebuilt.
fn from_registry(c: &HostConfig) -> Result<Vec<Tenant>, sotolito_net::Error> {
    Ok(sotolito_config::Registry::new(c.registry_dir()).list()?)
}

fn config(state: &Path) -> HostConfig {
    let mut c = HostConfig::default();
    c.paths.state_dir = state.to_owned();
    c
}

/// Runs `f` in the namespace at `ns`, panicking on a library error.
fn inside<T: Send>(ns: &Path, f: impl FnOnce() -> Result<T, sotolito_net::Error> + Send) -> T {
    run_in(ns, f).unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

/// A listener in `ns` on `port` that answers each connection with
/// "TAG PEER_IP\n": the address the server sees.
fn serve(ns: &Path, port: u16, tag: &'static str) {
    let listener = inside(ns, || {
        Ok(TcpListener::bind(("0.0.0.0", port)).expect("bind test listener"))
    });
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(conn, "{tag} {peer}");
        }
    });
}

/// Connects from namespace `ns` (optionally from source address `from`)
/// and returns what the server said.
fn talk(ns: &Path, to: SocketAddrV4, from: Option<Ipv4Addr>) -> Result<String, String> {
    run_in(ns, || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if let Some(ip) = from {
            sock.bind(&SocketAddr::from((ip, 0)).into())
                .expect("bind source");
        }
        let r = sock
            .connect_timeout(&SocketAddr::V4(to).into(), TIMEOUT)
            .and_then(|()| {
                let mut s: TcpStream = sock.into();
                s.set_read_timeout(Some(TIMEOUT))?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text.trim().to_owned())
            })
            .map_err(|e| e.to_string());
        Ok(r)
    })
    .expect("enter namespace")
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// A veth named `host_if` in `host` with `host_addr` (a /24) and its peer
/// `eth0` in `other` with `other_addr`, both up.
fn wire(host: &Netns, host_if: &str, host_addr: &str, other: &Netns, other_addr: &str) {
    sandbox::wire(
        End {
            ns: host,
            ifname: host_if,
            addr: host_addr.parse().unwrap(),
        },
        End {
            ns: other,
            ifname: "eth0",
            addr: other_addr.parse().unwrap(),
        },
    )
    .unwrap();
}

/// A listener in `ns` on `port` that keeps every connection open (until
/// the test ends): what a tenant's connection cap counts.
fn hold(ns: &Path, port: u16) {
    let listener = inside(ns, || {
        Ok(TcpListener::bind(("0.0.0.0", port)).expect("bind holding listener"))
    });
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for conn in listener.incoming().flatten() {
            kept.push(conn);
        }
    });
}

/// A connection from namespace `ns` to `to`, left open.
fn open(ns: &Path, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    run_in(ns, || {
        Ok(TcpStream::connect_timeout(&SocketAddr::V4(to), TIMEOUT))
    })
    .expect("enter namespace")
}

/// Sends, from `eth0` of the namespace of `pid` (a raw socket, as a root
/// tenant with CAP_NET_RAW can), one frame to each link-local group address
/// the bridge consumes (STP 00, 802.1X 03, LLDP 0e) with source MAC `src`.
fn send_link_local(pid: u32, src: &str) {
    const SENDER: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
        s.bind(('eth0', 0))\n\
        src = bytes.fromhex(sys.argv[1].replace(':', ''))\n\
        for d in ('0180c2000000', '0180c2000003', '0180c200000e'):\n\
        \x20   s.send(bytes.fromhex(d) + src + bytes.fromhex('88cc') + bytes(46))\n";
    let t = pid.to_string();
    let out = Command::new("nsenter")
        .args(["-t", &t, "-n", "python3", "-c", SENDER, src])
        .output()
        .expect("python3 is missing: apt-get install python3");
    assert!(
        out.status.success(),
        "the raw frame sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends, from `eth0` of the namespace of `pid`, a gratuitous ARP reply
/// (to broadcast, from the port's own MAC) that says "`ip` is at
/// `sender_mac`".
fn send_arp(pid: u32, own_mac: &str, sender_mac: &str, ip: Ipv4Addr) {
    const SENDER: &str = "import socket, sys\n\
        mac = lambda m: bytes.fromhex(m.replace(':', ''))\n\
        ip = socket.inet_aton(sys.argv[3])\n\
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
        s.bind(('eth0', 0))\n\
        arp = bytes.fromhex('0001080006040002') + mac(sys.argv[2]) + ip + b'\\xff' * 6 + ip\n\
        s.send(b'\\xff' * 6 + mac(sys.argv[1]) + bytes.fromhex('0806') + arp + bytes(18))\n";
    let t = pid.to_string();
    let ip = ip.to_string();
    let out = Command::new("nsenter")
        .args([
            "-t", &t, "-n", "python3", "-c", SENDER, own_mac, sender_mac, &ip,
        ])
        .output()
        .expect("python3 is missing: apt-get install python3");
    assert!(
        out.status.success(),
        "the ARP sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn neighbour(ns: &Netns, ip: Ipv4Addr) -> String {
    ns.exec(&["ip", "neigh", "show", &ip.to_string(), "dev", "sotolito0"])
}

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    ns.exec(&[
        "cat",
        &format!("/sys/class/net/{dev}/statistics/rx_packets"),
    ])
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn rendered_ruleset_loads_in_nft() {
    require_root_and_tools();
    let ns = netns("nftc");
    let state = tempfile::tempdir().unwrap();
    let c = config(state.path());
    let ts: Vec<_> = (0..100u32)
        .map(|i| {
            tenant(
                &format!("tenant-with-a-long-name-{i}"),
                Ipv4Addr::from(0xac12_0002 + i),
                2200 + u64::from(i),
            )
        })
        .collect();
    let script = sotolito_net::render_ruleset(&c, &ts);
    inside(&ns.path(), || sotolito_net::nft::check_ruleset(&script));
    inside(&ns.path(), || {
        sotolito_net::nft::check_ruleset(&sotolito_net::render_ruleset(&c, &[]))
    });
    // Applied twice: the same ruleset, nothing duplicated.
    inside(&ns.path(), || sotolito_net::nft::apply_ruleset(&script));
    let once = ns.exec(&["nft", "list", "ruleset"]);
    inside(&ns.path(), || sotolito_net::nft::apply_ruleset(&script));
    let twice = ns.exec(&["nft", "list", "ruleset"]);
    assert_eq!(once, twice);
    assert_eq!(once.matches("masquerade").count(), 2, "{once}");
}

#[test]
fn bridge_with_another_address_is_refused() {
    require_root_and_tools();
    let ns = netns("br");
    let state = tempfile::tempdir().unwrap();
    let c = config(state.path());
    let n = ns.name();
    sh(&["ip", "-n", n, "link", "add", "sotolito0", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        n,
        "addr",
        "add",
        "10.1.0.1/24",
        "dev",
        "sotolito0",
    ]);
    let err = run_in(&ns.path(), || sotolito_net::reconcile(&c, &[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "bridge sotolito0 exists with address 10.1.0.1/24, not 172.18.0.1/16 (remove it or set network.bridge)"
    );
    let ns2 = netns("br2");
    sh(&[
        "ip",
        "-n",
        ns2.name(),
        "link",
        "add",
        "sotolito0",
        "type",
        "veth",
        "peer",
        "name",
        "other0",
    ]);
    let err = run_in(&ns2.path(), || sotolito_net::reconcile(&c, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a bridge"), "{err}");
}

/// The whole picture: a host, the internet, two tenants.
#[test]
fn tenant_traffic() {
    require_root_and_tools();
    let host = netns("host");
    let client = netns("client");
    let state = tempfile::tempdir().unwrap();
    let c = config(state.path());
    let gw = c.network.gateway();

    // The internet: a veth between client and host, TEST-NET-2
    // (198.51.100.0/24): public, so the egress deny list cannot hide a
    // broken test.
    wire(&host, "pub0", "198.51.100.1/24", &client, "198.51.100.2/24");
    // The hairpin rule must do the work, not br_netfilter (docs/facts.md
    // "Hairpin").
    host.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);

    let a = tenant("alpha", Ipv4Addr::new(172, 18, 0, 2), 2201);
    let b = tenant("beta", Ipv4Addr::new(172, 18, 0, 3), 2202);
    let tenants = vec![a.clone(), b.clone()];
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));
    assert_eq!(
        host.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );

    let ca = Container::start();
    let cb = Container::start();
    inside(&host.path(), || {
        sotolito_net::attach(&c, &a, ca.pid(), || from_registry(&c))
    });
    inside(&host.path(), || {
        sotolito_net::attach(&c, &b, cb.pid(), || from_registry(&c))
    });
    // Idempotent: a second attach converges without breaking anything.
    inside(&host.path(), || {
        sotolito_net::attach(&c, &a, ca.pid(), || from_registry(&c))
    });
    let veths = inside(&host.path(), sotolito_net::host_veths);
    assert_eq!(
        veths.into_iter().collect::<Vec<_>>(),
        vec!["sv-alpha", "sv-beta"]
    );
    let port = host.exec(&["bridge", "-d", "link", "show", "dev", "sv-alpha"]);
    assert!(port.contains("isolated on"), "{port}");
    assert!(ca
        .exec(&["ip", "-4", "addr", "show", "eth0"])
        .contains("172.18.0.2/16"));
    assert!(ca
        .exec(&["ip", "route"])
        .contains("default via 172.18.0.1 dev eth0"));

    serve(&ca.ns_path(), 22, "alpha");
    serve(&cb.ns_path(), 22, "beta");
    serve(&host.path(), 22, "host-sshd");
    serve(&host.path(), 80, "proxy-http");
    serve(&host.path(), 9180, "proxy-admin");
    serve(&client.path(), 8080, "internet");

    let from_client = |port| talk(&client.path(), addr(HOST_PUBLIC, port), None);
    let check_all = |stage: &str| {
        // client -> host:portA reaches A, which sees the client's address.
        assert_eq!(
            from_client(2201).as_deref(),
            Ok("alpha 198.51.100.2"),
            "{stage}"
        );
        assert_eq!(
            from_client(2202).as_deref(),
            Ok("beta 198.51.100.2"),
            "{stage}"
        );
        // The same from the host itself (output chain).
        assert!(
            talk(&host.path(), addr(HOST_PUBLIC, 2201), None)
                .is_ok_and(|s| s.starts_with("alpha ")),
            "{stage}"
        );
        // Hairpin: B -> host:portA reaches A (masqueraded to the gateway).
        assert_eq!(
            talk(&cb.ns_path(), addr(HOST_PUBLIC, 2201), None).as_deref(),
            Ok("alpha 172.18.0.1"),
            "{stage}"
        );
        assert_eq!(
            talk(&cb.ns_path(), addr(gw, 2201), None).as_deref(),
            Ok("alpha 172.18.0.1"),
            "{stage}"
        );
        // The host reaches a tenant's address directly (the proxy's path).
        assert_eq!(
            talk(&host.path(), addr(a.ip, 22), None).as_deref(),
            Ok("alpha 172.18.0.1"),
            "{stage}"
        );
        // Egress reaches the internet from the host's address.
        assert_eq!(
            talk(&ca.ns_path(), addr(CLIENT, 8080), None).as_deref(),
            Ok("internet 198.51.100.1"),
            "{stage}"
        );
        // A reaches its own port through the host (hairpin to itself), and
        // the proxy on the host's public address (sites by name).
        assert!(
            talk(&ca.ns_path(), addr(HOST_PUBLIC, 2201), None)
                .is_ok_and(|s| s.starts_with("alpha ")),
            "{stage}"
        );
        assert!(
            talk(&ca.ns_path(), addr(HOST_PUBLIC, 80), None)
                .is_ok_and(|s| s.starts_with("proxy-http ")),
            "{stage}"
        );
        // The proxy's public port on the gateway: yes.
        assert_eq!(
            talk(&ca.ns_path(), addr(gw, 80), None).as_deref(),
            Ok("proxy-http 172.18.0.2"),
            "{stage}"
        );
    };
    check_all("after reconcile");

    // Isolation: A never reaches B directly (layer 2: isolated ports) ...
    assert!(talk(&ca.ns_path(), addr(b.ip, 22), None).is_err());
    // ... nor the host's sshd or the proxy's admin port on the gateway.
    assert!(talk(&ca.ns_path(), addr(gw, 22), None).is_err());
    assert!(talk(&ca.ns_path(), addr(gw, 9180), None).is_err());
    assert!(talk(&ca.ns_path(), addr(HOST_PUBLIC, 22), None).is_err());
    // ... nor routed through the host (forward chain).
    ca.exec(&["ip", "route", "add", "172.18.0.3/32", "via", "172.18.0.1"]);
    assert!(talk(&ca.ns_path(), addr(b.ip, 22), None).is_err());
    // A cannot send with B's address: with it on eth0 and bound as the
    // source, even the proxy port (allowed above) stays silent.
    ca.exec(&["ip", "addr", "add", "172.18.0.3/32", "dev", "eth0"]);
    // A probe that counts what reaches the host's IP stack with B's address
    // (B itself never talks to port 80): the spoofed SYN must not.
    host.exec(&[
        "nft",
        "add table inet probe; add chain inet probe pre { type filter hook prerouting priority -400; }; add rule inet probe pre ip saddr 172.18.0.3 tcp dport 80 counter",
    ]);
    assert!(talk(&ca.ns_path(), addr(gw, 80), Some(b.ip)).is_err());
    let probe = host.exec(&["nft", "list", "table", "inet", "probe"]);
    assert!(
        probe.contains("packets 0 "),
        "a spoofed packet got through: {probe}"
    );
    host.exec(&["nft", "delete", "table", "inet", "probe"]);
    assert!(talk(&ca.ns_path(), addr(gw, 80), Some(a.ip)).is_ok());
    ca.exec(&["ip", "addr", "del", "172.18.0.3/32", "dev", "eth0"]);
    // Nor with B's MAC: the bridge must not learn it on A's port, or the
    // host's frames for B (its SSH forward) would go to A.
    let b_mac = "02:73:ac:12:00:03";
    ca.exec(&["ip", "link", "set", "eth0", "address", b_mac]);
    assert!(talk(&ca.ns_path(), addr(gw, 80), None).is_err());
    let fdb = host.exec(&["bridge", "fdb", "show", "dev", "sv-alpha"]);
    assert!(
        !fdb.contains(b_mac),
        "the bridge learned B's MAC on A's port: {fdb}"
    );
    assert_eq!(from_client(2202).as_deref(), Ok("beta 198.51.100.2"));
    ca.exec(&["ip", "link", "set", "eth0", "address", "02:73:ac:12:00:02"]);
    ca.exec(&["ip", "route", "del", "172.18.0.3/32"]);

    // One element out and back in.
    inside(&host.path(), || sotolito_net::remove_forward(&c, &a));
    inside(&host.path(), || sotolito_net::remove_forward(&c, &a));
    assert!(from_client(2201).is_err());
    let live = inside(&host.path(), || sotolito_net::live_forwards(&c)).unwrap();
    assert!(
        !live.contains_key(&2201) && live.contains_key(&2202),
        "{live:?}"
    );
    inside(&host.path(), || {
        sotolito_net::add_forward(&c, &a, || from_registry(&c))
    });
    inside(&host.path(), || {
        sotolito_net::add_forward(&c, &a, || from_registry(&c))
    });
    assert_eq!(from_client(2201).as_deref(), Ok("alpha 198.51.100.2"));

    // After `nft flush ruleset`, reconcile restores everything.
    host.exec(&["nft", "flush", "ruleset"]);
    assert!(from_client(2201).is_err());
    let before = host.exec(&["nft", "list", "ruleset"]);
    assert!(before.trim().is_empty(), "{before}");
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));
    let once = host.exec(&["nft", "list", "ruleset"]);
    check_all("after flush and reconcile");
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));
    assert_eq!(once, host.exec(&["nft", "list", "ruleset"]));

    // A lost forward comes back when the tenant starts (attach).
    inside(&host.path(), || sotolito_net::remove_forward(&c, &a));
    inside(&host.path(), || {
        sotolito_net::attach(&c, &a, ca.pid(), || from_registry(&c))
    });
    assert_eq!(from_client(2201).as_deref(), Ok("alpha 198.51.100.2"));

    // Detach removes the host end; twice is fine; attach again works.
    inside(&host.path(), || sotolito_net::detach(&c, &a.name));
    inside(&host.path(), || sotolito_net::detach(&c, &a.name));
    assert!(!host.exec(&["ip", "link"]).contains("sv-alpha"));
    assert!(from_client(2201).is_err());
    inside(&host.path(), || {
        sotolito_net::attach(&c, &a, ca.pid(), || from_registry(&c))
    });
    assert_eq!(from_client(2201).as_deref(), Ok("alpha 198.51.100.2"));

    // A restart: a new container for the same tenant, without a detach (the
    // old veth is stale); reachable at once (its MAC follows its address).
    drop(ca);
    let ca2 = Container::start();
    serve(&ca2.ns_path(), 22, "alpha2");
    inside(&host.path(), || {
        sotolito_net::attach(&c, &a, ca2.pid(), || from_registry(&c))
    });
    assert_eq!(from_client(2201).as_deref(), Ok("alpha2 198.51.100.2"));
}

#[test]
fn add_forward_rebuilds_missing_tables_from_the_registry() {
    require_root_and_tools();
    let ns = netns("addfwd");
    let state = tempfile::tempdir().unwrap();
    let c = config(state.path());
    let reg = sotolito_config::Registry::new(c.registry_dir());
    let lock = reg.lock().unwrap();
    let a = tenant("alpha", Ipv4Addr::new(172, 18, 0, 2), 2201);
    let b = tenant("beta", Ipv4Addr::new(172, 18, 0, 3), 2202);
    reg.put(&lock, &a).unwrap();
    drop(lock);
    inside(&ns.path(), || {
        sotolito_net::add_forward(&c, &b, || from_registry(&c))
    });
    let live = inside(&ns.path(), || sotolito_net::live_forwards(&c)).unwrap();
    assert_eq!(live.keys().copied().collect::<Vec<_>>(), vec![2201, 2202]);
    // A stale element for the port is replaced, not an error.
    let mut moved = b.clone();
    moved.ip = Ipv4Addr::new(172, 18, 0, 9);
    inside(&ns.path(), || {
        sotolito_net::add_forward(&c, &moved, || from_registry(&c))
    });
    let live = inside(&ns.path(), || sotolito_net::live_forwards(&c)).unwrap();
    assert_eq!(live[&2202].ip, moved.ip);
    // Removing with the old address leaves the other tenant's element,
    // but takes the old address's anti-spoofing element.
    inside(&ns.path(), || sotolito_net::remove_forward(&c, &b));
    let live = inside(&ns.path(), || sotolito_net::live_forwards(&c)).unwrap();
    assert_eq!(live[&2202].ip, moved.ip);
    let set = ns.exec(&["nft", "list", "set", "bridge", "sotolito", "tenant_addrs"]);
    assert!(
        !set.contains("172.18.0.3") && set.contains("172.18.0.9"),
        "{set}"
    );
    // A changed connection cap replaces the tenant's element; removal
    // takes it whatever cap it names.
    let caps = || ns.exec(&["nft", "list", "map", "inet", "sotolito", "conn_caps"]);
    assert!(caps().contains("172.18.0.9 : jump cap_4096"), "{}", caps());
    moved.limits.connections = Some(32);
    inside(&ns.path(), || {
        sotolito_net::add_forward(&c, &moved, || from_registry(&c))
    });
    inside(&ns.path(), || {
        sotolito_net::add_forward(&c, &moved, || from_registry(&c))
    });
    assert!(caps().contains("172.18.0.9 : jump cap_32"), "{}", caps());
    assert_eq!(caps().matches("172.18.0.9").count(), 1, "{}", caps());
    moved.limits.connections = None;
    inside(&ns.path(), || sotolito_net::remove_forward(&c, &moved));
    assert!(!caps().contains("172.18.0.9"), "{}", caps());
    assert!(caps().contains("172.18.0.2 : jump cap_4096"), "{}", caps());
}

#[test]
fn ensure_creates_what_is_missing_and_keeps_what_exists() {
    require_root_and_tools();
    let ns = netns("ensure");
    let state = tempfile::tempdir().unwrap();
    let c = config(state.path());
    let reg = sotolito_config::Registry::new(c.registry_dir());
    let lock = reg.lock().unwrap();
    reg.put(&lock, &tenant("alpha", Ipv4Addr::new(172, 18, 0, 2), 2201))
        .unwrap();
    drop(lock);
    assert_eq!(inside(&ns.path(), || sotolito_net::live_forwards(&c)), None);
    inside(&ns.path(), || {
        sotolito_net::ensure(&c, || from_registry(&c))
    });
    let live = inside(&ns.path(), || sotolito_net::live_forwards(&c)).unwrap();
    assert_eq!(live.keys().copied().collect::<Vec<_>>(), vec![2201]);
    assert!(ns
        .exec(&["ip", "-4", "addr", "show", "sotolito0"])
        .contains("172.18.0.1/16"));
    // Existing tables are left alone (reconcile is the command that replaces).
    ns.exec(&[
        "nft",
        "add",
        "element",
        "inet",
        "sotolito",
        "ssh_ports",
        "{ 2999 : 172.18.0.99 . 22 }",
    ]);
    inside(&ns.path(), || {
        sotolito_net::ensure(&c, || from_registry(&c))
    });
    let live = inside(&ns.path(), || sotolito_net::live_forwards(&c)).unwrap();
    assert!(live.contains_key(&2999));
    inside(&ns.path(), || {
        sotolito_net::reconcile(
            &c,
            &sotolito_config::Registry::new(c.registry_dir()).list()?,
        )
    });
    let live = inside(&ns.path(), || sotolito_net::live_forwards(&c)).unwrap();
    assert_eq!(live.keys().copied().collect::<Vec<_>>(), vec![2201]);
}

/// The environment that turns this test binary into a runc hook.
const HOOK_VERB: &str = "SOTOLITO_NET_TEST_HOOK";
const HOOK_STATE: &str = "SOTOLITO_NET_TEST_STATE";

/// The hook side of [`runc_hooks_attach_and_detach`]: runc runs this
/// binary as `createRuntime` and `poststop` hook with the OCI state on
/// stdin, as it runs `vpsctl net attach|detach`. Without the environment it
/// has nothing to do.
#[test]
fn runc_hook() {
    let Ok(verb) = std::env::var(HOOK_VERB) else {
        return;
    };
    let c = config(Path::new(&std::env::var(HOOK_STATE).unwrap()));
    let a = tenant("alpha", Ipv4Addr::new(172, 18, 0, 2), 2201);
    let mut state = String::new();
    std::io::stdin().read_to_string(&mut state).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    match verb.as_str() {
        "attach" => {
            let pid = u32::try_from(state["pid"].as_u64().expect("pid in the OCI state")).unwrap();
            sotolito_net::attach(&c, &a, pid, || from_registry(&c)).unwrap();
        }
        "detach" => sotolito_net::detach(&c, &a.name).unwrap(),
        other => panic!("unknown hook verb {other}"),
    }
}

/// A runc container, deleted (by its id) on drop.
struct Runc {
    root: PathBuf,
    id: String,
    netns: String,
}

impl Runc {
    fn cmd(&self, args: &[&str]) -> Command {
        // nsenter, not `ip netns exec`: that remounts /sys, hiding the
        // cgroup mounts runc needs.
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["runc", "--root"])
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) {
        // Not a pipe: `runc run -d` hands its stdio to the container, and
        // reading a pipe would wait for the container to exit (docs/facts.md
        // "runc").
        let log = self.root.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let status = self.cmd(args).stderr(file).status().unwrap();
        assert!(
            status.success(),
            "runc {args:?} failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = self.cmd(&["delete", "--force", &self.id]).status();
    }
}

#[test]
fn runc_hooks_attach_and_detach() {
    require_root_and_tools();
    for tool in ["runc", "busybox"] {
        assert!(
            Command::new(tool)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "{tool} is missing: apt-get install {}",
            if tool == "runc" {
                "runc"
            } else {
                "busybox-static"
            }
        );
    }
    let host = netns("runc");
    let client = netns("runc-client");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let c = config(&state);
    wire(&host, "pub0", "198.51.100.1/24", &client, "198.51.100.2/24");
    let a = tenant("alpha", Ipv4Addr::new(172, 18, 0, 2), 2201);
    inside(&host.path(), || {
        sotolito_net::reconcile(&c, std::slice::from_ref(&a))
    });

    // A busybox bundle whose hooks are this test binary.
    let bundle = tmp.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let hook = |verb: &str| {
        serde_json::json!({
            "path": exe,
            "args": [exe, "--exact", "runc_hook", "--nocapture", "--test-threads=1"],
            "env": [format!("{HOOK_VERB}={verb}"), format!("{HOOK_STATE}={}", state.display())],
        })
    };
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/sleep", "60"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "alpha",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "mode=755", "size=1m"] }
        ],
        "hooks": { "createRuntime": [hook("attach")], "poststop": [hook("detach")] },
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" }
            ]
        }
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();

    let runc = Runc {
        root: tmp.path().join("runc"),
        id: format!("sotolito-net-test-{}", std::process::id()),
        netns: host.name().to_owned(),
    };
    runc.run(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &runc.id]);
    let out = runc
        .cmd(&["state", &runc.id])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = st["pid"].as_u64().expect("runc state has a pid");
    let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    serve(&ns, 22, "alpha-runc");
    assert_eq!(
        talk(&client.path(), addr(HOST_PUBLIC, 2201), None).as_deref(),
        Ok("alpha-runc 198.51.100.2")
    );
    assert!(host.exec(&["ip", "link"]).contains("sv-alpha"));

    // Delete runs the poststop hook: the host end goes.
    runc.run(&["kill", &runc.id, "KILL"]);
    // Bounded: runc delete refuses a container that is still stopping.
    let mut deleted = false;
    for _ in 0..50 {
        if runc.cmd(&["delete", &runc.id]).status().unwrap().success() {
            deleted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(deleted, "runc delete did not succeed");
    assert!(!host.exec(&["ip", "link"]).contains("sv-alpha"));
}

#[test]
fn works_from_inside_a_tokio_runtime() {
    require_root_and_tools();
    let ns = netns("tokio");
    let state = tempfile::tempdir().unwrap();
    let c = config(state.path());
    inside(&ns.path(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { sotolito_net::reconcile(&c, &[]) })
    });
    // In the test's namespace (the helper thread inherits it), not ours.
    assert!(ns.exec(&["ip", "link"]).contains("sotolito0"));
}

#[test]
fn parallel_attach_at_boot_converges() {
    require_root_and_tools();
    let host = netns("parallel");
    let state = tempfile::tempdir().unwrap();
    let c = config(state.path());
    let tenants: Vec<Tenant> = (0..6u8)
        .map(|i| {
            tenant(
                &format!("t{i}"),
                Ipv4Addr::new(172, 18, 1, 10 + i),
                2300 + u64::from(i),
            )
        })
        .collect();
    let containers: Vec<Container> = tenants.iter().map(|_| Container::start()).collect();
    // No bridge and no tables yet: every hook races to make them.
    std::thread::scope(|s| {
        for (t, ct) in tenants.iter().zip(&containers) {
            let (c, path) = (&c, host.path());
            s.spawn(move || {
                inside(&path, || {
                    sotolito_net::attach(c, t, ct.pid(), || from_registry(c))
                })
            });
        }
    });
    let veths = inside(&host.path(), sotolito_net::host_veths);
    assert_eq!(veths.len(), 6, "{veths:?}");
    let addrs = host.exec(&["ip", "-4", "addr", "show", "sotolito0"]);
    assert_eq!(addrs.matches("inet ").count(), 1, "{addrs}");
}

/// Edge containment: no MAC theft on the bridge, egress only to public
/// networks, the forward policy, per-tenant connection caps, and the
/// output DNAT leaving loopback alone. Every refusal has its control.
#[test]
fn edge_containment() {
    require_root_and_tools();
    let host = netns("edge-host");
    let client = netns("edge-client");
    // A network routed beyond the host on its private side, holding the
    // cloud metadata address too.
    let beyond = netns("edge-beyond");
    let state = tempfile::tempdir().unwrap();
    let mut c = config(state.path());
    // Tenants' resolvers: one beyond the host, one on the host itself.
    c.network.tenant_dns = vec![Ipv4Addr::new(10, 20, 0, 2), Ipv4Addr::new(10, 20, 0, 1)];
    wire(&host, "pub0", "198.51.100.1/24", &client, "198.51.100.2/24");
    wire(&host, "priv0", "10.20.0.1/24", &beyond, "10.20.0.2/24");
    sh(&[
        "ip",
        "-n",
        beyond.name(),
        "addr",
        "add",
        "169.254.169.254/32",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        beyond.name(),
        "route",
        "add",
        "default",
        "via",
        "10.20.0.1",
    ]);
    sh(&[
        "ip",
        "-n",
        host.name(),
        "route",
        "add",
        "169.254.169.254/32",
        "via",
        "10.20.0.2",
    ]);
    sh(&[
        "ip",
        "-n",
        client.name(),
        "route",
        "add",
        "10.20.0.0/24",
        "via",
        "198.51.100.1",
    ]);
    host.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);

    let mut a = tenant("alpha", Ipv4Addr::new(172, 18, 0, 2), 2201);
    a.limits.connections = Some(16);
    let b = tenant("beta", Ipv4Addr::new(172, 18, 0, 3), 2202);
    let tenants = vec![a.clone(), b.clone()];
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));
    let ca = Container::start();
    let cb = Container::start();
    inside(&host.path(), || {
        sotolito_net::attach(&c, &a, ca.pid(), || from_registry(&c))
    });
    inside(&host.path(), || {
        sotolito_net::attach(&c, &b, cb.pid(), || from_registry(&c))
    });
    serve(&ca.ns_path(), 22, "alpha");
    serve(&cb.ns_path(), 22, "beta");
    serve(&client.path(), 8080, "internet");
    serve(&client.path(), 25, "smtp");
    hold(&client.path(), 8081);
    serve(&beyond.path(), 8080, "private");
    serve(&beyond.path(), 80, "metadata");
    serve(&beyond.path(), 53, "resolver");
    serve(&host.path(), 53, "host-resolver");
    // A host service on an SSH-range port, on every address (the worst
    // case): loopback keeps it, the public address is the tenant's.
    serve(&host.path(), 2201, "host-local");
    serve(&host.path(), 80, "proxy-http");
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    let private = Ipv4Addr::new(10, 20, 0, 2);

    // The bridge: link-local frames from alpha with beta's MAC as source.
    let b_mac = "02:73:ac:12:00:03";
    // Control: the host reaches beta (so its MAC is known on its port).
    assert_eq!(
        talk(&client.path(), addr(HOST_PUBLIC, 2202), None).as_deref(),
        Ok("beta 198.51.100.2")
    );
    let rx = rx_packets(&host, "sv-alpha");
    send_link_local(ca.pid(), b_mac);
    // Control: the three frames reached alpha's bridge port.
    assert!(
        rx_packets(&host, "sv-alpha") >= rx + 3,
        "the raw frames never reached the bridge"
    );
    let fdb = host.exec(&["bridge", "fdb", "show", "br", "sotolito0"]);
    let b_ports: Vec<&str> = fdb.lines().filter(|l| l.starts_with(b_mac)).collect();
    assert!(
        !b_ports.is_empty() && b_ports.iter().all(|l| l.contains("dev sv-beta ")),
        "beta's MAC moved away from its port: {fdb}"
    );
    assert_eq!(
        talk(&client.path(), addr(HOST_PUBLIC, 2202), None).as_deref(),
        Ok("beta 198.51.100.2"),
        "the host no longer reaches beta after alpha's frames"
    );
    assert!(talk(&host.path(), addr(b.ip, 22), None).is_ok_and(|s| s.starts_with("beta ")));
    let fdb = host.exec(&["bridge", "fdb", "show", "dev", "sv-beta"]);
    assert!(
        fdb.lines().any(|l| l.starts_with(b_mac)
            && l.contains("master sotolito0")
            && l.ends_with("static")),
        "beta's MAC is not a static entry on its port: {fdb}"
    );

    // ARP from alpha only for its own address and with its own MAC:
    // claiming beta's address would steal beta's traffic, and naming
    // another MAC for its own address would send its traffic elsewhere.
    // No lock time, so the host takes any ARP it is allowed to see.
    host.exec(&["sysctl", "-qw", "net.ipv4.neigh.sotolito0.locktime=0"]);
    let a_mac = "02:73:ac:12:00:02";
    assert!(talk(&host.path(), addr(a.ip, 22), None).is_ok());
    assert!(
        neighbour(&host, a.ip).contains(a_mac),
        "{}",
        neighbour(&host, a.ip)
    );
    assert!(
        neighbour(&host, b.ip).contains(b_mac),
        "{}",
        neighbour(&host, b.ip)
    );
    let rx = rx_packets(&host, "sv-alpha");
    // Control first: a correct one (its own address at its own MAC).
    send_arp(ca.pid(), a_mac, a_mac, a.ip);
    send_arp(ca.pid(), a_mac, a_mac, b.ip);
    send_arp(ca.pid(), a_mac, b_mac, a.ip);
    assert!(
        rx_packets(&host, "sv-alpha") >= rx + 3,
        "the ARP frames never reached the bridge"
    );
    let seen = neighbour(&host, b.ip);
    assert!(
        seen.contains(b_mac),
        "alpha's ARP claimed beta's address: {seen}"
    );
    let seen = neighbour(&host, a.ip);
    assert!(
        seen.contains(a_mac),
        "alpha's ARP named another MAC for its address: {seen}"
    );
    assert_eq!(
        talk(&client.path(), addr(HOST_PUBLIC, 2202), None).as_deref(),
        Ok("beta 198.51.100.2"),
        "the host no longer reaches beta after alpha's ARP"
    );

    // Egress. Controls: the probe network answers the host itself, and a
    // tenant reaches a public address and SMTP (not blocked by default).
    assert!(talk(&host.path(), addr(private, 8080), None).is_ok_and(|s| s.starts_with("private ")));
    assert!(talk(&host.path(), addr(metadata, 80), None).is_ok_and(|s| s.starts_with("metadata ")));
    assert_eq!(
        talk(&ca.ns_path(), addr(CLIENT, 8080), None).as_deref(),
        Ok("internet 198.51.100.1")
    );
    assert_eq!(
        talk(&ca.ns_path(), addr(CLIENT, 25), None).as_deref(),
        Ok("smtp 198.51.100.1")
    );
    let refused = talk(&ca.ns_path(), addr(metadata, 80), None);
    assert!(
        refused.is_err(),
        "a tenant reached the metadata address: {refused:?}"
    );
    let refused = talk(&ca.ns_path(), addr(private, 8080), None);
    assert!(
        refused.is_err(),
        "a tenant reached a private network beyond the host: {refused:?}"
    );
    // DNS to the resolvers tenants were given, and nothing else there.
    assert_eq!(
        talk(&ca.ns_path(), addr(private, 53), None).as_deref(),
        Ok("resolver 10.20.0.1")
    );
    assert_eq!(
        talk(&ca.ns_path(), addr(Ipv4Addr::new(10, 20, 0, 1), 53), None).as_deref(),
        Ok("host-resolver 172.18.0.2")
    );
    // The host's own private address: only the proxy ports (and DNS).
    serve(&host.path(), 22, "host-sshd");
    assert!(talk(&ca.ns_path(), addr(Ipv4Addr::new(10, 20, 0, 1), 22), None).is_err());
    // Hairpin and the gateway's proxy port still work inside 172.16/12.
    assert!(talk(&cb.ns_path(), addr(c.network.gateway(), 2201), None)
        .is_ok_and(|s| s.starts_with("alpha ")));
    // Nobody routes through the host: the internet to the private side.
    let routed = talk(&client.path(), addr(private, 8080), None);
    assert!(
        routed.is_err(),
        "the host forwarded a stranger's traffic: {routed:?}"
    );

    // The config keys: an exception, SMTP blocked, forwarding for others.
    c.network.egress_allow = vec!["10.20.0.0/24".parse().unwrap()];
    c.network.block_smtp = true;
    c.network.forward_policy = sotolito_config::host::ForwardPolicy::Accept;
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));
    assert_eq!(
        talk(&ca.ns_path(), addr(private, 8080), None).as_deref(),
        Ok("private 10.20.0.1")
    );
    assert!(talk(&ca.ns_path(), addr(metadata, 80), None).is_err());
    assert!(
        talk(&ca.ns_path(), addr(CLIENT, 25), None).is_err(),
        "outbound SMTP was not blocked"
    );
    assert!(talk(&ca.ns_path(), addr(CLIENT, 8080), None).is_ok());
    assert_eq!(
        talk(&client.path(), addr(private, 8080), None).as_deref(),
        Ok("private 198.51.100.2")
    );
    // Only out of the public interface once it is named: a public network
    // routed through the private side is reachable before, not after.
    sh(&[
        "ip",
        "-n",
        beyond.name(),
        "addr",
        "add",
        "203.0.113.1/32",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        host.name(),
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "10.20.0.2",
    ]);
    let elsewhere = Ipv4Addr::new(203, 0, 113, 1);
    assert_eq!(
        talk(&ca.ns_path(), addr(elsewhere, 8080), None).as_deref(),
        Ok("private 10.20.0.1")
    );
    c.network.public_interface = "pub0".into();
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));
    let out = talk(&ca.ns_path(), addr(elsewhere, 8080), None);
    assert!(
        out.is_err(),
        "a tenant left through another interface than the public one: {out:?}"
    );
    assert!(talk(&ca.ns_path(), addr(CLIENT, 8080), None).is_ok());
    c = config(state.path());
    // Before the reconcile that starts the counts afresh: the control
    // for the host's port below.
    assert!(talk(&ca.ns_path(), addr(c.network.gateway(), 80), None).is_ok());
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));

    // Connection caps: alpha may hold 16, beta (the default) many more.
    let held: Vec<TcpStream> = (0..16)
        .map(|i| {
            open(&ca.ns_path(), addr(CLIENT, 8081))
                .unwrap_or_else(|e| panic!("alpha's connection {i}: {e}"))
        })
        .collect();
    let over = open(&ca.ns_path(), addr(CLIENT, 8081));
    assert!(
        over.is_err(),
        "alpha opened a 17th connection over its cap of 16"
    );
    assert!(
        talk(&ca.ns_path(), addr(c.network.gateway(), 80), None).is_err(),
        "the cap does not cover the host's ports"
    );
    let others: Vec<TcpStream> = (0..40)
        .map(|i| {
            open(&cb.ns_path(), addr(CLIENT, 8081))
                .unwrap_or_else(|e| panic!("beta's connection {i} while alpha is at its cap: {e}"))
        })
        .collect();
    // Reset, not FIN: conntrack forgets them at once (a FIN-closed one
    // counts until both sides are done).
    for s in &held {
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(held);
    assert!(
        open(&ca.ns_path(), addr(CLIENT, 8081)).is_ok(),
        "alpha stays refused after closing its connections"
    );
    drop(others);

    // A port attached by an older version (learning, no static entry):
    // reconcile converges it.
    host.exec(&[
        "bridge", "link", "set", "dev", "sv-beta", "learning", "on", "flood", "on",
    ]);
    host.exec(&["bridge", "fdb", "del", b_mac, "dev", "sv-beta", "master"]);
    inside(&host.path(), || sotolito_net::reconcile(&c, &tenants));
    let port = host.exec(&["bridge", "-d", "link", "show", "dev", "sv-beta"]);
    assert!(
        port.contains("learning off") && port.contains("flood off"),
        "{port}"
    );
    let fdb = host.exec(&["bridge", "fdb", "show", "dev", "sv-beta"]);
    assert!(
        fdb.contains(&format!("{b_mac} sticky master sotolito0 static")),
        "{fdb}"
    );

    // The output DNAT: loopback keeps the host's service; the public
    // address still reaches the tenant.
    assert!(
        talk(&host.path(), addr(Ipv4Addr::LOCALHOST, 2201), None)
            .is_ok_and(|s| s.starts_with("host-local ")),
        "a host-local service on 127.0.0.1:2201 was redirected"
    );
    assert!(
        talk(&host.path(), addr(HOST_PUBLIC, 2201), None).is_ok_and(|s| s.starts_with("alpha "))
    );
}
