//! Leases: which IP and SSH port a tenant gets. Pure; the caller holds the
//! registry lock and stores the lease in the tenant record.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use sotolito_config::names::check_tenant_ip;
use sotolito_config::{HostConfig, SshPort, Tenant, TenantName};

use crate::Error;

/// A tenant's address on the bridge and its public SSH port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub ssh_port: SshPort,
}

/// The lowest free IP in the subnet (skipping network, gateway and
/// broadcast) and the lowest free port in `network.ssh_ports`, ignoring the
/// tenant `name` itself, so a re-provision keeps its lease. An explicit want
/// is checked instead of searched for. O(number of tenants).
pub fn allocate(
    config: &HostConfig,
    tenants: &[Tenant],
    name: &TenantName,
    want_ip: Option<Ipv4Addr>,
    want_port: Option<SshPort>,
) -> Result<Lease, Error> {
    let others = || tenants.iter().filter(|t| &t.name != name);
    let subnet = config.network.subnet;
    let range = config.network.ssh_ports;

    let ip = match want_ip {
        Some(ip) => {
            check_tenant_ip(ip, subnet)?;
            if let Some(owner) = others().find(|t| t.ip == ip) {
                return Err(Error::Taken {
                    what: format!("address {ip}"),
                    owner: owner.name.clone(),
                    hint: "pick another with --ip, or leave it out to get a free one",
                });
            }
            ip
        }
        None => {
            let used: HashSet<u32> = others().map(|t| u32::from(t.ip)).collect();
            let first = u32::from(subnet.network());
            let last = u32::from(subnet.broadcast());
            let gateway = u32::from(config.network.gateway());
            // At most used.len() + 1 steps: the loop ends at the first gap.
            (first.saturating_add(1)..last)
                .find(|a| *a != gateway && !used.contains(a))
                .map(Ipv4Addr::from)
                .ok_or(Error::AddressesExhausted {
                    subnet,
                    used: used.len(),
                })?
        }
    };

    // The DNAT map would take these from the proxy on every local address.
    let reserved = [
        ("http", config.proxy.http.port()),
        ("https", config.proxy.https.port()),
        ("admin", config.proxy.admin.port()),
    ];
    let ssh_port = match want_port {
        Some(port) => {
            if !range.contains(port.get()) {
                return Err(Error::PortOutsideRange {
                    port: port.get(),
                    range,
                });
            }
            if let Some((what, _)) = reserved.iter().find(|(_, p)| *p == port.get()) {
                return Err(Error::ProxyPort {
                    port: port.get(),
                    what,
                });
            }
            if let Some(owner) = others().find(|t| t.ssh_port == port) {
                return Err(Error::Taken {
                    what: format!("ssh port {port}"),
                    owner: owner.name.clone(),
                    hint: "pick another with --ssh-port",
                });
            }
            port
        }
        None => {
            let mut used: HashSet<u16> = others().map(|t| t.ssh_port.get()).collect();
            let in_use = used.len();
            used.extend(reserved.iter().map(|(_, p)| *p));
            let port = (range.first..=range.last)
                .find(|p| !used.contains(p))
                .ok_or(Error::PortsExhausted {
                    range,
                    used: in_use,
                })?;
            SshPort::new(u64::from(port))?
        }
    };

    Ok(Lease { ip, ssh_port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{config, tenant};

    fn name(s: &str) -> TenantName {
        TenantName::new(s).unwrap()
    }

    #[test]
    fn first_lease_skips_network_and_gateway() {
        let c = config();
        let l = allocate(&c, &[], &name("acme"), None, None).unwrap();
        assert_eq!(l.ip, Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(l.ssh_port.get(), 2200);
    }

    #[test]
    fn lowest_free_is_reused_after_release() {
        let c = config();
        let ts = vec![
            tenant("a", [172, 18, 0, 2], 2200),
            tenant("c", [172, 18, 0, 4], 2202),
        ];
        let l = allocate(&c, &ts, &name("b"), None, None).unwrap();
        assert_eq!(l.ip, Ipv4Addr::new(172, 18, 0, 3));
        assert_eq!(l.ssh_port.get(), 2201);
    }

    #[test]
    fn reprovision_keeps_its_own_lease() {
        let c = config();
        let ts = vec![tenant("a", [172, 18, 0, 2], 2200)];
        let l = allocate(
            &c,
            &ts,
            &name("a"),
            Some(Ipv4Addr::new(172, 18, 0, 2)),
            Some(SshPort::new(2200).unwrap()),
        )
        .unwrap();
        assert_eq!(l.ip, Ipv4Addr::new(172, 18, 0, 2));
        let l = allocate(&c, &ts, &name("a"), None, None).unwrap();
        assert_eq!(l.ip, Ipv4Addr::new(172, 18, 0, 2));
    }

    #[test]
    fn explicit_wants() {
        let c = config();
        let ts = vec![tenant("beta", [172, 18, 0, 2], 2201)];
        let l = allocate(
            &c,
            &ts,
            &name("acme"),
            Some(Ipv4Addr::new(172, 18, 3, 7)),
            Some(SshPort::new(2999).unwrap()),
        )
        .unwrap();
        assert_eq!(l.ip, Ipv4Addr::new(172, 18, 3, 7));
        assert_eq!(l.ssh_port.get(), 2999);

        let err = |ip: Option<[u8; 4]>, port: Option<u64>| {
            allocate(
                &c,
                &ts,
                &name("acme"),
                ip.map(Ipv4Addr::from),
                port.map(|p| SshPort::new(p).unwrap()),
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            err(None, Some(2201)),
            "ssh port 2201 is taken by tenant beta (pick another with --ssh-port)"
        );
        assert_eq!(
            err(Some([172, 18, 0, 2]), None),
            "address 172.18.0.2 is taken by tenant beta (pick another with --ip, or leave it out to get a free one)"
        );
        assert_eq!(
            err(None, Some(22)),
            "ssh port 22 is outside network.ssh_ports 2200-2999 (pick one inside it, or widen the range in the host config)"
        );
        assert_eq!(
            err(Some([10, 0, 0, 5]), None),
            "tenant address \"10.0.0.5\" is not inside the subnet 172.18.0.0/16"
        );
        assert!(err(Some([172, 18, 0, 1]), None).contains("is reserved"));
        assert!(err(Some([172, 18, 255, 255]), None).contains("is reserved"));
    }

    #[test]
    fn proxy_ports_are_never_ssh_ports() {
        let mut c = config();
        c.network.ssh_ports = "440-450".parse().unwrap();
        c.proxy.admin = "127.0.0.1:441".parse().unwrap();
        let ts = vec![tenant("a", [172, 18, 0, 2], 440)];
        let l = allocate(&c, &ts, &name("b"), None, None).unwrap();
        assert_eq!(l.ssh_port.get(), 442);
        let e = allocate(&c, &ts, &name("b"), None, Some(SshPort::new(443).unwrap()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "ssh port 443 is the proxy's https port (pick another with --ssh-port, or move the proxy)"
        );
    }

    #[test]
    fn exhaustion_says_what_to_widen() {
        let mut c = config();
        c.network.subnet = "10.9.0.0/29".parse().unwrap();
        c.network.ssh_ports = "3000-3001".parse().unwrap();
        // /29: .0 network, .1 gateway, .7 broadcast: .2-.6 usable.
        let ts: Vec<_> = (2..=6u8)
            .map(|i| tenant(&format!("t{i}"), [10, 9, 0, i], 3000 + u64::from(i)))
            .collect();
        let e = allocate(&c, &ts, &name("x"), None, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no free address left in 10.9.0.0/29 (5 tenants hold one; use a larger network.subnet)"
        );
        let ts = vec![
            tenant("a", [10, 9, 0, 2], 3000),
            tenant("b", [10, 9, 0, 3], 3001),
        ];
        let e = allocate(&c, &ts, &name("x"), None, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no free ssh port left in 3000-3001 (2 in use; widen network.ssh_ports)"
        );
    }

    #[test]
    fn ten_thousand_tenants() {
        let mut c = config();
        c.network.ssh_ports = "20000-40000".parse().unwrap();
        let ts: Vec<_> = (0..10_000u32)
            .map(|i| {
                let ip = u32::from(Ipv4Addr::new(172, 18, 0, 2)) + i;
                tenant(
                    &format!("t{i}"),
                    Ipv4Addr::from(ip).octets(),
                    20000 + u64::from(i),
                )
            })
            .collect();
        let l = allocate(&c, &ts, &name("new"), None, None).unwrap();
        assert_eq!(
            l.ip,
            Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 18, 0, 2)) + 10_000)
        );
        assert_eq!(l.ssh_port.get(), 30000);
        let e = allocate(
            &c,
            &ts,
            &name("new"),
            None,
            Some(SshPort::new(29999).unwrap()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("taken by tenant t9999"), "{e}");
    }
}
