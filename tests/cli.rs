//! vpsctl's command line contract: global flags, exit codes, one-line
//! errors, JSON shapes. Every vpsctl runs in a network namespace of its own
//! (`unshare --net`), since `init` sets up the bridge and nft tables of the
//! namespace it runs in: root is needed, and the host's network is never
//! touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Instance {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Instance {
    /// A config file that points all four paths into a temp dir.
    fn new() -> Instance {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let config = root.join("sotolito.toml");
        std::fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = \"{0}/state\"\nrun_dir = \"{0}/run\"\nconfig_dir = \"{0}/etc\"\nsystemd_dir = \"{0}/systemd\"\n",
                root.display()
            ),
        )
        .unwrap();
        Instance {
            _tmp: tmp,
            root,
            config,
        }
    }

    fn vpsctl(&self, args: &[&str]) -> Output {
        vpsctl_cmd()
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("SOTOLITO_CONFIG")
            .env_remove("SOTOLITO_STATE_DIR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    fn write_record(&self, name: &str, ip: &str, port: u16, hosts: &[&str]) {
        let dir = self.root.join("state/registry/tenants");
        std::fs::create_dir_all(&dir).unwrap();
        let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!(
                "version = 1\nname = \"{name}\"\nimage = \"busybox\"\nip = \"{ip}\"\nssh_port = {port}\nhttp_port = 8080\nhosts = [{}]\nssh_keys = []\ncreated = \"2026-11-28T10:00:00Z\"\ndesired = \"running\"\n[limits]\nmemory = \"512M\"\ncpu_weight = 100\npids = 4096\n",
                hosts.join(", ")
            ),
        )
        .unwrap();
    }
}

/// vpsctl in a fresh, empty network namespace.
fn vpsctl_cmd() -> Command {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (vpsctl init makes a bridge): run them with sudo (scripts/test)"
    );
    let mut c = Command::new("unshare");
    c.args(["--net", "--"]).arg(env!("CARGO_BIN_EXE_vpsctl"));
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Every file under `dir` with its contents: "state before equals after".
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push((p.clone(), Vec::new()));
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn init_is_idempotent_and_creates_the_layout() {
    let i = Instance::new();
    let o = i.vpsctl(&["init"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for d in [
        "state/registry/tenants",
        "state/registry/.lock",
        "state/images",
        "state/tenants",
        "state/certs",
        "run/runc",
        "etc/tenants",
    ] {
        assert!(i.root.join(d).exists(), "{d} missing");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(i.root.join("state/certs"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "certs dir holds private keys");
    let before = snapshot(&i.root);
    let o = i.vpsctl(&["init", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["state_dir"], i.root.join("state").display().to_string());
    assert_eq!(snapshot(&i.root), before, "a second init changed something");
}

#[test]
fn list_and_status_json_shapes() {
    let i = Instance::new();
    let o = i.vpsctl(&["list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap(),
        serde_json::json!([])
    );

    i.write_record("beta", "172.18.0.3", 2201, &["beta.example.com"]);
    i.write_record(
        "alpha",
        "172.18.0.2",
        2200,
        &["alpha.example.com", "*.alpha.example.com"],
    );
    // Global flags before and after the subcommand.
    for args in [&["--json", "list"][..], &["list", "--json"][..]] {
        let o = i.vpsctl(args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["name"], "alpha");
        assert_eq!(arr[1]["name"], "beta");
    }
    let o = i.vpsctl(&["status", "alpha", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["name"], "alpha");
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["desired"], "running");
    assert_eq!(v["pid"], serde_json::Value::Null);
    assert_eq!(v["ip"], "172.18.0.2");
    assert_eq!(v["ssh_port"], 2200);
    assert_eq!(v["http_port"], 8080);
    assert_eq!(
        v["hosts"],
        serde_json::json!(["alpha.example.com", "*.alpha.example.com"])
    );
    assert_eq!(v["image"], "busybox");
    assert_eq!(v["started_at"], serde_json::Value::Null);

    let o = i.vpsctl(&["status", "alpha"]);
    assert!(stdout(&o).contains("ssh port:   2200"), "{}", stdout(&o));
    let o = i.vpsctl(&["list"]);
    let out = stdout(&o);
    assert!(out.starts_with("NAME"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn errors_are_one_line_with_the_right_exit_code() {
    let i = Instance::new();
    i.vpsctl(&["init"]);
    let before = snapshot(&i.root);
    // (args, exit code, expected stderr start) — usage errors are clap's (2).
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["status", "../x"],
            2,
            "error: invalid value '../x' for '<NAME>': tenant name \"../x\" contains '.'",
        ),
        (
            &["status", "A"],
            2,
            "error: invalid value 'A' for '<NAME>': tenant name \"A\" has uppercase letters",
        ),
        (
            &["status"],
            2,
            "error: the following required arguments were not provided",
        ),
        (
            &["frobnicate"],
            2,
            "error: unrecognized subcommand 'frobnicate'",
        ),
        (
            &["list", "--jsn"],
            2,
            "error: unexpected argument '--jsn' found",
        ),
        (
            &["status", "nope"],
            1,
            "vpsctl: failed to show tenant nope: tenant nope does not exist (see vpsctl list)",
        ),
        (
            &["status", "nope", "--json"],
            1,
            "vpsctl: failed to show tenant nope: tenant nope does not exist (see vpsctl list)",
        ),
    ];
    for (args, code, want) in cases {
        let o = i.vpsctl(args);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.starts_with(want), "{args:?}: {err}");
        if *code == 1 {
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(o.stdout.is_empty(), "{args:?}");
        }
    }
    assert_eq!(snapshot(&i.root), before, "a failing command changed state");
}

#[test]
fn config_errors_name_file_key_and_line() {
    let i = Instance::new();
    let bad = i.root.join("bad.toml");
    let cases: &[(&str, &str)] = &[
        (
            "[paths]\nstate_dir = \"/x\"\nstatedir = \"/y\"\n",
            "line 3: paths.statedir: unknown key",
        ),
        (
            "[defaults]\nmemory = \"lots\"\n",
            "line 2: defaults.memory: memory size \"lots\" is not a size",
        ),
        (
            "[network]\nssh_ports = \"3000-2000\"\n",
            "line 2: network.ssh_ports: port range \"3000-2000\" is out of range",
        ),
        (
            "[proxy]\nadmin = \"localhost\"\n",
            "line 2: proxy.admin: invalid socket address syntax",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&bad, text).unwrap();
        let o = vpsctl_cmd()
            .args(["list", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "vpsctl: failed to load config: config {}",
                bad.display()
            )),
            "{err}"
        );
        assert!(err.contains(want), "{err}");
    }
    // A config named explicitly must exist; the environment works as the flag.
    let o = vpsctl_cmd()
        .arg("list")
        .env("SOTOLITO_CONFIG", i.root.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read config"), "{}", stderr(&o));
}

#[test]
fn state_dir_flag_and_environment_override_the_file() {
    let i = Instance::new();
    let other = i.root.join("other");
    let o = i.vpsctl(&["init", "--state-dir", other.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(other.join("registry/tenants").is_dir());
    let env_dir = i.root.join("from-env");
    let o = vpsctl_cmd()
        .args(["--config"])
        .arg(&i.config)
        .arg("init")
        .env("SOTOLITO_STATE_DIR", &env_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(env_dir.join("registry/tenants").is_dir());
    assert!(
        !i.root.join("state").exists(),
        "the file's state_dir was used"
    );
}

#[test]
fn version_and_help() {
    let o = vpsctl_cmd().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("vpsctl "));
    let o = vpsctl_cmd().arg("--help").output().unwrap();
    assert!(o.status.success());
    for cmd in ["init", "list", "status"] {
        assert!(stdout(&o).contains(cmd));
    }
}

#[test]
fn certs_list_shows_every_routed_host() {
    let i = Instance::new();
    i.write_record(
        "alpha",
        "172.18.0.2",
        2200,
        &["shop.example.com", "alpha.localhost"],
    );
    let mut config = std::fs::read_to_string(&i.config).unwrap();
    config.push_str("[acme]\nenabled = true\n");
    std::fs::write(&i.config, config).unwrap();
    let o = i.vpsctl(&["certs", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = v.as_array().unwrap();
    let shop = rows
        .iter()
        .find(|r| r["host"] == "shop.example.com")
        .expect("shop row");
    assert_eq!(shop["tenant"], "alpha");
    assert_eq!(shop["status"], "missing");
    let local = rows
        .iter()
        .find(|r| r["host"] == "alpha.localhost")
        .expect("localhost row");
    assert_ne!(
        local["acme"], shop["acme"],
        "a .localhost name is never sent to ACME"
    );
    let o = i.vpsctl(&["certs", "list"]);
    assert!(stdout(&o).starts_with("HOST"), "{}", stdout(&o));
}
