//! Routes from the fleet's store (`[cluster]`): a [`RouteSource`] that
//! follows an etcd watch of every node's tenants (no polling), so the
//! proxy routes any host to its tenant on whichever node it lives; the
//! kernel routes other nodes' tenant subnets over the private network.
//! While etcd is unreachable the last-known routes stay in use. The proxy
//! also keeps this node's liveness lease: every node runs one, and a node
//! whose proxy is gone shows down. Certificates are served from the certs
//! dir as on one host (a [`FileSource`] watches it alongside); the fleet's
//! ACME certificates and tokens reach it through a second watch
//! (`acme::shared::mirror`), whether or not this node orders any.

use std::path::PathBuf;

use std::time::Duration;

use sotolito_config::Cluster;
use sotolito_fleet::{FeedState, Registration, Store, TenantFeed};
use tokio::sync::{mpsc, watch};

use crate::acme::Challenges;
use crate::source::{FileSource, RouteSource, SourceEvent, TenantRoute};
use crate::Error;

pub(crate) struct Fleet {
    _feed: TenantFeed,
    rx: watch::Receiver<FeedState>,
    _alive: Registration,
    /// The view the routes in use were built from.
    revision: i64,
    certs: FileSource,
    /// What the ACME mirror needs: the store, the map the proxy answers
    /// HTTP-01 from, and the certs dir.
    acme: (Store, Challenges, PathBuf),
}

impl Fleet {
    /// Connects (reading the certificates now), starts the watch and the
    /// liveness lease, on the calling runtime. etcd being down is not an
    /// error: the feed retries. `certs` watches the certs dir; the fleet's
    /// certificates are copied to `certs_dir` and its tokens into
    /// `challenges`.
    pub(crate) async fn start(
        cluster: &Cluster,
        certs: FileSource,
        challenges: Challenges,
        certs_dir: PathBuf,
    ) -> Result<Fleet, Error> {
        let store = Store::connect(cluster).await.map_err(Error::Fleet)?;
        let alive = store.keep_alive(&cluster.node, cluster.private_address, cluster.lease_ttl);
        let feed = TenantFeed::spawn(store.clone());
        let rx = feed.subscribe();
        Ok(Fleet {
            _feed: feed,
            rx,
            _alive: alive,
            revision: 0,
            certs,
            acme: (store, challenges, certs_dir),
        })
    }

    /// The first tenants: waits up to `limit` for the first read of the
    /// store; none when etcd does not answer in time.
    pub(crate) async fn first(&mut self, limit: Duration) -> Vec<TenantRoute> {
        let read = tokio::time::timeout(limit, self.rx.wait_for(|s| s.revision > 0))
            .await
            .is_ok_and(|r| r.is_ok());
        if !read {
            tracing::warn!("fleet store unreachable at start: no routes until it answers");
        }
        let state = self.rx.borrow_and_update().clone();
        self.revision = state.revision;
        tenants(&state)
    }
}

impl RouteSource for Fleet {
    /// A snapshot when the tenants changed; etcd going away is reported
    /// once, and the routes in use stay. Dropping the feed and the lease
    /// (at stop) only aborts their tasks.
    async fn run(mut self, events: mpsc::Sender<SourceEvent>, mut stop: watch::Receiver<bool>) {
        let certs = tokio::spawn(self.certs.run(events.clone(), stop.clone()));
        let (store, challenges, certs_dir) = self.acme.clone();
        let acme = tokio::spawn(crate::acme::mirror(
            store,
            challenges,
            certs_dir,
            events.clone(),
            stop.clone(),
        ));
        let mut stale = false;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                r = self.rx.changed() => {
                    if r.is_err() {
                        // The feed ended (it never does while we hold it).
                        break;
                    }
                }
            }
            let state = self.rx.borrow_and_update().clone();
            let event = if state.revision != self.revision && state.revision > 0 {
                self.revision = state.revision;
                Some(SourceEvent::Snapshot(tenants(&state)))
            } else if state.stale && !stale {
                Some(SourceEvent::Unavailable(
                    "the fleet's store is unreachable".into(),
                ))
            } else {
                None
            };
            stale = state.stale;
            if let Some(event) = event {
                if events.send(event).await.is_err() {
                    break;
                }
            }
        }
        let _ = certs.await;
        let _ = acme.await;
    }
}

fn tenants(state: &FeedState) -> Vec<TenantRoute> {
    state
        .tenants
        .values()
        .map(|e| TenantRoute {
            node: Some(e.node.clone()),
            ..TenantRoute::from(&e.tenant)
        })
        .collect()
}
