//! etcd members each in a network namespace of their own, on a private
//! network (root): the harness the multi-node tests build on.

mod support;

use support::{Etcd, Lan};

#[test]
fn members_in_namespaces_form_one_cluster_across_the_private_network() {
    let lan = Lan::new(3);
    let mut etcd = Etcd::in_lan(&lan);
    let put = etcd
        .etcdctl(0)
        .args(["put", "/sotolito/v1/probe", "one"])
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    // Read through another member, from another namespace.
    let get = etcd
        .etcdctl(2)
        .args(["get", "--print-value-only", "/sotolito/v1/probe"])
        .output()
        .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "one");
    // One member down: the other two still accept writes.
    // The leader, so that an election follows (etcdctl does not resend
    // a write caught by it; the fleet store does, see tests/store.rs).
    let down = etcd.leader(0);
    let up = (down + 1) % 3;
    etcd.kill(down);
    etcd.wait_healthy(up);
    let put = etcd
        .etcdctl(up)
        .args(["put", "/sotolito/v1/probe", "two"])
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}\nlog of {up}:\n{}",
        String::from_utf8_lossy(&put.stderr),
        etcd.log_tail(up)
    );
    etcd.restart(down);
    etcd.wait_healthy(down);
    let get = etcd
        .etcdctl(down)
        .args(["get", "--print-value-only", "/sotolito/v1/probe"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "two",
        "the restarted member caught up"
    );
}
