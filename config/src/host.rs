//! The host config (`/etc/sotolito/sotolito.toml`): every key has a default,
//! unknown keys and wrong types are errors that name the key, file and line.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names::{
    gateway, CpuWeight, InvalidValue, LogSize, MemorySize, Pids, Problem, SwapLimit,
};
use crate::quota::DiskQuota;
use crate::Error;

pub const DEFAULT_CONFIG: &str = "/etc/sotolito/sotolito.toml";
pub const ENV_CONFIG: &str = "SOTOLITO_CONFIG";
pub const ENV_STATE_DIR: &str = "SOTOLITO_STATE_DIR";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    pub paths: Paths,
    pub network: Network,
    pub proxy: Proxy,
    pub defaults: Defaults,
    pub acme: Acme,
    pub runtime: Runtime,
    /// Present: this host is a node of a fleet whose registry is in etcd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::Cluster>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub config_dir: PathBuf,
    pub systemd_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state_dir: "/var/lib/sotolito".into(),
            run_dir: "/run/sotolito".into(),
            config_dir: "/etc/sotolito".into(),
            systemd_dir: "/etc/systemd/system".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// Empty: the interface of the default route.
    pub public_interface: String,
    pub ssh_ports: PortRange,
    /// Networks tenants may not reach, added to the built-in list
    /// ([`Network::DEFAULT_EGRESS_DENY`] and the host's own addresses).
    pub egress_deny: Vec<Ipv4Net>,
    /// Exceptions to the deny lists: networks tenants may reach anyway
    /// (never the tenant subnet nor the host itself).
    pub egress_allow: Vec<Ipv4Net>,
    /// Resolvers tenants may reach on port 53 (UDP and TCP), even inside
    /// the deny list or on the host itself; empty: the non-loopback
    /// nameservers of the host's resolv.conf, which provision gives them.
    pub tenant_dns: Vec<Ipv4Addr>,
    /// Refuse tenants' outbound connections to port 25 (SMTP).
    pub block_smtp: bool,
    /// The forward chain's verdict for traffic that is not ours: `drop`
    /// (the host routes only for its tenants) or `accept` (other routed
    /// networks on the host keep working; their firewall is theirs).
    pub forward_policy: ForwardPolicy,
    /// On a fleet node: the other nodes, as the firewall sees them. Never
    /// read from the file: vpsctl fills it in from the node list.
    #[serde(skip)]
    pub fleet: Option<crate::cluster::FleetNetwork>,
}

/// See [`Network::forward_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardPolicy {
    #[default]
    Drop,
    Accept,
}

impl ForwardPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardPolicy::Drop => "drop",
            ForwardPolicy::Accept => "accept",
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bridge: "sotolito0".into(),
            subnet: Ipv4Net::new(Ipv4Addr::new(172, 18, 0, 0), 16).expect("valid prefix"),
            public_interface: String::new(),
            ssh_ports: PortRange {
                first: 2200,
                last: 2999,
            },
            egress_deny: Vec::new(),
            egress_allow: Vec::new(),
            tenant_dns: Vec::new(),
            block_smtp: false,
            forward_policy: ForwardPolicy::Drop,
            fleet: None,
        }
    }
}

impl Network {
    /// Never reachable from tenants unless `egress_allow` says so: link
    /// local (cloud metadata at 169.254.169.254), RFC 1918 private
    /// networks and carrier-grade NAT (RFC 6598).
    pub const DEFAULT_EGRESS_DENY: [&'static str; 5] = [
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ];

    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.subnet)
    }

    /// The built-in deny list plus `egress_deny`, merged into disjoint
    /// networks (an nft interval set refuses overlapping elements).
    pub fn egress_deny_all(&self) -> Vec<Ipv4Net> {
        let mut all: Vec<Ipv4Net> = Self::DEFAULT_EGRESS_DENY
            .iter()
            .map(|n| n.parse().expect("valid built-in network"))
            .collect();
        all.extend(self.egress_deny.iter().copied());
        Ipv4Net::aggregate(&all)
    }

    /// `egress_allow` merged into disjoint networks.
    pub fn egress_allow_all(&self) -> Vec<Ipv4Net> {
        Ipv4Net::aggregate(&self.egress_allow)
    }
}

/// An inclusive port range written `2200-2999`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for PortRange {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = |problem| InvalidValue {
            kind: "port range",
            value: s.to_owned(),
            problem,
        };
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let first: u16 = a.trim().parse().map_err(|_| bad(Problem::NotANumber))?;
        let last: u16 = b.trim().parse().map_err(|_| bad(Problem::NotANumber))?;
        if first == 0 || last < first {
            return Err(bad(Problem::OutOfRange { min: 1, max: 65535 }));
        }
        Ok(PortRange { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// /metrics; never public.
    pub admin: SocketAddr,
    /// Empty: STATE_DIR/certs.
    pub certs_dir: PathBuf,
    /// Peers whose X-Forwarded-* / Forwarded headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Send a PROXY protocol v2 header to tenants.
    pub proxy_protocol: bool,
    /// Redirect plain HTTP to HTTPS for hosts that have a certificate.
    pub redirect_https: bool,
    /// A tenant that has not answered within this gets a 504.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// A client that has not sent its request headers within this is cut
    /// off (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `text` (key=value on stderr with the other logs) or `json` (one
    /// JSON object per line on stdout, for log shippers).
    pub access_log: AccessLogFormat,
    /// HTTP/1 implementation: `h1` (the proxy's own engine) or `hyper`.
    pub engine: ProxyEngine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyEngine {
    /// The purpose-built HTTP/1 engine (parses each head once).
    #[default]
    H1,
    /// hyper's HTTP/1 server and client, behind the strict gate.
    Hyper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            http: SocketAddr::from(([0, 0, 0, 0], 80)),
            https: SocketAddr::from(([0, 0, 0, 0], 443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9180)),
            certs_dir: PathBuf::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            redirect_https: false,
            upstream_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            access_log: AccessLogFormat::Text,
            engine: ProxyEngine::H1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub memory: MemorySize,
    pub cpu_weight: CpuWeight,
    pub pids: Pids,
    /// Concurrent connections a tenant may open (nft `ct count`), unless
    /// its record says otherwise (`provision --connections`).
    pub connections: u32,
    /// A tenant's writable storage unless `provision --disk` says otherwise.
    pub disk: DiskQuota,
    /// Swap beyond the memory limit for tenants without their own `swap`:
    /// `0` (none), a size, or `unlimited`.
    pub swap: SwapLimit,
}

impl Defaults {
    /// The limits of a tenant provisioned without limit flags.
    pub fn limits(&self) -> crate::tenant::Limits {
        crate::tenant::Limits {
            memory: self.memory,
            cpu_weight: self.cpu_weight,
            pids: self.pids,
            connections: None,
            // The record follows `[defaults] swap` until given its own.
            swap: None,
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            memory: MemorySize::new("512M").expect("valid default"),
            cpu_weight: CpuWeight::new(100).expect("valid default"),
            pids: Pids::new(4096).expect("valid default"),
            connections: 4096,
            disk: DiskQuota::default(),
            swap: SwapLimit::NONE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Acme {
    pub enabled: bool,
    pub directory: String,
    pub email: String,
    /// Extra PEM roots to trust for the ACME server (a private CA).
    pub ca_roots: Vec<PathBuf>,
    /// `http-01` (a token on :80) or `tls-alpn-01` (on :443, for hosts
    /// whose port 80 is not reachable).
    pub challenge: AcmeChallenge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Default for Acme {
    fn default() -> Self {
        Acme {
            enabled: false,
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            email: String::new(),
            ca_roots: Vec::new(),
            challenge: AcmeChallenge::Http01,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    pub runc: String,
    pub cgroup_manager: CgroupManager,
    /// A tenant's console log is rotated past this size, one old copy
    /// kept (`console.log.1`): at most twice this on disk per tenant.
    pub console_log_max: LogSize,
    /// First host uid/gid of tenant id maps: tenants share base..base+65535;
    /// isolated tenants get base+65536*k (1 <= k < idmap_ranges).
    pub idmap_base: u32,
    /// How many 65536-id ranges from idmap_base are sotolito's (the shared
    /// one included).
    pub idmap_ranges: u32,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            runc: "runc".into(),
            cgroup_manager: CgroupManager::Auto,
            console_log_max: LogSize::new("1M").expect("valid default"),
            // Incus's default: above the ids a host's own users get, and
            // clear of the 100000-range that useradd writes to /etc/subuid.
            idmap_base: 1_000_000,
            idmap_ranges: 1000,
        }
    }
}

impl Runtime {
    pub fn idmap_pool(&self) -> crate::IdmapPool {
        crate::IdmapPool {
            base: self.idmap_base,
            ranges: self.idmap_ranges,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupManager {
    Auto,
    Systemd,
    Cgroupfs,
}

/// Where the config came from, and the flags and environment laid over it.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl HostConfig {
    /// Loads the config as the CLI does. Precedence: flag, then environment,
    /// then file, then default. The default file is optional; a file named by
    /// a flag or the environment must exist.
    pub fn load(flags: &Overrides) -> Result<Loaded, Error> {
        let env_config = std::env::var_os(ENV_CONFIG)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let env_state = std::env::var_os(ENV_STATE_DIR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        // The default file stays optional even when named: units and hooks
        // name it explicitly, and a host without one runs on defaults.
        let path = flags
            .config
            .clone()
            .or(env_config)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let required = path != Path::new(DEFAULT_CONFIG);
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => HostConfig::parse(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                HostConfig::default()
            }
            Err(source) => {
                return Err(Error::Io {
                    action: "read config",
                    path,
                    source,
                })
            }
        };
        let state_dir_override = flags.state_dir.clone().or(env_state);
        if let Some(dir) = &state_dir_override {
            config.paths.state_dir = dir.clone();
        }
        config.make_paths_absolute()?;
        let path = std::path::absolute(&path).unwrap_or(path);
        let state_dir_override = state_dir_override.map(|_| config.paths.state_dir.clone());
        Ok(Loaded {
            config,
            path,
            state_dir_override,
        })
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<HostConfig, Error> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| config_error(text, path, String::new(), e))?;
        let config: HostConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            config_error(text, path, key, e.into_inner())
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), Error> {
        let bad = |key: &str, message: String| Error::Config {
            path: path.to_owned(),
            key: key.to_owned(),
            line: None,
            message,
        };
        let bridge = &self.network.bridge;
        if bridge.is_empty()
            || bridge.len() > 15
            || !bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "network.bridge",
                format!("{bridge:?} is not an interface name (1-15 letters, digits, '-' or '_')"),
            ));
        }
        if self.network.subnet.prefix_len() > 29 {
            return Err(bad(
                "network.subnet",
                format!(
                    "{} is too small for tenants (use /29 or larger)",
                    self.network.subnet
                ),
            ));
        }
        if self.network.subnet.addr() != self.network.subnet.network() {
            return Err(bad(
                "network.subnet",
                format!(
                    "{} has host bits set (did you mean {}?)",
                    self.network.subnet,
                    self.network.subnet.trunc()
                ),
            ));
        }
        let rt = &self.runtime;
        if rt.idmap_base < crate::idmap::RANGE_SIZE {
            return Err(bad(
                "runtime.idmap_base",
                format!(
                    "{} overlaps the host's own ids 0-65535 (use 1000000 or another base of at least 65536)",
                    rt.idmap_base
                ),
            ));
        }
        let end = u64::from(rt.idmap_base)
            + u64::from(rt.idmap_ranges) * u64::from(crate::idmap::RANGE_SIZE);
        if rt.idmap_ranges == 0 || end > u64::from(u32::MAX) {
            return Err(bad(
                "runtime.idmap_ranges",
                format!(
                    "{} ranges of 65536 from {} do not fit in 1..2^32-1 host ids (use at least 1, and fewer)",
                    rt.idmap_ranges, rt.idmap_base
                ),
            ));
        }
        for (key, nets) in [
            ("network.egress_deny", &self.network.egress_deny),
            ("network.egress_allow", &self.network.egress_allow),
        ] {
            if let Some(n) = nets.iter().find(|n| n.addr() != n.network()) {
                return Err(bad(
                    key,
                    format!("{n} has host bits set (did you mean {}?)", n.trunc()),
                ));
            }
        }
        if let Some(n) = self
            .network
            .egress_allow
            .iter()
            .find(|n| n.contains(&self.network.subnet) || self.network.subnet.contains(*n))
        {
            return Err(bad(
                "network.egress_allow",
                format!(
                    "{n} overlaps the tenant subnet {} (tenants reach each other only through the proxy and the ssh ports)",
                    self.network.subnet
                ),
            ));
        }
        if let Some(ip) = self
            .network
            .tenant_dns
            .iter()
            .find(|ip| ip.is_loopback() || ip.is_unspecified())
        {
            return Err(bad(
                "network.tenant_dns",
                format!("{ip} is not reachable from tenants (give a resolver's own address)"),
            ));
        }
        if let Err(e) = crate::names::check_connections(u64::from(self.defaults.connections)) {
            return Err(bad("defaults.connections", e.to_string()));
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .check(self.network.subnet)
                .map_err(|(key, message)| bad(key, message))?;
        }
        Ok(())
    }

    fn make_paths_absolute(&mut self) -> Result<(), Error> {
        for (key, p) in [
            ("paths.state_dir", &mut self.paths.state_dir),
            ("paths.run_dir", &mut self.paths.run_dir),
            ("paths.config_dir", &mut self.paths.config_dir),
            ("paths.systemd_dir", &mut self.paths.systemd_dir),
        ] {
            if p.as_os_str().is_empty() {
                return Err(Error::Config {
                    path: PathBuf::new(),
                    key: key.into(),
                    line: None,
                    message: "is empty".into(),
                });
            }
            if let Ok(abs) = std::path::absolute(&*p) {
                *p = abs;
            }
        }
        if let Some(cluster) = &mut self.cluster {
            for p in cluster.paths_mut() {
                if !p.as_os_str().is_empty() {
                    if let Ok(abs) = std::path::absolute(&*p) {
                        *p = abs;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn registry_dir(&self) -> PathBuf {
        self.paths.state_dir.join("registry")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.paths.state_dir.join("images")
    }

    pub fn tenants_dir(&self) -> PathBuf {
        self.paths.state_dir.join("tenants")
    }

    pub fn certs_dir(&self) -> PathBuf {
        if self.proxy.certs_dir.as_os_str().is_empty() {
            self.paths.state_dir.join("certs")
        } else {
            self.proxy.certs_dir.clone()
        }
    }

    pub fn runc_root(&self) -> PathBuf {
        self.paths.run_dir.join("runc")
    }

    /// CONFIG_DIR/tenants: the units' EnvironmentFile directory.
    pub fn tenant_cfg_dir(&self) -> PathBuf {
        self.paths.config_dir.join("tenants")
    }
}

/// A loaded config and the (absolute) file it was read from, or would have
/// been: hooks and units pass it back to vpsctl as `--config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: HostConfig,
    pub path: PathBuf,
    /// The state dir when a flag or the environment chose it (absolute):
    /// hooks and units must pass it on, since they get neither.
    pub state_dir_override: Option<PathBuf>,
}

fn config_error(text: &str, path: &Path, key: String, e: toml::de::Error) -> Error {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    // The first line of toml's message is the useful one; the rest is a
    // source excerpt that we replace with the line number.
    let mut message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid")
        .trim()
        .to_owned();
    // serde names the missing or unknown field; surface the key for the
    // unknown-field case where the path points at the parent table.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(field) = rest.split('`').next() {
            // serde_path_to_error's path already ends with the field.
            let full = if key.is_empty() || key == "." {
                field.to_owned()
            } else {
                key.clone()
            };
            message = format!("unknown key (valid keys: {})", valid_keys_hint(&message));
            return Error::Config {
                path: path.to_owned(),
                key: full,
                line,
                message,
            };
        }
    }
    Error::Config {
        path: path.to_owned(),
        key: if key == "." { String::new() } else { key },
        line,
        message,
    }
}

fn valid_keys_hint(serde_message: &str) -> String {
    // "unknown field `x`, expected one of `a`, `b`" -> "a, b"
    serde_message
        .split_once("expected")
        .map(|(_, rest)| {
            rest.trim()
                .trim_start_matches("one of")
                .trim()
                .replace('`', "")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig, String> {
        HostConfig::parse(text, Path::new("/etc/sotolito/sotolito.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, HostConfig::default());
        assert_eq!(c.paths.state_dir, Path::new("/var/lib/sotolito"));
        assert_eq!(c.network.bridge, "sotolito0");
        assert_eq!(c.network.subnet.to_string(), "172.18.0.0/16");
        assert_eq!(c.network.gateway().to_string(), "172.18.0.1");
        assert_eq!(
            c.network.ssh_ports,
            PortRange {
                first: 2200,
                last: 2999
            }
        );
        assert_eq!(c.proxy.admin.to_string(), "127.0.0.1:9180");
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(30));
        assert_eq!(c.defaults.memory.to_string(), "512M");
        assert_eq!(c.defaults.cpu_weight.get(), 100);
        assert_eq!(c.defaults.pids.get(), 4096);
        assert_eq!(c.defaults.connections, 4096);
        assert_eq!(c.network.forward_policy, ForwardPolicy::Drop);
        assert!(!c.network.block_smtp);
        assert_eq!(c.network.egress_deny_all().len(), 5);
        assert!(!c.acme.enabled);
        assert_eq!(c.runtime.cgroup_manager, CgroupManager::Auto);
        assert_eq!(c.certs_dir(), Path::new("/var/lib/sotolito/certs"));
    }

    #[test]
    fn the_default_file_is_optional_even_when_named() {
        // Units and hooks pass `--config /etc/sotolito/sotolito.toml`; a
        // host without that file runs on defaults.
        let named = Overrides {
            config: Some(PathBuf::from(DEFAULT_CONFIG)),
            state_dir: Some(PathBuf::from("/srv/sotolito")),
        };
        let loaded = HostConfig::load(&named).expect("the default file is optional");
        assert_eq!(loaded.path, Path::new(DEFAULT_CONFIG));
        assert_eq!(loaded.config.paths.state_dir, Path::new("/srv/sotolito"));
        assert_eq!(
            loaded.state_dir_override.as_deref(),
            Some(Path::new("/srv/sotolito"))
        );
        let other = Overrides {
            config: Some(PathBuf::from("/nonexistent/sotolito.toml")),
            state_dir: None,
        };
        assert!(
            HostConfig::load(&other).is_err(),
            "any other named file must exist"
        );
    }

    #[test]
    fn values_are_read() {
        let c = parse(
            "[paths]\nstate_dir = \"/tmp/s\"\n[network]\nssh_ports = \"3000-3009\"\n[defaults]\nmemory = \"2G\"\n[runtime]\ncgroup_manager = \"cgroupfs\"\nconsole_log_max = \"256K\"\n[proxy]\nupstream_timeout = \"2s 500ms\"\n[acme]\nchallenge = \"tls-alpn-01\"\n",
        )
        .unwrap();
        assert_eq!(c.paths.state_dir, Path::new("/tmp/s"));
        assert_eq!(c.network.ssh_ports.len(), 10);
        assert_eq!(c.defaults.memory.bytes(), 2 << 30);
        assert_eq!(c.runtime.cgroup_manager, CgroupManager::Cgroupfs);
        assert_eq!(c.runtime.console_log_max.bytes(), 256 << 10);
        assert_eq!(
            HostConfig::default().runtime.console_log_max.bytes(),
            1 << 20
        );
        assert_eq!(c.proxy.upstream_timeout, Duration::from_millis(2500));
        assert_eq!(c.acme.challenge, AcmeChallenge::TlsAlpn01);
    }

    #[test]
    fn errors_name_key_file_and_line() {
        let cases: &[(&str, &str)] = &[
            (
                "[paths]\nstate_dir = \"/x\"\nstatedir = \"/y\"\n",
                "config /etc/sotolito/sotolito.toml line 3: paths.statedir: unknown key (valid keys: state_dir, run_dir, config_dir, systemd_dir)",
            ),
            (
                "\n[defaults]\ncpu_weight = \"lots\"\n",
                "config /etc/sotolito/sotolito.toml line 3: defaults.cpu_weight: invalid type: string \"lots\", expected u64",
            ),
            (
                "[defaults]\n\n\nmemory = \"12Q\"\n",
                "config /etc/sotolito/sotolito.toml line 4: defaults.memory: memory size \"12Q\" is not a size (write a number with K, M, G or T, e.g. 512M or 2G)",
            ),
            (
                "[network]\nsubnet = \"nonsense\"\n",
                "config /etc/sotolito/sotolito.toml line 2: network.subnet: invalid IP address syntax",
            ),
            (
                "[bogus]\n",
                "config /etc/sotolito/sotolito.toml line 1: bogus: unknown key (valid keys: paths, network, proxy, defaults, acme, runtime, cluster)",
            ),
            (
                "[runtime]\ncgroup_manager = \"sometimes\"\n",
                "config /etc/sotolito/sotolito.toml line 2: runtime.cgroup_manager: unknown variant `sometimes`, expected one of `auto`, `systemd`, `cgroupfs`",
            ),
            (
                "[runtime]\nconsole_log_max = \"1K\"\n",
                "config /etc/sotolito/sotolito.toml line 2: runtime.console_log_max: log size \"1K\" is out of range 65536-1125899906842624",
            ),
            (
                "[network\n",
                "config /etc/sotolito/sotolito.toml line 1: unclosed table, expected `]`",
            ),
            (
                "[network]\nsubnet = \"172.18.0.0/30\"\n",
                "config /etc/sotolito/sotolito.toml: network.subnet: 172.18.0.0/30 is too small for tenants (use /29 or larger)",
            ),
            (
                "[network]\negress_deny = [\"10.1.2.3/16\"]\n",
                "config /etc/sotolito/sotolito.toml: network.egress_deny: 10.1.2.3/16 has host bits set (did you mean 10.1.0.0/16?)",
            ),
            (
                "[network]\negress_allow = [\"172.16.0.0/12\"]\n",
                "config /etc/sotolito/sotolito.toml: network.egress_allow: 172.16.0.0/12 overlaps the tenant subnet 172.18.0.0/16 (tenants reach each other only through the proxy and the ssh ports)",
            ),
            (
                "[network]\negress_allow = [\"nonsense\"]\n",
                "config /etc/sotolito/sotolito.toml line 2: network.egress_allow[0]: invalid IP address syntax",
            ),
            (
                "[network]\nforward_policy = \"maybe\"\n",
                "config /etc/sotolito/sotolito.toml line 2: network.forward_policy: unknown variant `maybe`, expected `drop` or `accept`",
            ),
            (
                "[network]\ntenant_dns = [\"127.0.0.53\"]\n",
                "config /etc/sotolito/sotolito.toml: network.tenant_dns: 127.0.0.53 is not reachable from tenants (give a resolver's own address)",
            ),
            (
                "[defaults]\npids = 1\n",
                "config /etc/sotolito/sotolito.toml line 2: defaults.pids: pids limit \"1\" is out of range 16-4194304",
            ),
            (
                "[defaults]\nconnections = 3\n",
                "config /etc/sotolito/sotolito.toml: defaults.connections: connection cap \"3\" is out of range 16-4194304",
            ),
            (
                "[runtime]\nidmap_base = 1000\n",
                "config /etc/sotolito/sotolito.toml: runtime.idmap_base: 1000 overlaps the host's own ids 0-65535 (use 1000000 or another base of at least 65536)",
            ),
            (
                "[runtime]\nidmap_ranges = 100000\n",
                "config /etc/sotolito/sotolito.toml: runtime.idmap_ranges: 100000 ranges of 65536 from 1000000 do not fit in 1..2^32-1 host ids (use at least 1, and fewer)",
            ),
            (
                "[network]\nbridge = \"a-very-long-bridge-name\"\n",
                "config /etc/sotolito/sotolito.toml: network.bridge: \"a-very-long-bridge-name\" is not an interface name (1-15 letters, digits, '-' or '_')",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err(), *want, "{text}");
        }
    }
}
