//! The cost of adding (and removing) one SSH forward to a live table holding
//! 0 vs 10,000 forwards: it should be flat (one map element per `nft -f`). Needs root:
//! each case runs in its own throwaway network namespace; without root it
//! reports that and measures nothing.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sotolito_config::{HostConfig, ImageName, SshPort, Tenant, TenantName};
use sotolito_net::netns::run_in;
use sotolito_net::sandbox::Netns;

fn tenant(i: u32) -> Tenant {
    Tenant::new(
        TenantName::new(&format!("tenant-{i}")).expect("valid name"),
        ImageName::new("debian").expect("valid image"),
        Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 18, 0, 2)) + i),
        SshPort::new(20_000 + u64::from(i)).expect("valid port"),
        HostConfig::default().defaults.limits(),
    )
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
        let ns = Netns::unique(&format!("sotolito-bench-fwd{existing}")).expect("a namespace");
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
