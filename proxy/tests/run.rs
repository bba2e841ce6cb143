//! `run` as `vpsctl proxy` uses it: routes from a real registry in a temp
//! state dir, a tenant provisioned while it runs is routed within a second,
//! READY=1 over NOTIFY_SOCKET, SIGTERM drains and returns. Its own test
//! binary: it sets the environment and signals the process.

#![allow(clippy::unwrap_used)]

#[path = "proxy/common.rs"]
#[allow(dead_code)]
mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, read_response, Backend};
use sotolito_config::{
    Desired, HostConfig, HostName, HttpPort, ImageName, Loaded, Registry, SshPort, Tenant,
    TenantName,
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
    // sd_notify(3) assignments are newline-terminated (the sd-notify crate).
    assert_eq!(&buf[..n], b"READY=1\n");
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

    // Reloads under load: clients keep requesting a.test (keep-alive and
    // new connections) while tenants come and go in the registry.
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(http).unwrap();
                let mut done = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let status = if n % 20 == i {
                        get(http, "a.test", "/fresh").status
                    } else {
                        write!(s, "GET /{n} HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
                        read_response(&mut s).status
                    };
                    done.push((start.elapsed(), status));
                }
                done
            })
        })
        .collect();
    let mut changes = Vec::new();
    for i in 0..10u16 {
        std::thread::sleep(Duration::from_millis(30));
        let host = format!("c{i}.test");
        {
            let lock = registry.lock().unwrap();
            let name = format!("c{i}");
            registry
                .put(
                    &lock,
                    &tenant(
                        &name,
                        [127, 0, 0, 10 + i as u8].into(),
                        b.addr.port(),
                        2210 + u64::from(i),
                        &host,
                    ),
                )
                .unwrap();
        }
        let written = start.elapsed();
        // Nothing listens at its address: routed is 502, not 404.
        while get(http, &host, "/").status == 404 {
            assert!(
                start.elapsed() - written < Duration::from_secs(3),
                "{host} not routed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        changes.push(start.elapsed());
    }
    std::thread::sleep(Duration::from_millis(30));
    stop.store(true, Ordering::SeqCst);
    let done: Vec<(Duration, u16)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<_> = done.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "requests failed during reloads: {failed:?}"
    );
    // The traffic overlapped every change: requests were answered between
    // each routed change and the next.
    let mut bounds = changes.clone();
    bounds.push(start.elapsed());
    for pair in bounds.windows(2) {
        let within = done
            .iter()
            .filter(|(t, _)| *t > pair[0] && *t <= pair[1])
            .count();
        assert!(
            within > 0,
            "no request answered between {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(
        done.iter().any(|(t, _)| *t < changes[0]),
        "no traffic before the first change"
    );

    // A stopped tenant's sites answer 503 with a short page at once,
    // without the tenant being asked (control: it answered just now).
    assert_eq!(get(http, "b.test", "/").status, 200);
    let before = b.requests().len();
    {
        let lock = registry.lock().unwrap();
        let mut stopped = registry
            .get(&TenantName::new("b").unwrap())
            .unwrap()
            .unwrap();
        stopped.desired = Desired::Stopped;
        registry.put(&lock, &stopped).unwrap();
    }
    let written = Instant::now();
    let r = loop {
        let asked = Instant::now();
        let r = get(http, "b.test", "/");
        if r.status == 503 {
            assert!(
                // At once: the old path waited about 3 s for ARP to fail.
                asked.elapsed() < Duration::from_secs(2),
                "503 took {:?}",
                asked.elapsed()
            );
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(
            written.elapsed() < Duration::from_secs(3),
            "stopped tenant still routed"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(r.text().contains("stopped"), "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let after = b.requests().len();
    assert_eq!(get(http, "b.test", "/").status, 503);
    assert_eq!(b.requests().len(), after, "a stopped tenant was asked");
    assert!(after >= before);

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
        metrics.contains("sotolito_proxy_reloads_total 13"),
        "{metrics}"
    );

    // SIGTERM: the handler is installed before READY=1 was sent.
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
        .unwrap();
    let result = runner.join().unwrap();
    assert!(result.is_ok(), "{result:?}");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    assert!(std::net::TcpStream::connect(http).is_err());
}
