//! Route lookup cost with 1 and with 10,000 routes: a hash lookup must not
//! care how many tenants the host carries.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use sotolito_proxy::RouteTable;

fn table(n: usize) -> RouteTable {
    let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    let hosts: Vec<String> = (0..n).map(|i| format!("site{i}.example.com")).collect();
    RouteTable::from_routes(hosts.iter().map(|h| (h.as_str(), "t", addr))).unwrap()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [1usize, 10_000] {
        let t = table(n);
        let last = format!("site{}.example.com", n - 1);
        group.bench_function(format!("{n}_routes_hit"), |b| {
            b.iter(|| black_box(t.lookup(black_box(&last))).is_some())
        });
        group.bench_function(format!("{n}_routes_hit_with_port_and_case"), |b| {
            let host = format!("{}:443", last.to_uppercase());
            b.iter(|| black_box(t.lookup(black_box(&host))).is_some())
        });
        group.bench_function(format!("{n}_routes_miss"), |b| {
            b.iter(|| black_box(t.lookup(black_box("nobody.example.org"))).is_none())
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
