//! `vpsctl boot` after a simulated reboot of the test host: tenant
//! processes killed, the runc root wiped, the tenant mounts, bridge, veths
//! and nft rules gone; then boot brings back exactly what should run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Host, HOST_ADDR};

/// Retries `f` for a bounded while; returns its last result.
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The tenant's SSH-style banner through the host's DNAT port, from the
/// client namespace: bridge, veth, nft map and the tenant all work.
fn banner(h: &Host, port: u16) -> Result<(), String> {
    let o = h.in_client(&["nc", "-w", "2", HOST_ADDR, &port.to_string()]);
    if String::from_utf8_lossy(&o.stdout).contains("SSH-2.0") {
        Ok(())
    } else {
        Err(format!(
            "no banner on {HOST_ADDR}:{port}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn status(h: &Host, name: &str) -> serde_json::Value {
    h.json(&["status", name])
}

/// What `runc state` says of every container of this host: (id, pid, bundle).
fn containers(h: &Host) -> Vec<(String, u32, PathBuf)> {
    h.runc_ids()
        .into_iter()
        .map(|id| {
            let o = Command::new("runc")
                .arg("--root")
                .arg(h.root.join("run/runc"))
                .args(["state", &id])
                .output()
                .expect("runc state");
            let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
                panic!("runc state {id}: {}", String::from_utf8_lossy(&o.stderr))
            });
            let pid = s["pid"].as_u64().expect("runc state has a pid") as u32;
            let bundle = PathBuf::from(s["bundle"].as_str().expect("runc state has a bundle"));
            (id, pid, bundle)
        })
        .collect()
}

/// Gone or a zombie: this machine's PID 1 reaps only every few seconds.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// What a reboot leaves: no tenant process, an empty run dir (tmpfs), no
/// mount under the test's dirs, no bridge or veth, no nft rule, no tenant
/// cgroup. Only the disk (state dir, config) survives.
fn simulate_reboot(h: &Host) {
    let found = containers(h);
    for (id, pid, _) in &found {
        let o = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "kill {pid} ({id}): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for (id, pid, _) in &found {
        eventually(Duration::from_secs(10), || {
            dead(*pid)
                .then_some(())
                .ok_or(format!("{id}'s init {pid} still alive"))
        })
        .unwrap();
    }
    // The cgroups runc made (a reboot empties the cgroup filesystems).
    for (_, _, bundle) in &found {
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let path = cfg["linux"]["cgroupsPath"]
            .as_str()
            .unwrap()
            .trim_start_matches('/')
            .to_owned();
        for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let dir = ctrl.path().join(&path);
            if dir.is_dir() {
                // Emptied by the kill; rmdir waits out a cgroup's last zombie.
                eventually(Duration::from_secs(10), || {
                    std::fs::remove_dir(&dir).map_err(|e| format!("rmdir {}: {e}", dir.display()))
                })
                .unwrap();
            }
        }
    }
    let run = h.root.join("run");
    std::fs::remove_dir_all(&run).unwrap();
    std::fs::create_dir(&run).unwrap();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&h.root))
        .map(str::to_owned)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        let o = Command::new("umount").arg(m).output().unwrap();
        assert!(
            o.status.success(),
            "umount {m}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let links = h.in_host(&["ip", "-o", "link", "show"]);
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap())
        else {
            continue;
        };
        if name != "lo" && name != "uplink" {
            let o = h.in_host(&["ip", "link", "del", name]);
            assert!(
                o.status.success(),
                "ip link del {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    // The test's own host namespace only.
    let o = h.in_host(&["nft", "flush", "ruleset"]);
    assert!(
        o.status.success(),
        "nft flush: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        h.runc_ids().is_empty(),
        "runc still lists containers after the wipe"
    );
}

/// `boot --json`: (exit success, name -> (result, error)).
fn boot(
    h: &Host,
    extra: &[&str],
) -> (
    bool,
    std::collections::BTreeMap<String, (String, Option<String>)>,
    String,
) {
    let mut args = vec!["boot", "--json"];
    args.extend_from_slice(extra);
    let o = h.vpsctl(&args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "boot --json printed no JSON ({e}): {} / {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let map = v
        .as_array()
        .expect("boot --json prints an array")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                (
                    t["result"].as_str().unwrap().to_owned(),
                    t["error"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect();
    (
        o.status.success(),
        map,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn result(r: &str) -> (String, Option<String>) {
    (r.to_owned(), None)
}

#[test]
fn boot_after_a_reboot_starts_what_should_run_and_only_that() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("alpha", 2201, &["--start"]);
    h.provision_busybox("beta", 2202, &["--start"]);
    h.provision_busybox("gamma", 2203, &[]);
    // bad runs on an image of its own, which the "reboot" will lose.
    let rootfs = h.root.join("busybox-rootfs");
    h.ok(&["image", "import", "doomed", rootfs.to_str().unwrap()]);
    let key = h.write_key();
    h.ok(&[
        "provision",
        "bad",
        "--image",
        "doomed",
        "--host",
        "bad.test",
        "--ssh-port",
        "2204",
        "--ssh-key",
        key.to_str().unwrap(),
        "--start",
    ]);
    h.ok(&[
        "exec",
        "alpha",
        "--",
        "sh",
        "-c",
        "echo kept-across-reboot > /root/marker",
    ]);
    for port in [2201, 2202, 2204] {
        eventually(Duration::from_secs(10), || banner(&h, port)).unwrap();
    }

    simulate_reboot(&h);
    std::fs::remove_dir_all(h.state().join("images/doomed")).unwrap();
    for name in ["alpha", "beta", "gamma", "bad"] {
        assert_eq!(
            status(&h, name)["state"],
            "stopped",
            "{name} after the reboot"
        );
    }
    assert!(
        banner(&h, 2201).is_err(),
        "alpha answers before boot: the reboot was not simulated"
    );

    // One at a time, so that beta's start comes after bad's failure.
    let (ok, out, stderr) = boot(&h, &["--jobs", "1"]);
    assert!(!ok, "boot exits 0 although bad cannot start");
    assert!(
        stderr.contains("1 of 4 tenant(s) did not start"),
        "boot's summary line: {stderr}"
    );
    assert_eq!(out["alpha"], result("started"));
    assert_eq!(out["beta"], result("started"));
    assert_eq!(out["gamma"], result("stopped"));
    let (bad, bad_err) = &out["bad"];
    assert_eq!(bad, "failed");
    let bad_err = bad_err.as_deref().expect("a failed tenant names its error");
    assert!(
        bad_err.contains("image doomed does not exist"),
        "bad's error names its missing image: {bad_err}"
    );

    for (name, port) in [("alpha", 2201), ("beta", 2202)] {
        let s = status(&h, name);
        assert_eq!(s["state"], "running", "{name} after boot: {s}");
        eventually(Duration::from_secs(10), || banner(&h, port)).unwrap();
        let ip = s["ip"].as_str().unwrap();
        let page = h.in_host(&["curl", "-sS", "--max-time", "5", &format!("http://{ip}/")]);
        assert!(
            String::from_utf8_lossy(&page.stdout).contains(&format!("hello from {name}")),
            "{name}'s HTTP after boot: {}",
            String::from_utf8_lossy(&page.stderr)
        );
    }
    let marker = h.ok(&["exec", "alpha", "--", "cat", "/root/marker"]);
    assert_eq!(
        String::from_utf8_lossy(&marker.stdout),
        "kept-across-reboot\n"
    );
    let g = status(&h, "gamma");
    assert_eq!(
        (g["state"].as_str(), g["desired"].as_str()),
        (Some("stopped"), Some("stopped"))
    );
    assert!(
        banner(&h, 2203).is_err(),
        "gamma answers although it stays stopped"
    );
    assert_eq!(status(&h, "bad")["state"], "stopped");
    // A failed start leaves nothing mounted for bad.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&format!(
            " {} ",
            h.state().join("tenants/alpha/rootfs").display()
        )),
        "no mount of alpha's root: the mount checks look in the wrong place"
    );
    assert!(
        !mounts.contains(&format!("{}/", h.state().join("tenants/bad").display())),
        "bad's failed start left a mount"
    );

    // Twice: nothing changes (same inits, same rules).
    let pids: Vec<_> = ["alpha", "beta"]
        .map(|n| status(&h, n)["pid"].clone())
        .to_vec();
    let rules = h.in_host(&["nft", "list", "ruleset"]).stdout;
    let (ok, out, _) = boot(&h, &[]);
    assert!(!ok, "the second boot still reports bad");
    assert_eq!(out["alpha"], result("running"));
    assert_eq!(out["beta"], result("running"));
    assert_eq!(out["gamma"], result("stopped"));
    assert_eq!(out["bad"].0, "failed");
    let again: Vec<_> = ["alpha", "beta"]
        .map(|n| status(&h, n)["pid"].clone())
        .to_vec();
    assert_eq!(pids, again, "a second boot restarted a running tenant");
    assert_eq!(
        String::from_utf8_lossy(&rules),
        String::from_utf8_lossy(&h.in_host(&["nft", "list", "ruleset"]).stdout),
        "a second boot changed the ruleset"
    );
    assert_eq!(
        h.runc_ids().len(),
        2,
        "containers after two boots: {:?}",
        h.runc_ids()
    );

    // With bad gone, boot succeeds and says so with exit 0.
    h.ok(&["deprovision", "bad"]);
    let (ok, out, stderr) = boot(&h, &[]);
    assert!(ok, "boot fails with every tenant startable: {stderr}");
    assert_eq!(out.len(), 3);

    // shutdown stops them all and keeps what should run for the next boot.
    let o = h.ok(&["shutdown", "--timeout", "1", "--json"]);
    let down: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let down: std::collections::BTreeMap<&str, &str> = down
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["result"].as_str().unwrap()))
        .collect();
    assert_eq!(down["gamma"], "not-running");
    for name in ["alpha", "beta"] {
        assert!(
            ["stopped", "killed"].contains(&down[name]),
            "shutdown of {name}: {down:?}"
        );
        let s = status(&h, name);
        assert_eq!(
            (s["state"].as_str(), s["desired"].as_str()),
            (Some("stopped"), Some("running")),
            "{name} after shutdown"
        );
    }
    assert!(
        h.runc_ids().is_empty(),
        "containers after shutdown: {:?}",
        h.runc_ids()
    );
    // The tenants' root filesystems are gone; their disk images stay
    // mounted on data/ from provision to deprovision, as after a stop.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for name in ["alpha", "beta"] {
        let root = h.state().join(format!("tenants/{name}/rootfs"));
        assert!(
            !mounts.contains(&format!(" {} ", root.display())),
            "shutdown left {name}'s root filesystem mounted"
        );
    }
    let (ok, out, stderr) = boot(&h, &[]);
    assert!(ok, "boot after shutdown: {stderr}");
    assert_eq!(out["alpha"], result("started"));
    assert_eq!(out["beta"], result("started"));
    assert_eq!(out["gamma"], result("stopped"));
    let marker = h.ok(&["exec", "alpha", "--", "cat", "/root/marker"]);
    assert_eq!(
        String::from_utf8_lossy(&marker.stdout),
        "kept-across-reboot\n"
    );
}

/// Boot from nothing to every tenant answering through its DNAT port;
/// prints the time taken (a measurement, not an assertion).
fn boot_many(n: u16) {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    let ports: Vec<u16> = (0..n).map(|i| 2300 + i).collect();
    for (i, port) in ports.iter().enumerate() {
        h.provision_busybox(&format!("t{i:02}"), *port, &["--start"]);
    }
    for port in &ports {
        eventually(Duration::from_secs(20), || banner(&h, *port)).unwrap();
    }
    simulate_reboot(&h);
    let t0 = Instant::now();
    let (ok, out, stderr) = boot(&h, &[]);
    let booted = t0.elapsed();
    assert!(ok, "boot of {n} tenants failed: {stderr}");
    assert!(out.values().all(|r| *r == result("started")), "{out:?}");
    for port in &ports {
        eventually(Duration::from_secs(30), || banner(&h, *port)).unwrap();
    }
    eprintln!(
        "boot of {n} busybox tenants: vpsctl boot returned after {:?}, all reachable after {:?}",
        booted,
        t0.elapsed()
    );
}

#[test]
fn boot_brings_back_two_tenants() {
    boot_many(2);
}

#[test]
fn boot_brings_back_twenty_tenants() {
    boot_many(20);
}
