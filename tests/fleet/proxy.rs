//! `vpsctl proxy` fed by the fleet's etcd watch, on loopback: tenants are
//! loopback backends, as in the proxy's own tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sotolito_config::{HostName, ImageName, NodeName, SshPort, Tenant, TenantName};
use sotolito_fleet::Store;

use crate::support::Etcd;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A backend answering every request with its name.
pub fn backend(ip: &str, name: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                name.len()
            );
        }
    });
    addr
}

pub fn record(name: &str, addr: SocketAddr, host: &str, ssh_port: u16) -> Tenant {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 backend")
    };
    let mut t = Tenant::new(
        TenantName::new(name).unwrap(),
        ImageName::new("busybox").unwrap(),
        *v4.ip(),
        SshPort::new(ssh_port.into()).unwrap(),
        sotolito_config::host::Defaults::default().limits(),
    );
    t.http_port = sotolito_config::HttpPort::new(v4.port().into()).unwrap();
    t.hosts = vec![HostName::new(host).unwrap()];
    t
}

/// GET / with `host` through the proxy: the status and body, or None when
/// the proxy is not answering.
pub fn get(proxy: SocketAddr, host: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&proxy, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        c,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

/// Waits (30 s at most) until `f` holds.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Proxy {
    child: Child,
    pub http: SocketAddr,
    pub stderr: PathBuf,
}

impl Proxy {
    /// `vpsctl proxy` of node `node` with its `[cluster]` table.
    pub fn start(dir: &Path, etcd: &Etcd, node: &str) -> Proxy {
        let (http, https, admin) = (free_port(), free_port(), free_port());
        let config = dir.join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = \"{0}/{node}/state\"\nrun_dir = \"{0}/{node}/run\"\nconfig_dir = \"{0}/{node}/etc\"\nsystemd_dir = \"{0}/{node}/systemd\"\n\
                 [network]\nsubnet = \"127.0.0.0/16\"\n\
                 [proxy]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\nadmin = \"127.0.0.1:{admin}\"\n{1}",
                dir.display(),
                etcd.cluster_toml(node, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)
            ),
        )
        .unwrap();
        let stderr = dir.join(format!("{node}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_vpsctl"))
            .arg("--config")
            .arg(&config)
            .arg("proxy")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Proxy {
            child,
            http: format!("127.0.0.1:{http}").parse().unwrap(),
            stderr,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills it (SIGKILL, by PID), as a dying host would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_proxy_follows_the_watch_and_keeps_its_routes_while_etcd_is_down() {
    let mut etcd = Etcd::loopback(1);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let cluster = etcd.cluster("node1", Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
    let store = rt.block_on(Store::connect(&cluster)).unwrap();
    let node1 = NodeName::new("node1").unwrap();
    let node2 = NodeName::new("node2").unwrap();
    // Tenants of two nodes: one proxy routes both.
    let alpha = record("alpha", backend("127.0.0.2", "alpha"), "alpha.test", 2201);
    let beta = record("beta", backend("127.0.0.3", "beta"), "beta.test", 2202);
    rt.block_on(store.put_tenant(&node1, &alpha, None)).unwrap();
    rt.block_on(store.put_tenant(&node2, &beta, None)).unwrap();

    let mut proxy = Proxy::start(dir.path(), &etcd, "node1");
    wait_for("alpha through the proxy", || {
        get(proxy.http, "alpha.test") == Some((200, "alpha".into()))
    });
    assert_eq!(
        get(proxy.http, "beta.test"),
        Some((200, "beta".into())),
        "another node's tenant"
    );
    // The node is alive while its proxy runs.
    let alive = |etcd: &Etcd| {
        let out = etcd
            .etcdctl(0)
            .args(["get", "--print-value-only", "/sotolito/v1/alive/node1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(alive(&etcd), "127.0.0.1");

    // A change reaches the running proxy through the watch.
    let gamma = record("gamma", backend("127.0.0.4", "gamma"), "gamma.test", 2203);
    rt.block_on(store.put_tenant(&node2, &gamma, None)).unwrap();
    wait_for("gamma through the proxy", || {
        get(proxy.http, "gamma.test") == Some((200, "gamma".into()))
    });

    // etcd down: the last-known routes keep serving, and the proxy says
    // they are stale.
    etcd.kill(0);
    wait_for("the proxy to log stale routes", || {
        proxy.log().contains("stale")
    });
    for (host, body) in [
        ("alpha.test", "alpha"),
        ("beta.test", "beta"),
        ("gamma.test", "gamma"),
    ] {
        assert_eq!(
            get(proxy.http, host),
            Some((200, body.into())),
            "{host} while etcd is down\n{}",
            proxy.log()
        );
    }

    // etcd back: the same proxy converges, no restart.
    etcd.restart(0);
    etcd.wait_healthy(0);
    let delta = record("delta", backend("127.0.0.5", "delta"), "delta.test", 2204);
    rt.block_on(store.remove_tenant(&node1, &alpha.name))
        .unwrap();
    rt.block_on(store.put_tenant(&node1, &delta, None)).unwrap();
    wait_for("delta through the proxy", || {
        get(proxy.http, "delta.test") == Some((200, "delta".into()))
    });
    assert_eq!(
        get(proxy.http, "alpha.test").map(|r| r.0),
        Some(404),
        "a removed tenant is no longer routed"
    );

    // A dead proxy stops renewing the node's lease: the node goes down.
    proxy.kill();
    wait_for("node1's lease to expire", || alive(&etcd).is_empty());
}
