//! What every command gets: the loaded config, the global flags, and the
//! host library on this host's real parts.

use std::path::PathBuf;

use anyhow::Context as _;
use sotolito_config::{HostConfig, Loaded, Overrides, Tenant};
use sotolito_fleet::NodeRecord;
use sotolito_host::real::Real;
use sotolito_host::{EtcdStore, FileStore, Host, Store};
use sotolito_provisioner::HookCommand;

use crate::output::TenantView;

pub struct Context {
    pub loaded: Loaded,
    pub json: bool,
    pub host: Host,
    /// With `[cluster]`: the fleet's store, for what spans nodes (`nodes`,
    /// `list`, registration).
    pub fleet: Option<Fleet>,
}

/// This host as a node of a fleet.
pub struct Fleet {
    pub store: EtcdStore,
    /// The fleet's tenant range (`[network] subnet` as configured); the
    /// host's own `network.subnet` is its node's share of it.
    pub range: ipnet::Ipv4Net,
    pub node: NodeRecord,
}

impl Context {
    pub fn load(
        config: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        json: bool,
    ) -> anyhow::Result<Context> {
        let loaded =
            HostConfig::load(&Overrides { config, state_dir }).context("failed to load config")?;
        let mut loaded = loaded;
        let hook = hook_command(&loaded)?;
        let fleet = match loaded.config.cluster.clone() {
            Some(cluster) => {
                let range = loaded.config.network.subnet;
                let node = node_record(&loaded.config, &cluster, range)?;
                // This node's tenants, bridge and leases live in its share.
                loaded.config.network.subnet = node.subnet;
                // The firewall's view of the other nodes, as the last
                // `net reconcile` saw them: every table this command
                // rebuilds keeps admitting their proxies.
                loaded.config.network.fleet = Some(sotolito_config::FleetNetwork {
                    range,
                    private_address: cluster.private_address,
                    peers: read_peers(&loaded.config)?,
                });
                Some(Fleet {
                    store: EtcdStore::connect(&cluster)
                        .context("failed to open the fleet's store")?,
                    range,
                    node,
                })
            }
            None => None,
        };
        let config = loaded.config.clone();
        let store: Box<dyn Store> = match &config.cluster {
            Some(cluster) => {
                Box::new(EtcdStore::connect(cluster).context("failed to open the fleet's store")?)
            }
            None => Box::new(FileStore::new(sotolito_config::Registry::new(
                config.registry_dir(),
            ))),
        };
        let sys = Real::system(&config, hook);
        Ok(Context {
            host: Host::new(config, store, sys),
            loaded,
            json,
            fleet,
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.loaded.config
    }

    /// One tenant as `status` and `list` show it: its record joined with
    /// runc's view.
    pub fn view(&self, tenant: &Tenant) -> TenantView {
        let state = self.host.sys.runtime.state(&tenant.name);
        let layout = sotolito_host::real::layout(self.config(), &tenant.name);
        let mut v = TenantView::new(
            tenant,
            state,
            sotolito_provisioner::disk::used_bytes(&layout),
        );
        v.swap = tenant
            .limits
            .swap_or(self.config().defaults.swap)
            .to_string();
        // A fleet node's own tenant (what provision, start and set print).
        if let (Some(fleet), Some(cluster)) = (&self.fleet, &self.config().cluster) {
            v.node = Some(fleet.node.name.to_string());
            v.ssh = Some(format!(
                "{}:{}",
                cluster.public_address,
                tenant.ssh_port.get()
            ));
        }
        v
    }

    /// Prints a tenant after a command: its view under --json, else `line`.
    pub fn print_tenant(
        &self,
        name: &sotolito_config::TenantName,
        line: &str,
    ) -> anyhow::Result<()> {
        if self.json {
            let tenant = self.host.store.require(name)?.tenant;
            crate::output::print_json(&self.view(&tenant))
        } else {
            println!("{line}");
            Ok(())
        }
    }
}

/// STATE_DIR/fleet/node.json: this node's record as last registered, so
/// that hooks and every other command know the node's tenant subnet
/// without asking etcd (a tenant starts while etcd is down).
pub fn node_cache(config: &HostConfig) -> PathBuf {
    config.paths.state_dir.join("fleet/node.json")
}

/// STATE_DIR/fleet/peers.json: the other nodes as `net reconcile` last
/// saw them (routes and the firewall are kept from it while etcd is down).
pub fn peers_cache(config: &HostConfig) -> PathBuf {
    config.paths.state_dir.join("fleet/peers.json")
}

/// The cached peers; none before the first `net reconcile`.
fn read_peers(config: &HostConfig) -> anyhow::Result<Vec<sotolito_config::FleetPeer>> {
    let path = peers_cache(config);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is unreadable (run vpsctl net reconcile again)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Caches the peers for [`read_peers`], unless they are unchanged.
pub fn write_peers(
    config: &HostConfig,
    peers: &[sotolito_config::FleetPeer],
) -> anyhow::Result<()> {
    let path = peers_cache(config);
    let bytes = serde_json::to_vec_pretty(peers).expect("peers serialize");
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    sotolito_config::atomic::write(&path, &bytes, 0o644)?;
    Ok(())
}

/// The cached record, or a registration now when there is none yet.
fn node_record(
    config: &HostConfig,
    cluster: &sotolito_config::Cluster,
    range: ipnet::Ipv4Net,
) -> anyhow::Result<NodeRecord> {
    let path = node_cache(config);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let rec: NodeRecord = serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is unreadable (run vpsctl init again)", path.display())
            })?;
            if rec.name == cluster.node && rec.range == range {
                return Ok(rec);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    register(config, cluster, range)
}

/// Registers (or re-registers) this host as its node and caches the record.
pub fn register(
    config: &HostConfig,
    cluster: &sotolito_config::Cluster,
    range: ipnet::Ipv4Net,
) -> anyhow::Result<NodeRecord> {
    let fail = || format!("failed to register node {} in the fleet", cluster.node);
    let store = EtcdStore::connect(cluster).with_context(fail)?;
    let rec = store
        .block_on(store.fleet().register_node(cluster, range))
        .with_context(fail)?;
    let path = node_cache(config);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
            .with_context(fail)?;
    }
    let bytes = serde_json::to_vec_pretty(&rec).expect("a node record serializes");
    sotolito_config::atomic::write(&path, &bytes, 0o644).with_context(fail)?;
    Ok(rec)
}

/// The runc hooks and the console pump call this very binary with this
/// instance's config (runc and systemd pass no environment).
fn hook_command(loaded: &Loaded) -> anyhow::Result<HookCommand> {
    let exe = std::env::current_exe().context("cannot find the vpsctl binary")?;
    Ok(HookCommand {
        vpsctl: std::fs::canonicalize(&exe).unwrap_or(exe),
        config: loaded.path.clone(),
        state_dir: loaded.state_dir_override.clone(),
    })
}
