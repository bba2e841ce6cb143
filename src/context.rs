//! What every command gets: the loaded config and the global flags.

use anyhow::Context as _;
use sotolito_config::{HostConfig, Loaded, Overrides, Registry};

use crate::cli::Global;

pub struct Context {
    pub loaded: Loaded,
    pub json: bool,
}

impl Context {
    pub fn load(global: &Global) -> anyhow::Result<Context> {
        let loaded = HostConfig::load(&Overrides {
            config: global.config.clone(),
            state_dir: global.state_dir.clone(),
        })
        .context("failed to load config")?;
        Ok(Context {
            loaded,
            json: global.json,
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.loaded.config
    }

    pub fn registry(&self) -> Registry {
        Registry::new(self.config().registry_dir())
    }
}

impl Context {
    pub fn runc(&self) -> sotolito_provisioner::Runc {
        let rt = &self.config().runtime;
        sotolito_provisioner::Runc {
            binary: rt.runc.clone(),
            root: self.config().runc_root(),
            systemd_cgroup: use_systemd_cgroup(rt.cgroup_manager),
        }
    }
}

impl Context {
    /// Where tenant `name`'s limits and container live in this host's
    /// cgroups, under the driver runc is told to use.
    pub fn tenant_cgroup(
        &self,
        name: &sotolito_config::TenantName,
    ) -> anyhow::Result<sotolito_provisioner::cgroup::TenantCgroup> {
        Ok(sotolito_provisioner::cgroup::TenantCgroup {
            hierarchies: sotolito_provisioner::cgroup::Hierarchies::detect()?,
            prefix: sotolito_provisioner::bundle::cgroup_prefix(&self.config().tenants_dir()),
            name: name.clone(),
            systemd: self.runc().systemd_cgroup,
        })
    }

    /// Writes tenant `t`'s limits to its limit-holding cgroup.
    pub fn apply_limits(&self, t: &sotolito_config::Tenant) -> anyhow::Result<()> {
        let swap = t.limits.swap_or(self.config().defaults.swap);
        self.tenant_cgroup(&t.name)?.apply(&t.limits, swap)?;
        Ok(())
    }
}

/// `auto` means systemd only where systemd is PID 1 (FACTS.md: runc's
/// systemd driver fails elsewhere).
fn use_systemd_cgroup(m: sotolito_config::host::CgroupManager) -> bool {
    use sotolito_config::host::CgroupManager;
    match m {
        CgroupManager::Systemd => true,
        CgroupManager::Cgroupfs => false,
        CgroupManager::Auto => std::path::Path::new("/run/systemd/system").is_dir(),
    }
}
