//! Shared fixtures for unit tests.

use std::net::Ipv4Addr;

use sotolito_config::{HostConfig, ImageName, SshPort, Tenant, TenantName};

pub fn config() -> HostConfig {
    HostConfig::default()
}

pub fn tenant(name: &str, ip: [u8; 4], port: u64) -> Tenant {
    Tenant::new(
        TenantName::new(name).unwrap(),
        ImageName::new("debian").unwrap(),
        Ipv4Addr::from(ip),
        SshPort::new(port).unwrap(),
        config().defaults.limits(),
    )
}
