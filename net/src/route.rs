//! Kernel routes to the other fleet nodes' tenant subnets, each via that
//! node's private address. Only routes we own are touched: ours carry
//! [`ROUTE_PROTOCOL`] as their `protocol` (`ip route show proto 83`), so a
//! reconcile adds the missing ones, replaces changed ones and deletes
//! stale ones of ours, and never changes a route someone else made.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::RouteMessageBuilder;
use sotolito_config::FleetNetwork;

use crate::link::{errno, nl, with_handle, EEXIST};
use crate::Error;

/// The `protocol` of every route sotolito makes (rtnetlink's RTPROT_*:
/// 0-4 are the kernel's, the routing daemons hold a few above; 83 is
/// unassigned in iproute2's rt_protos).
pub const ROUTE_PROTOCOL: u8 = 83;

/// One route to another node's tenant subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub subnet: Ipv4Net,
    /// The other node's private address.
    pub via: Ipv4Addr,
}

/// What a reconcile changed, and the routes it had to leave alone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: Vec<PeerRoute>,
    pub removed: Vec<PeerRoute>,
    /// Wanted, but a route to the same subnet exists that is not ours.
    pub foreign: Vec<PeerRoute>,
}

/// The routes this node needs: every other node's subnet via its private
/// address, except a subnet that overlaps this node's own (a registry
/// that disagrees with this host: never route our own tenants away).
pub fn plan_routes(fleet: &FleetNetwork, local_subnet: Ipv4Net) -> Vec<PeerRoute> {
    let mut out: Vec<PeerRoute> = fleet
        .peers
        .iter()
        .filter(|p| !overlaps(p.subnet, local_subnet))
        .filter(|p| p.private_address != fleet.private_address)
        .map(|p| PeerRoute {
            subnet: p.subnet,
            via: p.private_address,
        })
        .collect();
    out.sort();
    out.dedup_by_key(|r| r.subnet);
    out
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The steps from `ours` (routes with our protocol now) to `want`:
/// routes to add (or replace: same subnet, other gateway) and ours to
/// delete. Pure.
pub fn diff(want: &[PeerRoute], ours: &[PeerRoute]) -> (Vec<PeerRoute>, Vec<PeerRoute>) {
    let add = want.iter().filter(|w| !ours.contains(w)).copied().collect();
    let del = ours
        .iter()
        .filter(|o| !want.iter().any(|w| w.subnet == o.subnet))
        .copied()
        .collect();
    (add, del)
}

/// Converges the main routing table on [`plan_routes`]: adds and replaces
/// ours, deletes our stale ones, with this node's private address as the
/// source (what the other nodes' firewalls admit). Leaves every route
/// that is not ours alone, and reports a wanted subnet that one of them
/// already covers.
pub fn reconcile_routes(
    fleet: &FleetNetwork,
    local_subnet: Ipv4Net,
) -> Result<RouteChanges, Error> {
    let want = plan_routes(fleet, local_subnet);
    let src = fleet.private_address;
    with_handle(|h| async move {
        let mut ours = Vec::new();
        let mut others = Vec::new();
        let mut dump = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(nl("list the IPv4 routes".into()))?
        {
            if msg.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let Some(subnet) = destination(&msg) else {
                continue;
            };
            if msg.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL) {
                ours.push(PeerRoute {
                    subnet,
                    via: gateway(&msg).unwrap_or(Ipv4Addr::UNSPECIFIED),
                });
            } else {
                others.push(subnet);
            }
        }
        let (add, del) = diff(&want, &ours);
        let mut changes = RouteChanges::default();
        for r in del {
            let msg = message(r, None);
            match h.route().del(msg).execute().await {
                Ok(()) => changes.removed.push(r),
                // Gone meanwhile (its interface went down): nothing to do.
                Err(e) if errno(&e) == Some(ESRCH) => changes.removed.push(r),
                Err(e) => {
                    return Err(nl(format!(
                        "remove the route to {} via {}",
                        r.subnet, r.via
                    ))(e))
                }
            }
        }
        for r in add {
            if others.contains(&r.subnet) {
                changes.foreign.push(r);
                continue;
            }
            let replace = ours.iter().any(|o| o.subnet == r.subnet);
            let mut req = h.route().add(message(r, Some(src)));
            if replace {
                req = req.replace();
            }
            match req.execute().await {
                Ok(()) => changes.added.push(r),
                Err(e) if errno(&e) == Some(EEXIST) => changes.foreign.push(r),
                Err(e) => {
                    return Err(nl(format!(
                        "add the route to {} via {} from {src} (is {src} an address of this host, and {} on a directly connected network?)",
                        r.subnet, r.via, r.via
                    ))(e))
                }
            }
        }
        Ok(changes)
    })
}

/// ESRCH: "no such process", the kernel's answer for a missing route.
const ESRCH: i32 = 3;

fn message(r: PeerRoute, src: Option<Ipv4Addr>) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.subnet.network(), r.subnet.prefix_len())
        .gateway(r.via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    if let Some(src) = src {
        b = b.pref_source(src);
    }
    b.build()
}

fn destination(msg: &RouteMessage) -> Option<Ipv4Net> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Ipv4Net::new(*ip, msg.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

fn gateway(msg: &RouteMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotolito_config::{FleetPeer, NodeName};

    fn peer(name: &str, addr: [u8; 4], subnet: &str) -> FleetPeer {
        FleetPeer {
            node: NodeName::new(name).unwrap(),
            private_address: addr.into(),
            subnet: subnet.parse().unwrap(),
        }
    }

    fn route(subnet: &str, via: [u8; 4]) -> PeerRoute {
        PeerRoute {
            subnet: subnet.parse().unwrap(),
            via: via.into(),
        }
    }

    #[test]
    fn every_other_node_but_never_our_own_subnet() {
        let fleet = FleetNetwork {
            range: "172.18.0.0/16".parse().unwrap(),
            private_address: [10, 0, 0, 1].into(),
            peers: vec![
                peer("node3", [10, 0, 0, 3], "172.18.2.0/24"),
                peer("node2", [10, 0, 0, 2], "172.18.1.0/24"),
                // A registry that gives another node our subnet.
                peer("rogue", [10, 0, 0, 9], "172.18.0.0/23"),
            ],
        };
        assert_eq!(
            plan_routes(&fleet, "172.18.0.0/24".parse().unwrap()),
            [
                route("172.18.1.0/24", [10, 0, 0, 2]),
                route("172.18.2.0/24", [10, 0, 0, 3])
            ]
        );
    }

    #[test]
    fn diff_adds_replaces_and_deletes_only_what_differs() {
        let want = [
            route("172.18.1.0/24", [10, 0, 0, 2]),
            route("172.18.2.0/24", [10, 0, 0, 3]),
        ];
        let ours = [
            route("172.18.1.0/24", [10, 0, 0, 2]),
            // Node 3 moved to another private address.
            route("172.18.2.0/24", [10, 0, 0, 7]),
            // A node that is gone.
            route("172.18.5.0/24", [10, 0, 0, 5]),
        ];
        let (add, del) = diff(&want, &ours);
        assert_eq!(add, [route("172.18.2.0/24", [10, 0, 0, 3])]);
        assert_eq!(del, [route("172.18.5.0/24", [10, 0, 0, 5])]);
        let (add, del) = diff(&want, &want);
        assert!(add.is_empty() && del.is_empty());
    }
}
