//! Malformed command lines and config files: one-line error, the right exit
//! code, and the state before equals the state after.

use crate::common::{snapshot, Host};

struct Case {
    args: Vec<String>,
    code: i32,
    /// A fragment the one-line error must contain.
    says: &'static str,
}

fn case(args: &[&str], code: i32, says: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        says,
    }
}

/// Everything vpsctl owns on the host, plus the live ruleset.
fn state_of(h: &Host) -> (Vec<(std::path::PathBuf, Vec<u8>)>, String) {
    let mut files = snapshot(&h.state());
    files.extend(snapshot(&h.root.join("etc")));
    files.extend(snapshot(&h.root.join("systemd")));
    let nft = h.in_host(&["nft", "list", "ruleset"]);
    (files, String::from_utf8_lossy(&nft.stdout).into_owned())
}

#[test]
fn bad_command_lines_and_configs_change_nothing() {
    let h = Host::new("");
    h.ok(&["init"]);
    h.busybox_image();
    h.provision_busybox("alpha", 2250, &[]);
    let key = h.write_key();
    let key = key.to_str().unwrap();
    let alpha = h.json(&["status", "alpha"]);
    let alpha_ip = alpha["ip"].as_str().unwrap().to_owned();
    let garbage_key = h.root.join("garbage.pub");
    std::fs::write(&garbage_key, "this is not a key\n").unwrap();
    let garbage_key = garbage_key.to_str().unwrap();
    let rootfs = h.root.join("busybox-rootfs");
    let rootfs = rootfs.to_str().unwrap();

    let p = |extra: &[&str]| {
        let mut v = vec!["provision", "x", "--image", "busybox"];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut cases = vec![
        // Usage errors: clap's message, exit 2.
        case(&["provision"], 2, "required"),
        case(
            &["provision", "../x", "--image", "busybox"],
            2,
            "tenant name",
        ),
        case(&["provision", "Bad", "--image", "busybox"], 2, "uppercase"),
        case(&["provision", "-a", "--image", "busybox"], 2, ""),
        case(
            &["provision", &"a".repeat(33), "--image", "busybox"],
            2,
            "longer than 32",
        ),
        case(&["provision", "x"], 2, "--image"),
        case(&["frobnicate"], 2, "unrecognized subcommand"),
        case(&["status"], 2, "required"),
        case(&["list", "--jsn"], 2, "unexpected argument"),
        case(&["image", "import"], 2, "required"),
        case(&["stop", "alpha", "--timeout", "soon"], 2, "invalid value"),
    ];
    for (extra, says) in [
        (&["--ssh-port", "0"][..], "ssh port"),
        (&["--ssh-port", "70000"][..], "ssh port"),
        (&["--memory", "12Q"][..], "memory size"),
        (&["--cpu-weight", "0"][..], "cpu weight"),
        (&["--host", "*."][..], "wildcard"),
        (&["--host", "a..b"][..], "empty label"),
        (&["--host", "bücher.de"][..], "host name"),
        (&["--ip", "999.1.1.1"][..], "invalid"),
        (&["--pids", "abc"][..], "pids"),
        (&["--connections", "3"][..], "connection cap"),
        (&["--http-port", "0"][..], "http port"),
        (&["--disk", "100M"][..], "disk size"),
        (&["--disk", "lots"][..], "disk size"),
    ] {
        cases.push(Case {
            args: p(extra),
            code: 2,
            says,
        });
    }
    // Failures: exit 1, one line naming the problem.
    for (extra, says) in [
        (&["--ssh-port", "2250"][..], "tenant alpha"),
        (&["--host", "alpha.test"][..], "tenant alpha"),
        (&["--ip", alpha_ip.as_str()][..], "tenant alpha"),
        (&["--ip", "10.9.9.9"][..], "172.18.0.0/16"),
        (
            &["--ssh-key", "/nonexistent/key.pub"][..],
            "/nonexistent/key.pub",
        ),
        (&["--ssh-key", garbage_key][..], "garbage.pub"),
        (
            &["--host", "x.test", "--no-acme", "y.test"][..],
            "--no-acme y.test",
        ),
    ] {
        cases.push(Case {
            args: p(extra),
            code: 1,
            says,
        });
    }
    cases.extend([
        case(
            &["provision", "x", "--image", "nosuchimage"],
            1,
            "nosuchimage",
        ),
        case(
            &[
                "provision",
                "alpha",
                "--image",
                "busybox",
                "--memory",
                "1G",
                "--ssh-port",
                "2250",
                "--host",
                "alpha.test",
                "--ssh-key",
                key,
            ],
            1,
            "memory",
        ),
        case(&["status", "nosuch"], 1, "nosuch"),
        case(&["set", "nosuch", "--disk", "1G"], 1, "nosuch"),
        case(&["set", "alpha"], 1, "nothing to change"),
        case(&["set", "alpha", "--disk", "unlimited"], 1, "larger size"),
        case(&["set", "alpha", "--disk", "12Q"], 2, "disk size"),
        case(&["start", "nosuch"], 1, "nosuch"),
        case(&["exec", "nosuch", "--", "true"], 1, "nosuch"),
        case(&["image", "import", "busybox", rootfs], 1, "busybox"),
        case(
            &["image", "import", "other", "/nonexistent/rootfs"],
            1,
            "/nonexistent/rootfs",
        ),
        case(&["image", "rm", "busybox"], 1, "alpha"),
        case(&["image", "rm", "nosuchimage"], 1, "nosuchimage"),
    ]);

    let before = state_of(&h);
    let mut failures = Vec::new();
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let o = h.vpsctl(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let first = err.lines().next().unwrap_or_default().to_owned();
        if o.status.code() != Some(c.code) {
            failures.push(format!(
                "{args:?}: exit {:?}, want {}: {err}",
                o.status.code(),
                c.code
            ));
        } else if !err.contains(c.says) {
            failures.push(format!(
                "{args:?}: error does not mention {:?}: {err}",
                c.says
            ));
        } else if c.code == 1 && (err.lines().count() != 1 || !first.starts_with("vpsctl: ")) {
            failures.push(format!("{args:?}: not one `vpsctl: ...` line: {err}"));
        }
    }

    // Config files: each broken a different way.
    let configs = [
        ("[paths]\nstatedir = \"/x\"\n", "paths.statedir"),
        ("[defaults]\ncpu_weight = \"lots\"\n", "defaults.cpu_weight"),
        ("[network]\nsubnet = \"172.18.0.1/16\"\n", "network.subnet"),
        (
            "[network]\nssh_ports = \"3000-2000\"\n",
            "network.ssh_ports",
        ),
        (
            "[network]\nbridge = \"a-bridge-name-too-long\"\n",
            "network.bridge",
        ),
        ("[proxy\n", "line 1"),
        ("[defaults]\nmemory = \"1K\"\n", "defaults.memory"),
        ("[defaults]\nconnections = 0\n", "defaults.connections"),
        ("[defaults]\ndisk = \"1M\"\n", "defaults.disk"),
        (
            "[network]\negress_deny = [\"10.0.0.1/8\"]\n",
            "network.egress_deny",
        ),
        (
            "[network]\negress_allow = [\"172.18.5.0/24\"]\n",
            "network.egress_allow",
        ),
        (
            "[network]\nforward_policy = \"sometimes\"\n",
            "network.forward_policy",
        ),
        (
            "[runtime]\ncgroup_manager = \"sometimes\"\n",
            "runtime.cgroup_manager",
        ),
    ];
    let bad = h.root.join("bad.toml");
    for (text, says) in configs {
        std::fs::write(&bad, text).unwrap();
        for args in [
            &["list"][..],
            &["init"][..],
            &["provision", "y", "--image", "busybox"][..],
        ] {
            let o = h
                .cmd(env!("CARGO_BIN_EXE_vpsctl"))
                .arg("--config")
                .arg(&bad)
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            if o.status.code() != Some(1) || err.lines().count() != 1 || !err.contains(says) {
                failures.push(format!(
                    "config {text:?} {args:?}: exit {:?}: {err}",
                    o.status.code()
                ));
            }
        }
    }
    std::fs::remove_file(&bad).unwrap();
    let total = cases.len() + configs.len();
    assert!(total >= 30, "only {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let after = state_of(&h);
    let changed: Vec<&std::path::PathBuf> = before
        .0
        .iter()
        .filter(|f| !after.0.contains(f))
        .chain(after.0.iter().filter(|f| !before.0.contains(f)))
        .map(|(p, _)| p)
        .collect();
    assert!(
        before == after,
        "a failing command changed the host's state: files {changed:?}, ruleset changed: {}",
        before.1 != after.1
    );
    eprintln!("bad input: {total} cases, all passed, state unchanged");
}
