//! The file store: today's registry (`registry/tenants/NAME.toml`), each
//! call under the registry's flock, held only for that call.

use sotolito_config::{Registry, Tenant, TenantName};

use super::{first_conflict, Revision, Store, StoreError, Versioned};

/// The registry directory of one host behind the [`Store`] contract.
#[derive(Debug, Clone)]
pub struct FileStore {
    registry: Registry,
}

impl FileStore {
    pub fn new(registry: Registry) -> FileStore {
        FileStore { registry }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The revision of a record is a hash of the text it is stored as (FNV-1a:
/// stable across builds, unlike `DefaultHasher`).
fn revision(tenant: &Tenant) -> Revision {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.to_toml().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Revision(h)
}

impl Store for FileStore {
    fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        Ok(self.registry.list()?)
    }

    fn get(&self, name: &TenantName) -> Result<Option<Versioned>, StoreError> {
        Ok(self.registry.get(name)?.map(|tenant| Versioned {
            revision: revision(&tenant),
            tenant,
        }))
    }

    fn create(&self, tenant: &Tenant) -> Result<Revision, StoreError> {
        let lock = self.registry.lock()?;
        if self.registry.get(&tenant.name)?.is_some() {
            return Err(StoreError::Exists(tenant.name.clone()));
        }
        if let Some((claim, owner)) = first_conflict(&self.registry.list()?, tenant) {
            return Err(StoreError::Conflict { claim, owner });
        }
        self.registry.put(&lock, tenant)?;
        Ok(revision(tenant))
    }

    fn update(&self, tenant: &Tenant, expected: Revision) -> Result<Revision, StoreError> {
        let lock = self.registry.lock()?;
        let Some(current) = self.registry.get(&tenant.name)? else {
            return Err(StoreError::NotFound(tenant.name.clone()));
        };
        if revision(&current) != expected {
            return Err(StoreError::Stale(tenant.name.clone()));
        }
        if let Some((claim, owner)) = first_conflict(&self.registry.list()?, tenant) {
            return Err(StoreError::Conflict { claim, owner });
        }
        self.registry.put(&lock, tenant)?;
        Ok(revision(tenant))
    }

    fn remove(&self, name: &TenantName) -> Result<bool, StoreError> {
        let lock = self.registry.lock()?;
        Ok(self.registry.remove(&lock, name)?)
    }

    fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.registry.generation()?)
    }

    fn describe(&self) -> String {
        format!("registry {}", self.registry.dir().display())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_store_contract() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(Registry::new(tmp.path().join("registry")));
        super::super::contract::check(&store);
    }

    #[test]
    fn concurrent_creates_of_one_port_one_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(Registry::new(tmp.path().join("registry")));
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let store = &store;
                    s.spawn(move || {
                        store.create(&crate::testdata::tenant(
                            &format!("t{i}"),
                            10 + i,
                            2201,
                            &[],
                        ))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
