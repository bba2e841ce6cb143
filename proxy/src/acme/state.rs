//! Where ACME keeps its state: the certs dir's files on one host, the
//! fleet's etcd store with `[cluster]`. This is the one seam between the
//! two; the manager and the order code ask it and do not know which.
//!
//! In a fleet the certs dir still holds a copy of every certificate (the
//! TLS resolver serves from it, and it outlives an etcd outage); the store
//! is the authority for the account, the certificates and the tokens.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sotolito_fleet::{HostLock, Store};

use super::certfile::{self, account_path, ensure_dir, write_private, Attempt, Leaf};
use super::challenge::{ChallengeGuard, Challenges};
use super::plan::{self, Need};
use super::shared;
use super::Error;

/// Where the account, certificates and tokens live.
pub(crate) enum AcmeState {
    /// One host: CERTS_DIR/acme/account.json, CERTS_DIR/HOST/*.pem, tokens
    /// in memory.
    Files { certs_dir: PathBuf },
    /// A fleet: etcd, with the certs dir as this node's copy.
    /// `challenges` is the map the proxy answers from, which the store's
    /// watch fills ([`shared::mirror`]).
    Fleet {
        certs_dir: PathBuf,
        store: Store,
        challenges: Challenges,
    },
}

/// Held from deciding to order a host until its certificate is stored.
pub(crate) enum OrderGuard {
    Local,
    /// The host's order lock: no other node orders it meanwhile.
    Fleet(HostLock),
}

impl OrderGuard {
    /// Gives the lock back (withdrawing the tokens published under it).
    pub(crate) async fn release(self) {
        if let OrderGuard::Fleet(lock) = self {
            lock.release().await;
        }
    }
}

/// What [`AcmeState::begin`] found.
pub(crate) enum Begin {
    /// Order now, for this reason, holding the guard; the fleet's count of
    /// failed orders before this one (0 on one host).
    Order(OrderGuard, String, u32),
    /// Another node's order failed and the fleet backs off until
    /// `next_attempt`: not before then, from any node.
    Later(Attempt),
    /// Another node stored a usable certificate meanwhile; this node's
    /// copy is in place.
    Done(Leaf),
}

/// How long the order lock's lease lives without renewal: a node that
/// dies while ordering holds the host up for this long at most.
const LOCK_TTL: Duration = Duration::from_secs(10);

impl AcmeState {
    pub(crate) fn certs_dir(&self) -> &Path {
        match self {
            AcmeState::Files { certs_dir } | AcmeState::Fleet { certs_dir, .. } => certs_dir,
        }
    }

    pub(crate) fn is_fleet(&self) -> bool {
        matches!(self, AcmeState::Fleet { .. })
    }

    /// Whether `host` needs an order, from the certs dir (in a fleet, the
    /// copies of the store's certificates): cheap, no lock, no store.
    pub(crate) fn need(&self, host: &str, now: SystemTime) -> Need {
        certfile::need(self.certs_dir(), host, now)
    }

    /// Before an order for `host` (due for `reason`): in a fleet, waits
    /// (up to `within`) for the host's lock, then looks at the store's
    /// certificate again, since the node that held the lock may have just
    /// stored one.
    pub(crate) async fn begin(
        &self,
        host: &str,
        reason: &str,
        within: Duration,
    ) -> Result<Begin, Error> {
        let AcmeState::Fleet {
            certs_dir, store, ..
        } = self
        else {
            return Ok(Begin::Order(OrderGuard::Local, reason.to_owned(), 0));
        };
        let lock = store
            .lock_host(host, LOCK_TTL, within)
            .await
            .map_err(Error::Fleet)?;
        let found = match store.acme_cert(host).await {
            Ok(found) => found,
            Err(e) => {
                lock.release().await;
                return Err(Error::Fleet(e));
            }
        };
        let (reason, leaf) = match found {
            None => (reason.to_owned(), None),
            Some(cert) => {
                let assessed =
                    certfile::facts_of(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes(), host);
                let need = plan::assess(Some(assessed.clone().map(|(f, _)| f)), SystemTime::now());
                match (need, assessed) {
                    (Need::Fine { .. }, Ok((_, leaf))) => (String::new(), Some((cert, leaf))),
                    (Need::Order(r), _) => (r, None),
                    // Records in the store are always ours: never `Manual`.
                    (_, _) => (reason.to_owned(), None),
                }
            }
        };
        if let Some((cert, leaf)) = leaf {
            lock.release().await;
            // The manager's own thread: small blocking writes are fine.
            shared::copy_in(certs_dir, host, &cert)?;
            return Ok(Begin::Done(leaf));
        }
        // The fleet's last failure: honoured by every node, so the CA's
        // failed-validation allowance is spent once, not once per node.
        let failed: Option<Attempt> = match store.acme_attempt(host).await {
            Ok(r) => r.and_then(|b| serde_json::from_slice(&b).ok()),
            Err(e) => {
                lock.release().await;
                return Err(Error::Fleet(e));
            }
        };
        match failed {
            Some(a) if a.next_attempt.is_some_and(|t| t > SystemTime::now()) => {
                lock.release().await;
                Ok(Begin::Later(a))
            }
            other => Ok(Begin::Order(
                OrderGuard::Fleet(lock),
                reason,
                other.map_or(0, |a| a.failures),
            )),
        }
    }

    /// Records the outcome of an order for every node (fleet only; on one
    /// host status.json is the manager's): a failure with its next
    /// attempt, or `None` after a success.
    pub(crate) async fn record_attempt(&self, host: &str, attempt: Option<&Attempt>) {
        let AcmeState::Fleet { store, .. } = self else {
            return;
        };
        let record = attempt.map(|a| serde_json::to_vec(a).unwrap_or_default());
        if let Err(e) = store.set_acme_attempt(host, record.as_deref()).await {
            tracing::warn!(host, error = %e, "the fleet's record of this order was not saved");
        }
    }

    /// The saved account record (JSON), if any.
    pub(crate) async fn account_record(&self) -> Result<Option<Vec<u8>>, Error> {
        match self {
            AcmeState::Files { certs_dir } => {
                let path = account_path(certs_dir);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(Error::Read { path, source }),
                }
            }
            AcmeState::Fleet { store, .. } => store.acme_account().await.map_err(Error::Fleet),
        }
    }

    /// Where the account record lives, for messages.
    pub(crate) fn account_location(&self) -> String {
        match self {
            AcmeState::Files { certs_dir } => account_path(certs_dir).display().to_string(),
            AcmeState::Fleet { .. } => {
                format!("etcd key {}", sotolito_fleet::keys::ACME_ACCOUNT)
            }
        }
    }

    /// Saves a new account record over `replace` (what was read before).
    /// Returns the record in force: in a fleet, another node's when it
    /// saved first (its account is used, ours forgotten).
    pub(crate) async fn save_account(
        &self,
        record: &[u8],
        replace: Option<&[u8]>,
    ) -> Result<Vec<u8>, Error> {
        match self {
            AcmeState::Files { certs_dir } => {
                let path = account_path(certs_dir);
                if let Some(dir) = path.parent() {
                    ensure_dir(dir)?;
                }
                write_private(&path, record)?;
                Ok(record.to_vec())
            }
            AcmeState::Fleet { store, .. } => store
                .put_acme_account(record, replace)
                .await
                .map_err(Error::Fleet),
        }
    }

    /// Publishes an HTTP-01 answer until the returned guard is dropped
    /// (and, in a fleet, until the order lock is released). In a fleet
    /// the token goes to the store under the lock's lease, and this
    /// returns once this node's own watch shows it: the CA may ask any
    /// node.
    pub(crate) async fn publish_token(
        &self,
        guard: &OrderGuard,
        challenges: &Challenges,
        token: &str,
        key_authorization: &str,
    ) -> Result<ChallengeGuard, Error> {
        let local = challenges.insert(token, key_authorization);
        if let (
            AcmeState::Fleet {
                store,
                challenges: mirror,
                ..
            },
            OrderGuard::Fleet(lock),
        ) = (self, guard)
        {
            store
                .put_acme_challenge(lock, token, key_authorization)
                .await
                .map_err(Error::Fleet)?;
            shared::wait_until_mirrored(mirror, token).await;
        }
        Ok(local)
    }

    /// Stores a new certificate: in a fleet, in etcd first (every node
    /// copies it from there), then in this node's certs dir.
    pub(crate) async fn install(
        &self,
        host: &str,
        directory: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Leaf, Error> {
        if let AcmeState::Fleet { store, .. } = self {
            let cert = shared::record(host, directory, chain_pem, key_pem)?;
            store
                .put_acme_cert(host, &cert)
                .await
                .map_err(Error::Fleet)?;
        }
        certfile::install(self.certs_dir(), host, directory, chain_pem, key_pem)
    }
}
