//! Hostile tenant, disk quotas: a tenant cannot fill the host's disk.
//!
//! The host's state dir is a small ext4 of the test's own on a loop device,
//! so "the host keeps its free space" is measured on a filesystem nothing
//! else writes to.

use std::path::Path;
use std::process::Command;

use crate::common::{loop_devices_under, Host};

const MIB: u64 = 1 << 20;

/// Mounts a fresh ext4 of `size` on the host's state dir (before `init`).
fn small_state_fs(h: &Host, size: &str) {
    let img = h.root.join("statefs.img");
    let state = h.state();
    std::fs::create_dir_all(&state).unwrap();
    for (prog, args) in [
        ("truncate", vec!["-s", size, img.to_str().unwrap()]),
        (
            "mkfs.ext4",
            vec!["-q", "-F", "-m", "0", img.to_str().unwrap()],
        ),
        (
            "mount",
            vec!["-o", "loop", img.to_str().unwrap(), state.to_str().unwrap()],
        ),
    ] {
        let o = Command::new(prog)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{prog}: {e} (apt-get install e2fsprogs mount)"));
        assert!(
            o.status.success(),
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_bavail * st.f_frsize
}

/// Runs `script` in the tenant; returns its stdout+stderr.
fn sh(h: &Host, tenant: &str, script: &str) -> String {
    let o = h.vpsctl(&["exec", tenant, "--", "sh", "-c", script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes up to `mib` MiB of zeroes to `file` inside the tenant (a bounded
/// loop of 1 MiB writes); returns the bytes that landed and dd's output.
fn fill(h: &Host, tenant: &str, file: &str, mib: u64) -> (u64, String) {
    let out = sh(
        h,
        tenant,
        &format!(
            "dd if=/dev/zero of={file} bs=1M count={mib} 2>&1; sync; echo size=$(wc -c < {file})"
        ),
    );
    let size = out
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no size from the fill of {file}: {out}"));
    (size, out)
}

#[test]
fn a_tenant_fills_only_its_own_quota() {
    let h = Host::new("");
    small_state_fs(&h, "2G");
    h.ok(&["init"]);
    h.busybox_image();
    let quota = 512 * MIB;
    h.provision_busybox("hog", 2201, &["--start", "--disk", "512M"]);
    h.provision_busybox("other", 2202, &["--start", "--disk", "512M"]);
    h.provision_busybox("free", 2203, &["--start", "--disk", "unlimited"]);
    let state = h.state();
    let free_before = free_bytes(&state);

    // The hog writes without end (bounded at twice its quota) into the
    // overlay's upper layer (/usr), /root and /var: together they stop at
    // about its quota, each with ENOSPC.
    let (usr, _) = fill(&h, "hog", "/usr/fill", 200);
    let (root, _) = fill(&h, "hog", "/root/fill", 200);
    let (var, out) = fill(&h, "hog", "/var/fill", 2 * quota / MIB);
    assert!(
        out.contains("No space left"),
        "the fill of /var did not hit ENOSPC: {out}"
    );
    let total = usr + root + var;
    assert!(
        total <= quota && total >= quota / 10 * 7,
        "the hog wrote {} MiB with a quota of {} MiB",
        total / MIB,
        quota / MIB
    );
    for dir in ["/var", "/root", "/usr", "/home"] {
        let out = sh(
            &h,
            "hog",
            &format!("dd if=/dev/zero of={dir}/more bs=1M count=8 2>&1"),
        );
        assert!(
            out.contains("No space left"),
            "a write to {dir} of a full tenant: {out}"
        );
    }
    let free_after = free_bytes(&state);
    assert!(
        free_after + quota + 64 * MIB >= free_before,
        "the host's state filesystem lost {} MiB to a tenant with a {} MiB quota",
        free_before.saturating_sub(free_after) / MIB,
        quota / MIB
    );

    // Positive control: the neighbour, same quota, still writes.
    let (wrote, out) = fill(&h, "other", "/var/ok", 64);
    assert_eq!(
        wrote,
        64 * MIB,
        "the neighbour could not write within its quota: {out}"
    );

    // Without a quota (the operator's explicit --disk unlimited) the same
    // fill goes beyond 512M: the probe itself is not what stops the hog.
    let (wrote, out) = fill(&h, "free", "/var/fill", quota / MIB + 128);
    assert_eq!(
        wrote,
        quota + 128 * MIB,
        "an unlimited tenant stopped early: {out}"
    );
    sh(&h, "free", "rm -f /var/fill");

    // status shows used and limit.
    let st = h.json(&["status", "hog"]);
    assert_eq!(st["disk_limit"], quota, "{st}");
    let used = st["disk_used"].as_u64().unwrap_or_else(|| panic!("{st}"));
    assert!(
        used >= total && used <= quota,
        "used {used} of {quota}: {st}"
    );
    let st = h.json(&["status", "free"]);
    assert!(
        st["disk_limit"].is_null() && st["disk_used"].is_null(),
        "{st}"
    );
    let list = h.json(&["list"]);
    let hog = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "hog")
        .unwrap();
    assert_eq!(hog["disk_limit"], quota);

    // set --disk grows the running hog's disk: same init, more room.
    let pid = h.json(&["status", "hog"])["pid"].clone();
    h.ok(&["set", "hog", "--disk", "768M"]);
    let st = h.json(&["status", "hog"]);
    assert_eq!(st["pid"], pid, "set --disk restarted the tenant");
    assert_eq!(st["disk_limit"], 768 * MIB);
    let (wrote, out) = fill(&h, "hog", "/var/grown", 128);
    assert_eq!(wrote, 128 * MIB, "no room after growing the disk: {out}");
    let record = std::fs::read_to_string(state.join("registry/tenants/hog.toml")).unwrap();
    assert!(record.contains("disk = \"768M\""), "{record}");

    // A tenant without a quota (as every record from before quotas) is put
    // under one while stopped: its data moves onto an image, kept.
    sh(
        &h,
        "free",
        "echo kept > /root/kept && echo upper > /usr/upper",
    );
    let out = h.vpsctl(&["set", "free", "--disk", "512M"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the tenant stopped"),
        "set --disk on a running tenant without a quota: {out:?}"
    );
    h.ok(&["stop", "free", "--timeout", "1"]);
    h.ok(&["set", "free", "--disk", "512M"]);
    h.ok(&["start", "free"]);
    assert_eq!(sh(&h, "free", "cat /root/kept /usr/upper"), "kept\nupper\n");
    let (wrote, out) = fill(&h, "free", "/var/fill", 2 * quota / MIB);
    assert!(
        out.contains("No space left") && wrote <= quota,
        "the converted tenant wrote {} MiB: {out}",
        wrote / MIB
    );
    assert_eq!(h.json(&["status", "free"])["disk_limit"], quota);

    // One loop device per tenant with a quota; none after deprovision.
    let tenants = state.join("tenants");
    assert_eq!(
        loop_devices_under(&tenants).len(),
        3,
        "{:?}",
        loop_devices_under(&tenants)
    );
    for t in ["hog", "other", "free"] {
        h.ok(&["deprovision", t, "--purge", "--timeout", "1"]);
    }
    assert_eq!(loop_devices_under(&tenants), Vec::<String>::new());
}
