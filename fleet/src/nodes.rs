//! Nodes of the fleet: each host's record (addresses, tenant subnet), its
//! subnet allocated from the fleet's range by transaction, and its
//! liveness key under a lease that a running node keeps alive.
//!
//! The record itself is never leased: a dead node stays listed (down),
//! with its subnet and tenants, until an operator removes it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sotolito_config::{Cluster, NodeName};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::keys;
use crate::store::{key_str, Store};

/// What `/sotolito/v1/nodes/NODE` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: NodeName,
    pub private_address: Ipv4Addr,
    pub public_address: Ipv4Addr,
    /// This node's tenant subnet, carved out of `range`.
    pub subnet: Ipv4Net,
    /// The fleet's range when the node registered: every node must agree.
    pub range: Ipv4Net,
}

/// A node as `vpsctl nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub record: NodeRecord,
    /// Its liveness key exists: the lease was renewed within its TTL.
    pub up: bool,
    pub tenants: usize,
}

fn decode(key: &str, value: &[u8]) -> Result<NodeRecord, Error> {
    let rec: NodeRecord = serde_json::from_slice(value).map_err(|e| Error::Record {
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    if keys::name_in(keys::NODES, key) != Some(rec.name.as_str()) {
        return Err(Error::Record {
            key: key.to_owned(),
            message: format!("it names node {}", rec.name),
        });
    }
    Ok(rec)
}

fn encode(rec: &NodeRecord) -> Vec<u8> {
    serde_json::to_vec(rec).expect("a node record always serializes")
}

/// The node subnets of `range`, lowest first.
fn candidates(range: Ipv4Net, prefix: u8) -> impl Iterator<Item = Ipv4Net> {
    range.subnets(prefix).into_iter().flatten()
}

impl Store {
    /// Registers (or re-registers) this host as `cluster.node`: its record
    /// with its addresses, and a tenant subnet of `/node_prefix` from
    /// `range` unless it already has one. Idempotent; a node keeps its
    /// subnet for life.
    pub async fn register_node(
        &self,
        cluster: &Cluster,
        range: Ipv4Net,
    ) -> Result<NodeRecord, Error> {
        let name = &cluster.node;
        let key = keys::node(name);
        // Each lost race means another node took a subnet: bounded by
        // the number of subnets.
        let tries = candidates(range, cluster.node_prefix).count() + 2;
        for _ in 0..tries {
            let current = self.get(&key).await?;
            if let Some(kv) = current {
                let mut rec = decode(&key, kv.value())?;
                if rec.range != range {
                    return Err(Error::RangeMismatch {
                        node: name.clone(),
                        stored: rec.range,
                        configured: range,
                    });
                }
                if rec.private_address != cluster.private_address {
                    if let Some(alive) = self.get(&keys::alive(name)).await? {
                        let registered = String::from_utf8_lossy(alive.value())
                            .parse()
                            .unwrap_or(rec.private_address);
                        if registered != cluster.private_address {
                            return Err(Error::NodeTaken {
                                node: name.clone(),
                                registered,
                                ours: cluster.private_address,
                            });
                        }
                    }
                }
                if rec.private_address == cluster.private_address
                    && rec.public_address == cluster.public_address
                {
                    return Ok(rec);
                }
                rec.private_address = cluster.private_address;
                rec.public_address = cluster.public_address;
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put(key.as_str(), encode(&rec), None)]);
                let resp = self.txn(txn).await?;
                if resp.succeeded() {
                    return Ok(rec);
                }
                continue;
            }
            let (taken, _) = self.range(keys::SUBNETS).await?;
            let taken: Vec<String> = taken.iter().map(key_str).collect();
            let Some(subnet) =
                candidates(range, cluster.node_prefix).find(|n| !taken.contains(&keys::subnet(*n)))
            else {
                return Err(Error::RangeFull {
                    range,
                    prefix: cluster.node_prefix,
                    node: name.clone(),
                });
            };
            let rec = NodeRecord {
                name: name.clone(),
                private_address: cluster.private_address,
                public_address: cluster.public_address,
                subnet,
                range,
            };
            let skey = keys::subnet(subnet);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(skey.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(key.as_str(), encode(&rec), None),
                    TxnOp::put(skey.as_str(), name.as_str(), None),
                ]);
            let resp = self.txn(txn).await?;
            if resp.succeeded() {
                tracing::info!(node = %name, subnet = %subnet, "node registered");
                return Ok(rec);
            }
        }
        Err(Error::Store {
            endpoints: self.endpoints().to_owned(),
            message: format!("registering node {name} lost every race for a subnet"),
        })
    }

    /// Every node with its health and tenant count, sorted by name.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, Error> {
        let (recs, _) = self.range(keys::NODES).await?;
        let (alive, _) = self.range(keys::ALIVE).await?;
        let (tenants, _) = self.tenants().await?;
        let alive: Vec<String> = alive.iter().map(key_str).collect();
        let mut counts: BTreeMap<&NodeName, usize> = BTreeMap::new();
        for t in &tenants {
            *counts.entry(&t.node).or_default() += 1;
        }
        let mut out = Vec::with_capacity(recs.len());
        for kv in &recs {
            let record = decode(&key_str(kv), kv.value())?;
            out.push(NodeStatus {
                up: alive.contains(&keys::alive(&record.name)),
                tenants: counts.get(&record.name).copied().unwrap_or(0),
                record,
            });
        }
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// Every node's record (up or down) and the store revision of that
    /// read, for [`Store::wait_node_change`].
    pub async fn node_records(&self) -> Result<(Vec<NodeRecord>, i64), Error> {
        let (recs, revision) = self.range(keys::NODES).await?;
        let mut out = Vec::with_capacity(recs.len());
        for kv in &recs {
            out.push(decode(&key_str(kv), kv.value())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, revision))
    }

    /// Waits until a node record changes after `revision` (an etcd watch:
    /// no polling). Fails when etcd is unreachable, or when the watch stays
    /// quiet and answers no progress request (a member that died without
    /// closing the connection); the caller reads again and waits anew.
    pub async fn wait_node_change(&self, revision: i64) -> Result<(), Error> {
        let mut watch = self.watch_prefix(keys::NODES, revision, "node").await?;
        self.next_events(&mut watch).await.map(|_| ())
    }

    /// This node's record, if registered.
    pub async fn node(&self, name: &NodeName) -> Result<Option<NodeRecord>, Error> {
        let key = keys::node(name);
        match self.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, kv.value())?)),
            None => Ok(None),
        }
    }

    /// Marks `node` alive under a lease of `ttl` and keeps it alive from a
    /// background task until the returned handle is dropped or the process
    /// dies; the lease then expires and the node shows down. While etcd is
    /// unreachable the task keeps trying, and takes a new lease when the
    /// old one expired meanwhile.
    pub fn keep_alive(&self, node: &NodeName, address: Ipv4Addr, ttl: Duration) -> Registration {
        let store = self.clone();
        let node = node.clone();
        let task = tokio::spawn(async move {
            let ttl_s = i64::try_from(ttl.as_secs().max(2)).unwrap_or(10);
            loop {
                if let Err(e) = store.hold_lease(&node, address, ttl_s).await {
                    tracing::warn!(node = %node, error = %e, "node liveness lease lost; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Registration { task }
    }

    /// Grants a lease, puts the liveness key under it, and renews it every
    /// third of its TTL; returns only on an error.
    async fn hold_lease(&self, node: &NodeName, address: Ipv4Addr, ttl: i64) -> Result<(), Error> {
        let key = keys::alive(node);
        let (id, mut keeper, mut stream) = self
            .call(|mut c| {
                let key = key.clone();
                async move {
                    let id = c.lease_grant(ttl, None).await?.id();
                    c.put(
                        key,
                        address.to_string(),
                        Some(PutOptions::new().with_lease(id)),
                    )
                    .await?;
                    let (keeper, stream) = c.lease_keep_alive(id).await?;
                    Ok((id, keeper, stream))
                }
            })
            .await?;
        let period = Duration::from_millis(u64::try_from(ttl).unwrap_or(10) * 1000 / 3);
        loop {
            keeper.keep_alive().await.map_err(|e| self.err(e))?;
            match tokio::time::timeout(period, stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
                Ok(Ok(Some(_))) => {
                    return Err(Error::Store {
                        endpoints: self.endpoints().to_owned(),
                        message: format!("lease {id:x} expired"),
                    })
                }
                Ok(Ok(None)) => {
                    return Err(Error::Store {
                        endpoints: self.endpoints().to_owned(),
                        message: "the lease keep-alive stream ended".into(),
                    })
                }
                Ok(Err(e)) => return Err(self.err(e)),
                Err(_) => {
                    return Err(Error::Store {
                        endpoints: self.endpoints().to_owned(),
                        message: "no answer to a lease keep-alive".into(),
                    })
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// A node kept alive in the fleet; dropping it stops renewing the lease.
#[derive(Debug)]
pub struct Registration {
    task: JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_subnets_come_from_the_range_in_order() {
        let all: Vec<String> = candidates("172.18.0.0/16".parse().unwrap(), 24)
            .take(3)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(all, ["172.18.0.0/24", "172.18.1.0/24", "172.18.2.0/24"]);
        assert_eq!(candidates("10.0.0.0/22".parse().unwrap(), 24).count(), 4);
    }
}
