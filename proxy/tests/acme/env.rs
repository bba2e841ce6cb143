//! A throwaway world for ACME tests: a network namespace holding Debian's
//! pebble (real HTTP-01 validation, no PEBBLE_VA_ALWAYS_VALID), a dnsmasq
//! mapping `*.sotolito.internal` to the proxy, a tenant backend, and the
//! proxy with its ACME manager. All traffic stays inside the namespace;
//! everything started is stopped by PID and the namespace removed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use rustls::pki_types::pem::PemObject as _;
use sotolito_config::{HostConfig, Registry, Tenant};
use sotolito_net::sandbox;
use sotolito_proxy::acme::{self, AcmeHandle, ChallengeKind, Challenges, Tuning};
use sotolito_proxy::{FileSource, Listen, ProxyHandle, RouteTable, Settings, TenantRoute, Watcher};

pub const DIRECTORY: &str = "https://127.0.0.1:14000/dir";
pub const DNS: &str = "127.0.0.1:5353";
/// Every tenant (127.0.0.N:8080) is this one backend.
pub const TENANT_ADDR: &str = "0.0.0.0:8080";

/// Root and the tools, or a failure that says what is missing.
pub fn require_root_and_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "the ACME tests need root (network namespaces, ports 80/443): run them as root"
    );
    for (tool, package) in [
        ("pebble", "pebble"),
        ("dnsmasq", "dnsmasq-base"),
        ("curl", "curl"),
        ("ip", "iproute2"),
    ] {
        let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        assert!(found, "{tool} is missing: apt-get install -y {package}");
    }
}

/// Log lines of every test in this binary (the manager logs on its own
/// thread, so a global subscriber is the only way to see them).
pub fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(w.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines mentioning `needle`.
pub fn log_lines(needle: &str) -> Vec<String> {
    let buf = logs();
    let text = String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Polls `f` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A test namespace: the workspace's one sandbox (`sotolito_net::sandbox`),
/// plus a thread that runs inside it.
pub struct Netns {
    ns: sandbox::Netns,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let ns = sandbox::Netns::unique(&format!("acme-test-{tag}")).expect("network namespace");
        Netns { ns }
    }

    /// Runs `f` on a thread inside the namespace; threads and sockets it
    /// makes stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.ns.path()).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    pub fn command(&self, program: &str) -> Command {
        self.ns.command(program)
    }

    /// `curl` inside the namespace; (exit ok, body).
    pub fn curl(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .command("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

/// A child process ended by PID on drop.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TLS certificate for pebble's own listener (Debian ships none), from a
/// throwaway CA the manager trusts through `[acme] ca_roots`.
fn listener_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sotolito test listener CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    let paths = (
        dir.join("listener-ca.pem"),
        dir.join("listener.pem"),
        dir.join("listener.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

pub struct Pebble {
    proc: Proc,
    config: PathBuf,
    pub listener_ca: PathBuf,
}

impl Pebble {
    /// Starts pebble with validation on ports 80/443 and the given
    /// certificate lifetime (seconds; 0: pebble's default).
    fn start(ns: &Netns, dir: &Path, validity: u64) -> Pebble {
        let (ca, cert, key) = listener_cert(dir);
        let mut pebble = serde_json::json!({
            "listenAddress": "127.0.0.1:14000",
            "managementListenAddress": "127.0.0.1:15000",
            "certificate": cert,
            "privateKey": key,
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if validity > 0 {
            pebble["certificateValidityPeriod"] = validity.into();
        }
        let config = dir.join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string())
            .expect("write");
        let mut p = Pebble {
            proc: Proc {
                child: None,
                log: dir.join("pebble.log"),
            },
            config,
            listener_ca: ca,
        };
        p.restart(ns);
        p
    }

    /// (Re)starts the process: a new pebble has a new CA and no accounts.
    pub fn restart(&mut self, ns: &Netns) {
        self.proc.stop();
        let mut cmd = ns.command("pebble");
        cmd.arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", DNS]);
        // Sleeps up to 15 s per validation otherwise.
        cmd.env("PEBBLE_VA_NOSLEEP", "1");
        cmd.env_remove("PEBBLE_VA_ALWAYS_VALID");
        let log = self.proc.log.clone();
        self.proc = Proc::spawn(cmd, log);
        let up = wait_for(Duration::from_secs(20), || {
            ns.run(|| {
                TcpStream::connect_timeout(
                    &"127.0.0.1:14000".parse().expect("addr"),
                    Duration::from_secs(1),
                )
                .ok()
            })
        });
        assert!(
            up.is_some(),
            "pebble did not start:\n{}",
            self.proc.log_text()
        );
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// The root pebble issues under, from its management interface.
    pub fn root_pem(&self, ns: &Netns) -> String {
        let ca = self.listener_ca.to_string_lossy().into_owned();
        let (ok, body) = ns.curl(&["--cacert", &ca, "https://127.0.0.1:15000/roots/0"]);
        assert!(
            ok && body.contains("BEGIN CERTIFICATE"),
            "pebble root: {body}"
        );
        body
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// A tenant: answers every request with `tenant saw PATH`.
struct Backend {
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(ns: &Netns) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        ns.run(move || {
            let listener = TcpListener::bind(TENANT_ADDR).expect("bind tenant");
            listener.set_nonblocking(true).expect("nonblocking");
            std::thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            std::thread::spawn(move || serve(s));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        });
        Backend { stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
    let body = format!("tenant saw {path}\n");
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The whole world; dropped in field order: manager, route watcher,
/// proxy, tenant, pebble, dnsmasq, namespace, files.
pub struct Env {
    pub acme: Option<AcmeHandle>,
    pub watcher: Option<Watcher>,
    pub proxy: Option<ProxyHandle>,
    _backend: Backend,
    pub pebble: Pebble,
    _dns: Proc,
    pub ns: Netns,
    pub config: HostConfig,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Starts the namespace, dnsmasq, pebble, the tenant backend and a
    /// registry holding `tenants` (see [`tenant`]); no proxy yet.
    pub fn world(tag: &str, validity: u64, tenants: &[Tenant]) -> Env {
        require_root_and_tools();
        logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = Netns::new(tag);
        let mut dns_cmd = ns.command("dnsmasq");
        dns_cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--port=5353",
            "--user=root",
            "--address=/sotolito.internal/127.0.0.1",
            "--log-facility=-",
            "--log-queries",
            // No shared /run/dnsmasq/dnsmasq.pid between parallel tests.
            "--pid-file",
        ]);
        let dns = Proc::spawn(dns_cmd, dir.path().join("dnsmasq.log"));
        // dnsmasq answers on TCP too: ready once that port accepts.
        let up = wait_for(Duration::from_secs(10), || {
            ns.run(|| {
                TcpStream::connect_timeout(&DNS.parse().expect("addr"), Duration::from_secs(1)).ok()
            })
        });
        assert!(up.is_some(), "dnsmasq did not start:\n{}", dns.log_text());
        let pebble = Pebble::start(&ns, dir.path(), validity);
        let backend = Backend::start(&ns);

        let mut config = HostConfig::default();
        config.paths.state_dir = dir.path().join("state");
        config.paths.run_dir = dir.path().join("run");
        config.paths.config_dir = dir.path().join("etc");
        config.acme.enabled = true;
        config.acme.directory = DIRECTORY.into();
        config.acme.email = "ops@sotolito.internal".into();
        config.acme.ca_roots = vec![pebble.listener_ca.clone()];
        let registry = Registry::new(config.registry_dir());
        let lock = registry.lock().expect("registry lock");
        for t in tenants {
            registry.put(&lock, t).expect("put tenant");
        }
        drop(lock);

        Env {
            acme: None,
            watcher: None,
            proxy: None,
            _backend: backend,
            pebble,
            _dns: dns,
            ns,
            config,
            dir,
        }
    }

    /// [`Env::world`] plus the proxy (on :80 and :443) and its manager
    /// (HTTP-01) in this process.
    pub fn start(tag: &str, validity: u64, tenants: &[Tenant]) -> Env {
        let mut env = Env::world(tag, validity, tenants);
        env.start_proxy(ChallengeKind::Http01, true);
        env
    }

    /// [`Env::start`] answering `kind`, with or without the :80 listener.
    pub fn start_with(tag: &str, tenants: &[Tenant], kind: ChallengeKind, http: bool) -> Env {
        let mut env = Env::world(tag, 0, tenants);
        env.start_proxy(kind, http);
        env
    }

    /// The proxy, its route watcher and its manager, wired as `run` wires
    /// them.
    fn start_proxy(&mut self, kind: ChallengeKind, http: bool) {
        let config = self.config.clone();
        let (proxy, watcher, acme) = self.ns.run(move || {
            let challenges = Challenges::new();
            let settings = Settings {
                certs_dir: Some(config.certs_dir()),
                workers: 1,
                acme_challenges: challenges.clone(),
                ..Settings::default()
            };
            let listen = Listen {
                http: http.then(|| SocketAddr::from(([127, 0, 0, 1], 80))),
                https: Some(SocketAddr::from(([127, 0, 0, 1], 443))),
                admin: None,
            };
            let registry = Registry::new(config.registry_dir());
            let generation = registry.generation().expect("registry");
            let tenants: Vec<TenantRoute> = registry
                .list()
                .expect("registry")
                .iter()
                .map(TenantRoute::from)
                .collect();
            let proxy = ProxyHandle::start(settings, listen, RouteTable::from_records(&tenants))
                .expect("proxy");
            let source = FileSource::new()
                .registry(registry, generation)
                .certs(config.certs_dir(), Duration::from_millis(200));
            let watcher = Watcher::start(source, proxy.updater(), tenants).expect("watcher");
            let tuning = Tuning {
                tick: Duration::from_millis(200),
                recheck: Duration::from_secs(1),
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(4),
                rate_limited: Duration::from_secs(5),
                order_timeout: Duration::from_secs(60),
                challenge: kind,
            };
            let acme = acme::start_with(&config, challenges, tuning, watcher.tenants())
                .expect("acme")
                .expect("enabled");
            (proxy, watcher, acme)
        });
        self.proxy = Some(proxy);
        self.watcher = Some(watcher);
        self.acme = Some(acme);
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.config.certs_dir()
    }

    /// Logs worth printing when a test fails.
    pub fn diagnostics(&self) -> String {
        let logs = logs();
        let text =
            String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        format!(
            "--- proxy/acme log ---\n{text}\n--- pebble log ---\n{}\n--- dnsmasq log ---\n{}",
            self.pebble.log_text(),
            self._dns.log_text()
        )
    }

    /// The certificate the proxy serves for `host`, verified against
    /// `root_pem`: (serial, not_after) or why not.
    pub fn served_cert(&self, host: &str, root_pem: &str) -> Result<(String, SystemTime), String> {
        let host = host.to_owned();
        let root_pem = root_pem.to_owned();
        self.ns.run(move || served_cert(&host, &root_pem))
    }
}

/// A tenant record named `name` routing `hosts` to the test backend.
pub fn tenant(name: &str, hosts: &[&str], opt_out: &[&str]) -> Tenant {
    // A distinct address and SSH port each, as the registry requires.
    static NEXT: AtomicU16 = AtomicU16::new(2);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let list = |v: &[&str]| {
        v.iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "version = 1\nname = {name:?}\nimage = \"debian\"\nip = \"127.0.0.{}\"\nssh_port = {}\n\
         http_port = 8080\nhosts = [{}]\nacme_opt_out = [{}]\ncreated = \"2026-11-28T10:00:00Z\"\n\
         desired = \"running\"\n[limits]\nmemory = \"512M\"\ncpu_weight = 100\npids = 4096\n",
        n % 250 + 2,
        2200 + n,
        list(hosts),
        list(opt_out),
    );
    Tenant::from_toml(&text).expect("tenant record")
}

fn served_cert(host: &str, root_pem: &str) -> Result<(String, SystemTime), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(
        &"127.0.0.1:443".parse().expect("addr"),
        Duration::from_secs(3),
    )
    .map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    Ok((cert.raw_serial_as_string(), not_after))
}
