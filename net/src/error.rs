//! The one error type of sotolito-net: each variant names the thing and,
//! where it helps, what to do.

use std::path::PathBuf;

use ipnet::Ipv4Net;
use sotolito_config::host::PortRange;
use sotolito_config::{InvalidValue, TenantName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("{what} is taken by tenant {owner} ({hint})")]
    Taken {
        what: String,
        owner: TenantName,
        hint: &'static str,
    },
    #[error("ssh port {port} is outside network.ssh_ports {range} (pick one inside it, or widen the range in the host config)")]
    PortOutsideRange { port: u16, range: PortRange },
    #[error(
        "no free address left in {subnet} ({used} tenants hold one; use a larger network.subnet)"
    )]
    AddressesExhausted { subnet: Ipv4Net, used: usize },
    #[error("ssh port {port} is the proxy's {what} port (pick another with --ssh-port, or move the proxy)")]
    ProxyPort { port: u16, what: &'static str },
    #[error("no free ssh port left in {range} ({used} in use; widen network.ssh_ports)")]
    PortsExhausted { range: PortRange, used: usize },
    #[error(
        "bridge {bridge} exists with address {found}, not {want} (remove it or set network.bridge)"
    )]
    BridgeAddress {
        bridge: String,
        found: String,
        want: String,
    },
    #[error("interface {name} exists and is not a bridge (remove it or set network.bridge)")]
    NotABridge { name: String },
    #[error("the network namespace of pid {pid} already has an eth0 that is not tenant {tenant}'s (was the hook run for the wrong container?)")]
    ForeignEth0 { pid: u32, tenant: TenantName },
    #[error("cannot {action}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot enter network namespace {path} (is the container running?)")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program} (install {package})")]
    Spawn {
        program: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action}: ip {command} failed: {stderr}")]
    Ip {
        action: &'static str,
        command: String,
        stderr: String,
    },
    #[error("nft refused to {action}: {stderr}")]
    Nft { action: String, stderr: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] sotolito_config::Error),
}
