//! The fleet store against real etcd members (mutual TLS, loopback): claims
//! by transaction, races, nodes and leases, the watch feed through an
//! outage.

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use sotolito_config::{HostName, ImageName, NodeName, SshPort, Tenant, TenantName};
use sotolito_fleet::{Error, Store, TenantFeed};
use support::Etcd;

fn tenant(name: &str, ip: [u8; 4], port: u16, hosts: &[&str]) -> Tenant {
    let mut t = Tenant::new(
        TenantName::new(name).unwrap(),
        ImageName::new("busybox").unwrap(),
        Ipv4Addr::from(ip),
        SshPort::new(port.into()).unwrap(),
        sotolito_config::host::Defaults::default().limits(),
    );
    t.hosts = hosts.iter().map(|h| HostName::new(h).unwrap()).collect();
    t
}

fn node(n: &str) -> NodeName {
    NodeName::new(n).unwrap()
}

async fn store(etcd: &Etcd, n: &str) -> Store {
    Store::connect(&etcd.cluster(n, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST))
        .await
        .expect("connect")
}

/// Every claim key and its owner.
fn claims(etcd: &Etcd) -> BTreeSet<(String, String)> {
    let out = etcd
        .etcdctl(0)
        .args(["get", "--prefix", "/sotolito/v1/claims/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
        .collect()
}

#[tokio::test]
async fn conflicts_name_the_owner_and_leave_nothing() {
    let etcd = Etcd::loopback(1);
    let s = store(&etcd, "node1").await;
    let n1 = node("node1");
    s.put_tenant(
        &n1,
        &tenant("beta", [172, 18, 0, 3], 2201, &["beta.example.com"]),
        None,
    )
    .await
    .unwrap();
    let before = claims(&etcd);
    assert_eq!(before.len(), 3, "{before:?}");
    let cases = [
        (
            tenant("acme", [172, 18, 0, 3], 2202, &[]),
            "address 172.18.0.3 is taken by tenant beta (pick another with --ip, or leave it out to get a free one)",
        ),
        (
            tenant("acme", [172, 18, 0, 4], 2201, &[]),
            "ssh port 2201 is taken by tenant beta (pick another with --ssh-port)",
        ),
        (
            tenant("acme", [172, 18, 0, 4], 2202, &["x.example.com", "beta.example.com"]),
            "host beta.example.com is taken by tenant beta (a host routes to one tenant; remove it there first)",
        ),
    ];
    for (t, want) in &cases {
        let err = s
            .put_tenant(&n1, t, None)
            .await
            .expect_err("a conflicting tenant was written");
        assert_eq!(err.to_string(), *want);
        assert!(
            s.tenant(&t.name).await.unwrap().is_none(),
            "no record of acme"
        );
        assert_eq!(claims(&etcd), before, "no claim of acme is left");
    }
    // Positive control: the same tenant with free values is written, with
    // all its claims.
    let ok = tenant("acme", [172, 18, 0, 4], 2202, &["acme.example.com"]);
    let stored = s.put_tenant(&n1, &ok, None).await.unwrap();
    assert_eq!(claims(&etcd).len(), 6);
    // A second node sees it and cannot take the name.
    let s2 = store(&etcd, "node2").await;
    let err = s2
        .put_tenant(
            &node("node2"),
            &tenant("acme", [172, 18, 1, 2], 2300, &[]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant acme lives on node node1 (manage it there, or pick another name)"
    );
    // An update moves claims: the old host is released, the new one taken.
    let mut moved = ok.clone();
    moved.hosts = vec![HostName::new("www.acme.example.com").unwrap()];
    let stored = s.put_tenant(&n1, &moved, Some(&stored)).await.unwrap();
    let now = claims(&etcd);
    assert!(now.contains(&(
        "/sotolito/v1/claims/host/www.acme.example.com".into(),
        "acme".into()
    )));
    assert!(
        !now.iter().any(|(k, _)| k.ends_with("/acme.example.com")),
        "{now:?}"
    );
    // A stale revision is refused, not overwritten.
    let err = s
        .put_tenant(&n1, &ok, Some(&stale_copy(&stored)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant acme was changed by another command meanwhile (run the command again)"
    );
    // Removal takes the record and every claim with it.
    assert!(s.remove_tenant(&n1, &ok.name).await.unwrap());
    assert_eq!(claims(&etcd), before);
    assert!(!s.remove_tenant(&n1, &ok.name).await.unwrap());
}

fn stale_copy(s: &sotolito_fleet::Stored) -> sotolito_fleet::Stored {
    sotolito_fleet::Stored {
        entry: s.entry.clone(),
        mod_revision: s.mod_revision - 1,
    }
}

#[tokio::test]
async fn racing_nodes_exactly_one_wins() {
    let etcd = Etcd::loopback(1);
    let (a, b) = (store(&etcd, "node1").await, store(&etcd, "node2").await);
    let (na, nb) = (node("node1"), node("node2"));
    for round in 0..10u16 {
        // Same name; same ssh port; same host: each from two nodes at once.
        let port = 2200 + round * 10;
        let races = [
            (
                tenant(
                    &format!("same{round}"),
                    [172, 18, 0, 2 + round as u8 * 4],
                    port,
                    &[],
                ),
                tenant(
                    &format!("same{round}"),
                    [172, 18, 1, 2 + round as u8 * 4],
                    port + 1,
                    &[],
                ),
            ),
            (
                tenant(
                    &format!("pa{round}"),
                    [172, 18, 0, 3 + round as u8 * 4],
                    port + 2,
                    &[],
                ),
                tenant(
                    &format!("pb{round}"),
                    [172, 18, 1, 3 + round as u8 * 4],
                    port + 2,
                    &[],
                ),
            ),
            (
                tenant(
                    &format!("ha{round}"),
                    [172, 18, 0, 4 + round as u8 * 4],
                    port + 3,
                    &["h.example.com"],
                ),
                tenant(
                    &format!("hb{round}"),
                    [172, 18, 1, 4 + round as u8 * 4],
                    port + 4,
                    &["h.example.com"],
                ),
            ),
        ];
        for (ta, tb) in &races {
            let (ra, rb) = tokio::join!(a.put_tenant(&na, ta, None), b.put_tenant(&nb, tb, None));
            let (winner, loser, err) = match (ra, rb) {
                (Ok(_), Err(e)) => (ta, tb, e),
                (Err(e), Ok(_)) => (tb, ta, e),
                (ra, rb) => panic!("exactly one must win: {ra:?} / {rb:?}"),
            };
            let msg = err.to_string();
            let want = if winner.name == loser.name {
                format!(
                    "tenant {} lives on node {} (manage it there, or pick another name)",
                    winner.name,
                    if std::ptr::eq(winner, ta) {
                        "node1"
                    } else {
                        "node2"
                    }
                )
            } else if winner.ssh_port == loser.ssh_port {
                format!(
                    "ssh port {} is taken by tenant {} (pick another with --ssh-port)",
                    winner.ssh_port, winner.name
                )
            } else {
                format!(
                    "host h.example.com is taken by tenant {} (a host routes to one tenant; remove it there first)",
                    winner.name
                )
            };
            assert_eq!(msg, want);
            // Nothing of the loser is left (unless it shares the name).
            if winner.name != loser.name {
                assert!(a.tenant(&loser.name).await.unwrap().is_none());
                assert!(!claims(&etcd)
                    .iter()
                    .any(|(_, owner)| *owner == loser.name.as_str()));
            } else {
                let held: Vec<_> = claims(&etcd)
                    .into_iter()
                    .filter(|(_, o)| *o == winner.name.as_str())
                    .map(|(k, _)| k)
                    .collect();
                assert_eq!(
                    held.len(),
                    2,
                    "only the winner's address and port: {held:?}"
                );
                assert!(held.contains(&format!("/sotolito/v1/claims/ip/{}", winner.ip)));
            }
            // Clean the host race so the next round can use it again.
            if !winner.hosts.is_empty() {
                let n = if std::ptr::eq(winner, ta) { &na } else { &nb };
                a.remove_tenant(n, &winner.name).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn nodes_get_subnets_and_show_down_when_their_lease_ends() {
    let etcd = Etcd::loopback(1);
    let range = "172.18.0.0/16".parse().unwrap();
    let c1 = etcd.cluster(
        "node1",
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(203, 0, 113, 1),
    );
    let c2 = etcd.cluster(
        "node2",
        Ipv4Addr::new(10, 0, 0, 2),
        Ipv4Addr::new(203, 0, 113, 2),
    );
    let s = Store::connect(&c1).await.unwrap();
    // Many nodes registering at once get distinct subnets.
    let mut regs = Vec::new();
    for i in 0..8u8 {
        let c = etcd.cluster(
            &format!("n{i}"),
            Ipv4Addr::new(10, 0, 1, i),
            Ipv4Addr::new(203, 0, 113, 100 + i),
        );
        let s = Store::connect(&c).await.unwrap();
        regs.push(async move { s.register_node(&c, range).await });
    }
    let recs = futures::future::join_all(regs).await;
    let subnets: BTreeSet<String> = recs
        .into_iter()
        .map(|r| r.unwrap().subnet.to_string())
        .collect();
    assert_eq!(subnets.len(), 8, "{subnets:?}");
    let r1 = s.register_node(&c1, range).await.unwrap();
    let r2 = s.register_node(&c2, range).await.unwrap();
    assert_ne!(r1.subnet, r2.subnet);
    assert_eq!(r1.subnet.prefix_len(), 24);
    // Registering again keeps the subnet.
    assert_eq!(s.register_node(&c1, range).await.unwrap(), r1);
    s.put_tenant(&c1.node, &tenant("acme", [172, 18, 8, 2], 2200, &[]), None)
        .await
        .unwrap();

    let live = s.keep_alive(&c1.node, c1.private_address, c1.lease_ttl);
    let _live2 = s.keep_alive(&c2.node, c2.private_address, c2.lease_ttl);
    let status = |name: &'static str| {
        let s = s.clone();
        async move {
            s.nodes()
                .await
                .unwrap()
                .into_iter()
                .find(|n| n.record.name.as_str() == name)
                .unwrap()
        }
    };
    wait_for("node1 up", || async { status("node1").await.up }).await;
    let n1 = status("node1").await;
    assert_eq!(n1.tenants, 1);
    assert_eq!(n1.record.public_address, Ipv4Addr::new(203, 0, 113, 1));
    // Kept alive beyond its TTL.
    tokio::time::sleep(c1.lease_ttl * 2).await;
    assert!(status("node1").await.up, "the keep-alive renews the lease");
    // Another host under the same name is refused while node1 lives.
    let mut imposter = c1.clone();
    imposter.private_address = Ipv4Addr::new(10, 0, 0, 99);
    assert_eq!(
        s.register_node(&imposter, range).await.unwrap_err().to_string(),
        "node node1 is registered from 10.0.0.1 and alive; this host is 10.0.0.99 (give this host another [cluster] node name)"
    );
    drop(live);
    wait_for("node1 down", || async { !status("node1").await.up }).await;
    let n1 = status("node1").await;
    assert_eq!(n1.tenants, 1, "a down node's tenants stay listed");
    assert!(status("node2").await.up, "the other node stays up");
    // A different fleet range is refused.
    assert_eq!(
        s.register_node(&c1, "10.0.0.0/8".parse().unwrap()).await.unwrap_err().to_string(),
        "node node1 was registered with the fleet range 172.18.0.0/16, this host's config says 10.0.0.0/8 (every node needs the same [network] subnet and [cluster] node_prefix)"
    );
}

/// Waits (30 s at most) until `f` holds.
async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_feed_follows_changes_and_keeps_the_last_view_through_an_outage() {
    let mut etcd = Etcd::loopback(1);
    let s = store(&etcd, "node1").await;
    let n1 = node("node1");
    s.put_tenant(
        &n1,
        &tenant("alpha", [172, 18, 0, 2], 2200, &["alpha.example.com"]),
        None,
    )
    .await
    .unwrap();
    let feed = TenantFeed::spawn(s.clone());
    let mut rx = feed.subscribe();
    wait_for("the first view", || {
        let v = rx.borrow_and_update().clone();
        async move { v.tenants.len() == 1 && !v.stale }
    })
    .await;
    s.put_tenant(&n1, &tenant("beta", [172, 18, 0, 3], 2201, &[]), None)
        .await
        .unwrap();
    wait_for("beta through the watch", || {
        let v = feed.current();
        async move { v.tenants.contains_key(&TenantName::new("beta").unwrap()) }
    })
    .await;

    etcd.kill(0);
    wait_for("the view marked stale", || {
        let v = feed.current();
        async move { v.stale }
    })
    .await;
    let v = feed.current();
    assert_eq!(v.tenants.len(), 2, "the last-known view is kept");
    let err = s
        .put_tenant(&n1, &tenant("gamma", [172, 18, 0, 4], 2202, &[]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("etcd store {} failed: ", etcd.endpoints()[0])),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");

    etcd.restart(0);
    etcd.wait_healthy(0);
    // The same store handle and feed recover without a restart.
    s.put_tenant(&n1, &tenant("gamma", [172, 18, 0, 4], 2202, &[]), None)
        .await
        .unwrap();
    wait_for("the feed to converge", || {
        let v = feed.current();
        async move { !v.stale && v.tenants.len() == 3 }
    })
    .await;
}

#[tokio::test]
async fn one_member_down_keeps_the_fleet_working() {
    let mut etcd = Etcd::loopback(3);
    let s = store(&etcd, "node1").await;
    let n1 = node("node1");
    s.put_tenant(&n1, &tenant("alpha", [172, 18, 0, 2], 2200, &[]), None)
        .await
        .unwrap();
    // The hardest one to lose: the leader (an election follows).
    let leader = etcd.leader(0);
    etcd.kill(leader);
    // A quorum of two keeps accepting writes, through the same handle.
    s.put_tenant(&n1, &tenant("beta", [172, 18, 0, 3], 2201, &[]), None)
        .await
        .unwrap();
    assert_eq!(s.tenants().await.unwrap().0.len(), 2);
    for i in 0..3 {
        etcd.kill(i);
    }
    let err = s
        .put_tenant(&n1, &tenant("gamma", [172, 18, 0, 4], 2202, &[]), None)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("etcd store https://"), "{err}");
    for i in 0..3 {
        etcd.restart(i);
    }
    for i in 0..3 {
        etcd.wait_healthy(i);
    }
    s.put_tenant(&n1, &tenant("gamma", [172, 18, 0, 4], 2202, &[]), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn members_refuse_clients_without_the_fleets_certificate() {
    let etcd = Etcd::loopback(1);
    // A certificate from another CA (what a stranger could make).
    let other = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fleet-certs"),
    )
    .arg(other.path())
    .arg("x=127.0.0.1")
    .status()
    .unwrap();
    assert!(status.success());
    let mut stranger = etcd.cluster("node1", Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
    stranger.etcd_cert = other.path().join("client.pem");
    stranger.etcd_key = other.path().join("client-key.pem");
    let s = Store::connect(&stranger).await.unwrap();
    let err = s
        .tenants()
        .await
        .expect_err("a client with a stranger's certificate read the registry")
        .to_string();
    assert!(err.starts_with("etcd store https://127.0.0.1:"), "{err}");
    // No client certificate at all: etcdctl with only the CA.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoints()[0],
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
        ])
        .arg("--cacert")
        .arg(etcd.certs().join("ca.pem"))
        .args(["get", "--prefix", "/sotolito/"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a client without a certificate read the registry"
    );
    // Positive control: the fleet's client certificate works.
    let ok = Store::connect(&etcd.cluster("node1", Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    assert!(ok.tenants().await.unwrap().0.is_empty());
    let out = etcd
        .etcdctl(0)
        .args(["get", "--prefix", "/sotolito/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
