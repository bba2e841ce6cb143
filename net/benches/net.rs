//! Criterion benches of the pure parts with 10,000 tenants: rendering the
//! whole ruleset and allocating one more lease.

use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion};
use sotolito_config::{HostConfig, ImageName, SshPort, Tenant, TenantName};

fn tenants(n: u32) -> Vec<Tenant> {
    (0..n)
        .map(|i| {
            Tenant::new(
                TenantName::new(&format!("tenant-{i}")).expect("valid name"),
                ImageName::new("debian").expect("valid image"),
                Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 18, 0, 2)) + i),
                SshPort::new(20_000 + u64::from(i)).expect("valid port"),
                HostConfig::default().defaults.limits(),
            )
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut config = HostConfig::default();
    config.network.ssh_ports = "20000-40000".parse().expect("valid range");
    let ts = tenants(10_000);
    c.bench_function("render_ruleset 10000 tenants", |b| {
        b.iter(|| sotolito_net::render_ruleset(&config, std::hint::black_box(&ts)))
    });
    let name = TenantName::new("newcomer").expect("valid name");
    c.bench_function("allocate with 10000 tenants", |b| {
        b.iter(|| sotolito_net::allocate(&config, std::hint::black_box(&ts), &name, None, None))
    });
    let one = tenants(1);
    c.bench_function("render_ruleset 1 tenant", |b| {
        b.iter(|| sotolito_net::render_ruleset(&config, std::hint::black_box(&one)))
    });
}

criterion_group!(net, benches);
criterion_main!(net);
