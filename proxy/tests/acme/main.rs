//! ACME against Debian's pebble in a throwaway network namespace (root).
//! Run: `cargo test -p sotolito-proxy --test acme` as root with pebble,
//! dnsmasq-base and curl installed; without them the tests fail and say so.

mod env;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use env::{log_lines, tenant, wait_for, Env};
use sotolito_proxy::acme::{list_certs, CertStatus};

const SHOP: &str = "shop.sotolito.internal";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A tenant with a host gets a certificate that validates against pebble's
/// root, served at once; reserved, opted-out and unknown names never cause
/// an order; the tenant's own challenge paths still reach it.
#[test]
fn issues_certificates_for_registry_hosts_only() {
    let shop_opt_out = "legacy.sotolito.internal";
    let env = Env::start(
        "issue",
        0,
        &[tenant(
            "shop",
            &[SHOP, "shop.test", shop_opt_out],
            &[shop_opt_out],
        )],
    );
    let certs = env.certs_dir();
    let chain = certs.join(SHOP).join("fullchain.pem");
    let root = env.pebble.root_pem(&env.ns);
    let served = wait_for(Duration::from_secs(90), || {
        env.served_cert(SHOP, &root).ok()
    });
    assert!(
        served.is_some(),
        "no valid certificate served for {SHOP}:\n{}",
        env.diagnostics()
    );
    assert_eq!(mode(&chain), 0o600);
    assert_eq!(mode(&certs.join(SHOP).join("privkey.pem")), 0o600);
    assert_eq!(mode(&certs.join("acme").join("account.json")), 0o600);

    // curl over TLS trusting only pebble's root reaches the tenant.
    let root_file = env.dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).expect("write root");
    let (ok, body) = env.ns.curl(&[
        "--cacert",
        root_file.to_str().expect("utf-8"),
        "--resolve",
        &format!("{SHOP}:443:127.0.0.1"),
        &format!("https://{SHOP}/hello"),
    ]);
    assert!(ok && body.contains("tenant saw /hello"), "{body}");

    // A tenant's own ACME client: tokens we did not publish reach it.
    let (ok, body) = env.ns.curl(&[
        "-H",
        &format!("Host: {SHOP}"),
        "http://127.0.0.1/.well-known/acme-challenge/tenant-own-token",
    ]);
    assert!(
        ok && body.contains("tenant saw /.well-known/acme-challenge/tenant-own-token"),
        "{body}"
    );

    // An arbitrary SNI or Host never triggers an order, though DNS resolves it.
    let stranger = "stranger.sotolito.internal";
    assert!(env.served_cert(stranger, &root).is_err());
    let (_, body) = env.ns.curl(&[
        "-H",
        &format!("Host: {stranger}"),
        "http://127.0.0.1/.well-known/acme-challenge/x",
    ]);
    assert!(!body.contains("tenant saw"), "{body}");
    std::thread::sleep(Duration::from_secs(3));
    for never in [stranger, "shop.test", shop_opt_out] {
        assert!(!certs.join(never).exists(), "{never} got a certificate dir");
        assert!(
            log_lines(never).iter().all(|l| !l.contains("ordering")),
            "{never} was ordered:\n{}",
            env.diagnostics()
        );
    }

    // `vpsctl certs list`.
    let list = list_certs(&env.config).expect("list_certs");
    let shop = list.iter().find(|c| c.host == SHOP).expect("shop listed");
    assert_eq!(shop.status, CertStatus::Valid, "{shop:?}");
    assert_eq!(shop.source, "acme");
    assert_eq!(shop.tenant.as_deref(), Some("shop"));
    assert!(
        shop.issuer.as_deref().unwrap_or("").contains("Pebble"),
        "{shop:?}"
    );
    assert!(shop.not_after.is_some() && shop.renew_at.is_some());
    let test = list.iter().find(|c| c.host == "shop.test").expect("listed");
    assert_eq!(test.status, CertStatus::Missing);
    assert!(test.acme.contains(".test"), "{test:?}");
    let legacy = list
        .iter()
        .find(|c| c.host == shop_opt_out)
        .expect("listed");
    assert!(legacy.acme.contains("opted out"), "{legacy:?}");
    let json = serde_json::to_string(&list).expect("serialize");
    assert!(json.contains("\"status\":\"valid\""), "{json}");
}

/// Short-lived certificates are renewed at two thirds of their lifetime;
/// with pebble down the proxy keeps serving HTTP and the current
/// certificate, logs why the order failed and retries; when a (new) CA is
/// back it registers again and gets a new certificate.
#[test]
fn renews_and_rides_out_a_ca_outage() {
    let host = "renew.sotolito.internal";
    let mut env = Env::start("renew", 45, &[tenant("renew", &[host], &[])]);
    let root = env.pebble.root_pem(&env.ns);
    let first = wait_for(Duration::from_secs(90), || {
        env.served_cert(host, &root).ok()
    })
    .unwrap_or_else(|| panic!("no first certificate:\n{}", env.diagnostics()));
    // Due after 30 s of 45.
    let second = wait_for(Duration::from_secs(75), || {
        env.served_cert(host, &root).ok().filter(|c| c.0 != first.0)
    })
    .unwrap_or_else(|| panic!("not renewed:\n{}", env.diagnostics()));
    assert!(
        log_lines(host).iter().any(|l| l.contains("two thirds")),
        "renewal reason not logged:\n{}",
        env.diagnostics()
    );

    env.pebble.stop();
    let failed_before = log_lines(host)
        .iter()
        .filter(|l| l.contains("order failed"))
        .count();
    let failures = wait_for(Duration::from_secs(60), || {
        let lines: Vec<String> = log_lines(host)
            .into_iter()
            .filter(|l| l.contains("order failed"))
            .collect();
        (lines.len() >= failed_before + 2).then_some(lines)
    })
    .unwrap_or_else(|| panic!("no failed retries logged:\n{}", env.diagnostics()));
    let last = failures.last().expect("a line");
    assert!(
        last.contains("127.0.0.1:14000") && last.contains("retry_in"),
        "the log does not say why or when: {last}"
    );
    // `vpsctl certs list` says why and when next.
    let list = list_certs(&env.config).expect("list_certs");
    let row = list.iter().find(|c| c.host == host).expect("listed");
    assert!(row.failures >= 1, "{row:?}");
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("127.0.0.1:14000")
            && row.next_attempt.is_some(),
        "{row:?}"
    );
    // Still serving: the current certificate and plain HTTP.
    let now = env
        .served_cert(host, &root)
        .expect("current certificate still served");
    assert_eq!(now.0, second.0);
    let (ok, body) = env
        .ns
        .curl(&["-H", &format!("Host: {host}"), "http://127.0.0.1/up"]);
    assert!(ok && body.contains("tenant saw /up"), "{body}");

    // A new pebble: new root, our account unknown to it.
    env.pebble.restart(&env.ns);
    let new_root = env.pebble.root_pem(&env.ns);
    assert_ne!(new_root, root);
    wait_for(Duration::from_secs(60), || {
        env.served_cert(host, &new_root).ok()
    })
    .unwrap_or_else(|| panic!("no certificate from the new CA:\n{}", env.diagnostics()));
}

/// TLS-ALPN-01 on :443 alone (no :80 listener, so HTTP-01 cannot pass):
/// pebble validates the acme-tls/1 challenge certificate, and the real
/// certificate is served afterwards.
#[test]
fn tls_alpn_01_on_443() {
    let host = "alpn.sotolito.internal";
    let env = Env::start_with(
        "alpn",
        &[tenant("alpn", &[host], &[])],
        sotolito_proxy::acme::ChallengeKind::TlsAlpn01,
        false,
    );
    let root = env.pebble.root_pem(&env.ns);
    let served = wait_for(Duration::from_secs(90), || {
        env.served_cert(host, &root).ok()
    });
    assert!(
        served.is_some(),
        "no certificate via TLS-ALPN-01:\n{}",
        env.diagnostics()
    );
    // Pebble logs HTTP-01 attempts only; there must be none.
    assert!(
        !env.pebble.log_text().contains("validate w/ HTTP"),
        "pebble validated over HTTP:\n{}",
        env.pebble.log_text()
    );
}

const CHILD_CONFIG: &str = "SOTOLITO_ACME_TEST_CONFIG";

/// The config file `vpsctl proxy` runs with against this world: loopback
/// ports, ACME on against pebble.
fn write_run_config(env: &Env) -> std::path::PathBuf {
    let c = &env.config;
    let config_file = env.dir.path().join("sotolito.toml");
    let text = format!(
        "[paths]\nstate_dir = {:?}\nrun_dir = {:?}\nconfig_dir = {:?}\n\
         [proxy]\nhttp = \"127.0.0.1:80\"\nhttps = \"127.0.0.1:443\"\nadmin = \"127.0.0.1:9180\"\n\
         [acme]\nenabled = true\ndirectory = {:?}\nemail = \"ops@sotolito.internal\"\nca_roots = [{:?}]\n",
        c.paths.state_dir,
        c.paths.run_dir,
        c.paths.config_dir,
        env::DIRECTORY,
        env.pebble.listener_ca,
    );
    std::fs::write(&config_file, text).expect("write config");
    config_file
}

/// `sotolito_proxy::run` (what `vpsctl proxy` calls) started from a config
/// file with `[acme] enabled`, in its own process inside the namespace,
/// obtains a certificate with the default timing, and stops on SIGTERM.
#[test]
fn run_entry_point_obtains_certificates() {
    let host = "run.sotolito.internal";
    let env = Env::world("run", 0, &[tenant("run", &[host], &[])]);
    let config_file = write_run_config(&env);
    let exe = std::env::current_exe().expect("test binary");
    let log = env.dir.path().join("run.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = env
        .ns
        .command(exe.to_str().expect("utf-8"))
        .args(["--exact", "run_child", "--nocapture"])
        .env(CHILD_CONFIG, &config_file)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn the proxy process");
    let root = env.pebble.root_pem(&env.ns);
    let served = wait_for(Duration::from_secs(90), || {
        env.served_cert(host, &root).ok()
    });
    // Provisioned while the proxy runs: picked up from the registry,
    // certified, routed; curl trusting only pebble's root reaches it.
    let later = "later.sotolito.internal";
    let registry = sotolito_config::Registry::new(env.config.registry_dir());
    let lock = registry.lock().expect("registry lock");
    registry
        .put(&lock, &tenant("later", &[later], &[]))
        .expect("put tenant");
    drop(lock);
    let later_served = served.as_ref().and_then(|_| {
        wait_for(Duration::from_secs(60), || {
            env.served_cert(later, &root).ok()
        })
    });
    let root_file = env.dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).expect("write root");
    let (https_ok, https_body) = env.ns.curl(&[
        "--cacert",
        root_file.to_str().expect("utf-8"),
        "--resolve",
        &format!("{later}:443:127.0.0.1"),
        &format!("https://{later}/new"),
    ]);
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let exited = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        served.is_some(),
        "run() obtained no certificate:\n{text}\n{}",
        env.pebble.log_text()
    );
    assert!(
        text.contains("automatic HTTPS on"),
        "manager not started:\n{text}"
    );
    assert!(
        later_served.is_some(),
        "no certificate for a tenant provisioned while running:\n{text}"
    );
    assert!(
        https_ok && https_body.contains("tenant saw /new"),
        "{https_body}\n{text}"
    );
    assert!(
        exited.is_some_and(|s| s.success()),
        "the proxy did not stop cleanly on SIGTERM: {exited:?}\n{text}"
    );
}

/// As `sotolito-proxy.service` runs it: the system user `sotolito-proxy`
/// with CAP_NET_BIND_SERVICE alone (set by setpriv, PID 1 not being
/// systemd here), against a state dir prepared as `vpsctl units install`
/// prepares it. The proxy binds 80 and 443, reads the registry and writes
/// the certificate ACME issues, as that user.
#[test]
fn run_entry_point_as_its_own_user_writes_certificates() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let host = "user.sotolito.internal";
    let env = Env::world("user", 0, &[tenant("user", &[host], &[])]);
    let c = &env.config;
    // The test's temp dir stands for /var/lib (0755).
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let config_file = write_run_config(&env);
    let ids = sotolito_provisioner::proxy_user::ensure_user().expect("the proxy's user");
    sotolito_provisioner::proxy_user::grant_access(
        &sotolito_provisioner::proxy_user::ProxyPaths {
            state_dir: &c.paths.state_dir,
            registry_dir: &c.registry_dir(),
            certs_dir: &c.certs_dir(),
            config_file: &config_file,
        },
        ids,
    )
    .expect("grant access");
    let exe = std::env::current_exe().expect("test binary");
    let log = env.dir.path().join("run.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = env
        .ns
        .command("setpriv")
        .args([
            "--reuid=sotolito-proxy",
            "--regid=sotolito-proxy",
            "--clear-groups",
            "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=-all,+net_bind_service",
            "--bounding-set=-all,+net_bind_service",
            "--no-new-privs",
        ])
        .arg(&exe)
        .args(["--exact", "run_child", "--nocapture"])
        .env(CHILD_CONFIG, &config_file)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn the proxy process");
    let root = env.pebble.root_pem(&env.ns);
    let served = wait_for(Duration::from_secs(90), || {
        env.served_cert(host, &root).ok()
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        served.is_some(),
        "the proxy as sotolito-proxy obtained no certificate:\n{text}\n{}",
        env.pebble.log_text()
    );
    let chain = c.certs_dir().join(host).join("fullchain.pem");
    let meta = std::fs::metadata(&chain).expect("the issued chain");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (ids.uid, ids.gid),
        "{} was not written by the proxy's user",
        chain.display()
    );
}

/// The proxy process of `run_entry_point_obtains_certificates` and
/// `run_entry_point_as_its_own_user_writes_certificates`; does nothing
/// unless one of them started it.
#[test]
fn run_child() {
    let Some(path) = std::env::var_os(CHILD_CONFIG) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let text = std::fs::read_to_string(&path).expect("config");
    let config = sotolito_config::HostConfig::parse(&text, &path).expect("parse config");
    let loaded = sotolito_config::Loaded {
        config,
        path,
        state_dir_override: None,
    };
    sotolito_proxy::run(&loaded, sotolito_proxy::RunOptions::default()).expect("run");
}
