//! Hostile tenant, user namespaces: tenant root is an unprivileged host user.
//!
//! Each probe runs as root inside a real tenant. The positive control runs
//! the same probe on the same tenant's tree in a container that differs
//! only in having no user namespace (what every tenant was before), and
//! shows it succeeds there.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::Host;

const BASE: u32 = 1_000_000;

fn exec(h: &Host, tenant: &str, script: &str) -> (bool, String) {
    let o = h.vpsctl(&["exec", tenant, "--", "sh", "-c", script]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), out)
}

fn idmap(h: &Host, tenant: &str) -> (u32, u32, bool) {
    let v = h.json(&["status", tenant])["idmap"].clone();
    let n = |k: &str| u32::try_from(v[k].as_u64().expect("idmap in status")).unwrap();
    (n("host_id"), n("size"), v["isolated"].as_bool().unwrap())
}

/// Runs `script` in a one-shot container on the running tenant's own root
/// and data binds, with the tenant's config.json minus its user namespace,
/// id maps and hooks: the probe without the protection.
fn probe_without_userns(h: &Host, tenant: &str, script: &str) -> (bool, String) {
    let bundle = h.state().join("tenants").join(tenant);
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let linux = spec["linux"].as_object_mut().unwrap();
    linux.remove("uidMappings");
    linux.remove("gidMappings");
    let ns = linux["namespaces"].as_array_mut().unwrap();
    let before = ns.len();
    ns.retain(|n| n["type"] != "user");
    assert_eq!(
        ns.len(),
        before - 1,
        "the tenant's spec has a user namespace"
    );
    linux.insert(
        "cgroupsPath".into(),
        format!("/sotolito-userns-control-{}", std::process::id()).into(),
    );
    spec.as_object_mut().unwrap().remove("hooks");
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    let control = h.root.join("control-bundle");
    fs::create_dir_all(&control).unwrap();
    fs::write(control.join("config.json"), spec.to_string()).unwrap();
    let o = Command::new("runc")
        .arg("--root")
        .arg(h.root.join("run/runc"))
        .args(["run", "--bundle"])
        .arg(&control)
        .arg(format!("{tenant}-control"))
        .stdin(Stdio::null())
        .output()
        .expect("runc run");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), out)
}

/// A file only host root may read, placed in the tenant's own tree.
fn plant_host_secret(path: &Path) {
    fs::write(path, "host-only-secret\n").unwrap();
    std::os::unix::fs::lchown(path, Some(0), Some(0)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn tenant_root_is_an_unprivileged_host_user() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("acme", 2201, &["--start"]);
    let (host_id, size, isolated) = idmap(&h, "acme");
    assert_eq!((host_id, size, isolated), (BASE, 65536, false));
    let data = h.state().join("tenants/acme/data");

    // 1. What tenant root creates belongs to an unprivileged host uid.
    let (ok, out) = exec(&h, "acme", "touch /root/made-inside && id -u");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "0", "the probe runs as tenant root");
    let made = fs::symlink_metadata(data.join("root/made-inside")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (BASE, BASE),
        "a file made by tenant root must be owned by the mapped root on the host"
    );

    // 2. The kernel says so from inside.
    let (ok, out) = exec(&h, "acme", "cat /proc/self/uid_map /proc/self/gid_map");
    assert!(ok, "{out}");
    let maps: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        maps,
        [["0", "1000000", "65536"], ["0", "1000000", "65536"]],
        "{out}"
    );

    // 3. A host-root-only file in its own tree stays unreadable to it,
    //    even with CAP_DAC_OVERRIDE inside.
    plant_host_secret(&data.join("root/host-secret"));
    let probe = "cat /root/host-secret";
    let (ok, out) = exec(&h, "acme", probe);
    assert!(
        !ok && !out.contains("host-only-secret") && out.contains("Permission denied"),
        "tenant root read a host-root-only file: {out}"
    );
    // Where it is allowed (the file is its own), the same read works.
    let own = data.join("root/own-secret");
    fs::write(&own, "tenant-secret\n").unwrap();
    std::os::unix::fs::lchown(&own, Some(BASE), Some(BASE)).unwrap();
    fs::set_permissions(&own, fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out) = exec(&h, "acme", "cat /root/own-secret");
    assert!(ok && out.contains("tenant-secret"), "{out}");

    // Positive control: the same probes on the same tree without the user
    // namespace succeed: root there is host root.
    let (ok, out) = probe_without_userns(
        &h,
        "acme",
        "cat /root/host-secret && touch /root/made-as-host-root && cat /proc/self/uid_map",
    );
    assert!(ok, "control failed: {out}");
    assert!(out.contains("host-only-secret"), "{out}");
    assert!(out.contains("4294967295"), "no user namespace: {out}");
    assert_eq!(
        fs::symlink_metadata(data.join("root/made-as-host-root"))
            .unwrap()
            .uid(),
        0
    );
}

#[test]
fn isolated_tenants_get_disjoint_ranges() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("shared", 2201, &[]);
    h.provision_busybox("own1", 2202, &["--isolated-idmap", "--start"]);
    h.provision_busybox("own2", 2203, &["--isolated-idmap", "--start"]);
    let shared = idmap(&h, "shared");
    let a = idmap(&h, "own1");
    let b = idmap(&h, "own2");
    assert_eq!(shared, (BASE, 65536, false));
    assert!(a.2 && b.2, "{a:?} {b:?}");
    let disjoint = |x: (u32, u32, bool), y: (u32, u32, bool)| x.0 + x.1 <= y.0 || y.0 + y.1 <= x.0;
    assert!(
        disjoint(a, b) && disjoint(a, shared) && disjoint(b, shared),
        "{shared:?} {a:?} {b:?}"
    );
    for (name, map) in [("own1", a), ("own2", b)] {
        let (ok, out) = exec(&h, name, "cat /proc/self/uid_map; touch /root/mine");
        assert!(ok, "{out}");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["0", &map.0.to_string(), "65536"]
        );
        let f = h.state().join("tenants").join(name).join("data/root/mine");
        assert_eq!(fs::metadata(f).unwrap().uid(), map.0);
    }
    // A purged tenant's range is free again; a rerun keeps the range.
    h.ok(&["deprovision", "own1", "--purge", "--timeout", "2"]);
    h.provision_busybox("own3", 2204, &["--isolated-idmap"]);
    assert_eq!(idmap(&h, "own3"), a);
    h.provision_busybox("own2", 2203, &["--isolated-idmap", "--start"]);
    assert_eq!(idmap(&h, "own2"), b);
    // Kept data follows its tenant into another range: provisioned again
    // on the shared range, its files move there.
    h.ok(&["deprovision", "own2", "--timeout", "2"]);
    // (Kept on its disk image, unmounted until it is provisioned again.)
    let mine = h.state().join("tenants/own2/data/root/mine");
    h.provision_busybox("own2", 2203, &["--start"]);
    assert_eq!(idmap(&h, "own2"), shared);
    assert_eq!(fs::metadata(&mine).unwrap().uid(), BASE);
    let (ok, out) = exec(&h, "own2", "ls -ln /root/mine");
    assert!(ok && out.split_whitespace().nth(2) == Some("0"), "{out}");
    h.ok(&["stop", "own2", "--timeout", "2"]);
    h.ok(&["remap", "own2", "--isolated-idmap"]);
    assert_eq!(idmap(&h, "own2"), b);
    assert_eq!(fs::metadata(&mine).unwrap().uid(), b.0);
    // Changing the choice on a rerun is refused, as for any other setting.
    let o = h.vpsctl(&[
        "provision",
        "own2",
        "--image",
        "busybox",
        "--host",
        "own2.test",
        "--ssh-port",
        "2203",
        "--ssh-key",
        h.write_key().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("isolated idmap true -> false"), "{err}");
}

/// Turns a stopped tenant back into one made before user namespaces: its
/// record without the id map, its files owned by host ids as they were.
fn make_old_style(h: &Host, name: &str) {
    let record = h
        .state()
        .join("registry/tenants")
        .join(format!("{name}.toml"));
    let text = fs::read_to_string(&record).unwrap();
    let old: String = text
        .split("\n[idmap]")
        .next()
        .unwrap()
        .trim_end()
        .to_owned()
        + "\n";
    assert!(!old.contains("idmap"), "{old}");
    fs::write(&record, old).unwrap();
    let data = h.state().join("tenants").join(name).join("data");
    fs::remove_file(data.join(".idmap")).unwrap();
    let mut stack = vec![data.clone()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let back = |id: u32| if id >= BASE { id - BASE } else { id };
        std::os::unix::fs::lchown(&p, Some(back(m.uid())), Some(back(m.gid()))).unwrap();
        if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
        }
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_tenant_made_before_user_namespaces_is_refused_until_remapped() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("old", 2201, &["--start"]);
    let (ok, out) = exec(
        &h,
        "old",
        "echo kept > /root/kept && cp /bin/busybox /root/su-copy && chmod 4755 /root/su-copy && chown 33:33 /root/kept",
    );
    assert!(ok, "{out}");
    h.ok(&["stop", "old", "--timeout", "2"]);
    make_old_style(&h, "old");
    let data = h.state().join("tenants/old/data");
    assert_eq!(fs::metadata(data.join("root/kept")).unwrap().uid(), 33);

    for verb in ["start", "run", "restart"] {
        let o = h.vpsctl(&[verb, "old"]);
        assert!(!o.status.success(), "{verb} must refuse an old tenant");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("vpsctl remap old") && err.contains("host root"),
            "{verb}: {err}"
        );
    }
    assert!(h.runc_ids().is_empty(), "nothing ran: {:?}", h.runc_ids());

    let v = h.json(&["remap", "old"]);
    assert_eq!(v["idmap"]["host_id"], BASE);
    assert!(v["changed"].as_u64().unwrap() > 10, "{v}");
    let kept = fs::metadata(data.join("root/kept")).unwrap();
    assert_eq!((kept.uid(), kept.gid()), (BASE + 33, BASE + 33));
    let su = fs::metadata(data.join("root/su-copy")).unwrap();
    assert_eq!((su.uid(), su.mode() & 0o7777), (BASE, 0o4755));
    // Converging: a second remap has nothing to do.
    assert_eq!(h.json(&["remap", "old"])["changed"], 0);

    h.ok(&["start", "old"]);
    let (ok, out) = exec(
        &h,
        "old",
        "cat /root/kept; ls -ln /root/kept; cat /proc/self/uid_map",
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("kept\n"), "{out}");
    assert!(out.contains(" 33 ") && out.contains("1000000"), "{out}");
    // remap refuses a running tenant, changing nothing.
    let o = h.vpsctl(&["remap", "old", "--isolated-idmap"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("vpsctl stop old"),
        "{err}"
    );
    assert_eq!(idmap(&h, "old"), (BASE, 65536, false));
}
