//! The key layout in etcd: everything under `/sotolito/v1/`, so a later
//! format can live beside this one during an upgrade.
//!
//! ```text
//! /sotolito/v1/tenants/NAME            {"node": ..., "tenant": {...}}  (JSON)
//! /sotolito/v1/claims/ip/ADDR          NAME   (one key per claimed thing;
//! /sotolito/v1/claims/ssh_port/PORT    NAME    the value is the owner)
//! /sotolito/v1/claims/host/HOST        NAME
//! /sotolito/v1/claims/idrange/FIRST    NAME   (an isolated id range)
//! /sotolito/v1/nodes/NODE              {"name", "private_address", ...} (JSON)
//! /sotolito/v1/subnets/NET/PREFIX      NODE   (a node's tenant subnet)
//! /sotolito/v1/alive/NODE              ADDR   (under the node's lease)
//! /sotolito/v1/generation              ""     (rewritten with every tenant change)
//! /sotolito/v1/acme/account            {"directory", "credentials"} (JSON)
//! /sotolito/v1/acme/certs/HOST         {"directory", "serial", "issued",
//!                                       "chain_pem", "key_pem"} (JSON)
//! /sotolito/v1/acme/challenges/TOKEN   KEY_AUTHORIZATION (under the
//!                                       orderer's lock lease)
//! /sotolito/v1/acme/locks/HOST/LEASE   (etcd's lock API: one orderer a host)
//! /sotolito/v1/acme/attempts/HOST      {"failures", "last_error", "last_attempt",
//!                                       "next_attempt"} (the last failed order)
//! ```
//!
//! The certificate records hold private keys: every fleet client can read
//! them (see "Fleet (etcd store)" in docs/architecture.md).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sotolito_config::{HostName, NodeName, SshPort, TenantName};

pub const ROOT: &str = "/sotolito/v1/";
pub const TENANTS: &str = "/sotolito/v1/tenants/";
pub const NODES: &str = "/sotolito/v1/nodes/";
pub const SUBNETS: &str = "/sotolito/v1/subnets/";
pub const ALIVE: &str = "/sotolito/v1/alive/";
/// Rewritten by every tenant write and removal: its `mod_revision` is a
/// number that changes whenever a tenant record does.
pub const GENERATION: &str = "/sotolito/v1/generation";
/// Everything ACME shares between nodes; one watch on this prefix follows
/// certificates and challenges.
pub const ACME: &str = "/sotolito/v1/acme/";
pub const ACME_ACCOUNT: &str = "/sotolito/v1/acme/account";
pub const ACME_CERTS: &str = "/sotolito/v1/acme/certs/";
pub const ACME_CHALLENGES: &str = "/sotolito/v1/acme/challenges/";
pub const ACME_LOCKS: &str = "/sotolito/v1/acme/locks/";
pub const ACME_ATTEMPTS: &str = "/sotolito/v1/acme/attempts/";

pub fn tenant(name: &TenantName) -> String {
    format!("{TENANTS}{name}")
}

pub fn ip_claim(ip: Ipv4Addr) -> String {
    format!("{ROOT}claims/ip/{ip}")
}

pub fn ssh_port_claim(port: SshPort) -> String {
    format!("{ROOT}claims/ssh_port/{}", port.get())
}

pub fn host_claim(host: &HostName) -> String {
    format!("{ROOT}claims/host/{host}")
}

pub fn idrange_claim(first_host_id: u32) -> String {
    format!("{ROOT}claims/idrange/{first_host_id}")
}

pub fn node(name: &NodeName) -> String {
    format!("{NODES}{name}")
}

pub fn subnet(net: Ipv4Net) -> String {
    format!("{SUBNETS}{net}")
}

pub fn alive(name: &NodeName) -> String {
    format!("{ALIVE}{name}")
}

/// A host's certificate (`*.domain` as written: `*` is a valid key byte).
pub fn acme_cert(host: &str) -> String {
    format!("{ACME_CERTS}{host}")
}

pub fn acme_challenge(token: &str) -> String {
    format!("{ACME_CHALLENGES}{token}")
}

/// The lock that one node holds while it orders `host`.
pub fn acme_lock(host: &str) -> String {
    format!("{ACME_LOCKS}{host}")
}

/// The fleet's last failed order for `host`, so that every node backs off.
pub fn acme_attempt(host: &str) -> String {
    format!("{ACME_ATTEMPTS}{host}")
}

/// The name at the end of a key under `prefix`.
pub fn name_in<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix(prefix).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let t = TenantName::new("acme").unwrap();
        assert_eq!(tenant(&t), "/sotolito/v1/tenants/acme");
        assert_eq!(
            ip_claim(Ipv4Addr::new(172, 18, 1, 2)),
            "/sotolito/v1/claims/ip/172.18.1.2"
        );
        assert_eq!(
            ssh_port_claim(SshPort::new(2201).unwrap()),
            "/sotolito/v1/claims/ssh_port/2201"
        );
        assert_eq!(
            host_claim(&HostName::new("Acme.Example.com.").unwrap()),
            "/sotolito/v1/claims/host/acme.example.com"
        );
        assert_eq!(
            subnet("172.18.3.0/24".parse().unwrap()),
            "/sotolito/v1/subnets/172.18.3.0/24"
        );
        let n = NodeName::new("node1").unwrap();
        assert_eq!(node(&n), "/sotolito/v1/nodes/node1");
        assert_eq!(alive(&n), "/sotolito/v1/alive/node1");
        assert_eq!(name_in(TENANTS, "/sotolito/v1/tenants/acme"), Some("acme"));
        assert_eq!(name_in(TENANTS, "/sotolito/v1/tenants/"), None);
        assert_eq!(acme_cert("shop.io"), "/sotolito/v1/acme/certs/shop.io");
        assert_eq!(
            acme_challenge("tok-1"),
            "/sotolito/v1/acme/challenges/tok-1"
        );
        assert_eq!(acme_lock("shop.io"), "/sotolito/v1/acme/locks/shop.io");
        assert!(acme_cert("x").starts_with(ACME) && acme_lock("x").starts_with(ACME));
    }
}
