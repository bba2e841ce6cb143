//! The nftables plan: our two tables rendered as `nft -f` text. Pure; the
//! only place that knows the rules (nft 1.0.6 syntax: docs/facts.md "nftables").
//!
//! - `inet sotolito`: the SSH DNAT map, masquerade (egress and hairpin),
//!   the per-tenant connection caps (`ct count`), the forward policy (what
//!   tenants may reach beyond the host, and only DNAT towards them) and
//!   what tenants may reach on the host itself (input).
//! - `bridge sotolito`: layer-2 anti-spoofing, a tenant port may only send
//!   IPv4 and ARP from its own MAC and address (a set of
//!   `ifname . ether_addr . ipv4_addr`).
//!
//! Both are replaced as a whole by one transaction ([`render_ruleset`]) and
//! edited by element on provision/deprovision ([`render_add_forward`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use sotolito_config::{HostConfig, Tenant};

use crate::link::{container_mac, host_veth_name, VETH_PREFIX};

/// The name of both tables (families `inet` and `bridge`).
pub const TABLE: &str = "sotolito";
/// The DNAT map: public port -> tenant address . port.
pub const MAP_SSH: &str = "ssh_ports";
/// Anti-spoofing set: host veth . the only source address allowed on it.
pub const SET_ADDRS: &str = "tenant_addrs";
/// Tenant address -> `jump cap_N`, the chain that enforces its cap N.
pub const MAP_CAPS: &str = "conn_caps";
/// Networks tenants may not reach (built-in list plus network.egress_deny).
pub const SET_DENY: &str = "egress_deny";
/// Exceptions to [`SET_DENY`] (network.egress_allow).
pub const SET_ALLOW: &str = "egress_allow";
/// The resolvers tenants may reach on port 53 (network.tenant_dns).
pub const SET_DNS: &str = "tenant_dns";
/// On a fleet node: the other nodes' private addresses (their proxies).
pub const SET_PEERS: &str = "fleet_peers";
/// On a fleet node: what tenants may never reach (the fleet's range and
/// the other nodes' private addresses).
pub const SET_FLEET_DENY: &str = "fleet_deny";
/// On a fleet node: this node's tenants' `address . http port`, the only
/// thing the other nodes may reach.
pub const SET_HTTP: &str = "tenant_http";
/// The port sshd listens on inside a tenant.
pub const TENANT_SSH_PORT: u16 = 22;
/// Room in each cap's dynamic set: one element per tenant address.
const CAP_SET_SIZE: u32 = 65536;

/// The whole ruleset for `nft -f`: deletes and recreates only our tables,
/// in one transaction, so applying it twice gives the same result and the
/// rest of the host's ruleset is never touched.
pub fn render_ruleset(config: &HostConfig, tenants: &[Tenant]) -> String {
    let net = &config.network;
    let br = &net.bridge;
    let subnet = net.subnet;
    let mut s = String::with_capacity(2048 + tenants.len() * 128);
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
    let nets = |v: Vec<ipnet::Ipv4Net>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    interval_set(&mut s, SET_DENY, &nets(net.egress_deny_all()));
    interval_set(&mut s, SET_ALLOW, &nets(net.egress_allow_all()));
    let mut dns: Vec<std::net::Ipv4Addr> = net.tenant_dns.clone();
    dns.sort_unstable();
    dns.dedup();
    let _ = writeln!(s, "\tset {SET_DNS} {{");
    let _ = writeln!(s, "\t\ttype ipv4_addr;");
    if !dns.is_empty() {
        let elems: Vec<String> = dns.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    if let Some(fleet) = &net.fleet {
        fleet_sets(&mut s, fleet, tenants);
    }

    // Connection caps: one chain and dynamic set per distinct cap (few),
    // a verdict map from each tenant address to its chain (one lookup).
    let mut by_ip: Vec<&Tenant> = tenants.iter().collect();
    by_ip.sort_by_key(|t| t.ip);
    let caps: BTreeSet<u32> = std::iter::once(config.defaults.connections)
        .chain(tenants.iter().map(|t| cap_of(config, t)))
        .collect();
    let _ = writeln!(s, "\tmap {MAP_CAPS} {{");
    let _ = writeln!(s, "\t\ttype ipv4_addr : verdict");
    if !by_ip.is_empty() {
        let elems: Vec<String> = by_ip.iter().map(|t| cap_element(config, t)).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    for &n in &caps {
        let _ = writeln!(s, "\tset {} {{", cap_set(n));
        let _ = writeln!(s, "\t\ttype ipv4_addr; size {CAP_SET_SIZE}; flags dynamic;");
        let _ = writeln!(s, "\t}}");
        chain(&mut s, &cap_chain(n), "", &[cap_rule(n)]);
    }

    let dnat = format!("fib daddr type local dnat ip to tcp dport map @{MAP_SSH}");
    chain(
        &mut s,
        "prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
        std::slice::from_ref(&dnat),
    );
    // The DNAT for connections the host itself opens to its own address;
    // `dstnat` is refused as a priority name in output (nft 1.0.6). Never
    // loopback: a host service on 127.0.0.1 with a port in the SSH range
    // keeps its connections.
    chain(
        &mut s,
        "output",
        "type nat hook output priority -100; policy accept;",
        &[format!("ip daddr != 127.0.0.0/8 {dnat}")],
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
            // reply goes straight from A to B and B drops it (docs/facts.md
            // "Hairpin").
            format!("ip saddr {subnet} ip daddr {subnet} ct status dnat masquerade"),
            format!("ip saddr {subnet} {egress} masquerade"),
        ],
    );
    // After conntrack (-200), before DNAT (-100): every connection a
    // tenant opens, to the host (proxy), through DNAT or beyond, counts.
    chain(
        &mut s,
        "caps",
        "type filter hook prerouting priority -150; policy accept;",
        &[format!(
            "iifname \"{br}\" ct state new ip saddr vmap @{MAP_CAPS}"
        )],
    );
    let mut forward = vec![
        // Towards tenants: replies, and connections DNAT'd to them.
        format!("oifname \"{br}\" ct state established,related accept"),
        format!("oifname \"{br}\" ct status dnat accept"),
    ];
    if net.fleet.is_some() {
        // Another node's proxy to one of our tenants' HTTP port; nothing
        // else of theirs, and nobody else's.
        forward.push(format!(
            "oifname \"{br}\" ip saddr @{SET_PEERS} ip daddr . tcp dport @{SET_HTTP} accept"
        ));
    }
    forward.extend([
        // Tenant to tenant routed through the host, and anything not
        // DNAT'd from outside: never.
        format!("oifname \"{br}\" drop"),
        format!("iifname \"{br}\" ct state established,related accept"),
    ]);
    if net.fleet.is_some() {
        // Other nodes' tenants and the nodes themselves, before any
        // exception of the allow list or the resolvers.
        forward.push(format!(
            "iifname \"{br}\" ip daddr @{SET_FLEET_DENY} reject with icmp type admin-prohibited"
        ));
    }
    if net.block_smtp {
        forward.push(format!(
            "iifname \"{br}\" tcp dport 25 reject with tcp reset"
        ));
    }
    // The resolvers tenants were given: DNS only, even inside the deny
    // list (cloud resolvers live at private or link-local addresses).
    let dns_rule = format!("ip daddr @{SET_DNS} meta l4proto {{ tcp, udp }} th dport 53 accept");
    forward.extend([
        format!("iifname \"{br}\" {dns_rule}"),
        format!("iifname \"{br}\" ip daddr @{SET_ALLOW} accept"),
        // Refused, not dropped: the tenant learns at once.
        format!("iifname \"{br}\" ip daddr @{SET_DENY} reject with icmp type admin-prohibited"),
        format!("iifname \"{br}\" {egress} accept"),
        format!("iifname \"{br}\" drop"),
    ]);
    chain(
        &mut s,
        "forward",
        &format!(
            "type filter hook forward priority filter; policy {};",
            net.forward_policy.as_str()
        ),
        &forward,
    );
    chain(
        &mut s,
        "input",
        "type filter hook input priority filter; policy accept;",
        &[
            format!("iifname != \"{br}\" accept"),
            "ct state established,related accept".to_owned(),
            format!("tcp dport {} accept", proxy_ports(config)),
            // A resolver on the host's own address, when tenants were given it.
            dns_rule,
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
    // may send IPv4 and ARP from its own MAC and address, nothing else (an
    // ARP packet's sender MAC too): a foreign address would poison the
    // host's neighbour cache. The bridge learns no MACs on tenant ports at
    // all (learning off, static entries, see `link`): this hook runs after
    // the bridge has seen link-local frames. No IPv6: tenants get none.
    chain(
        &mut s,
        "prerouting",
        "type filter hook prerouting priority -300; policy accept;",
        &[
            format!("iifname != \"{VETH_PREFIX}*\" accept"),
            format!("ether type ip iifname . ether saddr . ip saddr @{SET_ADDRS} accept"),
            format!(
                "ether type arp iifname . ether saddr . arp saddr ip @{SET_ADDRS} iifname . arp saddr ether . arp saddr ip @{SET_ADDRS} accept"
            ),
            "drop".to_owned(),
        ],
    );
    let _ = writeln!(s, "}}");
    s
}

/// Adds one tenant's forward, connection cap and anti-spoofing element.
/// Idempotent when the same elements exist; fails with "File exists" when
/// the port or address maps to something else (the caller then replaces
/// them one by one, see `nft::add_forward`).
pub fn render_add_forward(config: &HostConfig, tenant: &Tenant) -> String {
    format!(
        "{}add element inet {TABLE} {MAP_SSH} {{ {} }}\nadd element inet {TABLE} {MAP_CAPS} {{ {} }}\nadd element bridge {TABLE} {SET_ADDRS} {{ {} }}\n{}",
        render_cap_objects(cap_of(config, tenant)),
        map_element(tenant),
        cap_element(config, tenant),
        set_element(tenant),
        render_add_http(config, tenant),
    )
}

/// On a fleet node, the tenant's `address . http port` in the set the
/// other nodes' proxies may reach; nothing on a single host.
fn render_add_http(config: &HostConfig, tenant: &Tenant) -> String {
    if config.network.fleet.is_none() {
        return String::new();
    }
    format!(
        "add element inet {TABLE} {SET_HTTP} {{ {} }}\n",
        http_element(tenant)
    )
}

/// Replaces the fleet's sets (the other nodes, what tenants may not
/// reach) with `config.network.fleet`'s, in one transaction; nothing on a
/// single host. Fails with "No such file or directory" when our table or
/// its fleet sets are missing (the caller then rebuilds the table).
pub fn render_fleet(config: &HostConfig) -> String {
    let Some(fleet) = &config.network.fleet else {
        return String::new();
    };
    let mut s = format!("flush set inet {TABLE} {SET_PEERS}\n");
    let peers = peer_addrs(fleet);
    if !peers.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {TABLE} {SET_PEERS} {{ {} }}",
            peers.join(", ")
        );
    }
    let _ = writeln!(s, "flush set inet {TABLE} {SET_FLEET_DENY}");
    let deny: Vec<String> = fleet
        .tenant_deny()
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        s,
        "add element inet {TABLE} {SET_FLEET_DENY} {{ {} }}",
        deny.join(", ")
    );
    s
}

fn peer_addrs(fleet: &sotolito_config::FleetNetwork) -> Vec<String> {
    let mut peers: Vec<std::net::Ipv4Addr> = fleet
        .peers
        .iter()
        .map(|p| p.private_address)
        .filter(|a| *a != fleet.private_address)
        .collect();
    peers.sort_unstable();
    peers.dedup();
    peers.iter().map(ToString::to_string).collect()
}

fn fleet_sets(s: &mut String, fleet: &sotolito_config::FleetNetwork, tenants: &[Tenant]) {
    let peers = peer_addrs(fleet);
    let _ = writeln!(s, "\tset {SET_PEERS} {{");
    let _ = writeln!(s, "\t\ttype ipv4_addr;");
    if !peers.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", peers.join(", "));
    }
    let _ = writeln!(s, "\t}}");
    let deny: Vec<String> = fleet
        .tenant_deny()
        .iter()
        .map(ToString::to_string)
        .collect();
    interval_set(s, SET_FLEET_DENY, &deny);
    let mut http: Vec<&Tenant> = tenants.iter().collect();
    http.sort_by_key(|t| t.ip);
    let _ = writeln!(s, "\tset {SET_HTTP} {{");
    let _ = writeln!(s, "\t\ttype ipv4_addr . inet_service;");
    if !http.is_empty() {
        let elems: Vec<String> = http.iter().map(|t| http_element(t)).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(s, "\t}}");
}

fn http_element(t: &Tenant) -> String {
    format!("{} . {}", t.ip, t.http_port)
}

/// Replaces the map element of the tenant's port whatever it maps to now.
pub fn render_replace_forward(config: &HostConfig, tenant: &Tenant) -> String {
    let _ = config;
    format!(
        "delete element inet {TABLE} {MAP_SSH} {{ {} }}\nadd element inet {TABLE} {MAP_SSH} {{ {} }}\n",
        tenant.ssh_port,
        map_element(tenant),
    )
}

/// Adds only the tenant's SSH forward.
pub fn render_add_ssh(config: &HostConfig, tenant: &Tenant) -> String {
    let _ = config;
    format!(
        "add element inet {TABLE} {MAP_SSH} {{ {} }}\n",
        map_element(tenant)
    )
}

/// Adds only the tenant's connection cap (and the chain enforcing it).
pub fn render_add_cap(config: &HostConfig, tenant: &Tenant) -> String {
    format!(
        "{}add element inet {TABLE} {MAP_CAPS} {{ {} }}\n",
        render_cap_objects(cap_of(config, tenant)),
        cap_element(config, tenant),
    )
}

/// Replaces the tenant's connection cap whatever it is now.
pub fn render_replace_cap(config: &HostConfig, tenant: &Tenant) -> String {
    format!(
        "{}delete element inet {TABLE} {MAP_CAPS} {{ {} }}\nadd element inet {TABLE} {MAP_CAPS} {{ {} }}\n",
        render_cap_objects(cap_of(config, tenant)),
        tenant.ip,
        cap_element(config, tenant),
    )
}

/// Adds only the tenant's anti-spoofing element.
pub fn render_add_port(config: &HostConfig, tenant: &Tenant) -> String {
    format!(
        "add element bridge {TABLE} {SET_ADDRS} {{ {} }}\n{}",
        set_element(tenant),
        render_add_http(config, tenant),
    )
}

/// Removes one tenant's SSH forward; adding it first makes the delete
/// valid when it is already gone (nft 1.0.6 has no `destroy`). "File
/// exists": the port maps to another address.
pub fn render_remove_ssh(config: &HostConfig, tenant: &Tenant) -> String {
    let _ = config;
    let m = map_element(tenant);
    format!(
        "add element inet {TABLE} {MAP_SSH} {{ {m} }}\ndelete element inet {TABLE} {MAP_SSH} {{ {m} }}\n"
    )
}

/// Removes the tenant's connection cap element, whatever cap it names.
pub fn render_remove_cap(config: &HostConfig, tenant: &Tenant) -> String {
    format!(
        "{}delete element inet {TABLE} {MAP_CAPS} {{ {} }}\n",
        render_add_cap(config, tenant),
        tenant.ip
    )
}

/// Removes only the tenant's anti-spoofing element (its bridge port).
pub fn render_remove_port(config: &HostConfig, tenant: &Tenant) -> String {
    let e = set_element(tenant);
    let mut s = format!(
        "add element bridge {TABLE} {SET_ADDRS} {{ {e} }}\ndelete element bridge {TABLE} {SET_ADDRS} {{ {e} }}\n"
    );
    if config.network.fleet.is_some() {
        let h = http_element(tenant);
        let _ = write!(
            s,
            "add element inet {TABLE} {SET_HTTP} {{ {h} }}\ndelete element inet {TABLE} {SET_HTTP} {{ {h} }}\n"
        );
    }
    s
}

/// The set and chain that enforce cap `n`, made idempotently: `add` keeps
/// what exists, the flush and re-add leave one rule.
fn render_cap_objects(n: u32) -> String {
    let (set, chain) = (cap_set(n), cap_chain(n));
    format!(
        "add set inet {TABLE} {set} {{ type ipv4_addr; size {CAP_SET_SIZE}; flags dynamic; }}\nadd chain inet {TABLE} {chain}\nflush chain inet {TABLE} {chain}\nadd rule inet {TABLE} {chain} {}\n",
        cap_rule(n)
    )
}

/// The cap that applies to `t`: its own, else the host's default.
pub fn cap_of(config: &HostConfig, t: &Tenant) -> u32 {
    t.limits.connections.unwrap_or(config.defaults.connections)
}

fn cap_set(n: u32) -> String {
    format!("conns_{n}")
}

fn cap_chain(n: u32) -> String {
    format!("cap_{n}")
}

/// Counts the connections of each source address (alive in conntrack)
/// and refuses the one above `n`; closed ones leave the count at once.
fn cap_rule(n: u32) -> String {
    format!(
        "add @{} {{ ip saddr ct count over {n} }} reject",
        cap_set(n)
    )
}

fn cap_element(config: &HostConfig, t: &Tenant) -> String {
    format!("{} : jump {}", t.ip, cap_chain(cap_of(config, t)))
}

fn interval_set(s: &mut String, name: &str, elems: &[String]) {
    let _ = writeln!(s, "\tset {name} {{");
    let _ = writeln!(s, "\t\ttype ipv4_addr; flags interval;");
    if !elems.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(s, "\t}}");
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
    if !head.is_empty() {
        let _ = writeln!(s, "\t\t{head}");
    }
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
        // Only the built-in deny list has elements.
        assert_eq!(got.matches("elements").count(), 1, "{got}");
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
        assert!(got.contains("iifname \"sotolito0\" oifname \"eth9\" accept"));
        assert!(got.contains("tcp dport { 8080, 8443 } accept"));
        assert!(!got.contains("9180"), "admin port never opened: {got}");
    }

    #[test]
    fn element_scripts() {
        let c = config();
        let t = tenant("acme", [172, 18, 0, 2], 2201);
        assert_eq!(
            render_add_forward(&c, &t),
            "add set inet sotolito conns_4096 { type ipv4_addr; size 65536; flags dynamic; }\n\
             add chain inet sotolito cap_4096\n\
             flush chain inet sotolito cap_4096\n\
             add rule inet sotolito cap_4096 add @conns_4096 { ip saddr ct count over 4096 } reject\n\
             add element inet sotolito ssh_ports { 2201 : 172.18.0.2 . 22 }\n\
             add element inet sotolito conn_caps { 172.18.0.2 : jump cap_4096 }\n\
             add element bridge sotolito tenant_addrs { \"sv-acme\" . 02:73:ac:12:00:02 . 172.18.0.2 }\n"
        );
        assert!(render_remove_ssh(&c, &t)
            .contains("delete element inet sotolito ssh_ports { 2201 : 172.18.0.2 . 22 }"));
        assert!(render_replace_forward(&c, &t)
            .starts_with("delete element inet sotolito ssh_ports { 2201 }\n"));
        assert!(render_replace_cap(&c, &t)
            .contains("delete element inet sotolito conn_caps { 172.18.0.2 }\n"));
        assert!(render_remove_cap(&c, &t)
            .ends_with("delete element inet sotolito conn_caps { 172.18.0.2 }\n"));
    }

    #[test]
    fn caps_one_chain_per_distinct_value() {
        let mut c = config();
        c.defaults.connections = 100;
        let mut big = tenant("big", [172, 18, 0, 3], 2202);
        big.limits.connections = Some(5000);
        let mut big2 = tenant("big2", [172, 18, 0, 4], 2203);
        big2.limits.connections = Some(5000);
        let ts = vec![tenant("acme", [172, 18, 0, 2], 2201), big, big2];
        let got = render_ruleset(&c, &ts);
        assert!(got.contains("elements = { 172.18.0.2 : jump cap_100, 172.18.0.3 : jump cap_5000, 172.18.0.4 : jump cap_5000 }"), "{got}");
        assert_eq!(got.matches("\tchain cap_5000 {").count(), 1, "{got}");
        assert!(got.contains("add @conns_100 { ip saddr ct count over 100 } reject"));
    }

    #[test]
    fn egress_lists_and_smtp() {
        let mut c = config();
        c.network.egress_deny = vec![
            "10.1.0.0/16".parse().unwrap(),
            "203.0.113.0/24".parse().unwrap(),
        ];
        c.network.egress_allow = vec!["192.168.5.0/24".parse().unwrap()];
        c.network.tenant_dns = vec![[172, 31, 0, 2].into(), [169, 254, 169, 253].into()];
        let got = render_ruleset(&c, &[]);
        assert!(
            got.contains("elements = { 169.254.169.253, 172.31.0.2 }"),
            "{got}"
        );
        // Merged: 10.1/16 lies inside 10/8 (nft refuses overlaps).
        assert!(got.contains("elements = { 10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 203.0.113.0/24 }"), "{got}");
        assert!(got.contains("elements = { 192.168.5.0/24 }"), "{got}");
        assert!(!got.contains("dport 25"), "{got}");
        assert!(got.contains("policy drop;"), "{got}");
        c.network.block_smtp = true;
        c.network.forward_policy = sotolito_config::host::ForwardPolicy::Accept;
        let got = render_ruleset(&c, &[]);
        assert!(
            got.contains("iifname \"sotolito0\" tcp dport 25 reject with tcp reset"),
            "{got}"
        );
        assert!(
            got.contains("type filter hook forward priority filter; policy accept;"),
            "{got}"
        );
        // Other tenants stay out of reach whatever the allow list says:
        // the bridge-bound rules come first.
        let fwd = &got[got.find("chain forward").unwrap()..];
        assert!(
            fwd.find("oifname \"sotolito0\" drop").unwrap()
                < fwd.find("@egress_allow accept").unwrap()
        );
        assert!(
            fwd.find("@egress_allow accept").unwrap() < fwd.find("@egress_deny reject").unwrap()
        );
    }

    #[test]
    fn output_dnat_never_for_loopback() {
        let got = render_ruleset(&config(), &[]);
        let out = &got[got.find("chain output").unwrap()..];
        let out = &out[..out.find('}').unwrap()];
        assert!(
            out.contains("ip daddr != 127.0.0.0/8 fib daddr type local dnat"),
            "{out}"
        );
    }

    fn fleet_config() -> HostConfig {
        let mut c = config();
        c.network.subnet = "172.18.0.0/24".parse().unwrap();
        c.network.fleet = Some(sotolito_config::FleetNetwork {
            range: "172.18.0.0/16".parse().unwrap(),
            private_address: [10, 0, 0, 1].into(),
            peers: vec![
                sotolito_config::FleetPeer {
                    node: "node3".parse().unwrap(),
                    private_address: [10, 0, 0, 3].into(),
                    subnet: "172.18.2.0/24".parse().unwrap(),
                },
                sotolito_config::FleetPeer {
                    node: "node2".parse().unwrap(),
                    private_address: [10, 0, 0, 2].into(),
                    subnet: "172.18.1.0/24".parse().unwrap(),
                },
            ],
        });
        c
    }

    #[test]
    fn a_fleet_node_admits_other_nodes_only_to_http_ports() {
        let c = fleet_config();
        let mut web = tenant("web", [172, 18, 0, 3], 2202);
        web.http_port = sotolito_config::HttpPort::new(8080).unwrap();
        let ts = vec![tenant("acme", [172, 18, 0, 2], 2201), web.clone()];
        let got = render_ruleset(&c, &ts);
        assert!(
            got.contains(
                "set fleet_peers {\n\t\ttype ipv4_addr;\n\t\telements = { 10.0.0.2, 10.0.0.3 }"
            ),
            "{got}"
        );
        assert!(
            got.contains("elements = { 172.18.0.2 . 80, 172.18.0.3 . 8080 }"),
            "{got}"
        );
        // The range and the other nodes, merged into disjoint networks.
        assert!(
            got.contains("set fleet_deny {\n\t\ttype ipv4_addr; flags interval;\n\t\telements = { 10.0.0.2/31, 172.18.0.0/16 }"),
            "{got}"
        );
        let fwd = &got[got.find("chain forward").unwrap()..];
        let admit = fwd
            .find("oifname \"sotolito0\" ip saddr @fleet_peers ip daddr . tcp dport @tenant_http accept")
            .expect("the admit rule");
        assert!(admit < fwd.find("oifname \"sotolito0\" drop").unwrap());
        // Tenants never reach the fleet, whatever the allow list says.
        let deny = fwd
            .find("iifname \"sotolito0\" ip daddr @fleet_deny reject")
            .expect("the fleet deny rule");
        assert!(
            deny > fwd
                .find("iifname \"sotolito0\" ct state established,related accept")
                .unwrap()
        );
        assert!(deny < fwd.find("@tenant_dns").unwrap());
        assert!(deny < fwd.find("@egress_allow accept").unwrap());
        // Element edits keep the HTTP set.
        assert!(render_add_forward(&c, &web)
            .ends_with("add element inet sotolito tenant_http { 172.18.0.3 . 8080 }\n"));
        assert!(render_add_port(&c, &web).contains("tenant_http { 172.18.0.3 . 8080 }"));
        assert!(render_remove_port(&c, &web)
            .ends_with("delete element inet sotolito tenant_http { 172.18.0.3 . 8080 }\n"));
        assert_eq!(
            render_fleet(&c),
            "flush set inet sotolito fleet_peers\n\
             add element inet sotolito fleet_peers { 10.0.0.2, 10.0.0.3 }\n\
             flush set inet sotolito fleet_deny\n\
             add element inet sotolito fleet_deny { 10.0.0.2/31, 172.18.0.0/16 }\n"
        );
    }

    #[test]
    fn a_single_host_has_no_fleet_rules() {
        let c = config();
        let t = tenant("acme", [172, 18, 0, 2], 2201);
        let got = render_ruleset(&c, std::slice::from_ref(&t));
        assert!(
            !got.contains("fleet") && !got.contains("tenant_http"),
            "{got}"
        );
        assert!(!render_add_forward(&c, &t).contains("tenant_http"));
        assert!(render_fleet(&c).is_empty());
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
