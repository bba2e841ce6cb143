//! The tenant record: what `registry/tenants/NAME.toml` holds.

use std::net::Ipv4Addr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::idmap::Idmap;
use crate::names::{
    CpuWeight, HostName, HttpPort, ImageName, MemorySize, Pids, SshPort, SwapLimit, TenantName,
};
use crate::quota::DiskQuota;

/// The record format this vpsctl writes; records of a newer format are
/// refused rather than half-understood.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub version: u32,
    pub name: TenantName,
    pub image: ImageName,
    pub ip: Ipv4Addr,
    pub ssh_port: SshPort,
    #[serde(default)]
    pub http_port: HttpPort,
    #[serde(default)]
    pub hosts: Vec<HostName>,
    /// OpenSSH public key lines, installed once into root's authorized_keys.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(with = "rfc3339")]
    pub created: SystemTime,
    pub desired: Desired,
    /// Hosts for which no ACME certificate is ever requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acme_opt_out: Vec<HostName>,
    pub limits: Limits,
    /// `provision --nesting`: the tenant may create namespaces (for Docker
    /// or Podman inside it). Absent means false, so older records load and
    /// a record without nesting reads the same to an older vpsctl.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nesting: bool,
    /// Writable storage (overlay upper layer plus data dirs). A record
    /// written before quotas existed has none: its data is a plain
    /// directory, so it reads as `unlimited`.
    #[serde(default = "unquoted")]
    pub disk: DiskQuota,
    /// The host ids its ids map to. None: a record written before tenants
    /// ran in a user namespace (its files are owned by host root); such a
    /// tenant is refused by start until `vpsctl remap` converts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idmap: Option<Idmap>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn unquoted() -> DiskQuota {
    DiskQuota::Unlimited
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: MemorySize,
    pub cpu_weight: CpuWeight,
    pub pids: Pids,
    /// Concurrent connections the tenant may open; none: the host's
    /// `defaults.connections` (records written before the cap existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// Swap beyond `memory`; none: the host's `[defaults] swap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapLimit>,
}

impl Limits {
    /// The swap this tenant gets, given the host's default.
    pub fn swap_or(&self, default: SwapLimit) -> SwapLimit {
        self.swap.unwrap_or(default)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }
}

impl Tenant {
    /// A record as a plain `provision` makes it: HTTP on port 80, no host
    /// names, keys or ACME opt-outs, meant to run, created now; no id map
    /// yet (provision sets it from the config's [`crate::IdmapPool`]).
    pub fn new(
        name: TenantName,
        image: ImageName,
        ip: Ipv4Addr,
        ssh_port: SshPort,
        limits: Limits,
    ) -> Tenant {
        Tenant {
            version: FORMAT_VERSION,
            name,
            image,
            ip,
            ssh_port,
            http_port: HttpPort::DEFAULT,
            hosts: Vec::new(),
            ssh_keys: Vec::new(),
            created: SystemTime::now(),
            desired: Desired::Running,
            acme_opt_out: Vec::new(),
            limits,
            nesting: false,
            disk: DiskQuota::default(),
            idmap: None,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a tenant record always serializes")
    }

    pub fn from_toml(text: &str) -> Result<Tenant, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| e.message().to_owned())?;
        let t: Tenant = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner().message())
        })?;
        if t.version > FORMAT_VERSION {
            return Err(format!(
                "format version {} is newer than this vpsctl understands ({FORMAT_VERSION}); upgrade vpsctl",
                t.version
            ));
        }
        Ok(t)
    }

    /// The settings an operator chose, without bookkeeping (created time,
    /// desired state): two provisions are "the same" when these agree.
    pub fn differences(&self, other: &Tenant) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{what} {a} -> {b}"));
            }
        };
        cmp("image", self.image.to_string(), other.image.to_string());
        cmp("ip", self.ip.to_string(), other.ip.to_string());
        cmp(
            "ssh port",
            self.ssh_port.to_string(),
            other.ssh_port.to_string(),
        );
        cmp(
            "http port",
            self.http_port.to_string(),
            other.http_port.to_string(),
        );
        let hosts = |t: &Tenant| {
            let mut h: Vec<_> = t.hosts.iter().map(|h| h.to_string()).collect();
            h.sort();
            h.join(",")
        };
        cmp("hosts", hosts(self), hosts(other));
        let opt_out = |t: &Tenant| {
            let mut h: Vec<_> = t.acme_opt_out.iter().map(|h| h.to_string()).collect();
            h.sort();
            h.join(",")
        };
        cmp("no-acme hosts", opt_out(self), opt_out(other));
        let keys = |t: &Tenant| {
            let mut k = t.ssh_keys.clone();
            k.sort();
            format!("{} key(s) {:x}", k.len(), fingerprint(&k.join("\n")))
        };
        cmp("ssh keys", keys(self), keys(other));
        cmp(
            "memory",
            self.limits.memory.to_string(),
            other.limits.memory.to_string(),
        );
        cmp(
            "cpu weight",
            self.limits.cpu_weight.to_string(),
            other.limits.cpu_weight.to_string(),
        );
        cmp(
            "pids",
            self.limits.pids.to_string(),
            other.limits.pids.to_string(),
        );
        let conns = |t: &Tenant| {
            t.limits
                .connections
                .map_or_else(|| "default".to_owned(), |n| n.to_string())
        };
        cmp("connections", conns(self), conns(other));
        cmp(
            "nesting",
            self.nesting.to_string(),
            other.nesting.to_string(),
        );
        cmp("disk", self.disk.to_string(), other.disk.to_string());
        let swap = |t: &Tenant| {
            t.limits
                .swap
                .map_or("default".to_owned(), |s| s.to_string())
        };
        cmp("swap", swap(self), swap(other));
        // The range itself is bookkeeping; whether it is the tenant's own
        // is a choice.
        let isolated = |t: &Tenant| t.idmap.is_some_and(|m| m.isolated).to_string();
        cmp("isolated idmap", isolated(self), isolated(other));
        d
    }
}

/// FNV-1a: a short stable tag to tell key sets apart in messages.
fn fingerprint(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(name: &str, ip: [u8; 4], port: u64, hosts: &[&str]) -> Tenant {
        Tenant {
            hosts: hosts.iter().map(|h| HostName::new(h).unwrap()).collect(),
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey test@example".into()],
            // Whole seconds, as the record keeps them.
            created: humantime::parse_rfc3339("2026-11-28T10:00:00Z").unwrap(),
            ..Tenant::new(
                TenantName::new(name).unwrap(),
                ImageName::new("debian").unwrap(),
                Ipv4Addr::from(ip),
                SshPort::new(port).unwrap(),
                crate::host::Defaults::default().limits(),
            )
        }
    }

    #[test]
    fn round_trip() {
        let t = sample(
            "acme",
            [172, 18, 0, 2],
            2201,
            &["acme.example.com", "*.acme.example.com"],
        );
        let text = t.to_toml();
        assert!(
            text.contains("created = \"2026-11-28T10:00:00Z\""),
            "{text}"
        );
        assert!(text.contains("ssh_port = 2201"), "{text}");
        assert_eq!(Tenant::from_toml(&text).unwrap(), t);
        // A record written before swap existed follows the host default.
        assert!(!text.contains("swap"), "{text}");
        let mut own = t.clone();
        own.limits.swap = Some(SwapLimit::new("256M").unwrap());
        let text = own.to_toml();
        assert!(text.contains("swap = \"256M\""), "{text}");
        assert_eq!(Tenant::from_toml(&text).unwrap(), own);
    }

    #[test]
    fn connection_cap_is_optional_in_the_record() {
        let mut t = sample("acme", [172, 18, 0, 2], 2201, &[]);
        // Records from before the cap: no key, the host default applies.
        assert!(!t.to_toml().contains("connections"), "{}", t.to_toml());
        assert_eq!(
            Tenant::from_toml(&t.to_toml()).unwrap().limits.connections,
            None
        );
        t.limits.connections = Some(64);
        assert!(t.to_toml().contains("connections = 64"));
        assert_eq!(Tenant::from_toml(&t.to_toml()).unwrap(), t);
        let d = sample("acme", [172, 18, 0, 2], 2201, &[]).differences(&t);
        assert_eq!(d, vec!["connections default -> 64"]);
    }

    #[test]
    fn records_from_before_quotas_are_unlimited() {
        let t = sample("acme", [172, 18, 0, 2], 2201, &[]);
        assert_eq!(t.disk, DiskQuota::Limit(10 << 30));
        let text = t.to_toml();
        assert!(text.contains("disk = \"10G\""), "{text}");
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("disk ="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Tenant::from_toml(&old).unwrap().disk, DiskQuota::Unlimited);
    }

    #[test]
    fn idmap_round_trips_and_old_records_load_without_one() {
        let old = sample("acme", [172, 18, 0, 2], 2201, &[]);
        let text = old.to_toml();
        assert!(!text.contains("idmap"), "{text}");
        assert_eq!(Tenant::from_toml(&text).unwrap().idmap, None);
        let mut t = old.clone();
        t.idmap = Some(crate::Idmap {
            host_id: 1_065_536,
            size: 65536,
            isolated: true,
        });
        let text = t.to_toml();
        assert!(text.contains("host_id = 1065536"), "{text}");
        assert_eq!(Tenant::from_toml(&text).unwrap(), t);
        assert_eq!(old.differences(&t), vec!["isolated idmap false -> true"]);
    }

    #[test]
    fn bad_records_say_where() {
        let t = sample("acme", [172, 18, 0, 2], 2201, &[]);
        let text = t.to_toml().replace("ssh_port = 2201", "ssh_port = 0");
        assert_eq!(
            Tenant::from_toml(&text).unwrap_err(),
            "ssh_port: ssh port \"0\" is out of range 1-65535"
        );
        let text = t.to_toml().replace("http_port = 80", "http_port = 0");
        assert_eq!(
            Tenant::from_toml(&text).unwrap_err(),
            "http_port: http port \"0\" is out of range 1-65535"
        );
        let text = t.to_toml().replace("pids = 4096", "pids = 15");
        assert_eq!(
            Tenant::from_toml(&text).unwrap_err(),
            "limits.pids: pids limit \"15\" is out of range 16-4194304"
        );
        // A record without http_port (written before it was recorded)
        // serves on 80.
        let old = t.to_toml().replace("http_port = 80\n", "");
        assert_eq!(Tenant::from_toml(&old).unwrap().http_port.get(), 80);
        let newer = t.to_toml().replace("version = 1", "version = 9");
        assert!(Tenant::from_toml(&newer)
            .unwrap_err()
            .contains("upgrade vpsctl"));
    }

    #[test]
    fn differences_ignore_bookkeeping() {
        let a = sample("acme", [172, 18, 0, 2], 2201, &["a.example", "b.example"]);
        let mut b = a.clone();
        b.desired = Desired::Stopped;
        b.created = SystemTime::now();
        b.hosts.reverse();
        assert!(a.differences(&b).is_empty());
        b.ssh_port = SshPort::new(2202).unwrap();
        b.limits.memory = MemorySize::new("1G").unwrap();
        assert_eq!(
            a.differences(&b),
            vec!["ssh port 2201 -> 2202", "memory 512M -> 1G"]
        );
        let mut c = a.clone();
        c.nesting = true;
        assert_eq!(a.differences(&c), vec!["nesting false -> true"]);
    }

    #[test]
    fn nesting_is_off_unless_recorded() {
        let t = sample("acme", [172, 18, 0, 2], 2201, &[]);
        let text = t.to_toml();
        // A record without the field (as written before it existed) loads
        // with nesting off, and an off record does not mention it.
        assert!(!text.contains("nesting"), "{text}");
        assert!(!Tenant::from_toml(&text).unwrap().nesting);
        let nested = Tenant {
            nesting: true,
            ..t.clone()
        };
        let text = nested.to_toml();
        assert!(text.contains("nesting = true"), "{text}");
        assert!(Tenant::from_toml(&text).unwrap().nesting);
    }
}
