//! The nftables plan: our two tables rendered as `nft -f` text. Pure; the
//! only place that knows the rules (nft 1.0.6 syntax, see FACTS.md).
//!
//! - `inet sotolito`: the SSH DNAT map, masquerade (egress and hairpin),
//!   forward isolation between tenants, and what tenants may reach on the
//!   host itself (input).
//! - `bridge sotolito`: layer-2 anti-spoofing, a tenant port may only send
//!   IPv4 and ARP from its own MAC and address (a set of
//!   `ifname . ether_addr . ipv4_addr`).
//!
//! Both are replaced as a whole by one transaction ([`render_ruleset`]) and
//! edited by element on provision/deprovision ([`render_add_forward`]).

use std::fmt::Write as _;

use sotolito_config::{HostConfig, Tenant};

use crate::link::{container_mac, host_veth_name, VETH_PREFIX};

/// The name of both tables (families `inet` and `bridge`).
pub const TABLE: &str = "sotolito";
/// The DNAT map: public port -> tenant address . port.
pub const MAP_SSH: &str = "ssh_ports";
/// Anti-spoofing set: host veth . the only source address allowed on it.
pub const SET_ADDRS: &str = "tenant_addrs";
/// The port sshd listens on inside a tenant.
pub const TENANT_SSH_PORT: u16 = 22;

/// The whole ruleset for `nft -f`: deletes and recreates only our tables,
/// in one transaction, so applying it twice gives the same result and the
/// rest of the host's ruleset is never touched.
pub fn render_ruleset(config: &HostConfig, tenants: &[Tenant]) -> String {
    let net = &config.network;
    let br = &net.bridge;
    let subnet = net.subnet;
    let mut s = String::with_capacity(1024 + tenants.len() * 64);
    // `table X {}` first makes `delete table X` valid on a host that has
    // none yet: the idiom for an atomic replace before nft's `destroy`.
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table bridge {TABLE} {{}}");
    let _ = writeln!(s, "delete table bridge {TABLE}");

    let mut forwards: Vec<&Tenant> = tenants.iter().collect();
    forwards.sort_by_key(|t| t.ssh_port.get());
    let _ = writeln!(s, "table inet {TABLE} {{");
    let _ = writeln!(s, "\tmap {MAP_SSH} {{");
    let _ = writeln!(s, "\t\ttype inet_service : ipv4_addr . inet_service");
    if !forwards.is_empty() {
        let elems: Vec<String> = forwards.iter().map(|t| map_element(t)).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(s, "\t}}");

    let dnat = format!("fib daddr type local dnat ip to tcp dport map @{MAP_SSH}");
    chain(
        &mut s,
        "prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
        std::slice::from_ref(&dnat),
    );
    // The DNAT for connections the host itself opens to its own address;
    // `dstnat` is refused as a priority name in output (FACTS.md).
    chain(
        &mut s,
        "output",
        "type nat hook output priority -100; policy accept;",
        &[dnat],
    );
    let egress = if net.public_interface.is_empty() {
        format!("oifname != \"{br}\"")
    } else {
        format!("oifname \"{}\"", net.public_interface)
    };
    chain(
        &mut s,
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
        &[
            // Hairpin: tenant B -> host:portA -> tenant A. Without this the
            // reply goes straight from A to B and B drops it (FACTS.md).
            format!("ip saddr {subnet} ip daddr {subnet} ct status dnat masquerade"),
            format!("ip saddr {subnet} {egress} masquerade"),
        ],
    );
    chain(
        &mut s,
        "forward",
        "type filter hook forward priority filter; policy accept;",
        &[
            format!("oifname \"{br}\" ct state established,related accept"),
            format!("oifname \"{br}\" ct status dnat accept"),
            // Tenant to tenant routed through the host, and anything not
            // DNAT'd from outside: never.
            format!("oifname \"{br}\" drop"),
        ],
    );
    chain(
        &mut s,
        "input",
        "type filter hook input priority filter; policy accept;",
        &[
            format!("iifname != \"{br}\" accept"),
            "ct state established,related accept".to_owned(),
            format!("tcp dport {} accept", proxy_ports(config)),
            // Not the host's sshd, not the proxy's admin port, nothing else.
            "drop".to_owned(),
        ],
    );
    let _ = writeln!(s, "}}");

    let mut ports: Vec<(String, &Tenant)> = tenants
        .iter()
        .map(|t| (host_veth_name(&t.name), t))
        .collect();
    ports.sort_by(|a, b| a.0.cmp(&b.0));
    let _ = writeln!(s, "table bridge {TABLE} {{");
    let _ = writeln!(s, "\tset {SET_ADDRS} {{");
    let _ = writeln!(s, "\t\ttype ifname . ether_addr . ipv4_addr");
    if !ports.is_empty() {
        let elems: Vec<String> = ports.iter().map(|(_, t)| set_element(t)).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    // Frames from tenant ports only: `meta ibrname` is not supported by
    // this kernel, so tenant ports are known by their name prefix. A port
    // may send IPv4 and ARP from its own MAC and address, nothing else: a
    // foreign source MAC would also teach the bridge to send a neighbour's
    // frames to this port (tenants have CAP_NET_RAW). This hook runs before
    // the bridge learns. No IPv6: tenants get none.
    chain(
        &mut s,
        "prerouting",
        "type filter hook prerouting priority -300; policy accept;",
        &[
            format!("iifname != \"{VETH_PREFIX}*\" accept"),
            format!("ether type ip iifname . ether saddr . ip saddr @{SET_ADDRS} accept"),
            format!("ether type arp iifname . ether saddr . arp saddr ip @{SET_ADDRS} accept"),
            "drop".to_owned(),
        ],
    );
    let _ = writeln!(s, "}}");
    s
}

/// Adds one tenant's forward and anti-spoofing element. Idempotent when the
/// same element exists; fails with "File exists" when the port maps to
/// another address (the caller then replaces it, see `nft::add_forward`).
pub fn render_add_forward(config: &HostConfig, tenant: &Tenant) -> String {
    let _ = config;
    format!(
        "add element inet {TABLE} {MAP_SSH} {{ {} }}\nadd element bridge {TABLE} {SET_ADDRS} {{ {} }}\n",
        map_element(tenant),
        set_element(tenant),
    )
}

/// Replaces the map element of the tenant's port whatever it maps to now.
pub fn render_replace_forward(config: &HostConfig, tenant: &Tenant) -> String {
    let _ = config;
    format!(
        "delete element inet {TABLE} {MAP_SSH} {{ {} }}\nadd element inet {TABLE} {MAP_SSH} {{ {} }}\nadd element bridge {TABLE} {SET_ADDRS} {{ {} }}\n",
        tenant.ssh_port,
        map_element(tenant),
        set_element(tenant),
    )
}

/// Removes one tenant's elements; adding them first makes the delete valid
/// when they are already gone (nft 1.0.6 has no `destroy`).
pub fn render_remove_forward(config: &HostConfig, tenant: &Tenant) -> String {
    let _ = config;
    let m = map_element(tenant);
    let e = set_element(tenant);
    format!(
        "add element inet {TABLE} {MAP_SSH} {{ {m} }}\ndelete element inet {TABLE} {MAP_SSH} {{ {m} }}\nadd element bridge {TABLE} {SET_ADDRS} {{ {e} }}\ndelete element bridge {TABLE} {SET_ADDRS} {{ {e} }}\n",
    )
}

/// Removes only the tenant's anti-spoofing element (its bridge port).
pub fn render_remove_port(config: &HostConfig, tenant: &Tenant) -> String {
    let _ = config;
    let e = set_element(tenant);
    format!(
        "add element bridge {TABLE} {SET_ADDRS} {{ {e} }}\ndelete element bridge {TABLE} {SET_ADDRS} {{ {e} }}\n"
    )
}

fn map_element(t: &Tenant) -> String {
    format!("{} : {} . {TENANT_SSH_PORT}", t.ssh_port, t.ip)
}

fn set_element(t: &Tenant) -> String {
    let mac: Vec<String> = container_mac(t.ip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "\"{}\" . {} . {}",
        host_veth_name(&t.name),
        mac.join(":"),
        t.ip
    )
}

fn proxy_ports(config: &HostConfig) -> String {
    let mut ports = vec![config.proxy.http.port(), config.proxy.https.port()];
    ports.sort_unstable();
    ports.dedup();
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

fn chain(s: &mut String, name: &str, head: &str, rules: &[String]) {
    let _ = writeln!(s, "\tchain {name} {{");
    let _ = writeln!(s, "\t\t{head}");
    for r in rules {
        let _ = writeln!(s, "\t\t{r}");
    }
    let _ = writeln!(s, "\t}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{config, tenant};

    const GOLDEN: &str = include_str!("../tests/data/ruleset.nft");

    #[test]
    fn golden() {
        let ts = vec![
            tenant("beta", [172, 18, 0, 3], 2202),
            tenant("acme", [172, 18, 0, 2], 2201),
            tenant("a-rather-long-tenant-name-here", [172, 18, 0, 4], 2203),
        ];
        let got = render_ruleset(&config(), &ts);
        if std::env::var_os("SOTOLITO_BLESS").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ruleset.nft"),
                &got,
            )
            .unwrap();
        }
        assert_eq!(got, GOLDEN, "rerun with SOTOLITO_BLESS=1 to accept");
    }

    #[test]
    fn no_tenants_has_no_elements_lines() {
        let got = render_ruleset(&config(), &[]);
        assert!(!got.contains("elements"), "{got}");
        assert!(got.contains("map ssh_ports"));
    }

    #[test]
    fn public_interface_and_proxy_ports() {
        let mut c = config();
        c.network.public_interface = "eth9".into();
        c.proxy.http = "0.0.0.0:8080".parse().unwrap();
        c.proxy.https = "0.0.0.0:8443".parse().unwrap();
        let got = render_ruleset(&c, &[]);
        assert!(got.contains("ip saddr 172.18.0.0/16 oifname \"eth9\" masquerade"));
        assert!(got.contains("tcp dport { 8080, 8443 } accept"));
        assert!(!got.contains("9180"), "admin port never opened: {got}");
    }

    #[test]
    fn element_scripts() {
        let c = config();
        let t = tenant("acme", [172, 18, 0, 2], 2201);
        assert_eq!(
            render_add_forward(&c, &t),
            "add element inet sotolito ssh_ports { 2201 : 172.18.0.2 . 22 }\n\
             add element bridge sotolito tenant_addrs { \"sv-acme\" . 02:73:ac:12:00:02 . 172.18.0.2 }\n"
        );
        assert!(render_remove_forward(&c, &t)
            .contains("delete element inet sotolito ssh_ports { 2201 : 172.18.0.2 . 22 }"));
        assert!(render_replace_forward(&c, &t)
            .starts_with("delete element inet sotolito ssh_ports { 2201 }\n"));
    }

    #[test]
    fn ten_thousand_tenants_render_every_element_once() {
        let ts: Vec<_> = (0..10_000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0xac12_0002 + i);
                tenant(&format!("t{i}"), ip.octets(), 20000 + u64::from(i))
            })
            .collect();
        let got = render_ruleset(&config(), &ts);
        assert_eq!(got.matches(" . 22").count(), 10_000);
        assert_eq!(got.matches("\"sv-t").count(), 10_000);
    }
}
