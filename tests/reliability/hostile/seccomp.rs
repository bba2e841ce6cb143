//! Hostile tenant, the seccomp filter: namespaces, io_uring and the keyring stay out of reach.
//!
//! Tenant root tries busybox's `unshare` and a static probe
//! (`seccomp_probe.c`, built here with gcc) that makes each system call by
//! number. The same probe on the host and in a `--nesting` tenant is the
//! positive control: what fails in a plain tenant fails because of the
//! filter, not because the probe or the kernel cannot do it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::Host;

const CALLS: [&str; 9] = [
    "io_uring_setup",
    "keyctl",
    "add_key",
    "request_key",
    "unshare_user",
    "unshare_net",
    "clone",
    "clone_newuser",
    "clone3",
];

/// Builds the probe static, so that it runs in any tenant image.
fn build_probe(h: &Host) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reliability/hostile/seccomp_probe.c");
    let out = h.root.join("seccomp-probe");
    let o = Command::new("gcc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .expect("gcc is missing: apt-get install gcc libc6-dev (scripts/install-deps)");
    assert!(
        o.status.success(),
        "cannot build the probe (apt-get install gcc libc6-dev): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// "NAME ok" / "NAME errno N" lines into a map.
fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, r)| (n.to_owned(), r.to_owned()))
        .collect()
}

fn probe_host(probe: &Path) -> BTreeMap<String, String> {
    let o = Command::new(probe)
        .args(CALLS)
        .stdin(Stdio::null())
        .output()
        .expect("run the probe on the host");
    assert!(
        o.status.success(),
        "probe on the host: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    parse(&String::from_utf8_lossy(&o.stdout))
}

/// Copies the probe into the tenant through `vpsctl exec` (no host-side
/// write into the tenant's tree) and runs it there as tenant root.
fn probe_tenant(h: &Host, tenant: &str, probe: &Path) -> BTreeMap<String, String> {
    let o = h
        .vpsctl_cmd(&[
            "exec",
            tenant,
            "--",
            "sh",
            "-c",
            "cat > /tmp/probe && chmod 755 /tmp/probe",
        ])
        .stdin(std::fs::File::open(probe).expect("the built probe"))
        .output()
        .expect("spawn vpsctl exec");
    assert!(
        o.status.success(),
        "cannot copy the probe into {tenant}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut args = vec!["exec", tenant, "--", "/tmp/probe"];
    args.extend(CALLS);
    let o = h.vpsctl(&args);
    assert!(
        o.status.success(),
        "probe in {tenant}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    parse(&String::from_utf8_lossy(&o.stdout))
}

/// A shell line as tenant root: (succeeded, stdout + stderr).
fn sh(h: &Host, tenant: &str, script: &str) -> (bool, String) {
    let o = h.vpsctl(&["exec", tenant, "--", "sh", "-c", script]);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn expect(results: &BTreeMap<String, String>, call: &str, want: &str, where_: &str) {
    assert_eq!(
        results.get(call).map(String::as_str),
        Some(want),
        "{call} in {where_}: all results {results:?}"
    );
}

#[test]
fn tenant_root_cannot_make_namespaces_use_io_uring_or_reach_the_keyring() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("plain", 2201, &["--start"]);
    h.provision_busybox("nested", 2202, &["--nesting", "--start"]);
    assert_eq!(h.json(&["status", "plain"])["nesting"], false);
    assert_eq!(h.json(&["status", "nested"])["nesting"], true);
    let probe = build_probe(&h);

    // Positive control: on the host every call works, so a refusal inside
    // the tenant is the filter's doing.
    let host = probe_host(&probe);
    for call in CALLS {
        expect(&host, call, "ok", "the host");
    }

    // The attacks, from a plain tenant.
    let plain = probe_tenant(&h, "plain", &probe);
    expect(&plain, "io_uring_setup", "errno 1", "a plain tenant");
    for call in ["keyctl", "add_key", "request_key"] {
        expect(&plain, call, "errno 38", "a plain tenant");
    }
    expect(&plain, "unshare_user", "errno 1", "a plain tenant");
    expect(&plain, "unshare_net", "errno 1", "a plain tenant");
    expect(&plain, "clone_newuser", "errno 1", "a plain tenant");
    // ENOSYS, so that libc falls back to clone, which the filter can read.
    expect(&plain, "clone3", "errno 38", "a plain tenant");
    // A plain fork still works: the filter is not refusing clone outright.
    expect(&plain, "clone", "ok", "a plain tenant");
    for cmd in [
        "unshare -U true",
        "unshare -Urnm true",
        "unshare -n true",
        "unshare -Ur sh -c 'mount -t tmpfs x /tmp'",
    ] {
        let (ok, out) = sh(&h, "plain", cmd);
        assert!(!ok, "`{cmd}` worked in a plain tenant: {out}");
    }

    // Positive control for the namespace rules: the same in a --nesting
    // tenant works, and gives a root that can create nft tables or mount,
    // but only over its own new namespaces.
    let nested = probe_tenant(&h, "nested", &probe);
    for call in ["unshare_user", "clone_newuser", "clone3", "clone"] {
        expect(&nested, call, "ok", "a nesting tenant");
    }
    for cmd in [
        "unshare -U true",
        "unshare -Urnm sh -c 'mount -t tmpfs x /tmp && ip link set lo up'",
    ] {
        let (ok, out) = sh(&h, "nested", cmd);
        assert!(ok, "`{cmd}` failed in a nesting tenant: {out}");
    }
    // Nesting lifts only the namespace rules.
    expect(&nested, "io_uring_setup", "errno 1", "a nesting tenant");
    for call in ["keyctl", "add_key", "request_key"] {
        expect(&nested, call, "errno 38", "a nesting tenant");
    }
    // Without a user namespace of its own, a nesting tenant still lacks
    // CAP_SYS_ADMIN and CAP_NET_ADMIN over its own namespaces.
    let (ok, out) = sh(&h, "nested", "unshare -n true");
    assert!(
        !ok,
        "`unshare -n` worked in a nesting tenant without a user namespace: {out}"
    );
}

/// `--nesting` is a setting: re-provisioning with another value is refused
/// and changes nothing, the same value converges.
#[test]
fn nesting_is_part_of_the_settings() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("acme", 2201, &[]);
    let record = h.state().join("registry/tenants/acme.toml");
    let before = std::fs::read(&record).expect("the record");
    let key = h.write_key();
    let o = h.vpsctl(&[
        "provision",
        "acme",
        "--image",
        "busybox",
        "--host",
        "acme.test",
        "--ssh-port",
        "2201",
        "--ssh-key",
        key.to_str().unwrap(),
        "--nesting",
    ]);
    assert!(!o.status.success(), "changing nesting was accepted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nesting false -> true") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        std::fs::read(&record).unwrap(),
        before,
        "the record changed"
    );
    h.provision_busybox("acme", 2201, &[]);
    assert_eq!(std::fs::read(&record).unwrap(), before);
}
