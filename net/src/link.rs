//! Links: the bridge, its gateway address and ip_forward, and each tenant's
//! veth pair and bridge port (isolated, no MAC learning, a static FDB entry
//! for the tenant's MAC), through rtnetlink in the caller's network
//! namespace (and, for the container end, in the container's, see
//! [`crate::netns`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::{
    new_connection, Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use sotolito_config::{HostConfig, Tenant, TenantName};

use crate::{netns, Error};

/// Every host-side tenant veth starts with this; the bridge table matches
/// tenant ports by it.
pub const VETH_PREFIX: &str = "sv";
/// The interface name inside the container.
pub const CONTAINER_IF: &str = "eth0";
const IFNAMSIZ: usize = 15;

/// The host end of a tenant's veth: `sv-NAME` when that fits in 15 bytes,
/// else `sv_` + the first 3 characters + 9 base32 characters of a 64-bit
/// hash of the name (45 bits: no collision in practice among 10,000).
/// Tenant names never contain `_`, so the two forms never meet.
pub fn host_veth_name(name: &TenantName) -> String {
    let name = name.as_str();
    let short = format!("{VETH_PREFIX}-{name}");
    if short.len() <= IFNAMSIZ {
        return short;
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let tag: String = (0..9)
        .map(|i| char::from(B32[((hash >> (i * 5)) & 31) as usize]))
        .collect();
    let head: String = name.chars().take(3).collect();
    format!("{VETH_PREFIX}_{head}{tag}")
}

/// The container's eth0 MAC, derived from its address (locally
/// administered, `02:73` + the IPv4 octets): a restarted tenant keeps its
/// MAC, so the host's neighbour cache for its address stays right (with a
/// random MAC, DNAT to a restarted tenant fails until the entry expires).
pub fn container_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x73, a, b, c, d]
}

/// Ensures the bridge exists, is up and has the gateway address, and that
/// this namespace forwards IPv4. A same-named bridge with another IPv4
/// address is refused rather than reused.
pub fn ensure_bridge(config: &HostConfig) -> Result<(), Error> {
    let bridge = config.network.bridge.clone();
    let gateway = config.network.gateway();
    let prefix = config.network.subnet.prefix_len();
    with_handle(|h| async move {
        let index = match link_by_name(&h, &bridge).await? {
            Some(link) => {
                if kind(&link) != Some(InfoKind::Bridge) {
                    return Err(Error::NotABridge { name: bridge });
                }
                link.header.index
            }
            None => {
                match h
                    .link()
                    .add(LinkBridge::new(&bridge).build())
                    .execute()
                    .await
                {
                    Ok(()) => tracing::info!(bridge = %bridge, "bridge created"),
                    // Another hook (tenants start in parallel at boot) won.
                    Err(e) if errno(&e) == Some(EEXIST) => {}
                    Err(e) => return Err(nl(format!("create bridge {bridge}"))(e)),
                }
                let link = link_by_name(&h, &bridge)
                    .await?
                    .ok_or_else(|| Error::NotABridge {
                        name: bridge.clone(),
                    })?;
                if kind(&link) != Some(InfoKind::Bridge) {
                    return Err(Error::NotABridge { name: bridge });
                }
                link.header.index
            }
        };
        let found = ipv4_addrs(&h, index).await?;
        if !found.contains(&(gateway, prefix)) {
            if let Some((ip, len)) = found.first() {
                return Err(Error::BridgeAddress {
                    bridge,
                    found: format!("{ip}/{len}"),
                    want: format!("{gateway}/{prefix}"),
                });
            }
            match h
                .address()
                .add(index, IpAddr::V4(gateway), prefix)
                .execute()
                .await
            {
                Ok(()) => {}
                // Added meanwhile by a parallel hook: check what it is.
                Err(e) if errno(&e) == Some(EEXIST) => {
                    let found = ipv4_addrs(&h, index).await?;
                    if !found.contains(&(gateway, prefix)) {
                        return Err(nl(format!("add {gateway}/{prefix} to {bridge}"))(e));
                    }
                }
                Err(e) => return Err(nl(format!("add {gateway}/{prefix} to {bridge}"))(e)),
            }
        }
        // Belt and braces with learning off on every tenant port: the
        // bridge never learns a source MAC from a link-local frame
        // (01:80:c2:00:00:0X), which it takes in before any nft hook.
        h.link()
            .change(
                LinkMessageBuilder::<LinkBridge>::new(&bridge)
                    .index(index)
                    .no_linklocal_learn(true)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("set {bridge} up without link-local learning")))?;
        Ok(())
    })?;
    enable_ip_forward()
}

/// Writes 1 to ip_forward of the calling thread's network namespace.
fn enable_ip_forward() -> Result<(), Error> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    let io = |action| {
        move |source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    if std::fs::read_to_string(path).map_err(io("read"))?.trim() != "1" {
        std::fs::write(path, "1\n").map_err(io("write"))?;
    }
    Ok(())
}

/// See [`crate::attach`]. The bridge must exist.
pub fn attach(config: &HostConfig, tenant: &Tenant, pid: u32) -> Result<(), Error> {
    sotolito_config::names::check_tenant_ip(tenant.ip, config.network.subnet)?;
    let veth = host_veth_name(&tenant.name);
    let bridge = config.network.bridge.clone();
    let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ns_file = std::fs::File::open(&ns_path).map_err(|source| Error::Netns {
        path: ns_path.clone(),
        source,
    })?;
    let has_eth0 = netns::run_in(&ns_path, || {
        with_handle(|h| async move { Ok(link_by_name(&h, CONTAINER_IF).await?.is_some()) })
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ns_file);
    let ip = tenant.ip;
    let tenant_name = tenant.name.clone();
    with_handle(|h| async move {
        let existing = link_by_name(&h, &veth).await?;
        match (existing, has_eth0) {
            // Already attached (a re-run): only converge the settings below.
            (Some(_), true) => {}
            (None, true) => {
                return Err(Error::ForeignEth0 {
                    pid,
                    tenant: tenant_name,
                })
            }
            (existing, false) => {
                if let Some(stale) = existing {
                    // Its peer is in some other (old) namespace.
                    h.link()
                        .del(stale.header.index)
                        .execute()
                        .await
                        .map_err(nl(format!("remove stale {veth}")))?;
                }
                // The peer is created directly inside the container's
                // namespace, so no temporary name is needed on the host.
                let peer = LinkUnspec::new_with_name(CONTAINER_IF)
                    .setns_by_fd(fd)
                    .address(container_mac(ip).to_vec())
                    .build();
                let msg = LinkVeth::new(&veth, CONTAINER_IF)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build();
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(nl(format!("create veth {veth}")))?;
            }
        }
        let index = link_by_name(&h, &veth)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| Error::Netlink {
                action: format!("find {veth} after creating it"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        let br = link_by_name(&h, &bridge)
            .await?
            .map(|l| l.header.index)
            .ok_or(Error::NotABridge {
                name: bridge.clone(),
            })?;
        h.link()
            .change(LinkUnspec::new_with_index(index).controller(br).build())
            .execute()
            .await
            .map_err(nl(format!("add {veth} to {bridge}")))?;
        secure_port(&h, index, &veth, ip).await?;
        h.link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {veth} up")))?;
        // The host's neighbour entry for the tenant, with the MAC it is
        // about to have: a connection tried before the tenant existed (a
        // proxy that learned the route first) left the entry incomplete,
        // and its packets would wait for the next ARP probe, up to a
        // second later. Reachable, not permanent: it ages as usual.
        h.neighbours()
            .add(br, IpAddr::V4(ip))
            .link_layer_address(&container_mac(ip))
            .state(NeighbourState::Reachable)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add the neighbour entry of {ip} on {bridge}")))?;
        Ok(())
    })?;
    drop(ns_file);

    let prefix = config.network.subnet.prefix_len();
    let gateway = config.network.gateway();
    netns::run_in(&ns_path, || {
        with_handle(|h| configure_container(h, ip, prefix, gateway))
    })?;
    tracing::info!(tenant = %tenant.name, pid, veth = %host_veth_name(&tenant.name), ip = %ip, "attached");
    Ok(())
}

/// Isolated: no frame to another tenant port. No learning: no frame from
/// the tenant moves a MAC in the FDB (a neighbour's MAC as source would
/// otherwise steal the host's traffic for it). No unknown-unicast flood:
/// the host's frames for a MAC without an entry never reach a tenant. The
/// tenant's own MAC is a static entry on its port instead, sticky (the
/// kernel moves even a static entry that it learns on another port).
async fn secure_port(h: &Handle, index: u32, veth: &str, ip: Ipv4Addr) -> Result<(), Error> {
    h.link()
        .set_port(
            LinkBridgePort::new(index)
                .isolated(true)
                .learning(false)
                .flood(false)
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("set up bridge port {veth}")))?;
    h.neighbours()
        .add_bridge(index, &container_mac(ip))
        .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
        .state(NeighbourState::Noarp)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("add the static FDB entry of {veth}")))
}

/// Converges the bridge port of every tenant whose veth exists (ports
/// attached by an older version learn MACs): what `reconcile` runs.
pub fn secure_ports(tenants: &[Tenant]) -> Result<(), Error> {
    let ports: Vec<(String, Ipv4Addr)> = tenants
        .iter()
        .map(|t| (host_veth_name(&t.name), t.ip))
        .collect();
    with_handle(|h| async move {
        for (veth, ip) in &ports {
            if let Some(link) = link_by_name(&h, veth).await? {
                secure_port(&h, link.header.index, veth, *ip).await?;
            }
        }
        Ok(())
    })
}

/// Inside the container: lo and eth0 up, the address, the default route.
async fn configure_container(
    h: Handle,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), Error> {
    for name in ["lo", CONTAINER_IF] {
        let index = link_by_name(&h, name)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| Error::Netlink {
                action: format!("find {name} in the container"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        h.link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {name} up in the container")))?;
        if name == CONTAINER_IF {
            if !ipv4_addrs(&h, index).await?.contains(&(ip, prefix)) {
                h.address()
                    .add(index, IpAddr::V4(ip), prefix)
                    .execute()
                    .await
                    .map_err(nl(format!("add {ip}/{prefix} to eth0")))?;
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("add the default route via {gateway}")))?;
        }
    }
    Ok(())
}

/// Removes the host end of the tenant's veth, if there is one.
pub fn detach(name: &TenantName) -> Result<(), Error> {
    let veth = host_veth_name(name);
    with_handle(|h| async move {
        if let Some(link) = link_by_name(&h, &veth).await? {
            match h.link().del(link.header.index).execute().await {
                // The hook logs "detached" (the veth is usually gone
                // with the container's namespace already).
                Ok(()) => tracing::info!(tenant = %name, veth = %veth, "veth removed"),
                // Gone meanwhile (the container's namespace went away).
                Err(e) if errno(&e) == Some(libc_enodev()) => {}
                Err(e) => return Err(nl(format!("remove {veth}"))(e)),
            }
        }
        Ok(())
    })
}

/// The names of all tenant veths (host ends) in this namespace: one dump,
/// for `net show` with many tenants.
pub fn host_veths() -> Result<std::collections::BTreeSet<String>, Error> {
    with_handle(|h| async move {
        let mut out = std::collections::BTreeSet::new();
        let mut links = h.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(nl("list links".to_owned()))?
        {
            for attr in &link.attributes {
                if let LinkAttribute::IfName(name) = attr {
                    if name.starts_with(VETH_PREFIX) {
                        out.insert(name.clone());
                    }
                }
            }
        }
        Ok(out)
    })
}

/// Whether the host end of the tenant's veth exists (for `net show`).
pub fn veth_present(name: &TenantName) -> Result<bool, Error> {
    let veth = host_veth_name(name);
    with_handle(|h| async move { Ok(link_by_name(&h, &veth).await?.is_some()) })
}

/// Runs one netlink conversation on a current-thread runtime, so every
/// socket is opened in the calling thread's network namespace. Called from
/// inside a tokio runtime, it runs on a scoped thread (which starts in the
/// caller's network namespace), as a runtime cannot block on another.
pub(crate) fn with_handle<T, F, Fut>(f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, Error>>,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(|| block_on_handle(f))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    }
    block_on_handle(f)
}

fn block_on_handle<T, F, Fut>(f: F) -> Result<T, Error>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let io = |action| {
        move |source| Error::Io {
            action,
            path: PathBuf::from("netlink"),
            source,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io("start a runtime for"))?;
    rt.block_on(async {
        let (conn, handle, _) = new_connection().map_err(io("open a socket for"))?;
        let task = tokio::spawn(conn);
        let result = f(handle).await;
        task.abort();
        result
    })
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc_enodev()) => Ok(None),
        Err(e) => Err(nl(format!("look up {name}"))(e)),
    }
}

async fn ipv4_addrs(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, Error> {
    let mut out = Vec::new();
    let mut stream = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(nl(format!("list addresses of link {index}")))?
    {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                out.push((*ip, msg.header.prefix_len));
            }
        }
    }
    Ok(out)
}

fn kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

pub(crate) fn nl(action: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |source| Error::Netlink { action, source }
}

pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// ENODEV: "no such device", what the kernel answers for a missing link.
const fn libc_enodev() -> i32 {
    19
}

/// EEXIST: what the kernel answers for a link or address made meanwhile.
pub(crate) const EEXIST: i32 = 17;

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(s: &str) -> String {
        host_veth_name(&TenantName::new(s).unwrap())
    }

    #[test]
    fn mac_follows_the_address() {
        assert_eq!(
            container_mac(Ipv4Addr::new(172, 18, 0, 2)),
            [0x02, 0x73, 172, 18, 0, 2]
        );
    }

    #[test]
    fn veth_names_are_stable_and_fit() {
        assert_eq!(veth("acme"), "sv-acme");
        assert_eq!(veth("twelve-chars"), "sv-twelve-chars");
        let long = veth("thirteen-char");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("sv_thi"), "{long}");
        assert_eq!(long, veth("thirteen-char"));
        let a = veth("a-rather-long-tenant-name-num-1");
        assert!(a.len() <= 15);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let n = veth(&format!("customer-number-{i}"));
            assert!(n.len() <= 15 && n.starts_with(VETH_PREFIX), "{n}");
            assert!(seen.insert(n), "collision at {i}");
        }
    }
}
