//! systemd units: the per-tenant template, the target that groups tenants,
//! the boot-time network reconcile and the proxy; each rendered by a pure
//! function and written by [`install`].

use std::fs;
use std::path::{Path, PathBuf};

use sotolito_config::{atomic, TenantName};

use crate::{io_err, Error};

pub const TEMPLATE: &str = "sotolito-vps@.service";
pub const TARGET: &str = "sotolito-vps.target";
pub const NET_SERVICE: &str = "sotolito-net.service";
pub const PROXY_SERVICE: &str = "sotolito-proxy.service";
/// On a fleet node: routes and firewall following the node list.
pub const FLEET_NET_SERVICE: &str = "sotolito-fleet-net.service";

/// What the units embed: systemd passes no environment, so the absolute
/// vpsctl and the instance's config.
#[derive(Debug, Clone)]
pub struct UnitContext {
    pub vpsctl: PathBuf,
    pub config: PathBuf,
    /// `--state-dir`, when a flag or the environment chose it.
    pub state_dir: Option<PathBuf>,
    /// CONFIG_DIR/tenants: where NAME.cfg lives.
    pub tenant_cfg_dir: PathBuf,
    /// Seconds `vpsctl run` waits after the stop signal before KILL.
    pub stop_timeout_secs: u64,
    /// STATE_DIR/registry: the proxy reads it.
    pub registry_dir: PathBuf,
    /// Where the proxy reads certificates and ACME writes them.
    pub certs_dir: PathBuf,
    /// The host is a fleet node (`[cluster]`): install the fleet's
    /// network unit too.
    pub fleet: bool,
}

impl UnitContext {
    fn vpsctl(&self, args: &str) -> String {
        let state_dir = self
            .state_dir
            .as_ref()
            .map(|d| format!(" --state-dir {}", d.display()))
            .unwrap_or_default();
        format!(
            "{} --config {}{state_dir} {args}",
            self.vpsctl.display(),
            self.config.display()
        )
    }
}

/// sotolito-vps@.service, as in the original setup. Limits live in each
/// tenant's config.json, not here. Type=notify: `vpsctl run` sends READY=1
/// once runc reports the container running, so `systemctl start` returns
/// only then. KillMode=mixed: SIGTERM goes to
/// `vpsctl run` only, which turns it into the image's stop signal; KILL to
/// everything after TimeoutStopSec.
pub fn render_template(u: &UnitContext) -> String {
    format!(
        "[Unit]\n\
         Description=sotolito VPS %i\n\
         Wants={NET_SERVICE}\n\
         After=network-online.target {NET_SERVICE}\n\
         PartOf={TARGET}\n\
         Before={TARGET}\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         Slice=machine.slice\n\
         Delegate=yes\n\
         EnvironmentFile={cfg}/%i.cfg\n\
         ExecStart={exec}\n\
         KillMode=mixed\n\
         Restart=always\n\
         RestartSec=10s\n\
         TimeoutStopSec={stop}\n\
         \n\
         [Install]\n\
         WantedBy={TARGET}\n",
        cfg = u.tenant_cfg_dir.display(),
        exec = u.vpsctl("run %i"),
        stop = u.stop_timeout_secs + 15,
    )
}

pub fn render_target() -> String {
    format!(
        "[Unit]\n\
         Description=sotolito VPSs\n\
         Wants={NET_SERVICE}\n\
         After={NET_SERVICE}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Bridge and nft table before any tenant starts at boot.
pub fn render_net(u: &UnitContext) -> String {
    format!(
        "[Unit]\n\
         Description=sotolito network (bridge and nftables)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         Before={TARGET}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={exec}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exec = u.vpsctl("net reconcile"),
    )
}

/// sotolito-proxy.service: the proxy faces the internet, so it runs as its
/// own user ([`crate::proxy_user`]) with CAP_NET_BIND_SERVICE alone, sees
/// the whole file system read-only but for the certificate directory, and
/// may make only the system calls and sockets a network service needs.
pub fn render_proxy(u: &UnitContext) -> String {
    format!(
        "[Unit]\n\
         Description=sotolito edge proxy\n\
         Wants=network-online.target\n\
         After=network-online.target {NET_SERVICE}\n\
         \n\
         [Service]\n\
         Type=notify\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=2s\n\
         User={user}\n\
         Group={user}\n\
         AmbientCapabilities=CAP_NET_BIND_SERVICE\n\
         CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ReadOnlyPaths={registry}\n\
         ReadWritePaths={certs}\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         ProtectProc=invisible\n\
         ProcSubset=pid\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         RemoveIPC=yes\n\
         SystemCallArchitectures=native\n\
         SystemCallFilter=@system-service\n\
         SystemCallFilter=~@privileged @resources\n\
         SystemCallErrorNumber=EPERM\n\
         UMask=0077\n\
         LimitNOFILE=1048576\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exec = u.vpsctl("proxy"),
        user = crate::proxy_user::PROXY_USER,
        registry = u.registry_dir.display(),
        certs = u.certs_dir.display(),
    )
}

/// Every unit file by name.
/// A fleet node's routes to the other nodes' tenants and its firewall's
/// view of them, following the node list in etcd. As root (routes and nft
/// need CAP_NET_ADMIN, which the proxy's user lacks); restarted on
/// failure, so an etcd outage at boot only delays it.
pub fn render_fleet_net(u: &UnitContext) -> String {
    format!(
        "[Unit]\n\
         Description=sotolito fleet routes and firewall (follows the node list)\n\
         Wants=network-online.target\n\
         After=network-online.target {NET_SERVICE}\n\
         Before={TARGET}\n\
         \n\
         [Service]\n\
         ExecStart={exec}\n\
         Restart=always\n\
         RestartSec=2s\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exec = u.vpsctl("net reconcile --watch"),
    )
}

pub fn render_all(u: &UnitContext) -> Vec<(&'static str, String)> {
    let mut all = vec![
        (TEMPLATE, render_template(u)),
        (TARGET, render_target()),
        (NET_SERVICE, render_net(u)),
        (PROXY_SERVICE, render_proxy(u)),
    ];
    if u.fleet {
        all.push((FLEET_NET_SERVICE, render_fleet_net(u)));
    }
    all
}

/// Writes the units into `systemd_dir` and enables the target, the net
/// and the proxy units (wants symlinks, as `systemctl enable` would).
/// Returns the files it changed.
pub fn install(systemd_dir: &Path, u: &UnitContext) -> Result<Vec<PathBuf>, Error> {
    fs::create_dir_all(systemd_dir).map_err(io_err("create", systemd_dir))?;
    let mut changed = Vec::new();
    for (name, text) in render_all(u) {
        let path = systemd_dir.join(name);
        if fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        atomic::write(&path, text.as_bytes(), 0o644)?;
        changed.push(path);
    }
    let wants = systemd_dir.join("multi-user.target.wants");
    let fleet = u.fleet.then_some(FLEET_NET_SERVICE);
    for name in [TARGET, NET_SERVICE, PROXY_SERVICE]
        .into_iter()
        .chain(fleet)
    {
        if link(&wants, name, &format!("../{name}"))? {
            changed.push(wants.join(name));
        }
    }
    Ok(changed)
}

/// `sotolito-vps.target.wants/sotolito-vps@NAME.service`: the tenant starts
/// at boot.
pub fn instance_link(systemd_dir: &Path, name: &TenantName) -> PathBuf {
    systemd_dir
        .join(format!("{TARGET}.wants"))
        .join(instance(name))
}

pub fn instance(name: &TenantName) -> String {
    format!("sotolito-vps@{name}.service")
}

pub fn enable_instance(systemd_dir: &Path, name: &TenantName) -> Result<bool, Error> {
    link(
        &systemd_dir.join(format!("{TARGET}.wants")),
        &instance(name),
        &format!("../{TEMPLATE}"),
    )
}

pub fn disable_instance(systemd_dir: &Path, name: &TenantName) -> Result<(), Error> {
    let l = instance_link(systemd_dir, name);
    match fs::remove_file(&l) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &l)(e)),
        _ => Ok(()),
    }
}

/// A symlink `dir/name -> target`, made or corrected; true if changed.
fn link(dir: &Path, name: &str, target: &str) -> Result<bool, Error> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join(name);
    if fs::read_link(&path).is_ok_and(|t| t == Path::new(target)) {
        return Ok(false);
    }
    // Concurrent callers (parallel `start`s of one tenant) all succeed, and
    // the name is never missing in between.
    atomic::symlink(Path::new(target), &path)?;
    Ok(true)
}

/// The EnvironmentFile of one tenant (CONFIG_DIR/tenants/NAME.cfg).
pub fn render_tenant_cfg(ip: std::net::Ipv4Addr, bridge: &str) -> String {
    format!("# written by vpsctl provision\nVPS_IP={ip}\nVPS_NET={bridge}\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx() -> UnitContext {
        UnitContext {
            vpsctl: "/usr/local/bin/vpsctl".into(),
            config: "/etc/sotolito/sotolito.toml".into(),
            state_dir: None,
            tenant_cfg_dir: "/etc/sotolito/tenants".into(),
            stop_timeout_secs: 30,
            registry_dir: "/var/lib/sotolito/registry".into(),
            certs_dir: "/var/lib/sotolito/certs".into(),
            fleet: false,
        }
    }

    #[test]
    fn a_fleet_node_gets_the_route_watch() {
        assert!(!render_all(&ctx())
            .iter()
            .any(|(n, _)| *n == FLEET_NET_SERVICE));
        let u = UnitContext {
            fleet: true,
            ..ctx()
        };
        let f = render_fleet_net(&u);
        assert!(f.contains(
            "ExecStart=/usr/local/bin/vpsctl --config /etc/sotolito/sotolito.toml net reconcile --watch\n"
        ));
        assert!(
            f.contains("Restart=always\n") && !f.contains("User="),
            "{f}"
        );
        let tmp = tempfile::tempdir().unwrap();
        install(tmp.path(), &u).unwrap();
        assert_eq!(
            fs::read_link(
                tmp.path()
                    .join("multi-user.target.wants")
                    .join(FLEET_NET_SERVICE)
            )
            .unwrap(),
            Path::new("../sotolito-fleet-net.service")
        );
    }

    #[test]
    fn template_as_the_original() {
        let t = render_template(&ctx());
        for line in [
            // Ready once the container runs (`vpsctl run` says so).
            "Type=notify",
            "NotifyAccess=main",
            "Slice=machine.slice",
            "Delegate=yes",
            "EnvironmentFile=/etc/sotolito/tenants/%i.cfg",
            "ExecStart=/usr/local/bin/vpsctl --config /etc/sotolito/sotolito.toml run %i",
            "KillMode=mixed",
            "Restart=always",
            "RestartSec=10s",
            "WantedBy=sotolito-vps.target",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line}:\n{t}");
        }
        assert!(
            !t.contains("Memory") && !t.contains("CPU"),
            "no limits in the template"
        );
    }

    #[test]
    fn net_and_proxy_units() {
        let n = render_net(&ctx());
        assert!(n.contains("Type=oneshot\n") && n.contains("Before=sotolito-vps.target\n"));
        assert!(n.contains(
            "ExecStart=/usr/local/bin/vpsctl --config /etc/sotolito/sotolito.toml net reconcile\n"
        ));
        let p = render_proxy(&ctx());
        assert!(p.contains("Type=notify\n") && p.contains("sotolito.toml proxy\n"));
        for line in [
            "User=sotolito-proxy",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadOnlyPaths=/var/lib/sotolito/registry",
            "ReadWritePaths=/var/lib/sotolito/certs",
        ] {
            assert!(p.lines().any(|l| l == line), "missing {line}:\n{p}");
        }
    }

    #[test]
    fn install_is_idempotent_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let changed = install(tmp.path(), &ctx()).unwrap();
        assert_eq!(changed.len(), 7);
        assert!(install(tmp.path(), &ctx()).unwrap().is_empty());
        let name = TenantName::new("acme").unwrap();
        assert!(enable_instance(tmp.path(), &name).unwrap());
        assert!(!enable_instance(tmp.path(), &name).unwrap());
        assert_eq!(
            fs::read_link(instance_link(tmp.path(), &name)).unwrap(),
            Path::new("../sotolito-vps@.service")
        );
        disable_instance(tmp.path(), &name).unwrap();
        disable_instance(tmp.path(), &name).unwrap();
        assert!(fs::symlink_metadata(instance_link(tmp.path(), &name)).is_err());
    }
}
