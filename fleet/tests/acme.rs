//! The fleet's shared ACME state against a real etcd member (mutual TLS,
//! loopback): the order lock is exclusive, a dead holder's lock and
//! tokens go with its lease, and two nodes registering an account at once
//! end up with one.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use sotolito_fleet::Store;
use support::Etcd;

async fn store(etcd: &Etcd, n: &str) -> Store {
    Store::connect(&etcd.cluster(n, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST))
        .await
        .expect("connect")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn get(etcd: &Etcd, key: &str) -> String {
    let out = etcd
        .etcdctl(0)
        .args(["get", "--print-value-only", key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const TTL: Duration = Duration::from_secs(2);
const TOKEN: &str = "/sotolito/v1/acme/challenges/tok-1";

#[test]
fn the_order_lock_is_exclusive_and_dies_with_its_holder() {
    let etcd = Etcd::loopback(1);
    // Node A, on a runtime of its own: dropping that runtime is A dying
    // (no release, no more lease renewals). Its own thread renews the
    // lease meanwhile.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = rt_a.block_on(store(&etcd, "node1"));
    let lock = rt_a
        .block_on(a.lock_host("shop.io", TTL, Duration::from_secs(10)))
        .expect("a free lock is taken");
    rt_a.block_on(a.put_acme_challenge(&lock, "tok-1", "tok-1.thumb"))
        .unwrap();
    assert_eq!(get(&etcd, TOKEN), "tok-1.thumb");

    let rt = runtime();
    let b = rt.block_on(store(&etcd, "node2"));
    // Held: B waits (longer than the lease, since A renews it) and does
    // not get it.
    let waited = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(4),
            b.lock_host("shop.io", TTL, Duration::from_secs(30)),
        )
        .await
    });
    assert!(waited.is_err(), "B got a held lock: {waited:?}");
    // Another host's lock is independent.
    let other = rt
        .block_on(b.lock_host("shop.io.evil", TTL, Duration::from_secs(10)))
        .expect("another host's lock");
    rt.block_on(other.release());

    // A dies holding it: its lease expires, B gets the lock, and A's
    // token went with the lease.
    std::mem::forget(lock);
    drop(rt_a);
    let lock_b = rt
        .block_on(b.lock_host("shop.io", TTL, Duration::from_secs(30)))
        .expect("the dead holder's lock expired");
    assert_eq!(
        get(&etcd, TOKEN),
        "",
        "the dead orderer's token is still there"
    );

    // Released: the next one gets it at once.
    rt.block_on(lock_b.release());
    let c = rt.block_on(store(&etcd, "node3"));
    let lock_c = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(4),
                c.lock_host("shop.io", TTL, Duration::from_secs(30)),
            )
            .await
        })
        .expect("a released lock is free")
        .unwrap();
    rt.block_on(lock_c.release());
}

#[test]
fn two_nodes_registering_an_account_share_the_first() {
    let etcd = Etcd::loopback(1);
    let rt = runtime();
    let a = rt.block_on(store(&etcd, "node1"));
    let b = rt.block_on(store(&etcd, "node2"));
    assert_eq!(rt.block_on(a.acme_account()).unwrap(), None);
    let first = rt.block_on(a.put_acme_account(b"{\"a\":1}", None)).unwrap();
    assert_eq!(first, b"{\"a\":1}");
    // B read nothing either, registered too, and lost the race.
    let second = rt.block_on(b.put_acme_account(b"{\"b\":2}", None)).unwrap();
    assert_eq!(second, b"{\"a\":1}", "B's account replaced A's");
    // Replacing what was read (the CA forgot the account) works.
    let third = rt
        .block_on(b.put_acme_account(b"{\"b\":3}", Some(b"{\"a\":1}")))
        .unwrap();
    assert_eq!(third, b"{\"b\":3}");
    assert_eq!(get(&etcd, "/sotolito/v1/acme/account"), "{\"b\":3}");
}
