//! ACME state shared by the fleet's proxies: the account, every issued
//! certificate with its key, the pending HTTP-01 tokens, and a lock per
//! host so that one node orders it at a time (etcd's lock API under a
//! lease: a dead orderer's lock and tokens expire with its lease).
//!
//! The values are what the proxy hands over; this module only keeps them.
//! [`AcmeFeed`] follows certificates and tokens with one watch (no
//! polling), as [`crate::TenantFeed`] follows tenants.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, LockOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::keys;
use crate::store::{key_str, Store};

/// What `/sotolito/v1/acme/certs/HOST` holds: a certificate we issued,
/// and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedCert {
    /// The ACME directory that issued it.
    pub directory: String,
    /// The leaf's serial, as the proxy's marker file writes it.
    pub serial: String,
    /// RFC 3339.
    pub issued: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl Store {
    /// The shared ACME account record, if one was saved.
    pub async fn acme_account(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .get(keys::ACME_ACCOUNT)
            .await?
            .map(|kv| kv.value().to_vec()))
    }

    /// Saves the account record: `replace` is the record it supersedes
    /// (None: there was none). Returns the record now stored, which is
    /// another node's when that node saved first.
    pub async fn put_acme_account(
        &self,
        record: &[u8],
        replace: Option<&[u8]>,
    ) -> Result<Vec<u8>, Error> {
        let key = keys::ACME_ACCOUNT;
        let when = match replace {
            None => Compare::create_revision(key, CompareOp::Equal, 0),
            Some(old) => Compare::value(key, CompareOp::Equal, old.to_vec()),
        };
        let resp = self
            .txn(
                Txn::new()
                    .when([when])
                    .and_then([TxnOp::put(key, record.to_vec(), None)])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await?;
        if resp.succeeded() {
            return Ok(record.to_vec());
        }
        // Lost to another node: use its account.
        Ok(self
            .acme_account()
            .await?
            .unwrap_or_else(|| record.to_vec()))
    }

    /// The fleet's certificate for `host`, if any.
    pub async fn acme_cert(&self, host: &str) -> Result<Option<SharedCert>, Error> {
        let key = keys::acme_cert(host);
        match self.get(&key).await? {
            Some(kv) => decode_cert(&key, kv.value()).map(Some),
            None => Ok(None),
        }
    }

    pub async fn put_acme_cert(&self, host: &str, cert: &SharedCert) -> Result<(), Error> {
        let key = keys::acme_cert(host);
        let value = serde_json::to_vec(cert).expect("a certificate record always serializes");
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// The fleet's record of the last failed order for `host` (what the
    /// proxy wrote), if any.
    pub async fn acme_attempt(&self, host: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .get(&keys::acme_attempt(host))
            .await?
            .map(|kv| kv.value().to_vec()))
    }

    /// Records a failed order (`Some`) or forgets it after a success.
    pub async fn set_acme_attempt(&self, host: &str, record: Option<&[u8]>) -> Result<(), Error> {
        let key = keys::acme_attempt(host);
        let record = record.map(<[u8]>::to_vec);
        self.call(|mut c| {
            let (key, record) = (key.clone(), record.clone());
            async move {
                match record {
                    Some(r) => c.put(key, r, None).await.map(|_| ()),
                    None => c.delete(key, None).await.map(|_| ()),
                }
            }
        })
        .await
    }

    /// Publishes an HTTP-01 token for every node to answer, under the
    /// lock's lease: it goes when the lock is released or its holder dies.
    pub async fn put_acme_challenge(
        &self,
        lock: &HostLock,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), Error> {
        let key = keys::acme_challenge(token);
        let lease = lock.lease;
        self.call(|mut c| {
            let key = key.clone();
            let value = key_authorization.to_owned();
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Withdraws a token once its challenge is decided.
    pub async fn delete_acme_challenge(&self, token: &str) -> Result<(), Error> {
        let key = keys::acme_challenge(token);
        self.call(|mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// Waits until this node holds the lock for ordering `host`, for
    /// `within` at most. The lock lives under a lease of `ttl` that a task
    /// renews until the lock is released or dropped; when this process
    /// dies, the lease expires and the next node gets the lock.
    pub async fn lock_host(
        &self,
        host: &str,
        ttl: Duration,
        within: Duration,
    ) -> Result<HostLock, Error> {
        let name = keys::acme_lock(host);
        let ttl_s = i64::try_from(ttl.as_secs().max(2)).unwrap_or(10);
        let deadline = tokio::time::Instant::now() + within;
        let mut last_error = None;
        while tokio::time::Instant::now() < deadline {
            let lease = self
                .call(|mut c| async move { Ok(c.lease_grant(ttl_s, None).await?.id()) })
                .await?;
            let renewer = LeaseRenewer::spawn(self.clone(), lease, ttl_s);
            // Each lock request waits for the holder within the store's
            // request timeout; a request that gave up is asked again, so
            // this waits as long as the holder orders.
            loop {
                if renewer.lost() || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let attempt = self
                    .call(|mut c| {
                        let name = name.clone();
                        async move {
                            c.lock(name, Some(LockOptions::new().with_lease(lease)))
                                .await
                        }
                    })
                    .await;
                match attempt {
                    Ok(resp) => {
                        return Ok(HostLock {
                            store: self.clone(),
                            key: resp.key().to_vec(),
                            lease,
                            renewer: Some(renewer),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(host, error = %e, "waiting for the order lock");
                        last_error = Some(e);
                        // Not a wait that timed out but a refusal (a lease
                        // gone during an outage): do not spin on it.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            renewer.stop();
            let _ = self
                .call(|mut c| async move { c.lease_revoke(lease).await })
                .await;
        }
        Err(last_error.unwrap_or_else(|| Error::Store {
            endpoints: self.endpoints().to_owned(),
            message: format!("the order lock for {host} was not free within {within:?}"),
        }))
    }
}

fn decode_cert(key: &str, value: &[u8]) -> Result<SharedCert, Error> {
    serde_json::from_slice(value).map_err(|e| Error::Record {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// Renews a lease every third of its TTL until stopped; says when a
/// renewal failed (the lease may be gone).
struct LeaseRenewer {
    lost: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl LeaseRenewer {
    fn spawn(store: Store, lease: i64, ttl_s: i64) -> LeaseRenewer {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let period = Duration::from_millis(u64::try_from(ttl_s).unwrap_or(10) * 1000 / 3);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let renewed = store
                    .call(|mut c| async move {
                        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                        keeper.keep_alive().await?;
                        stream.message().await
                    })
                    .await;
                match renewed {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    other => {
                        tracing::warn!(lease = %format!("{lease:x}"), result = ?other.map(|r| r.map(|r| r.ttl())), "order lock lease lost");
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
        LeaseRenewer { lost, task }
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// A lock wait given up (its future dropped) must not leave a lease
/// renewed forever.
impl Drop for LeaseRenewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The order lock of one host, held by this node. [`HostLock::release`]
/// gives it back and withdraws the tokens published under it; dropping it
/// does the same in the background.
pub struct HostLock {
    store: Store,
    key: Vec<u8>,
    lease: i64,
    renewer: Option<LeaseRenewer>,
}

impl std::fmt::Debug for HostLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLock")
            .field("key", &String::from_utf8_lossy(&self.key))
            .finish()
    }
}

impl HostLock {
    /// The lock's lease renewals failed: another node may hold it now.
    pub fn lost(&self) -> bool {
        self.renewer.as_ref().is_some_and(LeaseRenewer::lost)
    }

    /// Revoking the lease deletes the lock key and every token under it.
    pub async fn release(mut self) {
        if let Some(r) = self.renewer.take() {
            r.stop();
        }
        let lease = self.lease;
        if let Err(e) = self
            .store
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await
        {
            tracing::warn!(error = %e, "order lock not released; it expires with its lease");
        }
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let Some(r) = self.renewer.take() else {
            return;
        };
        r.stop();
        let store = self.store.clone();
        let lease = self.lease;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store
                    .call(|mut c| async move { c.lease_revoke(lease).await })
                    .await;
            });
        }
    }
}

/// What [`AcmeFeed`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcmeEvent {
    /// Everything there is now (after the first read and after each
    /// outage): certificates by host, tokens with their key authorization.
    Snapshot {
        certs: Vec<(String, SharedCert)>,
        tokens: Vec<(String, String)>,
    },
    Cert(String, SharedCert),
    Token(String, String),
    TokenGone(String),
    /// The store cannot be read; sent once per outage. What was reported
    /// stays valid as far as anyone knows.
    Stale(String),
}

/// Follows the shared certificates and tokens: one read, then a watch
/// from the next revision; after an outage, read again.
#[derive(Debug)]
pub struct AcmeFeed {
    task: JoinHandle<()>,
}

impl Drop for AcmeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AcmeFeed {
    pub fn spawn(store: Store, events: mpsc::Sender<AcmeEvent>) -> AcmeFeed {
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let mut stale = false;
            loop {
                match follow_once(&store, &events, &mut stale).await {
                    Ok(()) => return,
                    Err(e) => {
                        if !stale {
                            stale = true;
                            if events.send(AcmeEvent::Stale(e.to_string())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        AcmeFeed { task }
    }
}

/// One read and the watch after it; Ok when nobody listens any more.
async fn follow_once(
    store: &Store,
    events: &mpsc::Sender<AcmeEvent>,
    stale: &mut bool,
) -> Result<(), Error> {
    let (kvs, revision) = store.range(keys::ACME).await?;
    let mut certs = Vec::new();
    let mut tokens = Vec::new();
    for kv in &kvs {
        let key = key_str(kv);
        if let Some(host) = keys::name_in(keys::ACME_CERTS, &key) {
            match decode_cert(&key, kv.value()) {
                Ok(c) => certs.push((host.to_owned(), c)),
                Err(e) => tracing::warn!(error = %e, "certificate record skipped"),
            }
        } else if let Some(token) = keys::name_in(keys::ACME_CHALLENGES, &key) {
            tokens.push((
                token.to_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ));
        }
    }
    if events
        .send(AcmeEvent::Snapshot { certs, tokens })
        .await
        .is_err()
    {
        return Ok(());
    }
    if *stale {
        tracing::info!(revision, "fleet store reachable again: ACME state re-read");
        *stale = false;
    }
    let mut watch = store.watch_prefix(keys::ACME, revision, "ACME").await?;
    loop {
        let resp = store.next_events(&mut watch).await?;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = key_str(kv);
            let event = if let Some(host) = keys::name_in(keys::ACME_CERTS, &key) {
                match (ev.event_type(), decode_cert(&key, kv.value())) {
                    (EventType::Put, Ok(c)) => Some(AcmeEvent::Cert(host.to_owned(), c)),
                    (EventType::Put, Err(e)) => {
                        tracing::warn!(error = %e, "certificate record skipped");
                        None
                    }
                    // A removed record leaves the copies nodes made: the
                    // certificate stays valid, and an operator removes
                    // files by hand.
                    (EventType::Delete, _) => None,
                }
            } else {
                keys::name_in(keys::ACME_CHALLENGES, &key).map(|token| match ev.event_type() {
                    EventType::Put => AcmeEvent::Token(
                        token.to_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    ),
                    EventType::Delete => AcmeEvent::TokenGone(token.to_owned()),
                })
            };
            if let Some(event) = event {
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_records_round_trip_and_refuse_strangers() {
        let cert = SharedCert {
            directory: "https://ca/dir".into(),
            serial: "01:02".into(),
            issued: "2026-11-30T00:00:00Z".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        };
        let bytes = serde_json::to_vec(&cert).unwrap();
        assert_eq!(decode_cert("k", &bytes).unwrap(), cert);
        let err = decode_cert("/sotolito/v1/acme/certs/x", br#"{"serial": 1}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("etcd key /sotolito/v1/acme/certs/x holds an unreadable record"),
            "{err}"
        );
    }
}
