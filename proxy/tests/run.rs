//! `run` as `vpsctl proxy` uses it: routes from a real registry in a temp
//! state dir, a tenant provisioned while it runs is routed within a second,
//! READY=1 over NOTIFY_SOCKET, SIGTERM drains and returns. Its own test
//! binary: it sets the environment and signals the process.

#![allow(clippy::unwrap_used)]

#[path = "proxy/common.rs"]
#[allow(dead_code)]
mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{get, Backend};
use sotolito_config::{
    HostConfig, HostName, HttpPort, ImageName, Loaded, Registry, SshPort, Tenant, TenantName,
};
use sotolito_proxy::{run, RunOptions};

fn tenant(name: &str, ip: Ipv4Addr, http_port: u16, ssh: u64, host: &str) -> Tenant {
    Tenant {
        http_port: HttpPort::new(http_port.into()).unwrap(),
        hosts: vec![HostName::new(host).unwrap()],
        ..Tenant::new(
            TenantName::new(name).unwrap(),
            ImageName::new("debian").unwrap(),
            ip,
            SshPort::new(ssh).unwrap(),
            HostConfig::default().defaults.limits(),
        )
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn run_serves_the_registry_and_picks_up_new_tenants_live() {
    let state = tempfile::tempdir().unwrap();
    // Tenants on their own loopback addresses, as on a bridge.
    let a = Backend::start_on("a", "127.0.0.2:0".parse().unwrap());
    let b = Backend::start_on("b", "127.0.0.3:0".parse().unwrap());
    let mut config = HostConfig::default();
    config.paths.state_dir = state.path().to_owned();
    let loaded = Loaded {
        config,
        path: state.path().join("sotolito.toml"),
        state_dir_override: None,
    };
    let registry = Registry::new(loaded.config.registry_dir());
    registry.create().unwrap();
    {
        let lock = registry.lock().unwrap();
        registry
            .put(
                &lock,
                &tenant("a", [127, 0, 0, 2].into(), a.addr.port(), 2201, "a.test"),
            )
            .unwrap();
    }

    let notify_path = state.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::env::set_var("NOTIFY_SOCKET", &notify_path);

    let (http, https, admin) = (free_port(), free_port(), free_port());
    let opts = RunOptions {
        http: Some(http),
        https: Some(https),
        admin: Some(admin),
    };
    let runner = std::thread::spawn(move || run(&loaded, opts));

    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(get(http, "a.test", "/").text(), "a GET / len=0\n");
    assert_eq!(get(http, "b.test", "/").status, 404);

    // Provision b while the proxy runs.
    {
        let lock = registry.lock().unwrap();
        registry
            .put(
                &lock,
                &tenant("b", [127, 0, 0, 3].into(), b.addr.port(), 2202, "b.test"),
            )
            .unwrap();
    }
    let written = Instant::now();
    loop {
        if get(http, "b.test", "/").status == 200 {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "new tenant not routed within a second"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get(http, "a.test", "/").status, 200);

    // Deprovision a.
    {
        let lock = registry.lock().unwrap();
        registry
            .remove(&lock, &TenantName::new("a").unwrap())
            .unwrap();
    }
    let removed = Instant::now();
    while get(http, "a.test", "/").status != 404 {
        assert!(removed.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(10));
    }

    let metrics = get(admin, "localhost", "/metrics").text();
    assert!(
        metrics.contains("sotolito_proxy_reloads_total 2"),
        "{metrics}"
    );

    // SIGTERM: the handler is installed before READY=1 was sent.
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
        .unwrap();
    let result = runner.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(std::net::TcpStream::connect(http).is_err());
}
