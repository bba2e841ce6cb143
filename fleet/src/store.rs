//! The connection to the fleet's etcd members (mutual TLS when the
//! endpoints are https://) and the small read helpers the other modules
//! share.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions, Txn,
    TxnResponse, WatchOptions, WatchResponse, WatchStream,
};
use sotolito_config::Cluster;

use crate::error::{describe, Error};

/// A handle on the fleet's store. Cheap to clone: clones share the
/// connections.
///
/// One client per member, not one balanced channel over all of them: the
/// balanced channel sends a request to a dead member and fails it (seen
/// with one of three members killed). Here a request that finds its member
/// unavailable goes to the next one, round after round for a while; the
/// member that answered is tried first next time. Resending is safe because every write that matters is
/// a transaction guarded by revisions: one applied twice fails its
/// compare instead of writing twice.
#[derive(Clone)]
pub struct Store {
    clients: Arc<Vec<Client>>,
    /// The same members for watches, with `require_leader`: a watch on a
    /// member cut off from the quorum would otherwise wait silently.
    watchers: Arc<Vec<Client>>,
    preferred: Arc<AtomicUsize>,
    endpoints: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// A request that has not been answered within this fails, naming the
/// store: a command must not hang when every member is down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request goes on trying members that are unavailable: a
/// request caught by the death of the leader fails with "request timed
/// out, possibly due to previous leader failure" even though the
/// election that follows takes about a second.
const RETRY_FOR: Duration = Duration::from_secs(8);

impl Store {
    /// Opens the connection described by the `[cluster]` table. Reads the
    /// certificates now, so a bad path is reported before any request.
    pub async fn connect(cluster: &Cluster) -> Result<Store, Error> {
        let endpoints: Vec<String> = cluster.etcd.iter().map(|e| e.as_str().to_owned()).collect();
        let shown = endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            // Pings find a dead member of a long-lived watch or lease
            // stream; without them a stream can wait forever on a
            // half-open connection.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if cluster.tls() {
            let read = |what: &'static str, path: &std::path::Path| {
                std::fs::read(path).map_err(|source| Error::ReadFile {
                    what,
                    path: path.to_owned(),
                    source,
                })
            };
            let ca = read("etcd CA certificate", &cluster.etcd_ca)?;
            let cert = read("etcd client certificate", &cluster.etcd_cert)?;
            let key = read("etcd client key", &cluster.etcd_key)?;
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key)),
            );
        }
        // Requests wait out a leader election (about a second after the
        // leader dies) within their timeout; only watches insist on a
        // leader, so that one on a member cut off from the quorum ends
        // and moves to another member.
        let mut clients = Vec::with_capacity(endpoints.len());
        let mut watchers = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            // Connecting is lazy: a member that is down now is not an error.
            for (set, opts) in [
                (&mut clients, options.clone()),
                (&mut watchers, options.clone().with_require_leader(true)),
            ] {
                let client = Client::connect([e], Some(opts))
                    .await
                    .map_err(|e| Error::Store {
                        endpoints: shown.clone(),
                        message: describe(&e),
                    })?;
                set.push(client);
            }
        }
        Ok(Store {
            clients: Arc::new(clients),
            watchers: Arc::new(watchers),
            preferred: Arc::new(AtomicUsize::new(0)),
            endpoints: shown,
        })
    }

    /// Runs `f` against the preferred member, then the others while the
    /// member is unavailable. Other errors are returned at once.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_on(&self.clients, f).await
    }

    /// [`Store::call`] with the clients that require a leader (watches).
    pub(crate) async fn call_watch<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_on(&self.watchers, f).await
    }

    async fn call_on<T, F, Fut>(&self, set: &[Client], mut f: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = set.len();
        if n == 0 {
            return Err(Error::Store {
                endpoints: self.endpoints.clone(),
                message: "no member configured".into(),
            });
        }
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let start = self.preferred.load(Ordering::Relaxed);
        for k in 0.. {
            let i = (start + k) % n;
            match f(set[i].clone()).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if unavailable(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(member = i, error = %describe(&e), "etcd member unavailable");
                    if (k + 1) % n == 0 {
                        // Every member refused: wait for an election or a
                        // restart rather than spin.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        unreachable!("the loop returns")
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Wraps an etcd error so that it names the store.
    pub(crate) fn err(&self, e: etcd_client::Error) -> Error {
        Error::Store {
            endpoints: self.endpoints.clone(),
            message: describe(&e),
        }
    }

    /// Every key-value under `prefix`, and the store's revision of that read.
    pub(crate) async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), Error> {
        let mut resp = self
            .call(|mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok((resp.take_kvs(), rev))
    }

    /// One key, if present.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let mut resp = self
            .call(|mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }
}

/// How long a watch may stay quiet before it asks for a progress notice,
/// and how long it then waits for one.
const QUIET: Duration = Duration::from_secs(5);

/// A watch on every key under a prefix that notices a member which died
/// without closing its connection: progress notices come every few minutes
/// at most, so a watch quiet for `QUIET` asks for one and fails when none
/// comes. Every failure is a store error; the caller reads again and
/// watches anew.
pub(crate) struct PrefixWatch {
    stream: WatchStream,
    what: &'static str,
}

impl Store {
    /// Watches `prefix` from the revision after `revision` (what the
    /// caller's read saw). `what` names the watch in errors.
    pub(crate) async fn watch_prefix(
        &self,
        prefix: &'static str,
        revision: i64,
        what: &'static str,
    ) -> Result<PrefixWatch, Error> {
        let stream = self
            .call_watch(|mut c| async move {
                c.watch(
                    prefix,
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1)
                            .with_progress_notify(),
                    ),
                )
                .await
            })
            .await?;
        Ok(PrefixWatch { stream, what })
    }

    /// The watch's next response that carries events.
    pub(crate) async fn next_events(&self, w: &mut PrefixWatch) -> Result<WatchResponse, Error> {
        let gone = |message: String| Error::Store {
            endpoints: self.endpoints().to_owned(),
            message,
        };
        loop {
            let msg = match tokio::time::timeout(QUIET, w.stream.message()).await {
                Ok(m) => m.map_err(|e| self.err(e))?,
                Err(_) => {
                    w.stream.request_progress().await.map_err(|e| self.err(e))?;
                    tokio::time::timeout(QUIET, w.stream.message())
                        .await
                        .map_err(|_| {
                            gone(format!("the {} watch answered no progress request", w.what))
                        })?
                        .map_err(|e| self.err(e))?
                }
            };
            let resp = msg.ok_or_else(|| gone(format!("the {} watch ended", w.what)))?;
            if resp.canceled() {
                return Err(gone(format!(
                    "the {} watch was cancelled: {}",
                    w.what,
                    resp.cancel_reason()
                )));
            }
            if !resp.events().is_empty() {
                return Ok(resp);
            }
        }
    }
}

/// Errors after which another member may answer: the member is down,
/// cut off from the quorum, or too slow.
fn unavailable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

pub(crate) fn key_str(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}
