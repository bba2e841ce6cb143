//! Tenant records in the fleet, and the claims that keep their names, host
//! names, SSH ports and addresses unique across every node.
//!
//! A put is one transaction: the record's own key must be absent
//! (`create_revision == 0`) or unchanged since it was read
//! (`mod_revision`), every newly claimed key must be absent, every kept
//! claim must still name this tenant; then the record and the new claims
//! are written and the released claims deleted together. When the
//! transaction fails, its failure branch reads the same keys back, so the
//! error names the tenant that holds what was asked for.

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use sotolito_config::{NodeName, Tenant, TenantName};

use crate::error::Error;
use crate::keys;
use crate::store::{key_str, Store};

/// What `/sotolito/v1/tenants/NAME` holds: the record a host's file
/// registry would hold, and the node it lives on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    pub node: NodeName,
    pub tenant: Tenant,
}

/// An entry as read, with the revision a later put compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub entry: TenantEntry,
    pub mod_revision: i64,
}

/// One claimed thing: its key, and how a conflict over it reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    /// Conflicts are reported address first, then port, then host, as the
    /// file registry reports them.
    order: u8,
    key: String,
    what: String,
    hint: &'static str,
}

fn claims(t: &Tenant) -> BTreeSet<Claim> {
    let mut out = BTreeSet::new();
    out.insert(Claim {
        order: 0,
        key: keys::ip_claim(t.ip),
        what: format!("address {}", t.ip),
        hint: "pick another with --ip, or leave it out to get a free one",
    });
    out.insert(Claim {
        order: 1,
        key: keys::ssh_port_claim(t.ssh_port),
        what: format!("ssh port {}", t.ssh_port),
        hint: "pick another with --ssh-port",
    });
    // The shared id range is everyone's; an isolated one is the tenant's
    // alone (ranges are aligned, so equal starts are the only overlap).
    if let Some(m) = t.idmap.filter(|m| m.isolated) {
        out.insert(Claim {
            order: 3,
            key: keys::idrange_claim(m.host_id),
            what: format!("id range starting at {}", m.host_id),
            hint: "provision again to get a free one",
        });
    }
    for h in &t.hosts {
        out.insert(Claim {
            order: 2,
            key: keys::host_claim(h),
            what: format!("host {h}"),
            hint: "a host routes to one tenant; remove it there first",
        });
    }
    out
}

pub(crate) fn decode(key: &str, value: &[u8]) -> Result<TenantEntry, Error> {
    let entry: TenantEntry = serde_json::from_slice(value).map_err(|e| Error::Record {
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    if keys::name_in(keys::TENANTS, key) != Some(entry.tenant.name.as_str()) {
        return Err(Error::Record {
            key: key.to_owned(),
            message: format!("it names tenant {}", entry.tenant.name),
        });
    }
    if entry.tenant.version > sotolito_config::tenant::FORMAT_VERSION {
        return Err(Error::Record {
            key: key.to_owned(),
            message: format!(
                "format version {} is newer than this vpsctl's (upgrade vpsctl)",
                entry.tenant.version
            ),
        });
    }
    Ok(entry)
}

fn encode(entry: &TenantEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("a tenant entry always serializes")
}

impl Store {
    /// The tenant's entry, if it exists anywhere in the fleet.
    pub async fn tenant(&self, name: &TenantName) -> Result<Option<Stored>, Error> {
        let key = keys::tenant(name);
        let Some(kv) = self.get(&key).await? else {
            return Ok(None);
        };
        Ok(Some(Stored {
            entry: decode(&key, kv.value())?,
            mod_revision: kv.mod_revision(),
        }))
    }

    /// A number that changes whenever a tenant record is written or
    /// removed (0 before the first).
    pub async fn generation(&self) -> Result<u64, Error> {
        Ok(self
            .get(keys::GENERATION)
            .await?
            .map_or(0, |kv| u64::try_from(kv.mod_revision()).unwrap_or(0)))
    }

    /// Every tenant of the fleet, sorted by name, and the revision read.
    pub async fn tenants(&self) -> Result<(Vec<TenantEntry>, i64), Error> {
        let (kvs, rev) = self.range(keys::TENANTS).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            out.push(decode(&key_str(kv), kv.value())?);
        }
        out.sort_by(|a, b| a.tenant.name.cmp(&b.tenant.name));
        Ok((out, rev))
    }

    /// Writes `tenant` as living on `node`, claiming what it names. `prev`
    /// is the entry this write replaces, as read by [`Store::tenant`]
    /// (None: a new tenant). Nothing is written unless everything is.
    pub async fn put_tenant(
        &self,
        node: &NodeName,
        tenant: &Tenant,
        prev: Option<&Stored>,
    ) -> Result<Stored, Error> {
        if let Some(p) = prev {
            if &p.entry.node != node {
                return Err(Error::OtherNode {
                    name: tenant.name.clone(),
                    node: p.entry.node.clone(),
                });
            }
        }
        let name = &tenant.name;
        let key = keys::tenant(name);
        let new = claims(tenant);
        let old = prev.map(|p| claims(&p.entry.tenant)).unwrap_or_default();
        let old_keys: BTreeSet<&str> = old.iter().map(|c| c.key.as_str()).collect();
        let new_keys: BTreeSet<&str> = new.iter().map(|c| c.key.as_str()).collect();
        let added: Vec<&Claim> = new
            .iter()
            .filter(|c| !old_keys.contains(c.key.as_str()))
            .collect();

        let mut when = vec![match prev {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(p) => Compare::mod_revision(key.as_str(), CompareOp::Equal, p.mod_revision),
        }];
        let mut then = vec![TxnOp::put(
            key.as_str(),
            encode(&TenantEntry {
                node: node.clone(),
                tenant: tenant.clone(),
            }),
            None,
        )];
        for c in &new {
            if old_keys.contains(c.key.as_str()) {
                when.push(Compare::value(
                    c.key.as_str(),
                    CompareOp::Equal,
                    name.as_str(),
                ));
            } else {
                when.push(Compare::create_revision(
                    c.key.as_str(),
                    CompareOp::Equal,
                    0,
                ));
                then.push(TxnOp::put(c.key.as_str(), name.as_str(), None));
            }
        }
        for c in old.iter().filter(|c| !new_keys.contains(c.key.as_str())) {
            then.push(TxnOp::delete(c.key.as_str(), None));
        }
        then.push(TxnOp::put(keys::GENERATION, "", None));
        // On failure: the record, then each new claim, in `added` order.
        let mut or_else = vec![TxnOp::get(key.as_str(), None)];
        or_else.extend(added.iter().map(|c| TxnOp::get(c.key.as_str(), None)));

        let resp = self
            .txn(Txn::new().when(when).and_then(then).or_else(or_else))
            .await?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            tracing::debug!(tenant = %name, node = %node, revision = rev, "fleet record written");
            return Ok(Stored {
                entry: TenantEntry {
                    node: node.clone(),
                    tenant: tenant.clone(),
                },
                mod_revision: rev,
            });
        }
        let got: Vec<Option<etcd_client::KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                _ => None,
            })
            .collect();
        // Someone else owns the name, or the record moved under us.
        let record = got.first().cloned().flatten();
        let record_moved = match (prev, &record) {
            (None, Some(_)) => true,
            (Some(_), None) => true,
            (Some(p), Some(kv)) => kv.mod_revision() != p.mod_revision,
            (None, None) => false,
        };
        if record_moved {
            if let Some(kv) = &record {
                let e = decode(&key, kv.value())?;
                if &e.node != node {
                    return Err(Error::OtherNode {
                        name: name.clone(),
                        node: e.node,
                    });
                }
            }
            return Err(Error::Raced(name.clone()));
        }
        for (c, kv) in added.iter().zip(got.iter().skip(1)) {
            if let Some(kv) = kv {
                let owner = String::from_utf8_lossy(kv.value()).into_owned();
                if owner != name.as_str() {
                    return Err(Error::Conflict {
                        key: c.key.clone(),
                        what: c.what.clone(),
                        owner: TenantName::new(&owner).map_err(|e| Error::Record {
                            key: c.key.clone(),
                            message: e.to_string(),
                        })?,
                        hint: c.hint,
                    });
                }
            }
        }
        // A kept claim no longer names us: only a hand edit does that.
        Err(Error::Raced(name.clone()))
    }

    /// Removes the tenant and its claims in one transaction; returns
    /// whether it existed. A tenant of another node is refused.
    pub async fn remove_tenant(&self, node: &NodeName, name: &TenantName) -> Result<bool, Error> {
        let Some(prev) = self.tenant(name).await? else {
            return Ok(false);
        };
        if &prev.entry.node != node {
            return Err(Error::OtherNode {
                name: name.clone(),
                node: prev.entry.node,
            });
        }
        let key = keys::tenant(name);
        let mut then = vec![TxnOp::delete(key.as_str(), None)];
        let mut when = vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            prev.mod_revision,
        )];
        for c in claims(&prev.entry.tenant) {
            // Delete a claim only while it is still ours.
            when.push(Compare::value(
                c.key.as_str(),
                CompareOp::Equal,
                name.as_str(),
            ));
            then.push(TxnOp::delete(c.key.as_str(), None));
        }
        then.push(TxnOp::put(keys::GENERATION, "", None));
        let resp = self.txn(Txn::new().when(when).and_then(then)).await?;
        if !resp.succeeded() {
            return Err(Error::Raced(name.clone()));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_ordered_as_the_file_registry_reports_them() {
        let mut t = Tenant::new(
            TenantName::new("acme").unwrap(),
            sotolito_config::ImageName::new("busybox").unwrap(),
            "172.18.1.2".parse().unwrap(),
            sotolito_config::SshPort::new(2201).unwrap(),
            sotolito_config::host::Defaults::default().limits(),
        );
        // Records keep whole seconds.
        t.created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        t.hosts = vec![
            sotolito_config::HostName::new("b.example.com").unwrap(),
            sotolito_config::HostName::new("a.example.com").unwrap(),
        ];
        let keys: Vec<String> = claims(&t).into_iter().map(|c| c.key).collect();
        assert_eq!(
            keys,
            [
                "/sotolito/v1/claims/ip/172.18.1.2",
                "/sotolito/v1/claims/ssh_port/2201",
                "/sotolito/v1/claims/host/a.example.com",
                "/sotolito/v1/claims/host/b.example.com",
            ]
        );
        let entry = TenantEntry {
            node: NodeName::new("node1").unwrap(),
            tenant: t,
        };
        let bytes = encode(&entry);
        assert_eq!(decode("/sotolito/v1/tenants/acme", &bytes).unwrap(), entry);
        let err = decode("/sotolito/v1/tenants/other", &bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "etcd key /sotolito/v1/tenants/other holds an unreadable record: it names tenant acme (fix or delete it with etcdctl)"
        );
    }
}
