//! Hostile tenant, delegated cgroups: limits the tenant cannot lift, checked from the host.
//!
//! Every reading comes from the host's cgroup files of the running tenant,
//! found through /proc/PID/cgroup of its init (never from config.json).

use std::path::PathBuf;

use crate::common::Host;

/// Runs `script` as root inside `tenant`; (exit 0, stdout + stderr).
fn exec(h: &Host, tenant: &str, script: &str) -> (bool, String) {
    let o = h.vpsctl(&["exec", tenant, "--", "sh", "-c", script]);
    let mut text = format!("[{}] ", o.status);
    text.push_str(&String::from_utf8_lossy(&o.stdout));
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

fn pid(h: &Host, tenant: &str) -> u64 {
    h.json(&["status", tenant])["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{tenant} has no pid: is it running?"))
}

/// The host's mount point of the v1 hierarchy whose options include
/// `option` (`pids`, `memory`, `cpu`, `name=systemd`).
fn mount_of(option: &str) -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            (f[3] == "/" && f[dash + 1] == "cgroup" && f[dash + 3].split(',').any(|o| o == option))
                .then(|| PathBuf::from(f[4]))
        })
        .unwrap_or_else(|| {
            panic!("no cgroup v1 {option} hierarchy: these tests need the hybrid layout")
        })
}

/// The tenant init's cgroup in the hierarchy of `option`, from the host.
fn cgroup_of(pid: u64, option: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, names, path) = (p.next()?, p.next()?, p.next()?);
            names
                .split(',')
                .any(|n| n == option)
                .then(|| path.to_owned())
        })
        .unwrap_or_else(|| panic!("pid {pid} is in no {option} cgroup: {text}"))
}

/// A cgroup file of the host, `cgroup` as /proc/PID/cgroup names it.
fn read(option: &str, cgroup: &str, file: &str) -> String {
    let path = mount_of(option)
        .join(cgroup.trim_start_matches('/'))
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn parent(cgroup: &str) -> String {
    let p = cgroup.rsplit_once('/').map_or("", |(p, _)| p);
    if p.is_empty() {
        "/".into()
    } else {
        p.into()
    }
}

/// The limits of a running tenant as the host enforces them: the values
/// on the cgroup above the tenant's own (its cgroup namespace root).
struct Held {
    pids: String,
    memory: String,
    memsw: String,
    shares: String,
}

fn held(pid: u64) -> Held {
    let limit = |opt: &str| parent(&cgroup_of(pid, opt));
    Held {
        pids: read("pids", &limit("pids"), "pids.max"),
        memory: read("memory", &limit("memory"), "memory.limit_in_bytes"),
        memsw: read("memory", &limit("memory"), "memory.memsw.limit_in_bytes"),
        shares: read("cpu", &limit("cpu"), "cpu.shares"),
    }
}

const MIB: u64 = 1 << 20;

/// Kills (from the host) what the fork probe left in the tenant's pids
/// cgroup `cgroup` and its children: `sleep`s, or the shells busybox forks
/// to run them without exec (their command line is the probe's).
fn kill_sleeps(cgroup: &str) {
    let root = mount_of("pids").join(cgroup.trim_start_matches('/'));
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for p in procs.lines() {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            if comm.trim() == "sleep" || String::from_utf8_lossy(&cmdline).contains("started=") {
                let _ = std::process::Command::new("kill").args(["-9", p]).status();
            }
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
}

#[test]
fn tenant_cannot_lift_its_limits() {
    let h = Host::new("");
    h.busybox_image();
    h.provision_busybox(
        "cg",
        2201,
        &[
            "--start",
            "--memory",
            "64M",
            "--pids",
            "64",
            "--cpu-weight",
            "50",
        ],
    );
    let pid = pid(&h, "cg");

    // Where the limits sit: on a strict ancestor of the tenant's own
    // cgroup, which is all the tenant's cgroup namespace shows it.
    for opt in ["pids", "memory", "cpu", "name=systemd"] {
        let own = cgroup_of(pid, opt);
        assert!(
            own.ends_with("/cg/tenant"),
            "{opt}: the tenant runs in {own}, not in a child of its limit cgroup"
        );
    }
    let own_pids = cgroup_of(pid, "pids");
    assert_eq!(
        read("pids", &own_pids, "pids.max"),
        "max",
        "the pids limit sits on the tenant's own cgroup {own_pids}, which it can write"
    );
    let before = held(pid);
    assert_eq!(before.pids, "64");
    assert_eq!(before.memory, (64 * MIB).to_string());
    assert_eq!(
        before.memsw,
        (64 * MIB).to_string(),
        "default: no swap beyond memory"
    );
    assert_eq!(before.shares, "512");

    // The attacks: raise every limit the tenant can see, make a child
    // cgroup to escape into, remount the hierarchy writable.
    let attacks = [
        ("pids.max", "echo max > /sys/fs/cgroup/pids/pids.max"),
        (
            "memory.limit_in_bytes",
            "echo 9223372036854771712 > /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ),
        (
            "memory.memsw.limit_in_bytes",
            "echo -1 > /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
        ),
        ("cpu.shares", "echo 262144 > /sys/fs/cgroup/cpu/cpu.shares"),
        ("mkdir pids child", "mkdir /sys/fs/cgroup/pids/escape"),
        ("mkdir memory child", "mkdir /sys/fs/cgroup/memory/escape"),
        ("remount rw", "mount -o remount,rw /sys/fs/cgroup/pids"),
        (
            "mount a fresh hierarchy",
            "mkdir -p /tmp/cg && mount -t cgroup -o pids none /tmp/cg",
        ),
    ];
    let mut succeeded = Vec::new();
    for (what, script) in attacks {
        let (ok, out) = exec(&h, "cg", script);
        if ok {
            succeeded.push(format!("{what}: `{script}` {out}"));
        }
    }
    // Freezing itself: where the write works the writer is frozen with
    // its cgroup and never returns, so it gets a bound and, past it, the
    // host thaws the tenant.
    let mut freeze = h
        .vpsctl_cmd(&[
            "exec",
            "cg",
            "--",
            "sh",
            "-c",
            "echo FROZEN > /sys/fs/cgroup/freezer/freezer.state",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..100 {
        exited = freeze.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let freezer = mount_of("freezer")
        .join(cgroup_of(pid, "freezer").trim_start_matches('/'))
        .join("freezer.state");
    let state = std::fs::read_to_string(&freezer).unwrap();
    if state.trim() != "THAWED" || exited.is_none_or(|s| s.success()) {
        std::fs::write(&freezer, "THAWED").unwrap();
        succeeded.push(format!("freeze itself: freezer.state {}", state.trim()));
    }
    freeze.wait().unwrap();

    // First what matters (the limits the host enforces), then the second
    // layer (the writes themselves refused).
    let after = held(pid);
    assert_eq!(
        after.pids, "64",
        "pids.max on the host after the tenant wrote max"
    );
    assert_eq!(
        after.memory, before.memory,
        "memory limit on the host moved"
    );
    assert_eq!(
        after.memsw, before.memsw,
        "memory+swap limit on the host moved"
    );
    assert_eq!(after.shares, before.shares, "cpu shares on the host moved");
    assert!(
        succeeded.is_empty(),
        "tenant root wrote its cgroup controllers: {succeeded:?}"
    );

    // Positive control: the same shell writes where it is allowed, its own
    // name=systemd subtree (what systemd needs), and the host sees that
    // write under the tenant's own cgroup, below the limits.
    let (ok, out) = exec(
        &h,
        "cg",
        "mkdir /sys/fs/cgroup/systemd/probe && echo $$ > /sys/fs/cgroup/systemd/probe/cgroup.procs && cat /proc/self/cgroup",
    );
    assert!(
        ok,
        "the tenant cannot write its own systemd hierarchy: {out}"
    );
    assert!(out.contains("name=systemd:/probe"), "{out}");
    let own_sd = cgroup_of(pid, "name=systemd");
    assert!(
        mount_of("name=systemd")
            .join(own_sd.trim_start_matches('/'))
            .join("probe")
            .is_dir(),
        "the tenant's systemd cgroup is not under {own_sd} on the host"
    );

    // Enforced: a bounded fork loop stops at pids.max (64, the tenant's
    // init and shell included). Only shell builtins after each fork: the
    // shell itself exits on the first fork the kernel refuses.
    let (all, out) = exec(
        &h,
        "cg",
        "i=0; while [ $i -lt 200 ]; do sleep 60 </dev/null >/dev/null 2>&1 & i=$((i+1)); echo started=$i; done",
    );
    let started: u64 = out
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("started="))
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the fork loop started nothing: {out}"));
    let limit_pids = parent(&own_pids);
    // v1 counts a refused fork where it was tried (the kernel's
    // pids_event), the limit that refused it being the parent's.
    let events = format!(
        "limit: {}; own: {}",
        read("pids", &limit_pids, "pids.events"),
        read("pids", &own_pids, "pids.events")
    );
    let current: u64 = read("pids", &limit_pids, "pids.current").parse().unwrap();
    kill_sleeps(&own_pids);
    for _ in 0..50 {
        if read("pids", &limit_pids, "pids.current")
            .parse::<u64>()
            .unwrap()
            < 20
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !all && (20..64).contains(&started),
        "started {started} of 200 sleeps under pids.max 64 (the probe must fork some, and never 64): {out}"
    );
    assert!(current <= 64, "pids.current {current} above pids.max 64");
    assert!(
        events.matches("max 0").count() < 2,
        "the kernel counted no refused fork: {events}"
    );

    // Memory over the limit: a 128M buffer is OOM-killed under 64M with no
    // swap; 16M (the positive control) is fine.
    let (ok, out) = exec(&h, "cg", "dd if=/dev/zero of=/dev/null bs=16M count=1");
    assert!(ok, "dd of 16M failed under a 64M limit: {out}");
    let (ok, out) = exec(&h, "cg", "dd if=/dev/zero of=/dev/null bs=128M count=1");
    assert!(!ok, "a 128M buffer fit under a 64M limit: {out}");
    let own_mem = cgroup_of(pid, "memory");
    // The limit cgroup's peak is its limit: that is where the charge
    // stopped (the kernel logs oom_memcg=/PREFIX/cg for the kill).
    let peak: u64 = read("memory", &parent(&own_mem), "memory.max_usage_in_bytes")
        .parse()
        .unwrap();
    assert!(
        (60 * MIB..=64 * MIB).contains(&peak),
        "the host's limit cgroup peaked at {peak}, not at its 64M limit: {out}"
    );
    // v1 counts the kill in the cgroup of the task killed.
    let oom = read("memory", &own_mem, "memory.oom_control");
    assert!(
        oom.lines()
            .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
        "no OOM kill in the tenant: {oom}; dd: {out}"
    );
    assert_eq!(pid, self::pid(&h, "cg"), "the tenant's init died");

    // Deleted with the tenant: the limit cgroup goes too.
    let limit_dir = mount_of("pids").join(parent(&own_pids).trim_start_matches('/'));
    h.ok(&["stop", "cg", "--timeout", "1"]);
    assert!(
        !limit_dir.exists(),
        "{} outlived the tenant",
        limit_dir.display()
    );
}

#[test]
fn set_changes_limits_live() {
    let h = Host::new("[defaults]\nswap = \"16M\"\n");
    h.busybox_image();
    h.provision_busybox("live", 2202, &["--start", "--memory", "64M"]);
    let pid = pid(&h, "live");
    let l = held(pid);
    assert_eq!(l.memsw, (80 * MIB).to_string(), "[defaults] swap = 16M");
    assert_eq!(l.pids, "4096");

    let v = h.json(&[
        "set",
        "live",
        "--memory",
        "96M",
        "--pids",
        "100",
        "--cpu-weight",
        "300",
        "--swap",
        "0",
    ]);
    assert_eq!(v["memory"], "96M");
    assert_eq!(v["pids"], 100);
    assert_eq!(v["cpu_weight"], 300);
    assert_eq!(v["swap"], "0");
    assert_eq!(v["pid"].as_u64(), Some(pid), "set restarted the tenant");
    let l = held(pid);
    assert_eq!(l.memory, (96 * MIB).to_string());
    assert_eq!(l.memsw, (96 * MIB).to_string());
    assert_eq!(l.pids, "100");
    assert_eq!(l.shares, "3072");
    let (ok, _) = exec(&h, "live", "true");
    assert!(ok, "the tenant stopped answering after set");

    // A memory limit below what the tenant holds (16M in its tmpfs, which
    // cannot be swapped) is refused, and nothing changes: not the pids
    // given with it, not the record.
    let (ok, out) = exec(
        &h,
        "live",
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=16",
    );
    assert!(ok, "{out}");
    let record = std::fs::read_to_string(h.state().join("registry/tenants/live.toml")).unwrap();
    let o = h.vpsctl(&["set", "live", "--memory", "8M", "--pids", "50"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("vpsctl: failed to set limits of tenant live: ") && err.contains("8M"),
        "{err}"
    );
    let l = held(pid);
    assert_eq!(
        (l.memory, l.pids),
        ((96 * MIB).to_string(), "100".to_owned())
    );
    assert_eq!(
        std::fs::read_to_string(h.state().join("registry/tenants/live.toml")).unwrap(),
        record
    );
    // Bad values are refused before anything is touched.
    for bad in [
        &["set", "live", "--pids", "3"][..],
        &["set", "live", "--memory", "12Q"],
        &["set", "live", "--cpu-weight", "0"],
        &["set", "live", "--swap", "lots"],
    ] {
        let o = h.vpsctl(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
    let o = h.vpsctl(&["set", "live"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to change"));
    assert_eq!(held(pid).pids, "100");

    // Stopped: the record changes, the next start applies it.
    h.ok(&["stop", "live", "--timeout", "1"]);
    let out = h.ok(&["set", "live", "--pids", "200"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("applied at its next start"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    h.ok(&["start", "live"]);
    let l = held(self::pid(&h, "live"));
    assert_eq!((l.pids.as_str(), l.shares.as_str()), ("200", "3072"));
    assert_eq!(h.json(&["status", "live"])["pids"], 200);
}

/// The Debian tenant: systemd boots to `running` with its controllers
/// read-only, runs its units in its own name=systemd subtree (which the
/// host sees below the tenant's cgroup), and its root cannot lift the
/// limits either.
#[test]
fn systemd_tenant_boots_and_cannot_lift_its_limits() {
    let h = Host::new("");
    h.debian_image();
    h.ok(&[
        "provision",
        "web",
        "--image",
        "deb",
        "--start",
        "--pids",
        "256",
        "--memory",
        "256M",
    ]);
    let mut state = String::new();
    for _ in 0..100 {
        let o = h.vpsctl(&["exec", "web", "--", "systemctl", "is-system-running"]);
        state = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if state == "running" || state == "degraded" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let failed = h.vpsctl(&["exec", "web", "--", "systemctl", "--failed", "--no-legend"]);
    assert_eq!(
        state,
        "running",
        "failed units: {}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let pid = pid(&h, "web");

    // Positive control: systemd wrote its own hierarchy (moved itself to
    // init.scope, made system.slice), below the tenant's cgroup on the host.
    let own_sd = cgroup_of(pid, "name=systemd");
    assert!(
        own_sd.ends_with("/web/tenant/init.scope"),
        "systemd runs in {own_sd}"
    );
    let sd = mount_of("name=systemd").join(parent(&own_sd).trim_start_matches('/'));
    assert!(
        sd.join("system.slice").is_dir(),
        "systemd's system.slice is not under {}",
        sd.display()
    );
    let own_pids = cgroup_of(pid, "pids");
    assert!(
        own_pids.ends_with("/web/tenant"),
        "systemd moved itself to {own_pids}: the tenant's pids hierarchy is writable"
    );

    let (ok, out) = exec(
        &h,
        "web",
        "echo max > /sys/fs/cgroup/pids/pids.max; echo 9223372036854771712 > /sys/fs/cgroup/memory/memory.limit_in_bytes",
    );
    assert!(!ok, "tenant root wrote its controllers: {out}");
    let l = held(pid);
    assert_eq!(l.pids, "256", "pids.max on the host");
    assert_eq!(l.memory, (256 * MIB).to_string(), "memory on the host");
    assert_eq!(l.memsw, (256 * MIB).to_string(), "memory+swap on the host");
}
