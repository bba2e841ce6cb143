//! A live view of the fleet's tenants: one read, then an etcd watch from
//! the revision after it (no polling). The last-known view is kept while
//! etcd is unreachable and marked stale; after etcd returns the view is
//! read again and the watch resumes, without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::EventType;
use sotolito_config::TenantName;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::keys;
use crate::store::{key_str, Store};
use crate::tenants::{decode, TenantEntry};

/// The tenants as last seen, and whether that view may be out of date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedState {
    pub tenants: Arc<BTreeMap<TenantName, TenantEntry>>,
    /// The store revision this view reflects (0: nothing read yet).
    pub revision: i64,
    /// etcd is unreachable: `tenants` is the last-known view.
    pub stale: bool,
}

/// The background task that keeps a [`FeedState`] current; dropping it
/// stops the watch.
#[derive(Debug)]
pub struct TenantFeed {
    rx: watch::Receiver<FeedState>,
    task: JoinHandle<()>,
}

impl Drop for TenantFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TenantFeed {
    /// Starts following the store's tenants.
    pub fn spawn(store: Store) -> TenantFeed {
        let (tx, rx) = watch::channel(FeedState::default());
        let task = tokio::spawn(follow(store, tx));
        TenantFeed { rx, task }
    }

    /// A receiver that wakes on every change (new view or staleness).
    pub fn subscribe(&self) -> watch::Receiver<FeedState> {
        self.rx.clone()
    }

    pub fn current(&self) -> FeedState {
        self.rx.borrow().clone()
    }
}

async fn follow(store: Store, tx: watch::Sender<FeedState>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match watch_once(&store, &tx).await {
            Ok(()) => return, // every receiver is gone
            Err(e) => {
                let was_stale = tx.borrow().stale;
                tx.send_modify(|s| s.stale = true);
                if !was_stale {
                    tracing::warn!(error = %e, "fleet store unreachable: serving the last-known tenants (stale)");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Reads the whole view, publishes it, then applies watch events until an
/// error. Returns Ok only when nobody listens any more.
async fn watch_once(store: &Store, tx: &watch::Sender<FeedState>) -> Result<(), Error> {
    let (entries, revision) = store.tenants().await?;
    let mut view: BTreeMap<TenantName, TenantEntry> = entries
        .into_iter()
        .map(|e| (e.tenant.name.clone(), e))
        .collect();
    let was_stale = tx.borrow().stale;
    tx.send_replace(FeedState {
        tenants: Arc::new(view.clone()),
        revision,
        stale: false,
    });
    if was_stale {
        tracing::info!(
            revision,
            tenants = view.len(),
            "fleet store reachable again: tenants re-read"
        );
    }
    let mut changes = store
        .watch_prefix(keys::TENANTS, revision, "tenant")
        .await?;
    loop {
        let resp = store.next_events(&mut changes).await?;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = key_str(kv);
            let Some(name) =
                keys::name_in(keys::TENANTS, &key).and_then(|n| TenantName::new(n).ok())
            else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => match decode(&key, kv.value()) {
                    Ok(entry) => {
                        view.insert(name, entry);
                    }
                    Err(e) => tracing::warn!(error = %e, "tenant record skipped"),
                },
                EventType::Delete => {
                    view.remove(&name);
                }
            }
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        tx.send_replace(FeedState {
            tenants: Arc::new(view.clone()),
            revision,
            stale: false,
        });
        if tx.is_closed() {
            return Ok(());
        }
    }
}
