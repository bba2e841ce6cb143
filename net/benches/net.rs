//! Criterion benches of the pure parts with 10,000 tenants: rendering the
//! whole ruleset and allocating one more lease.

use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion};
use sotolito_config::tenant::{Desired, Limits, FORMAT_VERSION};
use sotolito_config::{CpuWeight, HostConfig, ImageName, MemorySize, SshPort, Tenant, TenantName};

fn tenants(n: u32) -> Vec<Tenant> {
    (0..n)
        .map(|i| Tenant {
            version: FORMAT_VERSION,
            name: TenantName::new(&format!("tenant-{i}")).expect("valid name"),
            image: ImageName::new("debian").expect("valid image"),
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 18, 0, 2)) + i),
            ssh_port: SshPort::new(20_000 + u64::from(i)).expect("valid port"),
            http_port: 80,
            hosts: vec![],
            ssh_keys: vec![],
            created: std::time::SystemTime::UNIX_EPOCH,
            desired: Desired::Running,
            acme_opt_out: vec![],
            limits: Limits {
                memory: MemorySize::new("512M").expect("valid size"),
                cpu_weight: CpuWeight::new(100).expect("valid weight"),
                pids: 4096,
            },
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
