//! vpsctl killed (SIGKILL) at every named failpoint of provision,
//! deprovision, start and stop (`SOTOLITO_FAILPOINT`, see
//! host/src/failpoint.rs): re-running the same command converges, and
//! registry, nft map, data dirs, units and `vpsctl list` agree. No tenant
//! data is lost, and no temporary or staging file is left behind.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sotolito_host::failpoint;

use crate::common::{loop_devices_under, Host};

fn nft_map(h: &Host) -> String {
    let o = h.in_host(&["nft", "list", "map", "inet", "sotolito", "ssh_ports"]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The failpoints whose names start with `prefix`.
fn points(prefix: &str) -> Vec<&'static str> {
    failpoint::NAMES
        .iter()
        .copied()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Runs vpsctl with the failpoint `point` set and asserts that it died
/// there (SIGKILL from itself: the point was reached).
fn killed_at(h: &Host, point: &'static str, args: &[&str], hits: &mut BTreeSet<&'static str>) {
    let o = h
        .vpsctl_cmd(args)
        .env(failpoint::ENV, point)
        .output()
        .expect("spawn vpsctl");
    assert_eq!(
        o.status.signal(),
        Some(9),
        "vpsctl {} did not die at failpoint {point}: {:?}, stderr: {}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    hits.insert(point);
}

fn assert_converged(h: &Host, name: &str, port: u16, desired: &str) {
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
    // The boot link follows the desired state.
    assert_eq!(st["desired"], desired);
    let wants = h
        .root
        .join("systemd/sotolito-vps.target.wants")
        .join(format!("sotolito-vps@{name}.service"));
    assert_eq!(
        wants.symlink_metadata().is_ok(),
        desired == "running",
        "{}: boot link does not follow desired {desired}",
        wants.display()
    );
}

/// Nothing of tenant `name` is left: record, forward, unit link, cfg, dir.
fn assert_gone(h: &Host, name: &str, port: u16) {
    let o = h.vpsctl(&["status", name]);
    assert!(!o.status.success(), "{name} still has a record");
    let map = nft_map(h);
    assert!(
        !map.contains(&format!("{port} :")),
        "nft map keeps {port}: {map}"
    );
    for p in [
        h.root.join("etc/tenants").join(format!("{name}.cfg")),
        h.root
            .join("systemd/sotolito-vps.target.wants")
            .join(format!("sotolito-vps@{name}.service")),
        h.state().join("tenants").join(name),
    ] {
        assert!(p.symlink_metadata().is_err(), "{} is left", p.display());
    }
}

/// Files a writer makes and renames or removes when done: atomic writes
/// (`.NAME.tmp.PID.SEQ`), a disk image being made (`.disk.img.tmp-PID`), a
/// data dir being seeded (`.etc.partial-PID`), an image being imported
/// (`.NAME.importing-*`). Tenant trees and image roots are not looked into
/// (a tenant may name its files as it likes).
fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.contains(".tmp") || name.contains(".partial-") || name.contains(".importing-") {
                out.push(path.clone());
            }
            let inside_tenant_or_image = ["etc", "var", "home", "root", "upper", "work"]
                .contains(&name.as_str())
                && dir.ends_with("data")
                || name == "rootfs"
                || name == "image";
            if e.file_type().is_ok_and(|t| t.is_dir()) && !inside_tenant_or_image {
                todo.push(path);
            }
        }
    }
    out
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
fn killed_at_every_failpoint_converges() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    let key = h.write_key();
    let key = key.to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut hits = BTreeSet::new();

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

    // A provision and its purge leave nothing of the tenant.
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
    h.ok(&["deprovision", "probe", "--purge"]);

    // Provision killed at each of its points, fresh and again once
    // provisioned: the rerun converges and the tenant's files stay.
    let provision_points = points("provision.");
    for (run, point) in provision_points.iter().copied().enumerate() {
        assert!(Instant::now() < deadline, "crash loop over its time budget");
        let name = format!("crash{run}");
        let port = 2210 + run as u16;
        let host = format!("{name}.test");
        let port_arg = port.to_string();
        let args = [
            "provision",
            &name,
            "--image",
            "busybox",
            "--host",
            &host,
            "--ssh-port",
            &port_arg,
            "--ssh-key",
            &key,
        ];
        killed_at(&h, point, &args, &mut hits);
        // Re-running the same command converges.
        h.ok(&args);
        assert_converged(&h, &name, port, "stopped");
        // And once converged, a re-provision killed there loses nothing.
        let marker = h
            .state()
            .join("tenants")
            .join(&name)
            .join("data/root/marker");
        std::fs::write(&marker, format!("{run}\n")).unwrap();
        killed_at(&h, point, &args, &mut hits);
        h.ok(&args);
        assert_converged(&h, &name, port, "stopped");
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            format!("{run}\n")
        );
    }

    // Start and stop killed at each of their points: the rerun gets the
    // tenant running (stopped), its desired state and boot link agreeing.
    h.provision_busybox("cycler", 2250, &[]);
    for point in points("start.") {
        killed_at(&h, point, &["start", "cycler"], &mut hits);
        h.ok(&["start", "cycler"]);
        assert_eq!(h.json(&["status", "cycler"])["state"], "running");
        assert_converged(&h, "cycler", 2250, "running");
        h.ok(&["stop", "cycler", "--timeout", "1"]);
    }
    for point in points("stop.") {
        h.ok(&["start", "cycler"]);
        killed_at(&h, point, &["stop", "cycler", "--timeout", "1"], &mut hits);
        h.ok(&["stop", "cycler", "--timeout", "1"]);
        assert_eq!(h.json(&["status", "cycler"])["state"], "stopped");
        assert_converged(&h, "cycler", 2250, "stopped");
    }

    // Deprovision of a running tenant killed at each of its points: the
    // rerun removes the rest (or finds nothing left to remove).
    for (run, point) in points("deprovision.").into_iter().enumerate() {
        let name = format!("gone{run}");
        let port = 2260 + run as u16;
        h.provision_busybox(&name, port, &["--start"]);
        killed_at(
            &h,
            point,
            &["deprovision", &name, "--purge", "--timeout", "1"],
            &mut hits,
        );
        let o = h.vpsctl(&["deprovision", &name, "--purge", "--timeout", "1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() || err.contains("does not exist"),
            "deprovision after a kill at {point}: {err}"
        );
        assert_gone(&h, &name, port);
    }

    let all: BTreeSet<&str> = failpoint::NAMES.iter().copied().collect();
    assert_eq!(hits, all, "failpoints never reached");

    // Everything agrees: registry (list), nft map, data, units.
    let list = h.json(&["list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let runs = provision_points.len();
    assert_eq!(names.len(), runs + 2, "{names:?}");
    for run in 0..runs {
        assert_converged(&h, &format!("crash{run}"), 2210 + run as u16, "stopped");
    }
    assert_converged(&h, "keeper", 2200, "stopped");
    assert_eq!(
        std::fs::read_to_string(&keeper_file).unwrap(),
        "do not lose me\n"
    );
    // No leftovers of the probe: deprovision --purge cleaned it all.
    assert!(!Path::new(&h.state().join("tenants/probe")).exists());
    // No temporary or staging file of a killed writer is left (the
    // search itself finds one that is).
    let planted = h.state().join("registry/tenants/.keeper.toml.tmp.1.1");
    std::fs::write(&planted, "").unwrap();
    assert_eq!(leftovers(&h.root), [planted.clone()]);
    std::fs::remove_file(&planted).unwrap();
    let left = leftovers(&h.root);
    assert!(left.is_empty(), "left behind: {left:#?}");
    // Exactly one loop device per tenant disk: killed runs leaked none.
    let tenants = h.state().join("tenants");
    let loops = loop_devices_under(&tenants);
    assert_eq!(loops.len(), runs + 2, "{loops:#?}");
    h.ok(&["deprovision", "keeper", "--timeout", "1"]);
    // The kernel frees an autoclear loop device when the last mount of it
    // goes, in every mount namespace: a namespace another process on the
    // machine is making right now holds a private copy for a moment.
    // Bounded wait for that release; a copy still held after it fails.
    let mut loops = loop_devices_under(&tenants);
    for _ in 0..30 {
        if loops.len() == runs + 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        loops = loop_devices_under(&tenants);
    }
    assert_eq!(
        loops.len(),
        runs + 1,
        "deprovision left its loop device: {loops:#?}; mounts of it in: {:?}",
        mount_holders(&tenants.join("keeper"))
    );
    eprintln!(
        "crash consistency: killed at each of {} failpoints, all converged, nothing lost",
        hits.len()
    );
}
