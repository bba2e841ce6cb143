//! The host's tenant network as the lifecycle uses it: forwards added and
//! removed by element, our tables rebuilt from the store (under the host
//! lock) when they are missing, reconcile, and the runc hooks.

use sotolito_config::{Tenant, TenantName};

use crate::{Error, Host};

impl Host {
    /// Adds one tenant's forward. When our tables are missing (a reboot,
    /// `nft flush ruleset`) they are rebuilt from the store plus `tenant`
    /// under the host lock, taken here unless the caller `holds_lock`.
    pub(crate) fn add_forward(&self, tenant: &Tenant, holds_lock: bool) -> Result<(), Error> {
        match self.sys.firewall.add_forward(tenant) {
            Err(Error::TablesMissing) => {
                let _lock = if holds_lock { None } else { Some(self.lock()?) };
                // Another command may have rebuilt them meanwhile.
                if self.sys.firewall.tables_present()? {
                    return self.sys.firewall.add_forward(tenant);
                }
                let mut tenants = self.store.list()?;
                tenants.retain(|t| t.name != tenant.name);
                tenants.push(tenant.clone());
                tenants.sort_by(|a, b| a.name.cmp(&b.name));
                self.replace_network(&tenants)
            }
            other => other,
        }
    }

    /// Bridge, our whole tables, and the ports of attached tenants.
    fn replace_network(&self, tenants: &[Tenant]) -> Result<(), Error> {
        self.sys.links.ensure_bridge()?;
        self.sys.firewall.replace(tenants)?;
        self.sys.links.secure_ports(tenants)?;
        tracing::debug!(tenants = tenants.len(), "network reconciled");
        Ok(())
    }

    /// `vpsctl net reconcile`: the bridge and our tables rebuilt from the
    /// store, under the host lock so that no provision adds a forward this
    /// replacement would drop. Returns the tenants it was built from.
    pub fn reconcile(&self) -> Result<Vec<Tenant>, Error> {
        let _lock = self.lock()?;
        let tenants = self.store.list()?;
        self.replace_network(&tenants)?;
        Ok(tenants)
    }

    /// The bridge, and our tables when missing (existing tables are left
    /// as they are): what `init` and `run` need.
    pub fn ensure_network(&self) -> Result<(), Error> {
        self.sys.links.ensure_bridge()?;
        if self.sys.firewall.tables_present()? {
            return Ok(());
        }
        let _lock = self.lock()?;
        if !self.sys.firewall.tables_present()? {
            let tenants = self.store.list()?;
            self.sys.firewall.replace(&tenants)?;
            tracing::info!(tenants = tenants.len(), "nft tables created");
        }
        Ok(())
    }

    /// The runc `createRuntime` hook: the tenant's cgroups handed to its
    /// mapped root, its veth, and its forward (our tables rebuilt under
    /// the host lock if missing), so a started tenant is reachable.
    pub fn attach(&self, name: &TenantName, pid: u32) -> Result<(), Error> {
        let tenant = self.store.require(name)?.tenant;
        self.sys.runtime.delegate_cgroups(pid)?;
        self.sys.links.ensure_bridge()?;
        self.add_forward(&tenant, false)?;
        self.sys.links.attach(&tenant, pid)
    }

    /// The runc `poststop` hook: the tenant's veth removed; idempotent.
    pub fn detach(&self, name: &TenantName) -> Result<(), Error> {
        self.sys.links.detach(name)
    }
}
