//! Stopping a tenant whose PID 1 has no handler for the stop signal yet
//! (an init still starting, a systemd re-executing): a PID 1 in a pid
//! namespace drops such a signal, so the stop sends it again until it
//! lands, on both stop paths: `vpsctl stop`, and `vpsctl run` on SIGTERM
//! (what its systemd unit does).

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::Host;

/// Its /sbin/init installs a TERM handler only once /tmp/go exists: until
/// then TERM from outside its pid namespace is dropped, like a systemd
/// that has not set up its handlers yet.
const LATE_INIT: &str = "#!/bin/sh
until [ -e /tmp/go ]; do sleep 0.2; done
trap 'echo stopped by TERM; exit 0' TERM
echo handler installed
while :; do sleep 1 & wait $!; done
";

/// Long enough that the first stop signal was surely sent before the
/// handler exists (lost), short against the stop timeouts (20 s, 30 s).
const LOST_FOR: Duration = Duration::from_millis(2500);

fn late_image(h: &Host) {
    let rootfs = h.root.join("late-rootfs");
    sotolito_provisioner::busybox::busybox_rootfs(&rootfs).unwrap();
    let init = rootfs.join("sbin/init");
    let _ = std::fs::remove_file(&init);
    std::fs::write(&init, LATE_INIT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.ok(&[
        "image",
        "import",
        "late",
        rootfs.to_str().unwrap(),
        "--stop-signal",
        "TERM",
    ]);
}

fn provision(h: &Host, name: &str, port: u16, start: bool) {
    let key = h.write_key();
    let host = format!("{name}.test");
    let port = port.to_string();
    let mut args = vec![
        "provision",
        name,
        "--image",
        "late",
        "--host",
        &host,
        "--ssh-port",
        &port,
        "--ssh-key",
        key.to_str().unwrap(),
    ];
    if start {
        args.push("--start");
    }
    h.ok(&args);
}

/// Waits for `child` at most `limit` (every stop here ends by KILL within
/// its timeout); kills it and fails if it does not end.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

fn release_handler(h: &Host, name: &str) {
    h.ok(&["exec", name, "--", "touch", "/tmp/go"]);
}

#[test]
fn stop_signal_is_sent_again_until_the_init_handles_it() {
    let h = Host::new("");
    late_image(&h);

    // Control: an init that never handles TERM is killed after the
    // timeout, and stop says so (what the checks below tell apart).
    provision(&h, "never", 2231, true);
    let o = h.ok(&["stop", "never", "--timeout", "2"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("never killed after the stop timeout"),
        "the control was not killed: {out}"
    );

    // `vpsctl stop`: the first TERM is lost, a later one lands.
    provision(&h, "late", 2232, true);
    let stop = h
        .vpsctl_cmd(&["stop", "late", "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vpsctl stop");
    std::thread::sleep(LOST_FOR);
    release_handler(&h, "late");
    let o = wait_bounded(stop, Duration::from_secs(40), "vpsctl stop late");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.trim() == "late stopped",
        "late was not stopped by its own handler: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let console = std::fs::read_to_string(h.state().join("tenants/late/console.log")).unwrap();
    assert!(
        console.contains("stopped by TERM"),
        "late's console: {console}"
    );

    // `vpsctl run` (a unit's ExecStart) on SIGTERM: the same.
    provision(&h, "unit", 2233, false);
    let run = h
        .vpsctl_cmd(&["run", "unit"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vpsctl run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.json(&["status", "unit"])["state"] != "running" {
        assert!(Instant::now() < deadline, "vpsctl run did not start unit");
        std::thread::sleep(Duration::from_millis(100));
    }
    // nsenter execs vpsctl: the child's pid is vpsctl's.
    let st = std::process::Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    std::thread::sleep(LOST_FOR);
    release_handler(&h, "unit");
    let o = wait_bounded(run, Duration::from_secs(50), "vpsctl run unit");
    assert!(
        o.status.success(),
        "vpsctl run unit ended {} (137: killed after the timeout): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(h.json(&["status", "unit"])["state"], "stopped");
}
