//! sotolito-net: tenant networking. IP and SSH port leases (pure), the
//! nftables ruleset (pure text, applied atomically with `nft -f`), and the
//! bridge and veth links (rtnetlink), all in the caller's network namespace.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
pub mod lease;
pub mod link;
pub mod netns;
pub mod nft;
pub mod route;
pub mod ruleset;
pub mod sandbox;
#[cfg(test)]
mod testdata;

use sotolito_config::{HostConfig, Tenant, TenantName};

pub use error::Error;
pub use lease::{allocate, Lease};
pub use link::host_veth_name;
pub use nft::LiveForward;
pub use ruleset::render_ruleset;

/// Ensures the bridge (with the gateway address), ip_forward, and replaces
/// our whole `inet sotolito` and `bridge sotolito` tables from `tenants` in
/// one `nft -f` transaction, then converges the bridge ports of the
/// tenants attached now (no learning, static FDB entries). Idempotent.
pub fn reconcile(config: &HostConfig, tenants: &[Tenant]) -> Result<(), Error> {
    link::ensure_bridge(config)?;
    nft::apply_ruleset(&ruleset_for(config, tenants))?;
    link::secure_ports(tenants)?;
    tracing::debug!(tenants = tenants.len(), "network reconciled");
    Ok(())
}

/// The whole ruleset of our tables for `tenants`, with the tenants'
/// resolvers filled in from the host's when the config names none.
pub fn ruleset_for(config: &HostConfig, tenants: &[Tenant]) -> String {
    render_ruleset(&with_dns(config), tenants)
}

/// Ensures the bridge, ip_forward and our tables, without replacing tables
/// that exist (those are built from `tenants()`, called only when they are
/// missing): what `vpsctl init` and every command that needs the network
/// run. The caller reads its tenants under whatever keeps them from
/// changing meanwhile (vpsctl: the host lock). Idempotent.
pub fn ensure(
    config: &HostConfig,
    tenants: impl FnOnce() -> Result<Vec<Tenant>, Error>,
) -> Result<(), Error> {
    link::ensure_bridge(config)?;
    if !nft::tables_present()? {
        let tenants = tenants()?;
        nft::apply_ruleset(&ruleset_for(config, &tenants))?;
        tracing::info!(tenants = tenants.len(), "nft tables created");
    }
    Ok(())
}

/// On a fleet node: replaces the fleet's sets of our table (the other
/// nodes' private addresses, what tenants may not reach) from
/// `config.network.fleet`, in one transaction. `false` when our tables or
/// those sets are missing: the caller rebuilds them ([`reconcile`]).
/// Nothing to do on a single host.
pub fn apply_fleet(config: &HostConfig) -> Result<bool, Error> {
    let script = ruleset::render_fleet(config);
    if script.is_empty() {
        return Ok(true);
    }
    match nft::apply_fleet(&script) {
        Err(e) if nft::is_missing(&e) => Ok(false),
        other => other.map(|()| true),
    }
}

/// The host ends of all tenant veths that exist (names from
/// [`host_veth_name`]), listed in one netlink dump.
pub fn host_veths() -> Result<std::collections::BTreeSet<String>, Error> {
    link::host_veths()
}

/// Whether the host end of the tenant's veth exists.
pub fn veth_present(name: &TenantName) -> Result<bool, Error> {
    link::veth_present(name)
}

/// Adds one tenant's SSH forward (and its anti-spoofing element). When our
/// tables are missing (after a reboot or `nft flush ruleset`) it rebuilds
/// them from `tenants()` plus `tenant` instead.
pub fn add_forward(
    config: &HostConfig,
    tenant: &Tenant,
    tenants: impl FnOnce() -> Result<Vec<Tenant>, Error>,
) -> Result<(), Error> {
    // One nft call in the common case; the table is rebuilt only when the
    // element edit finds it missing.
    match nft::add_forward(config, tenant) {
        Err(e) if nft::is_missing(&e) => {
            let mut tenants = tenants()?;
            tenants.retain(|t| t.name != tenant.name);
            tenants.push(tenant.clone());
            reconcile(config, &tenants)
        }
        other => other,
    }
}

/// Removes one tenant's SSH forward and anti-spoofing element; idempotent.
/// A port that maps to another address is left alone.
pub fn remove_forward(config: &HostConfig, tenant: &Tenant) -> Result<(), Error> {
    match nft::remove_forward(config, tenant) {
        // No table, no forward.
        Err(e) if nft::is_missing(&e) => Ok(()),
        other => other,
    }
}

/// The runc `createRuntime` hook: a veth whose host end (named by
/// [`host_veth_name`]) is an isolated port of the bridge and whose peer is
/// `eth0` in the network namespace of `pid`, with the tenant's address, lo
/// up and a default route via the gateway. Ensures the bridge first, and
/// the tenant's forward (our tables, from `tenants()`, if they are
/// missing), so a started tenant is always reachable. Idempotent.
pub fn attach(
    config: &HostConfig,
    tenant: &Tenant,
    pid: u32,
    tenants: impl FnOnce() -> Result<Vec<Tenant>, Error>,
) -> Result<(), Error> {
    link::ensure_bridge(config)?;
    add_forward(config, tenant, tenants)?;
    link::attach(config, tenant, pid)
}

/// The runc `poststop` hook: removes the host end of the tenant's veth (its
/// peer goes with it); idempotent.
pub fn detach(config: &HostConfig, name: &TenantName) -> Result<(), Error> {
    let _ = config; // the veth name depends on the tenant only
    link::detach(name)
}

/// The SSH forwards in the live map, or `None` when our table is missing.
pub fn live_forwards(
    config: &HostConfig,
) -> Result<Option<std::collections::BTreeMap<u16, LiveForward>>, Error> {
    let _ = config;
    nft::live_forwards()
}

/// `config` with `network.tenant_dns` filled in when it is empty: the
/// host's non-loopback IPv4 nameservers (from /etc/resolv.conf, else
/// systemd-resolved's upstream list), the ones provision gives tenants.
fn with_dns(config: &HostConfig) -> std::borrow::Cow<'_, HostConfig> {
    if !config.network.tenant_dns.is_empty() {
        return std::borrow::Cow::Borrowed(config);
    }
    let mut found = Vec::new();
    for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        found = nameservers(&std::fs::read_to_string(path).unwrap_or_default());
        if !found.is_empty() {
            break;
        }
    }
    let mut c = config.clone();
    c.network.tenant_dns = found;
    std::borrow::Cow::Owned(c)
}

/// The IPv4 `nameserver` lines of a resolv.conf, without loopback ones
/// (such as systemd-resolved's stub, which tenants cannot reach).
pub fn nameservers(resolv_conf: &str) -> Vec<std::net::Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nameservers_skip_loopback_ipv6_and_junk() {
        let text = "# x\nnameserver 127.0.0.53\nnameserver 172.31.0.2\n nameserver 169.254.169.253 \nnameserver ::1\nnameserver 2001:db8::1\nsearch example\nnameserver nonsense\n";
        assert_eq!(
            super::nameservers(text),
            vec![
                std::net::Ipv4Addr::new(172, 31, 0, 2),
                std::net::Ipv4Addr::new(169, 254, 169, 253)
            ]
        );
    }
}
