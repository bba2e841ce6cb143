//! The registry across processes: concurrent writers and writers killed
//! mid-write. Children are this test binary re-executed with
//! `--exact writer_process` and an environment describing the job.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sotolito_config::{HostConfig, HostName, ImageName, Registry, SshPort, Tenant, TenantName};

const ROLE: &str = "SOTOLITO_TEST_WRITER";

fn tenant(name: &str, ip: Ipv4Addr, port: u16, host: &str, keys: usize) -> Tenant {
    Tenant {
        hosts: vec![HostName::new(host).unwrap()],
        ssh_keys: (0..keys)
            .map(|i| format!("ssh-ed25519 AAAA{i:0>200} key{i}@{name}"))
            .collect(),
        // Whole seconds, as the record keeps them.
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ..Tenant::new(
            TenantName::new(name).unwrap(),
            ImageName::new("busybox").unwrap(),
            ip,
            SshPort::new(port.into()).unwrap(),
            HostConfig::default().defaults.limits(),
        )
    }
}

fn spawn_writer(dir: &Path, job: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, job)
        .env("SOTOLITO_TEST_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The child side. Without the environment it has nothing to do; the other
/// tests in this file run it with one.
#[test]
fn writer_process() {
    let Ok(job) = std::env::var(ROLE) else { return };
    let reg = Registry::new(std::env::var("SOTOLITO_TEST_DIR").unwrap());
    let parts: Vec<&str> = job.split(',').collect();
    match parts[0] {
        // put,NAME,IP,PORT,HOST: one locked put; exit 0 on success, 3 on conflict.
        "put" => {
            let t = tenant(
                parts[1],
                parts[2].parse().unwrap(),
                parts[3].parse().unwrap(),
                parts[4],
                1,
            );
            let lock = reg.lock().unwrap();
            match reg.put(&lock, &t) {
                Ok(()) => std::process::exit(0),
                Err(sotolito_config::Error::Conflict { .. }) => std::process::exit(3),
                Err(e) => panic!("{e}"),
            }
        }
        // churn: rewrite one big record back and forth until killed.
        "churn" => {
            let a = tenant("acme", Ipv4Addr::new(172, 18, 0, 2), 2200, "a.example", 400);
            let b = tenant("acme", Ipv4Addr::new(172, 18, 0, 9), 2209, "b.example", 800);
            let lock = reg.lock().unwrap();
            for i in 0u64.. {
                reg.put(&lock, if i % 2 == 0 { &b } else { &a }).unwrap();
            }
        }
        other => panic!("unknown job {other}"),
    }
}

#[test]
fn sixteen_concurrent_writers_keep_every_invariant() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(tmp.path());
    reg.create().unwrap();
    // 16 writers: t0..t9 are distinct; t10..t15 form three conflicting
    // pairs (same IP, same port, same host) of which one each must win.
    let mut jobs: Vec<(String, &str)> = (0..10)
        .map(|i| {
            (
                format!("put,t{i},172.18.1.{},{},t{i}.example", i + 2, 2300 + i),
                "free",
            )
        })
        .collect();
    jobs.push(("put,c-ip1,172.18.9.9,2401,ip1.example".into(), "ip"));
    jobs.push(("put,c-ip2,172.18.9.9,2402,ip2.example".into(), "ip"));
    jobs.push(("put,c-port1,172.18.9.10,2500,port1.example".into(), "port"));
    jobs.push(("put,c-port2,172.18.9.11,2500,port2.example".into(), "port"));
    jobs.push(("put,c-host1,172.18.9.12,2601,shared.example".into(), "host"));
    jobs.push(("put,c-host2,172.18.9.13,2602,shared.example".into(), "host"));
    assert_eq!(jobs.len(), 16);

    let children: Vec<(Child, &str)> = jobs
        .iter()
        .map(|(job, group)| (spawn_writer(tmp.path(), job), *group))
        .collect();
    let mut wins = std::collections::HashMap::<&str, usize>::new();
    for (mut child, group) in children {
        let status = child.wait().unwrap();
        match status.code() {
            Some(0) => *wins.entry(group).or_default() += 1,
            Some(3) => assert_ne!(group, "free", "a non-conflicting writer lost"),
            other => panic!("writer failed: {other:?}"),
        }
    }
    assert_eq!(wins.get("free"), Some(&10));
    for group in ["ip", "port", "host"] {
        assert_eq!(wins.get(group), Some(&1), "exactly one {group} writer wins");
    }
    let all = reg.list().unwrap();
    assert_eq!(all.len(), 13);
    for t in &all {
        assert!(reg.check_conflicts(t).is_ok(), "{} conflicts", t.name);
    }
    assert_eq!(reg.generation().unwrap(), 13);
}

#[test]
fn writer_killed_mid_write_leaves_old_or_new_record() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::new(tmp.path());
    let a = tenant("acme", Ipv4Addr::new(172, 18, 0, 2), 2200, "a.example", 400);
    let b = tenant("acme", Ipv4Addr::new(172, 18, 0, 9), 2209, "b.example", 800);
    {
        let lock = reg.lock().unwrap();
        reg.put(&lock, &a).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_b = false;
    for round in 0..30u64 {
        assert!(Instant::now() < deadline, "crash loop over its time budget");
        let mut child = spawn_writer(tmp.path(), "churn");
        // Readers without the lock never see a torn record while it writes.
        let until = Instant::now() + Duration::from_millis(5 + (round * 7) % 40);
        while Instant::now() < until {
            let got = reg.get(&a.name).unwrap().expect("record present");
            assert!(got == a || got == b, "torn read");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let got = reg.get(&a.name).unwrap().expect("record survives SIGKILL");
        assert!(
            got == a || got == b,
            "record after SIGKILL is neither old nor new"
        );
        seen_b |= got == b;
        // The next writer takes the lock again: a killed holder released it.
        let lock = reg.lock().unwrap();
        reg.put(&lock, &a).unwrap();
    }
    assert!(
        seen_b,
        "the writer never completed a write: the test proved nothing"
    );
}
