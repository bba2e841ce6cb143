//! Isolation: a tenant cannot reach another tenant's address, nor the
//! proxy's admin/metrics address; it can reach the proxy's public port.

use std::time::Duration;

use crate::common::Host;

fn exec_ok(h: &Host, tenant: &str, script: &str) -> (bool, String) {
    let o = h.vpsctl(&["exec", tenant, "--", "sh", "-c", script]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success() && !o.stdout.is_empty(), out)
}

#[test]
fn tenants_cannot_reach_each_other_or_the_admin_address() {
    // The admin address listens on every address of the host, so only the
    // firewall stands between a tenant and /metrics.
    let h = Host::new(
        "[proxy]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\nadmin = \"0.0.0.0:9180\"\n",
    );
    h.ok(&["init"]);
    h.busybox_image();
    for (name, port) in [("alpha", 2201), ("beta", 2202)] {
        h.provision_busybox(name, port, &["--start"]);
    }
    let log = std::fs::File::create(h.root.join("proxy.log")).unwrap();
    let mut proxy = h
        .vpsctl_cmd(&["proxy"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let beta_ip = h.json(&["status", "beta"])["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let gw = "172.18.0.1";
    let get = |host: &str, addr: &str, port: u16| {
        let path = if port == 9180 { "/metrics" } else { "/" };
        format!(
            // busybox nc quits at the end of its input: keep it open a while.
            "(printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n'; sleep 1) | nc -w 2 {addr} {port}"
        )
    };

    // Controls first: without them a broken setup would pass as "isolated".
    let mut reached = false;
    for _ in 0..10 {
        if exec_ok(&h, "alpha", &get("beta.test", gw, 80))
            .1
            .contains("hello from beta")
        {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        reached,
        "alpha cannot reach beta's site through the proxy's public port; proxy log: {}",
        std::fs::read_to_string(h.root.join("proxy.log")).unwrap_or_default()
    );
    let admin = h.in_host(&[
        "curl",
        "-sS",
        "--max-time",
        "3",
        &format!("http://{gw}:9180/metrics"),
    ]);
    assert!(
        admin.status.success(),
        "the admin address is not up on the host: {}",
        String::from_utf8_lossy(&admin.stderr)
    );
    let direct = h.in_host(&[
        "curl",
        "-sS",
        "--max-time",
        "3",
        &format!("http://{beta_ip}/"),
    ]);
    assert!(
        String::from_utf8_lossy(&direct.stdout).contains("hello from beta"),
        "beta is not up"
    );

    // Tenant to tenant, directly: refused by the bridge and the forward chain.
    let (ok, out) = exec_ok(&h, "alpha", &get("beta.test", &beta_ip, 80));
    assert!(!ok, "alpha reached beta directly: {out}");
    let (ok, out) = exec_ok(&h, "alpha", &format!("nc -w 2 {beta_ip} 22 </dev/null"));
    assert!(!ok, "alpha reached beta's port 22 directly: {out}");
    // Tenant to the admin address, and to the host's other services.
    let (ok, out) = exec_ok(&h, "alpha", &get("x", gw, 9180));
    assert!(!ok, "alpha reached the proxy admin address: {out}");
    let _ = proxy.kill();
    let _ = proxy.wait();
}
