//! Isolation: a tenant cannot reach another tenant's address, nor the
//! proxy's admin/metrics address; it can reach the proxy's public port. It
//! cannot move a neighbour's MAC on the bridge, reach private networks
//! beyond the host, or open more connections than its cap; the host's
//! loopback services are never DNAT'd to a tenant.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sotolito_net::sandbox::{self, End, Netns};

use crate::common::{Host, CLIENT_ADDR, HOST_ADDR};

fn exec_ok(h: &Host, tenant: &str, script: &str) -> (bool, String) {
    let o = h.vpsctl(&["exec", tenant, "--", "sh", "-c", script]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success() && !o.stdout.is_empty(), out)
}

#[test]
fn tenants_cannot_reach_each_other_or_the_admin_address() {
    // The admin address listens on every address of the host, so only the
    // firewall stands between a tenant and /metrics.
    let h = Host::new(
        "[proxy]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\nadmin = \"0.0.0.0:9180\"\n",
    );
    h.ok(&["init"]);
    h.busybox_image();
    for (name, port) in [("alpha", 2201), ("beta", 2202)] {
        h.provision_busybox(name, port, &["--start"]);
    }
    let log = std::fs::File::create(h.root.join("proxy.log")).unwrap();
    let mut proxy = h
        .vpsctl_cmd(&["proxy"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let beta_ip = h.json(&["status", "beta"])["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let gw = "172.18.0.1";
    let get = |host: &str, addr: &str, port: u16| {
        let path = if port == 9180 { "/metrics" } else { "/" };
        format!(
            // busybox nc quits at the end of its input: keep it open a while.
            "(printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n'; sleep 1) | nc -w 2 {addr} {port}"
        )
    };

    // Controls first: without them a broken setup would pass as "isolated".
    let mut reached = false;
    for _ in 0..10 {
        if exec_ok(&h, "alpha", &get("beta.test", gw, 80))
            .1
            .contains("hello from beta")
        {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        reached,
        "alpha cannot reach beta's site through the proxy's public port; proxy log: {}",
        std::fs::read_to_string(h.root.join("proxy.log")).unwrap_or_default()
    );
    let admin = h.in_host(&[
        "curl",
        "-sS",
        "--max-time",
        "3",
        &format!("http://{gw}:9180/metrics"),
    ]);
    assert!(
        admin.status.success(),
        "the admin address is not up on the host: {}",
        String::from_utf8_lossy(&admin.stderr)
    );
    let direct = h.in_host(&[
        "curl",
        "-sS",
        "--max-time",
        "3",
        &format!("http://{beta_ip}/"),
    ]);
    assert!(
        String::from_utf8_lossy(&direct.stdout).contains("hello from beta"),
        "beta is not up"
    );

    // Tenant to tenant, directly: refused by the bridge and the forward chain.
    let (ok, out) = exec_ok(&h, "alpha", &get("beta.test", &beta_ip, 80));
    assert!(!ok, "alpha reached beta directly: {out}");
    let (ok, out) = exec_ok(&h, "alpha", &format!("nc -w 2 {beta_ip} 22 </dev/null"));
    assert!(!ok, "alpha reached beta's port 22 directly: {out}");
    // Tenant to the admin address, and to the host's other services.
    let (ok, out) = exec_ok(&h, "alpha", &get("x", gw, 9180));
    assert!(!ok, "alpha reached the proxy admin address: {out}");
    let _ = proxy.kill();
    let _ = proxy.wait();
}

/// A listener bound to `bind` inside the network namespace at `ns` that
/// answers each connection with "TAG PEER_IP\n" and closes it.
fn serve_in(ns: &str, bind: &str, tag: &'static str) {
    let bind = bind.to_owned();
    let listener = sotolito_net::netns::run_in(std::path::Path::new(ns), move || {
        Ok(TcpListener::bind(&bind).expect("bind test listener"))
    })
    .expect("enter namespace");
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

/// A listener on `port` inside `ns` that keeps each connection until the
/// peer closes it; returns how many it holds now.
fn hold_in(ns: &str, port: u16) -> Arc<AtomicUsize> {
    let listener = sotolito_net::netns::run_in(std::path::Path::new(ns), move || {
        Ok(TcpListener::bind(("0.0.0.0", port)).expect("bind holding listener"))
    })
    .expect("enter namespace");
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let count = count.clone();
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut sink = [0u8; 64];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    open
}

fn tenant_pid(h: &Host, name: &str) -> u64 {
    h.json(&["status", name])["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("tenant {name} is not running"))
}

fn host_sh(h: &Host, script: &str) -> String {
    let o = h.in_host(&["sh", "-c", script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn start_proxy(h: &Host) -> std::process::Child {
    let log = std::fs::File::create(h.root.join("proxy.log")).unwrap();
    h.vpsctl_cmd(&["proxy"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The host's view of tenant `name`'s site, through the proxy on the
/// public address; retried while the proxy starts (bounded).
fn site_from_host(h: &Host, name: &str) -> String {
    let mut out = String::new();
    for _ in 0..20 {
        out = host_sh(
            h,
            &format!("curl -sS --max-time 3 -H 'Host: {name}.test' http://{HOST_ADDR}/"),
        );
        if out.contains("hello from") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    out
}

#[test]
fn link_local_frames_cannot_move_a_neighbours_mac() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    for (name, port) in [("alpha", 2201), ("beta", 2202)] {
        h.provision_busybox(name, port, &["--start"]);
    }
    let mut proxy = start_proxy(&h);
    // Control: the host reaches beta's site, so beta's MAC is in use.
    assert!(
        site_from_host(&h, "beta").contains("hello from beta"),
        "the host cannot reach beta before the attack; proxy log: {}",
        std::fs::read_to_string(h.root.join("proxy.log")).unwrap_or_default()
    );
    let b_mac = "02:73:ac:12:00:03";
    assert_eq!(h.json(&["status", "beta"])["ip"], "172.18.0.3");

    // From inside alpha: its own network namespace and eth0, the frames a
    // root tenant with CAP_NET_RAW can send (STP 00, 802.1X 03, LLDP 0e),
    // each with beta's MAC as source.
    let rx = || {
        // /proc/net follows the reader's namespace; /sys stays the host's.
        let dev = host_sh(&h, "cat /proc/net/dev");
        let line = dev
            .lines()
            .find_map(|l| l.trim().strip_prefix("sv-alpha:"))
            .unwrap_or_else(|| panic!("no sv-alpha in /proc/net/dev: {dev}"))
            .to_owned();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = rx();
    let sender = "import socket, sys\n\
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
        s.bind(('eth0', 0))\n\
        src = bytes.fromhex(sys.argv[1].replace(':', ''))\n\
        for d in ('0180c2000000', '0180c2000003', '0180c200000e'):\n\
        \x20   s.send(bytes.fromhex(d) + src + bytes.fromhex('88cc') + bytes(46))\n";
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", tenant_pid(&h, "alpha")))
        .args(["python3", "-c", sender, b_mac])
        .output()
        .expect("python3 is missing: apt-get install python3");
    assert!(
        out.status.success(),
        "the raw sender failed in alpha's namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Control: the three frames reached alpha's bridge port.
    assert!(
        rx() >= before + 3,
        "alpha's frames never reached the bridge"
    );

    let fdb = host_sh(&h, "bridge fdb show br sotolito0");
    let beta_lines: Vec<&str> = fdb.lines().filter(|l| l.starts_with(b_mac)).collect();
    assert!(
        !beta_lines.is_empty() && beta_lines.iter().all(|l| l.contains("dev sv-beta ")),
        "beta's MAC moved away from its port: {fdb}"
    );
    assert!(
        site_from_host(&h, "beta").contains("hello from beta"),
        "the host no longer reaches beta after alpha's frames"
    );
    let banner = h.in_client(&["sh", "-c", &format!("nc -w 3 {HOST_ADDR} 2202 </dev/null")]);
    assert!(
        String::from_utf8_lossy(&banner.stdout).contains("SSH-"),
        "beta's SSH port no longer reaches beta: {}",
        String::from_utf8_lossy(&banner.stdout)
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

#[test]
fn egress_reaches_public_networks_only_and_loopback_is_never_dnatted() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("alpha", 2201, &["--start"]);
    // A private network routed beyond the host, with the cloud metadata
    // address, next to the public client (198.18.0.2).
    let beyond_ns = Netns::create(format!("{}-beyond", h.ns)).unwrap();
    let ns = |n: &str| format!("/run/netns/{n}");
    let ip = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sandbox::wire(
        End {
            ns: &h.net().host,
            ifname: "priv0",
            addr: "10.20.0.1/24".parse().unwrap(),
        },
        End {
            ns: &beyond_ns,
            ifname: "eth0",
            addr: "10.20.0.2/24".parse().unwrap(),
        },
    )
    .unwrap();
    let beyond = beyond_ns.name();
    ip(&[
        "-n",
        beyond,
        "addr",
        "add",
        "169.254.169.254/32",
        "dev",
        "eth0",
    ]);
    ip(&["-n", beyond, "route", "add", "default", "via", "10.20.0.1"]);
    ip(&[
        "-n",
        &h.ns,
        "route",
        "add",
        "169.254.169.254/32",
        "via",
        "10.20.0.2",
    ]);
    serve_in(&ns(beyond), "0.0.0.0:80", "private");
    serve_in(&ns(&h.client_ns), "0.0.0.0:8080", "internet");
    // A host service on 127.0.0.1 with a port in the SSH range.
    serve_in(&ns(&h.ns), "127.0.0.1:2201", "host-local");

    let get = |addr: &str, port: u16| format!("echo | nc -w 2 {addr} {port}");
    // Controls: the host reaches both private addresses; alpha reaches a
    // public one.
    for addr in ["10.20.0.2", "169.254.169.254"] {
        assert!(
            host_sh(&h, &format!("nc -w 2 {addr} 80 </dev/null")).contains("private"),
            "the private network does not answer the host at {addr}"
        );
    }
    let (ok, out) = exec_ok(&h, "alpha", &get(CLIENT_ADDR, 8080));
    assert!(
        ok && out.contains("internet"),
        "alpha cannot reach a public address: {out}"
    );
    // The attack: the metadata address and a private network beyond.
    for addr in ["169.254.169.254", "10.20.0.2"] {
        let (ok, out) = exec_ok(&h, "alpha", &get(addr, 80));
        assert!(!ok, "alpha reached {addr} beyond the host: {out}");
    }
    // Nor does the internet route through the host to the private side.
    let routed = h.in_client(&[
        "sh",
        "-c",
        &format!("ip route add 10.20.0.0/24 via {HOST_ADDR} && nc -w 2 10.20.0.2 80 </dev/null"),
    ]);
    assert!(
        !String::from_utf8_lossy(&routed.stdout).contains("private"),
        "the host forwarded a stranger's traffic to its private network"
    );

    // Output DNAT: loopback keeps the host's service, the public address
    // still reaches alpha's SSH port.
    let local = host_sh(&h, "nc -w 2 127.0.0.1 2201 </dev/null");
    assert!(
        local.contains("host-local"),
        "a host-local service on 127.0.0.1:2201 was redirected: {local}"
    );
    let public = host_sh(&h, &format!("nc -w 2 {HOST_ADDR} 2201 </dev/null"));
    assert!(
        public.contains("SSH-"),
        "the public address no longer DNATs: {public}"
    );
}

#[test]
fn connection_cap_holds_for_one_tenant_while_another_is_served() {
    let h = Host::new("[defaults]\nconnections = 1000\n");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("alpha", 2201, &["--start", "--connections", "16"]);
    h.provision_busybox("beta", 2202, &["--start"]);
    assert_eq!(h.json(&["status", "alpha"])["connections"], 16);
    assert_eq!(
        h.json(&["status", "beta"])["connections"],
        serde_json::Value::Null
    );
    let client_ns = format!("/run/netns/{}", h.client_ns);
    let held = hold_in(&client_ns, 8081);
    serve_in(&client_ns, "0.0.0.0:8080", "internet");

    // alpha opens 16 connections and keeps them a few seconds.
    let hold_16 = || {
        let hold = format!(
            "i=0; while [ $i -lt 16 ]; do (sleep 5 | nc {CLIENT_ADDR} 8081 >/dev/null 2>&1) & i=$((i+1)); done; wait"
        );
        let holder = h
            .vpsctl_cmd(&["exec", "alpha", "--", "sh", "-c", &hold])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Bounded: the 16 connections are up within seconds.
        for _ in 0..50 {
            if held.load(Ordering::SeqCst) >= 16 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            held.load(Ordering::SeqCst),
            16,
            "alpha's 16 connections did not come up"
        );
        holder
    };
    let all_closed = |mut holder: std::process::Child| {
        let _ = holder.wait();
        // Bounded: the held connections close when their sleep ends.
        for _ in 0..50 {
            if held.load(Ordering::SeqCst) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let holder = hold_16();
    let get = format!("echo | nc -w 2 {CLIENT_ADDR} 8080");
    let (ok, out) = exec_ok(&h, "alpha", &get);
    assert!(
        !ok,
        "alpha opened a 17th connection over its cap of 16: {out}"
    );
    let (ok, out) = exec_ok(&h, "beta", &get);
    assert!(
        ok && out.contains("internet"),
        "beta was refused while alpha is at its cap: {out}"
    );
    all_closed(holder);
    let (ok, out) = exec_ok(&h, "alpha", &get);
    assert!(
        ok,
        "alpha stays refused after its connections closed: {out}"
    );

    // `set` raises the cap of the running tenant at once.
    h.ok(&["set", "alpha", "--connections", "32"]);
    assert_eq!(h.json(&["status", "alpha"])["connections"], 32);
    let holder = hold_16();
    let (ok, out) = exec_ok(&h, "alpha", &get);
    assert!(
        ok && out.contains("internet"),
        "alpha is still held to 16 after set --connections 32: {out}"
    );
    all_closed(holder);
}
