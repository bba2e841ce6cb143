//! The cost of adding (and removing) one SSH forward to a live table holding
//! 0 vs 10,000 forwards: it should be flat (one map element per `nft -f`). Needs root:
//! each case runs in its own throwaway network namespace; without root it
//! reports that and measures nothing.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sotolito_config::{HostConfig, ImageName, SshPort, Tenant, TenantName};
use sotolito_net::netns::run_in;

fn tenant(i: u32) -> Tenant {
    Tenant::new(
        TenantName::new(&format!("tenant-{i}")).expect("valid name"),
        ImageName::new("debian").expect("valid image"),
        Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 18, 0, 2)) + i),
        SshPort::new(20_000 + u64::from(i)).expect("valid port"),
        HostConfig::default().defaults.limits(),
    )
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!("sotolito-bench-{}-{role}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed");
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn benches(c: &mut Criterion) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("forward bench: needs root (network namespaces); skipped");
        return;
    }
    let mut config = HostConfig::default();
    config.network.ssh_ports = "20000-40000".parse().expect("valid range");
    let state = std::env::temp_dir().join(format!("sotolito-bench-{}", std::process::id()));
    config.paths.state_dir = state.clone();
    let newcomer = tenant(15_000);
    let mut group = c.benchmark_group("forward");
    group.sample_size(20);
    for existing in [0u32, 10_000] {
        let ns = Netns::new(&format!("fwd{existing}"));
        let tenants: Vec<Tenant> = (0..existing).map(tenant).collect();
        run_in(&ns.path(), || sotolito_net::reconcile(&config, &tenants))
            .expect("load the ruleset");
        group.bench_function(format!("remove with {existing} forwards"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    run_in(&ns.path(), || {
                        sotolito_net::add_forward(&config, &newcomer, || Ok(tenants.clone()))
                    })
                    .expect("add forward");
                    let start = Instant::now();
                    run_in(&ns.path(), || {
                        sotolito_net::remove_forward(&config, &newcomer)
                    })
                    .expect("remove forward");
                    total += start.elapsed();
                }
                total
            })
        });
        group.bench_function(format!("add with {existing} forwards"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    run_in(&ns.path(), || {
                        sotolito_net::add_forward(&config, &newcomer, || Ok(tenants.clone()))
                    })
                    .expect("add forward");
                    total += start.elapsed();
                    run_in(&ns.path(), || {
                        sotolito_net::remove_forward(&config, &newcomer)
                    })
                    .expect("remove forward");
                }
                total
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(state);
}

criterion_group!(forward, benches);
criterion_main!(forward);
