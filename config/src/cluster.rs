//! The `[cluster]` table: a host that is one node of a fleet whose registry
//! lives in etcd. Without the table a host keeps its file registry.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names::NodeName;

/// What a fleet node's network needs to know of the fleet: the tenant
/// range of the whole fleet, this node's private address, and every other
/// node (routes to their tenant subnets; the firewall admits their
/// proxies and keeps tenants away from them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetNetwork {
    pub range: Ipv4Net,
    pub private_address: Ipv4Addr,
    pub peers: Vec<FleetPeer>,
}

/// Another node of the fleet, as routes and the firewall use it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetPeer {
    pub node: NodeName,
    pub private_address: Ipv4Addr,
    pub subnet: Ipv4Net,
}

impl FleetNetwork {
    /// What tenants may never reach: the fleet's range (other nodes'
    /// tenants) and the other nodes' private addresses, merged into
    /// disjoint networks.
    pub fn tenant_deny(&self) -> Vec<Ipv4Net> {
        let mut all = vec![self.range];
        all.extend(self.peers.iter().map(|p| Ipv4Net::from(p.private_address)));
        Ipv4Net::aggregate(&all)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The etcd members' client URLs; all `https://` (mutual TLS) or all
    /// `http://` (accepted with a warning: anyone on the network could
    /// rewrite the fleet's registry).
    pub etcd: Vec<EtcdEndpoint>,
    /// This host's name in the fleet.
    pub node: NodeName,
    /// Where the other nodes reach this one (routes to its tenants, the
    /// proxies' upstream connections).
    pub private_address: Ipv4Addr,
    /// Where clients reach this node's SSH DNAT ports.
    pub public_address: Ipv4Addr,
    #[serde(default)]
    pub etcd_ca: PathBuf,
    #[serde(default)]
    pub etcd_cert: PathBuf,
    #[serde(default)]
    pub etcd_key: PathBuf,
    /// The prefix length of each node's tenant subnet, carved out of
    /// `[network] subnet` (the fleet's range) when the node registers.
    #[serde(default = "default_node_prefix")]
    pub node_prefix: u8,
    /// A node whose lease is not renewed within this is shown down.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

fn default_node_prefix() -> u8 {
    24
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Cluster {
    /// True when the members are reached over TLS (client certificates).
    pub fn tls(&self) -> bool {
        self.etcd.first().is_some_and(|e| e.tls())
    }

    /// Checks what serde cannot: one scheme, certificates present for TLS,
    /// a node prefix that fits the fleet's range. Returns the key and the
    /// message of the first problem.
    pub(crate) fn check(&self, range: Ipv4Net) -> Result<(), (&'static str, String)> {
        let Some(first) = self.etcd.first() else {
            return Err((
                "cluster.etcd",
                "is empty (list the etcd members' client URLs, e.g. [\"https://10.0.0.1:2379\"])"
                    .into(),
            ));
        };
        if let Some(other) = self.etcd.iter().find(|e| e.tls() != first.tls()) {
            return Err((
                "cluster.etcd",
                format!(
                    "{first} and {other} mix http:// and https:// (use https:// for every member)"
                ),
            ));
        }
        if self.tls() {
            for (key, path) in [
                ("cluster.etcd_ca", &self.etcd_ca),
                ("cluster.etcd_cert", &self.etcd_cert),
                ("cluster.etcd_key", &self.etcd_key),
            ] {
                if path.as_os_str().is_empty() {
                    return Err((
                        key,
                        "is required with https:// members (see docs/fleet.md for making the certificates)".into(),
                    ));
                }
                if !path.is_file() {
                    return Err((
                        key,
                        format!("{} does not exist or is not a file", path.display()),
                    ));
                }
            }
        } else {
            tracing::warn!(
                endpoints = %self.etcd.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                "cluster.etcd uses http://: the fleet's registry travels unencrypted and unauthenticated (use https:// with client certificates)"
            );
        }
        for (key, ip) in [
            ("cluster.private_address", self.private_address),
            ("cluster.public_address", self.public_address),
        ] {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err((key, format!("{ip} is not a host's address")));
            }
        }
        if self.node_prefix < range.prefix_len() || self.node_prefix > 29 {
            return Err((
                "cluster.node_prefix",
                format!(
                    "/{} does not fit the fleet's range {range} (use {}-29)",
                    self.node_prefix,
                    range.prefix_len()
                ),
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(600) {
            return Err((
                "cluster.lease_ttl",
                format!(
                    "{} is out of range 2s-10m",
                    humantime::format_duration(self.lease_ttl)
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn paths_mut(&mut self) -> [&mut PathBuf; 3] {
        [&mut self.etcd_ca, &mut self.etcd_cert, &mut self.etcd_key]
    }
}

/// One etcd member's client URL: `https://HOST:PORT` or `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EtcdEndpoint {
    url: String,
    tls: bool,
}

impl EtcdEndpoint {
    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl FromStr for EtcdEndpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "etcd endpoint {s:?} is not an http:// or https:// URL (write https://10.0.0.1:2379)"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let bad = |what: &str| {
            format!(
                "etcd endpoint {s:?} {what} (write {}://HOST:2379)",
                if tls { "https" } else { "http" }
            )
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(bad("has no port"));
        };
        if host.is_empty() || host.contains('/') || host.contains('@') || rest.contains('/') {
            return Err(bad("is not HOST:PORT"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad("has no valid port")),
        }
        Ok(EtcdEndpoint {
            url: s.strip_suffix('/').unwrap_or(s).to_owned(),
            tls,
        })
    }
}

impl TryFrom<String> for EtcdEndpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<EtcdEndpoint> for String {
    fn from(e: EtcdEndpoint) -> String {
        e.url
    }
}

impl fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use crate::HostConfig;
    use std::path::Path;

    fn parse(text: &str) -> Result<HostConfig, String> {
        HostConfig::parse(text, Path::new("/etc/sotolito/sotolito.toml")).map_err(|e| e.to_string())
    }

    fn table(etcd: &str, certs: &Path) -> String {
        format!(
            "[cluster]\netcd = [{etcd}]\nnode = \"node1\"\nprivate_address = \"10.0.0.1\"\npublic_address = \"203.0.113.10\"\netcd_ca = \"{0}/ca.pem\"\netcd_cert = \"{0}/client.pem\"\netcd_key = \"{0}/client-key.pem\"\n",
            certs.display()
        )
    }

    #[test]
    fn the_table_is_read() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "client.pem", "client-key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        assert!(parse("").unwrap().cluster.is_none());
        let c = parse(&table(
            "\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379/\"",
            dir.path(),
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.node.as_str(), "node1");
        assert!(c.tls());
        assert_eq!(c.etcd[1].as_str(), "https://10.0.0.2:2379");
        assert_eq!(c.node_prefix, 24);
        assert_eq!(c.lease_ttl.as_secs(), 10);
        assert_eq!(c.public_address.to_string(), "203.0.113.10");
        // http:// needs no certificates (and only warns).
        let c = parse(&table(
            "\"http://10.0.0.1:2379\"",
            Path::new("/nonexistent"),
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert!(!c.tls());
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let d = dir.path();
        let cases: Vec<(String, String)> = vec![
            (
                table("\"10.0.0.1:2379\"", d),
                "config /etc/sotolito/sotolito.toml line 2: cluster.etcd[0]: etcd endpoint \"10.0.0.1:2379\" is not an http:// or https:// URL (write https://10.0.0.1:2379)".into(),
            ),
            (
                table("\"https://10.0.0.1\"", d),
                "config /etc/sotolito/sotolito.toml line 2: cluster.etcd[0]: etcd endpoint \"https://10.0.0.1\" has no port (write https://HOST:2379)".into(),
            ),
            (
                table("", d),
                "config /etc/sotolito/sotolito.toml: cluster.etcd: is empty (list the etcd members' client URLs, e.g. [\"https://10.0.0.1:2379\"])".into(),
            ),
            (
                table("\"https://10.0.0.1:2379\", \"http://10.0.0.2:2379\"", d),
                "config /etc/sotolito/sotolito.toml: cluster.etcd: https://10.0.0.1:2379 and http://10.0.0.2:2379 mix http:// and https:// (use https:// for every member)".into(),
            ),
            (
                table("\"https://10.0.0.1:2379\"", d),
                format!("config /etc/sotolito/sotolito.toml: cluster.etcd_cert: {}/client.pem does not exist or is not a file", d.display()),
            ),
            (
                table("\"https://10.0.0.1:2379\"", d).replace("node = \"node1\"", "node = \"Node_1\""),
                "config /etc/sotolito/sotolito.toml line 3: cluster.node: node name \"Node_1\" has uppercase letters (use lowercase)".into(),
            ),
            (
                table("\"http://10.0.0.1:2379\"", d) + "node_prefix = 12\n",
                "config /etc/sotolito/sotolito.toml: cluster.node_prefix: /12 does not fit the fleet's range 172.18.0.0/16 (use 16-29)".into(),
            ),
            (
                table("\"http://10.0.0.1:2379\"", d).replace("203.0.113.10", "0.0.0.0"),
                "config /etc/sotolito/sotolito.toml: cluster.public_address: 0.0.0.0 is not a host's address".into(),
            ),
            (
                "[cluster]\netcd = [\"http://10.0.0.1:2379\"]\n".into(),
                "config /etc/sotolito/sotolito.toml line 1: cluster: missing field `node`".into(),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(&text).unwrap_err(), want, "{text}");
        }
    }
}
