//! What every command gets: the loaded config, the global flags, and the
//! host library on this host's real parts.

use std::path::PathBuf;

use anyhow::Context as _;
use sotolito_config::{HostConfig, Loaded, Overrides, Tenant};
use sotolito_host::real::Real;
use sotolito_host::{FileStore, Host};
use sotolito_provisioner::HookCommand;

use crate::output::TenantView;

pub struct Context {
    pub loaded: Loaded,
    pub json: bool,
    pub host: Host,
}

impl Context {
    pub fn load(
        config: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        json: bool,
    ) -> anyhow::Result<Context> {
        let loaded =
            HostConfig::load(&Overrides { config, state_dir }).context("failed to load config")?;
        let hook = hook_command(&loaded)?;
        let config = loaded.config.clone();
        let store = FileStore::new(sotolito_config::Registry::new(config.registry_dir()));
        let sys = Real::system(&config, hook);
        Ok(Context {
            host: Host::new(config, Box::new(store), sys),
            loaded,
            json,
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
