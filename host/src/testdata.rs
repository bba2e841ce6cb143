//! Records and configs for the unit tests.

use std::net::Ipv4Addr;
use std::path::Path;

use sotolito_config::{HostConfig, ImageName, SshPort, Tenant, TenantName};

/// A tenant at 172.18.0.`octet` with SSH port `port`.
pub fn tenant(name: &str, octet: u8, port: u16, hosts: &[&str]) -> Tenant {
    Tenant {
        hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
        // Whole seconds, as the record keeps them.
        created: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000),
        ..Tenant::new(
            TenantName::new(name).unwrap(),
            ImageName::new("busybox").unwrap(),
            Ipv4Addr::new(172, 18, 0, octet),
            SshPort::new(u64::from(port)).unwrap(),
            sotolito_config::host::Defaults::default().limits(),
        )
    }
}

/// A host config whose every path is under `dir`.
pub fn config(dir: &Path) -> HostConfig {
    let d = dir.display();
    let text = format!(
        "[paths]\nstate_dir = \"{d}/state\"\nrun_dir = \"{d}/run\"\nconfig_dir = \"{d}/etc\"\nsystemd_dir = \"{d}/systemd\"\n"
    );
    HostConfig::parse(&text, &dir.join("sotolito.toml")).unwrap()
}
