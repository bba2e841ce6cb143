//! The orchestration without root: ordering, idempotence, conflicts, and
//! a failure at every step followed by a call that converges.

use std::time::Duration;

use sotolito_config::{Desired, DiskQuota, TenantName};
use sotolito_provisioner::supervise::Stopped;

use crate::fake::{Fake, World, INJECTED};
use crate::testdata;
use crate::{
    DeprovisionRequest, Error, Host, Outcome, ProvisionRequest, SetRequest, Started, StopRequest,
    StoreError,
};

struct Rig {
    _dir: tempfile::TempDir,
    fake: Fake,
    host: Host,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    fake.add_image("busybox", 15);
    let host = fake.host(testdata::config(dir.path()));
    Rig {
        _dir: dir,
        fake,
        host,
    }
}

fn name(n: &str) -> TenantName {
    TenantName::new(n).unwrap()
}

/// A provision with a disk quota, a host, a key, meant to run.
fn request(n: &str) -> ProvisionRequest {
    ProvisionRequest {
        hosts: vec![format!("{n}.example").parse().unwrap()],
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey k@example".into()],
        disk: Some("1G".parse().unwrap()),
        start: true,
        ..ProvisionRequest::new(name(n), "busybox".parse().unwrap())
    }
}

fn deprovision(n: &str, purge: bool) -> DeprovisionRequest {
    DeprovisionRequest {
        name: name(n),
        purge,
        timeout: Duration::from_secs(1),
    }
}

fn is_injected(e: &Error) -> bool {
    crate::real::chain(e).contains(INJECTED)
}

/// Runs `op` with step k failing, for every k that a run without
/// failures takes, each on a fresh rig prepared by `before`; after each,
/// `op` again without failures must reach the world of the run without
/// failures. Returns how many steps were failed.
fn fail_every_step<T: std::fmt::Debug>(
    before: impl Fn(&Rig),
    op: impl Fn(&Rig) -> Result<T, Error>,
    after_failure: impl Fn(&Rig, usize),
) -> usize {
    let want = {
        let r = rig();
        before(&r);
        r.fake.take_journal();
        op(&r).unwrap();
        r.fake.world().normalized()
    };
    let steps = {
        let r = rig();
        before(&r);
        r.fake.take_journal();
        op(&r).unwrap();
        r.fake.steps()
    };
    assert!(steps > 3, "too few steps to prove anything: {steps}");
    for k in 1..=steps {
        let r = rig();
        before(&r);
        r.fake.fail_at(Some(k));
        let err = op(&r).expect_err(&format!("step {k} failed, yet the call succeeded"));
        assert!(is_injected(&err), "step {k}: {err}");
        r.fake.fail_at(None);
        after_failure(&r, k);
        let journal = r.fake.take_journal();
        op(&r).unwrap_or_else(|e| panic!("after a failure at step {k} ({journal:?}): {e}"));
        assert_eq!(
            r.fake.world().normalized(),
            want,
            "after a failure at step {k} ({journal:?}), the next call did not converge"
        );
    }
    steps
}

#[test]
fn provision_orders_its_steps() {
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    let p = r.host.provision(&request("acme")).unwrap();
    assert_eq!(p.outcome, Outcome::New);
    assert_eq!(
        r.fake.take_journal(),
        [
            "files.ensure_layout",
            "mounts.create_disk acme",
            "mounts.mount_data acme",
            "files.write_bundle acme",
            "files.seed acme",
            "files.write_cfg acme",
            "systemd.enable acme",
            "store.create acme",
            "firewall.add_forward acme",
        ]
    );
    let w = r.fake.world();
    assert_eq!(w.records[&name("acme")].desired, Desired::Running);
    assert_eq!(w.disks[&name("acme")], 1 << 30);
    assert_eq!(w.tables.unwrap()[&name("acme")].0, 2200);
}

#[test]
fn provision_twice_changes_nothing() {
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    r.host.provision(&request("acme")).unwrap();
    let before = r.fake.world();
    r.fake.take_journal();
    let again = r.host.provision(&request("acme")).unwrap();
    assert_eq!(again.outcome, Outcome::Unchanged);
    assert_eq!(r.fake.world(), before);
    let journal = r.fake.take_journal();
    assert!(
        !journal.iter().any(|s| s.starts_with("store.")),
        "an unchanged provision wrote the store: {journal:?}"
    );
    // Other settings are refused, naming them, and change nothing.
    let mut other = request("acme");
    other.http_port = "8080".parse().unwrap();
    let err = r.host.provision(&other).unwrap_err().to_string();
    assert_eq!(
        err,
        "tenant acme exists with other settings: http port 80 -> 8080 (provision it with its current settings, or deprovision it first)"
    );
    assert_eq!(r.fake.world(), before);
}

#[test]
fn conflicts_are_refused_before_anything_changes() {
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    r.host.provision(&request("alpha")).unwrap();
    let before = r.fake.world();
    let cases = [
        (
            ProvisionRequest {
                ssh_port: Some("2200".parse().unwrap()),
                ..request("beta")
            },
            "ssh port 2200 is taken by tenant alpha (pick another with --ssh-port)",
        ),
        (
            ProvisionRequest {
                ip: Some("172.18.0.2".parse().unwrap()),
                ..request("beta")
            },
            "address 172.18.0.2 is taken by tenant alpha (pick another with --ip, or leave it out to get a free one)",
        ),
        (
            ProvisionRequest {
                hosts: vec!["alpha.example".parse().unwrap()],
                ..request("beta")
            },
            "host alpha.example is taken by tenant alpha (a host routes to one tenant; remove it there first)",
        ),
    ];
    for (req, want) in cases {
        r.fake.take_journal();
        assert_eq!(r.host.provision(&req).unwrap_err().to_string(), want);
        assert_eq!(r.fake.world(), before);
        assert_eq!(r.fake.take_journal(), ["files.ensure_layout"]);
    }
    // A quota this host cannot enforce: refused before anything changes.
    r.fake.set_quota_supported(false);
    let err = r.host.provision(&request("beta")).unwrap_err().to_string();
    assert!(
        err.starts_with("a disk quota cannot be enforced here"),
        "{err}"
    );
    assert_eq!(r.fake.world(), before);
}

#[test]
fn a_lost_claim_is_undone_and_planned_again() {
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    // Another host takes 172.18.0.2 and port 2200 between plan and claim.
    r.fake
        .steal_next_create(testdata::tenant("other", 2, 2200, &[]));
    let p = r.host.provision(&request("acme")).unwrap();
    assert_eq!(
        (p.tenant.ip.octets()[3], p.tenant.ssh_port.get()),
        (3, 2201)
    );
    let w = r.fake.world();
    // Its files were made again for the new address, not left with the old.
    assert_eq!(w.cfgs[&name("acme")], p.tenant.ip);
    assert_eq!(w.records.len(), 2);
    let journal = r.fake.take_journal();
    assert!(
        journal.contains(&"files.purge acme".to_owned()),
        "what the lost run seeded was not removed: {journal:?}"
    );
}

#[test]
fn missing_tables_are_rebuilt_from_the_store() {
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    r.host.provision(&request("alpha")).unwrap();
    // `nft flush ruleset`, then another provision.
    r.fake.with_world(|w| w.tables = None);
    r.host.provision(&request("beta")).unwrap();
    let tables = r.fake.world().tables.unwrap();
    assert_eq!(
        tables.keys().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
}

#[test]
fn provision_failing_at_any_step_converges_on_the_next_run() {
    let steps = fail_every_step(
        |r| r.fake.with_world(|w| w.tables = Some(Default::default())),
        |r| r.host.provision(&request("acme")),
        |_, _| {},
    );
    assert!(steps >= 9, "{steps}");
}

#[test]
fn reprovision_failing_at_any_step_keeps_the_tenants_data() {
    let keep = |r: &Rig| {
        r.fake.with_world(|w| w.tables = Some(Default::default()));
        r.host.provision(&request("acme")).unwrap();
        // The tenant's own file, and a flushed table to rebuild.
        r.fake.with_world(|w| {
            w.data
                .get_mut(&name("acme"))
                .unwrap()
                .files
                .insert("root/precious".into(), "do not lose me".into());
            w.tables = None;
        });
    };
    fail_every_step(
        keep,
        |r| r.host.provision(&request("acme")),
        |r, k| {
            let w: World = r.fake.world();
            assert_eq!(
                w.data[&name("acme")].files["root/precious"],
                "do not lose me",
                "step {k}"
            );
        },
    );
}

#[test]
fn deprovision_failing_at_any_step_converges_on_the_next_run() {
    let running = |r: &Rig| {
        r.fake.with_world(|w| w.tables = Some(Default::default()));
        r.host.provision(&request("acme")).unwrap();
        r.host.provision(&request("keeper")).unwrap();
        assert_eq!(r.host.start(&name("acme")).unwrap(), Started::Now);
    };
    for purge in [false, true] {
        fail_every_step(
            running,
            |r| match r.host.deprovision(&deprovision("acme", purge)) {
                // Everything was gone already when the failure hit the
                // last step: converged.
                Err(Error::Store(StoreError::NotFound(_)))
                    if !r.fake.world().records.contains_key(&name("acme")) =>
                {
                    Ok(None)
                }
                other => other.map(|d| d.kept),
            },
            |r, k| {
                // The other tenant is never touched.
                let w = r.fake.world();
                assert!(w.records.contains_key(&name("keeper")), "step {k}");
                assert!(w.data.contains_key(&name("keeper")), "step {k}");
            },
        );
    }
    // Without --purge the data stays, and provisioning again reuses it.
    let r = rig();
    running(&r);
    let d = r.host.deprovision(&deprovision("acme", false)).unwrap();
    assert!(d.kept.is_some());
    let w = r.fake.world();
    assert!(!w.records.contains_key(&name("acme")));
    assert!(!w.tables.as_ref().unwrap().contains_key(&name("acme")));
    assert!(!w.containers.contains_key(&name("acme")));
    assert!(!w.boot_links.contains(&name("acme")));
    assert_eq!(
        r.host.provision(&request("acme")).unwrap().outcome,
        Outcome::ReusedData
    );
}

#[test]
fn start_and_stop_failing_at_any_step_converge() {
    let provisioned = |r: &Rig| {
        r.fake.with_world(|w| w.tables = Some(Default::default()));
        r.host.provision(&request("acme")).unwrap();
    };
    fail_every_step(provisioned, |r| r.host.start(&name("acme")), |_, _| {});
    let running = |r: &Rig| {
        provisioned(r);
        r.host.start(&name("acme")).unwrap();
    };
    let stop = StopRequest {
        name: name("acme"),
        timeout: Duration::from_secs(1),
    };
    fail_every_step(running, |r| r.host.stop(&stop), |_, _| {});
    let r = rig();
    running(&r);
    assert_eq!(r.host.stop(&stop).unwrap(), Stopped::Gracefully);
    let w = r.fake.world();
    assert_eq!(w.records[&name("acme")].desired, Desired::Stopped);
    assert!(!w.boot_links.contains(&name("acme")));
    assert!(!w.root_mounted.contains(&name("acme")));
    assert_eq!(r.host.stop(&stop).unwrap(), Stopped::NotRunning);
}

#[test]
fn start_under_systemd_goes_through_systemctl() {
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    r.host.provision(&request("acme")).unwrap();
    r.fake.set_systemd_manages(true);
    r.fake.take_journal();
    r.host.start(&name("acme")).unwrap();
    let journal = r.fake.take_journal();
    assert!(
        journal.contains(&"systemd.start acme".to_owned()),
        "{journal:?}"
    );
    assert!(
        !journal
            .iter()
            .any(|s| s.starts_with("runtime.start_detached")),
        "{journal:?}"
    );
}

#[test]
fn set_failing_at_any_step_leaves_the_old_limits_or_the_new() {
    let running = |r: &Rig| {
        r.fake.with_world(|w| w.tables = Some(Default::default()));
        r.host.provision(&request("acme")).unwrap();
        r.host.start(&name("acme")).unwrap();
    };
    let req = SetRequest {
        name: name("acme"),
        memory: Some("1G".parse().unwrap()),
        cpu_weight: None,
        pids: Some("100".parse().unwrap()),
        swap: None,
        disk: Some(DiskQuota::Limit(2 << 30)),
        connections: Some(64),
    };
    fail_every_step(running, |r| r.host.set(&req), |_, _| {});
    let r = rig();
    running(&r);
    let (t, live) = r.host.set(&req).unwrap();
    assert!(live);
    let w = r.fake.world();
    assert_eq!(w.records[&name("acme")], t);
    let cg = w.cgroups[&name("acme")];
    assert_eq!((cg.memory, cg.pids), (t.limits.memory, t.limits.pids));
    assert_eq!(w.disks[&name("acme")], 2 << 30);
    assert_eq!(w.tables.unwrap()[&name("acme")].2, Some(64));
}

#[test]
fn the_hook_rebuilds_missing_tables_only_under_the_host_lock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    r.host.provision(&request("alpha")).unwrap();
    r.host.provision(&request("beta")).unwrap();
    // Another command (a reconcile, a provision) holds the host lock.
    let attach_while_held = |r: &Rig| {
        let held = r.host.lock().unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let hook = s.spawn(|| {
                let res = r.host.attach(&name("alpha"), 4242);
                done.store(true, Ordering::SeqCst);
                res
            });
            std::thread::sleep(Duration::from_millis(300));
            let finished_while_held = done.load(Ordering::SeqCst);
            drop(held);
            hook.join().unwrap().unwrap();
            finished_while_held
        })
    };
    // Positive control: with our tables there, the hook edits one element
    // and needs no lock, so it finishes while the lock is held.
    assert!(attach_while_held(&r), "the probe cannot see a hook finish");
    // With the tables gone (`nft flush ruleset`), it rebuilds them from
    // the store, and only once the holder is done.
    r.fake.with_world(|w| w.tables = None);
    assert!(
        !attach_while_held(&r),
        "the hook rebuilt the tables while another command held the host lock"
    );
    let w = r.fake.world();
    assert_eq!(
        w.tables
            .unwrap()
            .keys()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    assert!(w.veths.contains(&name("alpha")));
}

#[test]
fn boot_starts_what_should_run_and_goes_on_past_a_failure() {
    let r = rig();
    r.fake.with_world(|w| w.tables = Some(Default::default()));
    for n in ["alpha", "beta", "gamma"] {
        r.host.provision(&request(n)).unwrap();
    }
    r.host
        .provision(&ProvisionRequest {
            start: false,
            ..request("idle")
        })
        .unwrap();
    r.host.start(&name("beta")).unwrap();
    // A reboot: tables and containers gone; alpha's image too.
    r.fake.with_world(|w| {
        w.tables = None;
        w.containers.clear();
        w.containers.insert(name("beta"), "running".into());
        w.records.get_mut(&name("alpha")).unwrap().image = "gone".parse().unwrap();
    });
    let booted: Vec<(String, String)> = r
        .host
        .boot(2)
        .unwrap()
        .into_iter()
        .map(|(n, b)| (n.to_string(), format!("{b:?}").chars().take(7).collect()))
        .collect();
    assert_eq!(
        booted,
        [
            ("alpha".into(), "Failed(".into()),
            ("beta".into(), "Running".into()),
            ("gamma".into(), "Started".into()),
            ("idle".into(), "Stopped".into()),
        ]
    );
    let w = r.fake.world();
    assert_eq!(w.tables.unwrap().len(), 4, "the network comes first, whole");
    assert!(!w.containers.contains_key(&name("idle")));
    // Shutdown stops every one and keeps the desired states.
    let stopped = r.host.shutdown(Duration::from_secs(1), 8).unwrap();
    assert_eq!(stopped.len(), 4);
    let w = r.fake.world();
    assert!(w.containers.is_empty());
    assert_eq!(w.records[&name("gamma")].desired, Desired::Running);
}
