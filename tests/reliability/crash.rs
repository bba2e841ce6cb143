//! `vpsctl provision` killed with SIGKILL at random moments: re-running the
//! same command converges, and registry, nft map, data dirs, units and
//! `vpsctl list` agree. No tenant data is lost.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{loop_devices_under, Host};

const RUNS: u32 = 20;

fn nft_map(h: &Host) -> String {
    let o = h.in_host(&["nft", "list", "map", "inet", "sotolito", "ssh_ports"]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A small deterministic spread of kill delays (no rand crate needed).
fn delay(run: u32, span: Duration) -> Duration {
    let x = (run.wrapping_mul(2_654_435_761) >> 7) % 1000;
    span.mul_f64(f64::from(x) / 1000.0)
}

fn assert_converged(h: &Host, name: &str, port: u16) {
    let st = h.json(&["status", name]);
    assert_eq!(st["name"], name);
    assert_eq!(st["ssh_port"], port);
    let ip = st["ip"].as_str().unwrap().to_owned();
    let map = nft_map(h);
    assert!(
        map.contains(&format!("{port} : {ip} . 22")),
        "nft map lacks {port} -> {ip}: {map}"
    );
    let data = h.state().join("tenants").join(name).join("data");
    for d in ["etc", "var", "home", "root"] {
        assert!(data.join(d).is_dir(), "{name}: data/{d} missing");
    }
    assert_eq!(
        std::fs::read_to_string(data.join("etc/hostname"))
            .unwrap()
            .trim(),
        name
    );
    let cfg = h.root.join("etc/tenants").join(format!("{name}.cfg"));
    let cfg = std::fs::read_to_string(&cfg).unwrap_or_else(|e| panic!("{}: {e}", cfg.display()));
    assert!(cfg.contains(&format!("VPS_IP={ip}")), "{cfg}");
    // Provisioned without --start: desired stopped, so no boot link.
    assert_eq!(st["desired"], "stopped");
    let wants = h
        .root
        .join("systemd/sotolito-vps.target.wants")
        .join(format!("sotolito-vps@{name}.service"));
    assert!(
        wants.symlink_metadata().is_err(),
        "{} links a tenant that should stay stopped at boot",
        wants.display()
    );
}

/// Processes whose mount namespace still has a mount under `dir`.
fn mount_holders(dir: &Path) -> Vec<String> {
    let want = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let info = std::fs::read_to_string(p.join("mountinfo")).unwrap_or_default();
        if info
            .lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&want)))
        {
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let ns = std::fs::read_link(p.join("ns/mnt")).unwrap_or_default();
            out.push(format!(
                "{} {} {}",
                e.file_name().to_string_lossy(),
                comm.trim(),
                ns.display()
            ));
        }
    }
    out
}

#[test]
fn provision_killed_at_random_moments_converges() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    let key = h.write_key();
    let key = key.to_str().unwrap().to_owned();

    // A tenant whose data must survive everything below.
    h.ok(&[
        "provision",
        "keeper",
        "--image",
        "busybox",
        "--ssh-port",
        "2200",
        "--ssh-key",
        &key,
    ]);
    let keeper_file = h.state().join("tenants/keeper/data/root/precious.txt");
    std::fs::write(&keeper_file, "do not lose me\n").unwrap();

    // How long one provision takes here, to spread kills across it.
    let t0 = Instant::now();
    h.ok(&[
        "provision",
        "probe",
        "--image",
        "busybox",
        "--ssh-port",
        "2201",
        "--ssh-key",
        &key,
    ]);
    let span = t0.elapsed().max(Duration::from_millis(20));
    h.ok(&["deprovision", "probe", "--purge"]);

    let deadline = Instant::now() + Duration::from_secs(600);
    let mut killed_midway = 0;
    for run in 0..RUNS {
        assert!(Instant::now() < deadline, "crash loop over its time budget");
        let name = format!("crash{run}");
        let port = 2210 + run as u16;
        let host = format!("{name}.test");
        let args = [
            "provision",
            &name,
            "--image",
            "busybox",
            "--host",
            &host,
            "--ssh-port",
            &port.to_string(),
            "--ssh-key",
            &key,
        ];
        let mut child = h.vpsctl_cmd(&args).spawn().unwrap();
        std::thread::sleep(delay(run, span));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_midway += 1;
        }
        // Re-running the same command converges.
        h.ok(&args);
        assert_converged(&h, &name, port);
        // And once converged, a re-provision killed midway loses nothing.
        let marker = h
            .state()
            .join("tenants")
            .join(&name)
            .join("data/root/marker");
        std::fs::write(&marker, format!("{run}\n")).unwrap();
        let mut child = h.vpsctl_cmd(&args).spawn().unwrap();
        std::thread::sleep(delay(run + 7, span));
        let _ = child.kill();
        child.wait().unwrap();
        h.ok(&args);
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            format!("{run}\n")
        );
    }
    assert!(
        killed_midway > 0,
        "no provision was interrupted: the test proved nothing"
    );

    // Everything agrees: registry (list), nft map, data, units.
    let list = h.json(&["list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), RUNS as usize + 1, "{names:?}");
    for run in 0..RUNS {
        assert_converged(&h, &format!("crash{run}"), 2210 + run as u16);
    }
    assert_converged(&h, "keeper", 2200);
    assert_eq!(
        std::fs::read_to_string(&keeper_file).unwrap(),
        "do not lose me\n"
    );
    // No leftovers of the probe: deprovision --purge cleaned it all.
    assert!(!Path::new(&h.state().join("tenants/probe")).exists());
    // Exactly one loop device per tenant disk: killed runs leaked none.
    let tenants = h.state().join("tenants");
    let loops = loop_devices_under(&tenants);
    assert_eq!(loops.len(), RUNS as usize + 1, "{loops:#?}");
    h.ok(&["deprovision", "keeper", "--timeout", "1"]);
    // The kernel frees an autoclear loop device when the last mount of it
    // goes, in every mount namespace: a namespace another process on the
    // machine is making right now holds a private copy for a moment.
    // Bounded wait for that release; a copy still held after it fails.
    let mut loops = loop_devices_under(&tenants);
    for _ in 0..30 {
        if loops.len() == RUNS as usize {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        loops = loop_devices_under(&tenants);
    }
    assert_eq!(
        loops.len(),
        RUNS as usize,
        "deprovision left its loop device: {loops:#?}; mounts of it in: {:?}",
        mount_holders(&tenants.join("keeper"))
    );
    eprintln!("crash consistency: {RUNS} runs, {killed_midway} killed midway, all converged, nothing lost");
}
