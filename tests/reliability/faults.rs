//! Faults: a tenant's init killed, the proxy killed, the firewall flushed,
//! a hanging backend.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Host, HOST_ADDR};

fn provision_two(h: &Host, extra_beta: &[&str]) {
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("alpha", 2201, &["--start"]);
    let mut beta = vec!["--start"];
    beta.extend_from_slice(extra_beta);
    h.provision_busybox("beta", 2202, &beta);
}

/// Retries `f` for a bounded while; returns its last result.
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn banner(h: &Host, port: u16) -> Result<String, String> {
    let o = h.in_client(&["nc", "-w", "2", HOST_ADDR, &port.to_string()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if out.contains("SSH-2.0") {
        Ok(out)
    } else {
        Err(format!(
            "no banner on {port}: {}",
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

fn http(h: &Host, host: &str) -> Result<(u16, String), String> {
    let o = h.in_client(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("Host: {host}"),
        &format!("http://{HOST_ADDR}/"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out
        .rsplit_once('\n')
        .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())?;
    let code: u16 = code
        .trim()
        .parse()
        .map_err(|_| format!("curl: {}", String::from_utf8_lossy(&o.stderr)))?;
    if code == 0 {
        // curl prints 000 when no response came at all.
        return Err(format!(
            "no response: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok((code, body.to_owned()))
}

struct Proxy(Child);

impl Proxy {
    fn start(h: &Host) -> Proxy {
        let log = std::fs::File::create(h.root.join("proxy.log")).unwrap();
        Proxy(
            h.vpsctl_cmd(&["proxy"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killed_tenant_init_shows_and_start_recovers() {
    let h = Host::new("");
    provision_two(&h, &[]);
    let st = h.json(&["status", "alpha"]);
    assert_eq!(st["state"], "running", "{st}");
    let pid = st["pid"].as_u64().expect("a running tenant has a pid") as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let st = eventually(Duration::from_secs(10), || {
        let st = h.json(&["status", "alpha"]);
        if st["state"] == "running" {
            Err(format!("still running: {st}"))
        } else {
            Ok(st)
        }
    })
    .unwrap();
    assert_eq!(st["state"], "stopped", "{st}");
    assert_eq!(st["desired"], "running", "the operator did not stop it");
    assert_eq!(st["pid"], serde_json::Value::Null);
    // beta is untouched.
    assert_eq!(h.json(&["status", "beta"])["state"], "running");
    h.ok(&["start", "alpha"]);
    let st = h.json(&["status", "alpha"]);
    assert_eq!(st["state"], "running", "{st}");
    assert_ne!(st["pid"].as_u64(), Some(pid as u64));
    eventually(Duration::from_secs(10), || banner(&h, 2201)).unwrap();
}

#[test]
fn flushed_ruleset_is_restored_by_reconcile() {
    let h = Host::new("");
    provision_two(&h, &[]);
    for port in [2201, 2202] {
        eventually(Duration::from_secs(10), || banner(&h, port)).unwrap();
    }
    let o = h.in_host(&["nft", "flush", "ruleset"]);
    assert!(o.status.success());
    assert!(
        banner(&h, 2201).is_err(),
        "forwarding survived a flush: the test proves nothing"
    );
    h.ok(&["net", "reconcile"]);
    for (port, name) in [(2201, "alpha"), (2202, "beta")] {
        let b = eventually(Duration::from_secs(10), || banner(&h, port)).unwrap();
        assert!(b.contains(name), "port {port} reached {b}");
    }
    // Reconcile again converges: same ruleset.
    let before = h.in_host(&["nft", "list", "ruleset"]).stdout;
    h.ok(&["net", "reconcile"]);
    assert_eq!(before, h.in_host(&["nft", "list", "ruleset"]).stdout);
}

#[test]
fn proxy_killed_comes_back_with_every_route() {
    let h = Host::new("[proxy]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\n");
    provision_two(&h, &[]);
    let mut proxy = Proxy::start(&h);
    for (host, name) in [("alpha.test", "alpha"), ("beta.test", "beta")] {
        let (code, body) = eventually(Duration::from_secs(15), || http(&h, host)).unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("hello from {name}")), "{body}");
    }
    proxy.0.kill().unwrap();
    proxy.0.wait().unwrap();
    assert!(
        http(&h, "alpha.test").is_err(),
        "something else answers on :80"
    );
    let _proxy = Proxy::start(&h);
    for (host, name) in [("alpha.test", "alpha"), ("beta.test", "beta")] {
        let (code, body) = eventually(Duration::from_secs(15), || http(&h, host)).unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("hello from {name}")), "{body}");
    }
    let (code, _) = http(&h, "nobody.test").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn hanging_backend_gets_504_while_others_are_served() {
    let h = Host::new(
        "[proxy]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\nupstream_timeout = \"2s\"\n",
    );
    provision_two(&h, &["--http-port", "8081"]);
    // beta's site accepts connections and never answers.
    h.ok(&[
        "exec",
        "beta",
        "--",
        "sh",
        "-c",
        "sleep 600 </dev/null 2>/dev/null | nc -l -p 8081 >/dev/null 2>&1 &",
    ]);
    let _proxy = Proxy::start(&h);
    let (code, _) = eventually(Duration::from_secs(15), || http(&h, "alpha.test")).unwrap();
    assert_eq!(code, 200);
    std::thread::scope(|s| {
        let hung = s.spawn(|| http(&h, "beta.test"));
        // While beta's request hangs, alpha is served, repeatedly.
        for _ in 0..10 {
            let (code, body) = http(&h, "alpha.test").unwrap();
            assert_eq!(code, 200, "{body}");
            assert!(body.contains("hello from alpha"));
        }
        let (code, body) = hung.join().unwrap().unwrap();
        assert_eq!(code, 504, "a hanging tenant got {code}: {body}");
    });
}
