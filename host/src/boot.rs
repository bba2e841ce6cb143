//! Boot and shutdown on hosts where systemd does not do them: the network
//! first, then every tenant whose desired state is running, a few at a
//! time, through the same start path as `start`; and every tenant stopped
//! before a reboot, its desired state kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sotolito_config::{Desired, Tenant, TenantName};
use sotolito_provisioner::runtime::ContainerStatus;
use sotolito_provisioner::supervise::Stopped;

use crate::{Error, Host, Started};

/// What boot did with one tenant.
#[derive(Debug)]
pub enum Booted {
    Started,
    /// It ran already: left alone.
    Running,
    /// Its desired state is stopped: left alone.
    Stopped,
    Failed(Error),
}

impl Host {
    /// The network from the store (no tenant is started without it: one
    /// without its DNAT forward is up but unreachable), then every tenant
    /// whose desired state is running, by `jobs` workers. One failing does
    /// not stop the others.
    pub fn boot(&self, jobs: usize) -> Result<Vec<(TenantName, Booted)>, Error> {
        self.sys.files.ensure_layout()?;
        let tenants = self.reconcile()?;
        Ok(for_each(&tenants, jobs, |t| self.boot_one(t)))
    }

    fn boot_one(&self, t: &Tenant) -> Booted {
        if t.desired == Desired::Stopped {
            return Booted::Stopped;
        }
        // A running tenant is left alone (not even restricted or relinked).
        let running = self
            .sys
            .runtime
            .state(&t.name)
            .ok()
            .flatten()
            .is_some_and(|s| {
                matches!(s.status, ContainerStatus::Running | ContainerStatus::Paused)
            });
        if running {
            return Booted::Running;
        }
        match self.start(&t.name) {
            Ok(Started::Already) => Booted::Running,
            Ok(Started::Now) => {
                tracing::info!(tenant = %t.name, "started at boot");
                Booted::Started
            }
            Err(e) => Booted::Failed(e),
        }
    }

    /// Every tenant's container stopped (its image's stop signal, KILL
    /// after `timeout`), by `jobs` workers, desired states kept so that the
    /// next boot starts again what ran.
    #[allow(clippy::type_complexity)] // one caller prints it
    pub fn shutdown(
        &self,
        timeout: Duration,
        jobs: usize,
    ) -> Result<Vec<(TenantName, Result<Stopped, Error>)>, Error> {
        let tenants = self.store.list()?;
        Ok(for_each(&tenants, jobs, |t| {
            self.stop_container(&t.name, self.sys.files.stop_signal(t), timeout)
        }))
    }
}

/// `f` of every tenant, in store order, by `jobs` workers taking them from
/// a shared queue.
fn for_each<T: Send>(
    tenants: &[Tenant],
    jobs: usize,
    f: impl Fn(&Tenant) -> T + Sync,
) -> Vec<(TenantName, T)> {
    let outcomes: Vec<Mutex<Option<T>>> = tenants.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(tenants.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = tenants.get(i) else { break };
                let o = f(t);
                *outcomes[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
            });
        }
    });
    tenants
        .iter()
        .zip(outcomes)
        .filter_map(|(t, m)| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .map(|o| (t.name.clone(), o))
        })
        .collect()
}
