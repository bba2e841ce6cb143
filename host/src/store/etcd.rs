//! The store of a fleet node: tenant records in etcd (sotolito-fleet),
//! behind the same synchronous trait as the file store. This node's
//! records are its `list`; every node's records are what a new record's
//! claims are checked against, and each write is one etcd transaction.

use std::future::Future;

use sotolito_config::{Cluster, NodeName, Tenant, TenantName};
use sotolito_fleet::Stored;

use super::{Claim, Revision, Store, StoreError, Versioned};

pub struct EtcdStore {
    store: sotolito_fleet::Store,
    node: NodeName,
    /// The runtime the store's connections live on; every call blocks on it.
    rt: tokio::runtime::Runtime,
}

impl EtcdStore {
    /// Connects lazily: nothing is asked of etcd until the first call.
    pub fn connect(cluster: &Cluster) -> Result<EtcdStore, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| {
                StoreError::Backend(sotolito_config::Error::Io {
                    action: "start the runtime of",
                    path: "the etcd store".into(),
                    source,
                })
            })?;
        let store = rt.block_on(sotolito_fleet::Store::connect(cluster))?;
        Ok(EtcdStore {
            store,
            node: cluster.node.clone(),
            rt,
        })
    }

    pub fn fleet(&self) -> &sotolito_fleet::Store {
        &self.store
    }

    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// Runs `fut` to completion on the store's runtime; from a thread
    /// that is inside another runtime, on a scoped thread of its own.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt.block_on(fut))
                    .join()
                    .expect("the etcd call does not panic")
            })
        } else {
            self.rt.block_on(fut)
        }
    }

    /// This node's entry of `name`; another node's is an error that names
    /// that node.
    fn local(&self, name: &TenantName) -> Result<Option<Stored>, StoreError> {
        match self.block_on(self.store.tenant(name))? {
            Some(s) if s.entry.node != self.node => Err(sotolito_fleet::Error::OtherNode {
                name: name.clone(),
                node: s.entry.node,
            }
            .into()),
            other => Ok(other),
        }
    }
}

/// The trait's conflict for the fleet's, so that provision plans again
/// when an address or port it picked was taken meanwhile.
fn map(e: sotolito_fleet::Error) -> StoreError {
    if let sotolito_fleet::Error::Conflict { key, owner, .. } = &e {
        if let Some(claim) = claim_of(key) {
            return StoreError::Conflict {
                claim,
                owner: owner.clone(),
            };
        }
    }
    match e {
        sotolito_fleet::Error::Raced(name) => StoreError::Stale(name),
        sotolito_fleet::Error::NotFound(name) => StoreError::NotFound(name),
        other => StoreError::Fleet(other),
    }
}

fn claim_of(key: &str) -> Option<Claim> {
    let rest = key
        .strip_prefix(sotolito_fleet::keys::ROOT)?
        .strip_prefix("claims/")?;
    let (kind, value) = rest.split_once('/')?;
    Some(match kind {
        "ip" => Claim::Address(value.parse().ok()?),
        "ssh_port" => Claim::SshPort(value.parse().ok()?),
        "host" => Claim::Host(value.parse().ok()?),
        "idrange" => Claim::IdRange(value.parse().ok()?),
        _ => return None,
    })
}

fn revision(rev: i64) -> Revision {
    Revision(u64::try_from(rev).unwrap_or(0))
}

impl Store for EtcdStore {
    fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        let (all, _) = self.block_on(self.store.tenants())?;
        Ok(all
            .into_iter()
            .filter(|e| e.node == self.node)
            .map(|e| e.tenant)
            .collect())
    }

    fn claimed(&self) -> Result<Vec<Tenant>, StoreError> {
        let (all, _) = self.block_on(self.store.tenants())?;
        Ok(all.into_iter().map(|e| e.tenant).collect())
    }

    fn get(&self, name: &TenantName) -> Result<Option<Versioned>, StoreError> {
        Ok(self.local(name)?.map(|s| Versioned {
            tenant: s.entry.tenant,
            revision: revision(s.mod_revision),
        }))
    }

    fn create(&self, tenant: &Tenant) -> Result<Revision, StoreError> {
        let stored = self
            .block_on(self.store.put_tenant(&self.node, tenant, None))
            .map_err(|e| match e {
                // A record appeared since (here or on another node): the
                // name exists; provision undoes its work and reads again.
                sotolito_fleet::Error::Raced(name)
                | sotolito_fleet::Error::OtherNode { name, .. } => StoreError::Exists(name),
                e => map(e),
            })?;
        Ok(revision(stored.mod_revision))
    }

    fn update(&self, tenant: &Tenant, expected: Revision) -> Result<Revision, StoreError> {
        let Some(current) = self.local(&tenant.name)? else {
            return Err(StoreError::NotFound(tenant.name.clone()));
        };
        if revision(current.mod_revision) != expected {
            return Err(StoreError::Stale(tenant.name.clone()));
        }
        let stored = self
            .block_on(self.store.put_tenant(&self.node, tenant, Some(&current)))
            .map_err(map)?;
        Ok(revision(stored.mod_revision))
    }

    fn remove(&self, name: &TenantName) -> Result<bool, StoreError> {
        self.block_on(self.store.remove_tenant(&self.node, name))
            .map_err(map)
    }

    fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.block_on(self.store.generation())?)
    }

    fn describe(&self) -> String {
        format!("etcd store {} (node {})", self.store.endpoints(), self.node)
    }
}

/// The fleet crate's etcd harness (real members, mutual TLS).
#[cfg(test)]
#[path = "../../../fleet/tests/support/mod.rs"]
mod etcd_support;

#[cfg(test)]
mod tests {
    use super::etcd_support as support;
    use super::*;

    /// The behaviour every store owes the lifecycle, against real etcd.
    #[test]
    fn keeps_the_store_contract() {
        let etcd = support::Etcd::loopback(1);
        let lo = std::net::Ipv4Addr::LOCALHOST;
        let store = EtcdStore::connect(&etcd.cluster("node1", lo, lo)).unwrap();
        super::super::contract::check(&store);
        // Another node sees none of node1's records as its own, but all
        // of them as claimed; and cannot touch them.
        let other = EtcdStore::connect(&etcd.cluster("node2", lo, lo)).unwrap();
        assert!(other.list().unwrap().is_empty());
        assert_eq!(other.claimed().unwrap().len(), 2);
        let beta: TenantName = "beta".parse().unwrap();
        assert_eq!(
            other.get(&beta).unwrap_err().to_string(),
            "tenant beta lives on node node1 (manage it there, or pick another name)"
        );
        assert!(other.remove(&beta).is_err());
        assert!(store.get(&beta).unwrap().is_some());
    }

    #[test]
    fn claim_keys_map_back_to_claims() {
        assert_eq!(
            claim_of("/sotolito/v1/claims/ssh_port/2201"),
            Some(Claim::SshPort("2201".parse().unwrap()))
        );
        assert_eq!(
            claim_of("/sotolito/v1/claims/ip/172.18.1.2"),
            Some(Claim::Address("172.18.1.2".parse().unwrap()))
        );
        assert_eq!(
            claim_of("/sotolito/v1/claims/host/a.example"),
            Some(Claim::Host("a.example".parse().unwrap()))
        );
        assert_eq!(
            claim_of("/sotolito/v1/claims/idrange/1065536"),
            Some(Claim::IdRange(1_065_536))
        );
        assert_eq!(claim_of("/sotolito/v1/tenants/acme"), None);
    }
}
