//! Fills a fleet store with N tenants (for the 10,000-tenant figures):
//! `cargo run -p sotolito-fleet --example fill -- CONFIG N`, CONFIG being a
//! host config with a `[cluster]` table. Tenants `t0`.. on node `bulk`,
//! addresses from 10.128.0.0, ports from 20000, hosts `tN.bulk.test`.

use std::net::Ipv4Addr;
use std::path::Path;

use sotolito_config::{HostConfig, HostName, ImageName, NodeName, SshPort, Tenant, TenantName};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, n] = args.as_slice() else {
        eprintln!("usage: fill CONFIG N");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(config).expect("config");
    let config = HostConfig::parse(&text, Path::new(config)).expect("valid config");
    let cluster = config.cluster.expect("a [cluster] table");
    let store = sotolito_fleet::Store::connect(&cluster)
        .await
        .expect("connect");
    let n: u32 = n.parse().expect("N");
    let node = NodeName::new("bulk").expect("name");
    let start = std::time::Instant::now();
    let mut jobs = Vec::new();
    for i in 0..n {
        let mut t = Tenant::new(
            TenantName::new(&format!("t{i}")).expect("name"),
            ImageName::new("busybox").expect("image"),
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i),
            SshPort::new(u64::from(20000 + i % 40000)).expect("port"),
            sotolito_config::host::Defaults::default().limits(),
        );
        t.hosts = vec![HostName::new(&format!("t{i}.bulk.test")).expect("host")];
        let (store, node) = (store.clone(), node.clone());
        jobs.push(async move { store.put_tenant(&node, &t, None).await });
        if jobs.len() == 64 {
            for r in futures::future::join_all(jobs.drain(..)).await {
                r.expect("put");
            }
        }
    }
    for r in futures::future::join_all(jobs).await {
        r.expect("put");
    }
    eprintln!("{n} tenants in {:?}", start.elapsed());
}
