//! Shared fixtures for unit tests.

use std::net::Ipv4Addr;

use sotolito_config::tenant::{Desired, Limits, FORMAT_VERSION};
use sotolito_config::{CpuWeight, HostConfig, ImageName, MemorySize, SshPort, Tenant, TenantName};

pub fn config() -> HostConfig {
    HostConfig::default()
}

pub fn tenant(name: &str, ip: [u8; 4], port: u64) -> Tenant {
    Tenant {
        version: FORMAT_VERSION,
        name: TenantName::new(name).unwrap(),
        image: ImageName::new("debian").unwrap(),
        ip: Ipv4Addr::from(ip),
        ssh_port: SshPort::new(port).unwrap(),
        http_port: 80,
        hosts: vec![],
        ssh_keys: vec![],
        created: std::time::SystemTime::UNIX_EPOCH,
        desired: Desired::Running,
        acme_opt_out: vec![],
        limits: Limits {
            memory: MemorySize::new("512M").unwrap(),
            cpu_weight: CpuWeight::new(100).unwrap(),
            pids: 4096,
        },
    }
}
