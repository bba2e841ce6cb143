//! The main job end to end: `vpsctl demo --check` proves the whole flow in
//! its own sandbox and leaves nothing behind. With `--debian` it is the
//! end-to-end test of a real systemd VPS: debootstrap image (cached under
//! /var/cache/sotolito), real sshd reached with ssh through the DNAT port,
//! nginx reached through the proxy.

use std::process::Command;

fn netns_list() -> String {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn demo(extra: &[&str]) {
    assert!(
        rustix::process::geteuid().is_root(),
        "the demo test needs root: run the suite with sudo (scripts/test)"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_vpsctl"))
        .arg("demo")
        .arg("--check")
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "demo --check {extra:?} failed:\n{out}\n{err}"
    );
    for name in ["alpha", "beta"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"));
        assert!(row.contains(&format!("{name}.localhost")), "{row}");
        assert!(row.contains(" ok "), "HTTP through the proxy failed: {row}");
        assert!(row.contains("ssh ok") || row.contains("banner ok"), "{row}");
    }
    // Its own pid names its namespaces; none may survive it.
    assert!(
        !netns_list().contains(&format!("-{pid}")),
        "{}",
        netns_list()
    );
}

#[test]
fn demo_check_busybox() {
    demo(&[]);
}

#[test]
fn demo_check_debian_systemd_with_real_ssh() {
    demo(&["--debian"]);
}
