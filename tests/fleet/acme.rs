//! Certificates shared by the fleet (root): three `vpsctl proxy` nodes,
//! each in a network namespace of its own on a private network, one etcd
//! member, and an "internet" namespace holding Debian's pebble (real
//! HTTP-01 validation) with a dnsmasq that points the test names at node
//! 3. Every check of a served certificate is a TLS client verifying the
//! chain against pebble's root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotolito_config::{HostName, ImageName, NodeName, SshPort, Tenant, TenantName};
use sotolito_fleet::TenantEntry;

use crate::support::{Etcd, Lan};

/// The internet's namespace index in the lan; nodes are 0, 1, 2.
const NET: usize = 3;
const ONE: &str = "one.sotolito.internal";
const TWO: &str = "two.sotolito.internal";
/// Resolves to the internet's own loopback: validation is refused.
const BAD: &str = "bad.sotolito.internal";

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: apt-get install {package} (or run scripts/install-deps)"
    );
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A process ended by PID on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

struct World {
    // Dropped first: the proxies, then the CA and its resolver.
    proxies: Vec<Proc>,
    pebble: Proc,
    _dns: Proc,
    etcd: Etcd,
    lan: Lan,
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl World {
    /// Certificates valid `validity` seconds (0: pebble's default, years).
    fn new(validity: u64) -> World {
        for (tool, package) in [
            ("pebble", "pebble"),
            ("dnsmasq", "dnsmasq-base"),
            ("openssl", "openssl"),
            ("curl", "curl"),
        ] {
            require(tool, package);
        }
        let lan = Lan::new(4);
        let etcd = Etcd::in_lan_nodes(&lan, &[0]);
        let dir = tempfile::tempdir().unwrap();
        let net = Lan::address(NET);
        // pebble's own listener: a certificate from the fleet's CA, which
        // the proxies trust through [acme] ca_roots.
        let certs = etcd.certs();
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fleet-certs"))
            .arg(&certs)
            .arg(format!("pebble={net}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let target = Lan::address(2);
        let mut dns = lan.cmd(NET, "dnsmasq");
        dns.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--port=5353",
            "--user=root",
            "--log-facility=-",
            "--log-queries",
            "--pid-file",
        ])
        .arg(format!("--address=/{ONE}/{target}"))
        .arg(format!("--address=/{TWO}/{target}"))
        .arg(format!("--address=/{BAD}/127.0.0.1"));
        let dns = Proc::spawn(dns, dir.path().join("dnsmasq.log"));
        let config = dir.path().join("pebble.json");
        let mut pebble = serde_json::json!({
                "listenAddress": format!("{net}:14000"),
                "managementListenAddress": "127.0.0.1:15000",
                "certificate": certs.join("pebble.pem"),
                "privateKey": certs.join("pebble-key.pem"),
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
        });
        if validity > 0 {
            pebble["certificateValidityPeriod"] = validity.into();
        }
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string()).unwrap();
        let mut cmd = lan.cmd(NET, "pebble");
        cmd.arg("-config")
            .arg(&config)
            .args(["-dnsserver", "127.0.0.1:5353"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order counts once in pebble's log: no rejected nonces
            // that make the client order again.
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID");
        let pebble = Proc::spawn(cmd, dir.path().join("pebble.log"));
        let root = dir.path().join("pebble-root.pem");
        let pem = wait_for("pebble's root", Duration::from_secs(20), || {
            let out = lan
                .cmd(NET, "curl")
                .args(["-sS", "--max-time", "2", "--cacert"])
                .arg(certs.join("ca.pem"))
                .arg("https://127.0.0.1:15000/roots/0")
                .output()
                .ok()?;
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            body.contains("BEGIN CERTIFICATE").then_some(body)
        });
        std::fs::write(&root, pem).unwrap();
        World {
            proxies: Vec::new(),
            pebble,
            _dns: dns,
            etcd,
            lan,
            dir,
            root,
        }
    }

    /// Writes the tenant record as node 1's, as provision would (etcdctl
    /// from node 0's namespace: the test itself is outside the lan).
    fn put_tenant(&self, hosts: &[&str]) {
        let entry = TenantEntry {
            node: NodeName::new("node1").unwrap(),
            tenant: tenant(hosts),
        };
        self.etcdctl(&[
            "put",
            "/sotolito/v1/tenants/shop",
            &serde_json::to_string(&entry).unwrap(),
        ]);
    }

    /// Nobody holds or waits for an order lock.
    fn no_locks(&self) -> bool {
        self.etcdctl(&["get", "--prefix", "--keys-only", "/sotolito/v1/acme/locks/"])
            .trim()
            .is_empty()
    }

    /// `vpsctl proxy` of node i, ordering or not.
    fn proxy(&self, i: usize, acme: bool) -> Proc {
        let name = format!("node{}", i + 1);
        let root = self.dir.path().join(&name);
        std::fs::create_dir_all(&root).unwrap();
        let ip = Lan::address(i);
        let config = root.join("sotolito.toml");
        std::fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = \"{0}/state\"\nrun_dir = \"{0}/run\"\nconfig_dir = \"{0}/etc\"\nsystemd_dir = \"{0}/systemd\"\n\
                 [network]\nsubnet = \"172.18.0.0/16\"\n\
                 [proxy]\nhttp = \"{ip}:80\"\nhttps = \"{ip}:443\"\nadmin = \"127.0.0.1:9180\"\n\
                 [acme]\nenabled = {acme}\ndirectory = \"https://{net}:14000/dir\"\nemail = \"ops@sotolito.internal\"\nca_roots = [\"{ca}\"]\n{cluster}",
                root.display(),
                net = Lan::address(NET),
                ca = self.etcd.certs().join("ca.pem").display(),
                cluster = self.etcd.cluster_toml(&name, ip, Ipv4Addr::new(203, 0, 113, 1 + i as u8)),
            ),
        )
        .unwrap();
        let mut cmd = self.lan.cmd(i, env!("CARGO_BIN_EXE_vpsctl"));
        cmd.arg("--config")
            .arg(&config)
            .arg("proxy")
            .env("RUST_LOG", "info");
        // Appends: a restarted node's earlier lines stay countable.
        let log = root.join("proxy.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            log,
        }
    }

    /// The serial of the certificate node i serves for `host`, after a TLS
    /// client from the internet verified its chain to pebble's root and
    /// its name; or why not.
    fn served(&self, i: usize, host: &str) -> Result<String, String> {
        let out = self
            .lan
            .cmd(NET, "openssl")
            .args(["s_client", "-connect"])
            .arg(format!("{}:443", Lan::address(i)))
            .args(["-servername", host, "-verify_hostname", host])
            .arg("-CAfile")
            .arg(&self.root)
            .arg("-verify_return_error")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || !text.contains("Verify return code: 0 (ok)") {
            return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        }
        let pem: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .take_while(|l| !l.starts_with("-----END CERTIFICATE"))
            .chain(["-----END CERTIFICATE-----"])
            .collect::<Vec<_>>()
            .join("\n");
        let mut x509 = Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(x509.stdin.as_mut().unwrap(), pem.as_bytes()).unwrap();
        let out = x509.wait_with_output().unwrap();
        let serial = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        serial
            .strip_prefix("serial=")
            .map(str::to_owned)
            .ok_or_else(|| format!("no serial in {serial:?}"))
    }

    /// GET `path` with `host` from the internet through node i's :80:
    /// (status, body).
    fn get(&self, i: usize, host: &str, path: &str) -> (u16, String) {
        let out = self
            .lan
            .cmd(NET, "curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("http://{}{path}", Lan::address(i)))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Node i's log lines naming `host` that contain `what`.
    fn lines(&self, i: usize, what: &str, host: &str) -> usize {
        let log = self.dir.path().join(format!("node{}/proxy.log", i + 1));
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what) && l.contains(host))
            .count()
    }

    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for i in 0..3 {
            let log = self.dir.path().join(format!("node{}/proxy.log", i + 1));
            out += &format!(
                "--- node{} ---\n{}\n",
                i + 1,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        out + "--- pebble ---\n" + &self.pebble.text()
    }

    /// etcdctl against the member on node 0.
    fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcd.etcdctl(0).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn tenant(hosts: &[&str]) -> Tenant {
    let mut t = Tenant::new(
        TenantName::new("shop").unwrap(),
        ImageName::new("busybox").unwrap(),
        "172.18.0.2".parse().unwrap(),
        SshPort::new(2201).unwrap(),
        sotolito_config::host::Defaults::default().limits(),
    );
    t.hosts = hosts.iter().map(|h| HostName::new(h).unwrap()).collect();
    t
}

/// The whole story of one fleet's certificates, in order: three proxies
/// started at once order a new name exactly once and all serve it; the
/// CA's validation of a second name reaches a node that did not order it;
/// tokens are answered from the store only while they are there; and the
/// certificates keep serving with etcd down.
#[test]
fn a_certificate_ordered_once_is_served_by_every_proxy() {
    let mut w = World::new(0);
    w.put_tenant(&[ONE]);

    // All three at once, for a name nobody has a certificate for.
    w.proxies = (0..3).map(|i| w.proxy(i, true)).collect();
    let serial = wait_for("node 3 to serve one", Duration::from_secs(60), || {
        w.served(2, ONE).ok()
    });
    for i in 0..3 {
        let got = wait_for(
            &format!("node {} to serve one", i + 1),
            Duration::from_secs(10),
            || w.served(i, ONE).ok(),
        );
        assert_eq!(got, serial, "node {} serves another certificate", i + 1);
    }
    // The nodes that lost the lock have looked again and let go.
    wait_for(
        "every order lock to be released",
        Duration::from_secs(30),
        || w.no_locks().then_some(()),
    );
    let orders: Vec<usize> = (0..3)
        .map(|i| w.lines(i, "ordering a certificate", ONE))
        .collect();
    assert_eq!(
        orders.iter().sum::<usize>(),
        1,
        "orders per node for {ONE}: {orders:?}\n{}",
        w.diagnostics()
    );
    let pebble_orders = w.pebble.text().matches("Added order").count();
    assert_eq!(
        pebble_orders,
        1,
        "pebble saw {pebble_orders} orders\n{}",
        w.diagnostics()
    );
    let orderer = orders.iter().position(|&n| n == 1).unwrap();
    // The store holds the certificate, its key and the account.
    let record = w.etcdctl(&[
        "get",
        "--print-value-only",
        "/sotolito/v1/acme/certs/one.sotolito.internal",
    ]);
    let record: serde_json::Value = serde_json::from_str(record.trim()).unwrap();
    assert!(record["key_pem"].as_str().unwrap().contains("PRIVATE KEY"));
    let hex = |s: &str| {
        s.replace(':', "")
            .trim_start_matches('0')
            .to_ascii_lowercase()
    };
    assert_eq!(
        hex(record["serial"].as_str().unwrap()),
        hex(&serial),
        "the store's certificate is the one served"
    );
    assert!(w
        .etcdctl(&["get", "--print-value-only", "/sotolito/v1/acme/account"])
        .contains("credentials"));

    // Tokens: answered by every node from the store, only while there.
    // A stranger's probe first: no pending token, no listing.
    let probe = "/.well-known/acme-challenge/probe-token";
    for i in 0..3 {
        assert_eq!(
            w.get(i, "stranger.sotolito.internal", probe).0,
            404,
            "node {}",
            i + 1
        );
    }
    w.etcdctl(&[
        "put",
        "/sotolito/v1/acme/challenges/probe-token",
        "probe-token.thumbprint",
    ]);
    for i in 0..3 {
        let got = wait_for(
            &format!("node {} to answer the token", i + 1),
            Duration::from_secs(10),
            || {
                let r = w.get(i, "stranger.sotolito.internal", probe);
                (r.0 == 200).then_some(r)
            },
        );
        assert_eq!(got.1, "probe-token.thumbprint", "node {}", i + 1);
        // The directory is no listing, and other tokens are unknown.
        let listing = w.get(
            i,
            "stranger.sotolito.internal",
            "/.well-known/acme-challenge/",
        );
        assert_eq!(listing.0, 404, "node {}: {listing:?}", i + 1);
        assert!(
            !listing.1.contains("probe-token"),
            "node {} lists tokens",
            i + 1
        );
        let guess = w.get(
            i,
            "stranger.sotolito.internal",
            "/.well-known/acme-challenge/probe-tokem",
        );
        assert_eq!(guess.0, 404, "node {}: {guess:?}", i + 1);
    }
    w.etcdctl(&["del", "/sotolito/v1/acme/challenges/probe-token"]);
    for i in 0..3 {
        wait_for(
            &format!(
                "node {} to stop answering the withdrawn token (answers {:?})",
                i + 1,
                w.get(i, "stranger.sotolito.internal", probe)
            ),
            Duration::from_secs(10),
            || (w.get(i, "stranger.sotolito.internal", probe).0 == 404).then_some(()),
        );
    }

    // Node 3 stops ordering; a new name that resolves to node 3 only is
    // ordered by node 1 or 2, and node 3 answers the CA from the store.
    w.proxies[2].stop();
    w.proxies[2] = w.proxy(2, false);
    wait_for("node 3 to serve again", Duration::from_secs(20), || {
        (w.served(2, ONE).as_ref() == Ok(&serial)).then_some(())
    });
    w.put_tenant(&[ONE, TWO]);
    let two = wait_for("node 3 to serve two", Duration::from_secs(60), || {
        w.served(2, TWO).ok()
    });
    for i in 0..3 {
        let got = wait_for(
            &format!("node {} to serve two", i + 1),
            Duration::from_secs(10),
            || w.served(i, TWO).ok(),
        );
        assert_eq!(got, two, "node {}", i + 1);
    }
    let orders: Vec<usize> = (0..3)
        .map(|i| w.lines(i, "ordering a certificate", TWO))
        .collect();
    assert_eq!(orders[2], 0, "node 3 ordered\n{}", w.diagnostics());
    assert_eq!(
        orders.iter().sum::<usize>(),
        1,
        "{orders:?}\n{}",
        w.diagnostics()
    );
    assert!(
        w.lines(2, "certificate copied from the fleet store", TWO) >= 1,
        "{}",
        w.diagnostics()
    );
    // The only address the CA had for two was node 3's.
    let dns = w._dns.text();
    assert!(
        dns.contains(&format!("{TWO} is {}", Lan::address(2))),
        "{dns}"
    );
    eprintln!(
        "one ordered by node {}; two ordered by node {}",
        orderer + 1,
        orders.iter().position(|&n| n == 1).unwrap() + 1
    );

    // `vpsctl certs list` on node 3 lists the fleet's hosts with the
    // copies it serves.
    let out = w
        .lan
        .cmd(2, env!("CARGO_BIN_EXE_vpsctl"))
        .arg("--config")
        .arg(w.dir.path().join("node3/sotolito.toml"))
        .args(["certs", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for host in [ONE, TWO] {
        let row = list
            .iter()
            .find(|r| r["host"] == host)
            .unwrap_or_else(|| panic!("{host} not listed: {list:?}"));
        assert_eq!(row["tenant"], "shop", "{row}");
        assert_eq!(row["status"], "valid", "{row}");
        assert_eq!(row["source"], "acme", "{row}");
    }

    // Still one order per name, whatever the nodes did meanwhile.
    wait_for(
        "every order lock to be released",
        Duration::from_secs(30),
        || w.no_locks().then_some(()),
    );
    let total: usize = (0..3)
        .map(|i| w.lines(i, "ordering a certificate", ""))
        .sum();
    assert_eq!(total, 2, "{}", w.diagnostics());
    assert_eq!(
        w.pebble.text().matches("Added order").count(),
        2,
        "{}",
        w.diagnostics()
    );

    // etcd down: every node keeps serving both certificates.
    w.etcd.kill(0);
    for i in 0..3 {
        wait_for(
            &format!("node {} to notice the outage", i + 1),
            Duration::from_secs(30),
            || (w.lines(i, "fleet store unreachable", "") > 0).then_some(()),
        );
    }
    for i in 0..3 {
        assert_eq!(
            w.served(i, ONE).as_ref(),
            Ok(&serial),
            "node {} with etcd down",
            i + 1
        );
        assert_eq!(
            w.served(i, TWO).as_ref(),
            Ok(&two),
            "node {} with etcd down",
            i + 1
        );
    }
    // A node restarted while etcd is down serves its copies.
    w.proxies[1].stop();
    w.proxies[1] = w.proxy(1, true);
    let again = wait_for(
        "node 2 to serve after a restart without etcd",
        Duration::from_secs(30),
        || w.served(1, ONE).ok(),
    );
    assert_eq!(again, serial);
    assert_eq!(w.served(1, TWO).as_ref(), Ok(&two));
}

/// Renewals go the same way: three nodes find a short-lived certificate
/// due at the same moment, one renews it, and all three serve the new one.
/// A name whose validation fails is tried by one node, and the others
/// wait as the fleet's record of that failure says.
#[test]
fn a_renewal_is_ordered_once_and_served_by_every_proxy() {
    // Due 20 s after issue.
    let mut w = World::new(30);
    w.put_tenant(&[ONE, BAD]);
    w.proxies = (0..3).map(|i| w.proxy(i, true)).collect();
    let first = wait_for("node 3 to serve one", Duration::from_secs(60), || {
        w.served(2, ONE).ok()
    });
    let second = wait_for(
        "node 3 to serve a renewed one",
        Duration::from_secs(60),
        || w.served(2, ONE).ok().filter(|s| *s != first),
    );
    for i in 0..3 {
        let got = wait_for(
            &format!("node {} to serve the renewal", i + 1),
            Duration::from_secs(10),
            || w.served(i, ONE).ok().filter(|s| *s != first),
        );
        assert_eq!(got, second, "node {}", i + 1);
    }
    wait_for(
        "every order lock to be released",
        Duration::from_secs(30),
        || w.no_locks().then_some(()),
    );
    let renewals: usize = (0..3)
        .map(|i| w.lines(i, "two thirds of the certificate's lifetime passed", ONE))
        .sum();
    let orders: usize = (0..3)
        .map(|i| w.lines(i, "ordering a certificate", ONE))
        .sum();
    assert_eq!(
        (orders, renewals),
        (2, 1),
        "orders, renewals\n{}",
        w.diagnostics()
    );

    // The failed name: one order in all, the other two nodes wait.
    wait_for(
        "two nodes to defer to the fleet's failure",
        Duration::from_secs(30),
        || {
            let deferred: usize = (0..3)
                .map(|i| w.lines(i, "the fleet's last order for this host failed", BAD))
                .sum();
            (deferred >= 2).then_some(())
        },
    );
    let bad: Vec<usize> = (0..3)
        .map(|i| w.lines(i, "ordering a certificate", BAD))
        .collect();
    assert_eq!(
        bad.iter().sum::<usize>(),
        1,
        "orders of {BAD} per node: {bad:?}\n{}",
        w.diagnostics()
    );
    let record = w.etcdctl(&[
        "get",
        "--print-value-only",
        "/sotolito/v1/acme/attempts/bad.sotolito.internal",
    ]);
    assert!(record.contains("\"failures\":1"), "{record}");
    assert_eq!(
        w.pebble.text().matches("Added order").count(),
        3,
        "{}",
        w.diagnostics()
    );
}
