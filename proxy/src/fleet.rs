//! Routes from the fleet's store (`[cluster]`): the proxy follows an etcd
//! watch of every node's tenants (no polling) and routes any host to its
//! tenant on whichever node it lives; the kernel routes other nodes'
//! tenant subnets over the private network. While etcd is unreachable the
//! last-known routes stay in use. The proxy also keeps this node's
//! liveness lease: every node runs one, and a node whose proxy is gone
//! shows down.

use std::time::Duration;

use sotolito_config::{Cluster, Tenant};
use sotolito_fleet::{FeedState, Registration, Store, TenantFeed};
use tokio::sync::watch;

use crate::route::RouteTable;
use crate::Error;

pub(crate) struct Fleet {
    _feed: TenantFeed,
    rx: watch::Receiver<FeedState>,
    _alive: Registration,
    /// The view the routes in use were built from.
    revision: i64,
}

impl Fleet {
    /// Connects (reading the certificates now), starts the watch and the
    /// liveness lease. etcd being down is not an error: the feed retries.
    pub(crate) async fn start(cluster: &Cluster) -> Result<Fleet, Error> {
        let store = Store::connect(cluster).await.map_err(Error::Fleet)?;
        let alive = store.keep_alive(&cluster.node, cluster.private_address, cluster.lease_ttl);
        let feed = TenantFeed::spawn(store);
        let rx = feed.subscribe();
        Ok(Fleet {
            _feed: feed,
            rx,
            _alive: alive,
            revision: 0,
        })
    }

    /// The first routes: waits up to `limit` for the first read of the
    /// store; none (an empty table) when etcd does not answer in time.
    pub(crate) async fn first(&mut self, limit: Duration) -> RouteTable {
        let read = tokio::time::timeout(limit, self.rx.wait_for(|s| s.revision > 0))
            .await
            .is_ok_and(|r| r.is_ok());
        if !read {
            tracing::warn!("fleet store unreachable at start: no routes until it answers");
        }
        let state = self.rx.borrow_and_update().clone();
        self.revision = state.revision;
        table(&state)
    }

    /// The next route table, when the tenants changed; staleness alone
    /// (etcd down or back with nothing new) keeps the routes as they are.
    pub(crate) async fn next(&mut self) -> RouteTable {
        loop {
            if self.rx.changed().await.is_err() {
                // The feed ended (it never does while we hold it).
                std::future::pending::<()>().await;
            }
            let state = self.rx.borrow_and_update().clone();
            if state.revision != self.revision && state.revision > 0 {
                self.revision = state.revision;
                return table(&state);
            }
        }
    }
}

fn table(state: &FeedState) -> RouteTable {
    let tenants: Vec<Tenant> = state.tenants.values().map(|e| e.tenant.clone()).collect();
    RouteTable::from_tenants(&tenants)
}
