//! The manager: a thread with its own runtime that follows the tenants the
//! route watcher publishes, looks at each eligible host's certificate when
//! it is due, orders certificates one at a time, and backs off per host on
//! failure. In a fleet every node's manager does this for every tenant,
//! and the host's lock in etcd lets one order at a time ([`super::state`]).

use std::collections::{BTreeMap, HashMap};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use instant_acme::Account;
use sotolito_config::host::Acme;
use sotolito_config::HostConfig;
use tokio::sync::watch;

use super::certfile::{self, Attempt};
use super::challenge::Challenges;
use super::client::AcmeHttp;
use super::order::{self, poll_policy, ChallengeKind};
use super::plan::{self, Need};
use super::state::{AcmeState, Begin, OrderGuard};
use super::Error;
use crate::source::Tenants;

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";
const NO_ACCOUNT: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// Timing of the manager. The defaults suit a public CA; tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often due times are looked at.
    pub tick: Duration,
    /// A usable certificate's files are looked at again at least this
    /// often (an operator may replace or remove them).
    pub recheck: Duration,
    /// The wait after a first failure; doubled per further failure.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The wait after `rateLimited` when the CA sends no Retry-After.
    pub rate_limited: Duration,
    /// One order, from newOrder to the certificate.
    pub order_timeout: Duration,
    /// The challenge answered (HTTP-01 unless chosen otherwise; `[acme]`
    /// has no key for it yet).
    pub challenge: ChallengeKind,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tick: Duration::from_secs(2),
            recheck: Duration::from_secs(600),
            // Let's Encrypt allows 5 failed validations per host per hour:
            // 5, 10, 20, 40 min stays under it.
            backoff_initial: Duration::from_secs(300),
            backoff_max: Duration::from_secs(6 * 3600),
            rate_limited: Duration::from_secs(3600),
            order_timeout: Duration::from_secs(300),
            challenge: ChallengeKind::Http01,
        }
    }
}

/// The running manager; dropping it stops it.
#[derive(Debug)]
pub struct AcmeHandle {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for AcmeHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts certificate management for the hosts of `tenants` (what the
/// route watcher publishes, [`crate::Watcher::tenants`]) when `[acme]
/// enabled`; `Ok(None)` when it is off. `challenges` is the store the
/// proxy's HTTP handler answers from.
pub fn start(
    config: &HostConfig,
    challenges: Challenges,
    tenants: watch::Receiver<Tenants>,
) -> Result<Option<AcmeHandle>, Error> {
    let challenge = match config.acme.challenge {
        sotolito_config::host::AcmeChallenge::Http01 => ChallengeKind::Http01,
        sotolito_config::host::AcmeChallenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
    };
    start_with(
        config,
        challenges,
        Tuning {
            challenge,
            ..Tuning::default()
        },
        tenants,
    )
}

/// [`start`] with explicit timing.
pub fn start_with(
    config: &HostConfig,
    challenges: Challenges,
    tuning: Tuning,
    tenants: watch::Receiver<Tenants>,
) -> Result<Option<AcmeHandle>, Error> {
    if !config.acme.enabled {
        return Ok(None);
    }
    let mut acme = config.acme.clone();
    acme.directory = directory_url(&acme.directory).to_owned();
    check_directory(&acme.directory)?;
    let http = AcmeHttp::new(&acme.ca_roots)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Start)?;
    // The store's connections belong to the manager's runtime.
    let state = match &config.cluster {
        None => AcmeState::Files {
            certs_dir: config.certs_dir(),
        },
        Some(cluster) => AcmeState::Fleet {
            certs_dir: config.certs_dir(),
            store: rt
                .block_on(sotolito_fleet::Store::connect(cluster))
                .map_err(Error::Fleet)?,
            challenges: challenges.clone(),
        },
    };
    tracing::info!(directory = %acme.directory, fleet = state.is_fleet(), "automatic HTTPS on");
    let manager = Manager {
        acme,
        state,
        tenants,
        challenges,
        http,
        tuning,
        account: None,
        fresh_account: false,
        hosts: HashMap::new(),
        status: certfile::read_status(&config.certs_dir()),
        ca_down_until: None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("acme".into())
        .spawn(move || rt.block_on(manager.run(stop_rx)))
        .map_err(Error::Start)?;
    Ok(Some(AcmeHandle {
        stop,
        thread: Some(thread),
    }))
}

/// `[acme] directory`: a URL, or `letsencrypt` / `letsencrypt-staging`
/// for Let's Encrypt's production and staging directories.
pub fn directory_url(directory: &str) -> &str {
    match directory.trim() {
        "letsencrypt" => instant_acme::LetsEncrypt::Production.url(),
        "letsencrypt-staging" => instant_acme::LetsEncrypt::Staging.url(),
        other => other,
    }
}

fn check_directory(url: &str) -> Result<(), Error> {
    let err = |message: &str| Error::Directory {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| err("not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(err("must be an https:// URL"));
    }
    Ok(())
}

/// How an attempt ended without an error.
enum Outcome {
    Leaf(certfile::Leaf),
    /// The fleet backs off after another node's failure.
    Later(Attempt),
}

#[derive(Debug, Default)]
struct HostState {
    /// Nothing is done for the host before this.
    next: Option<SystemTime>,
    failures: u32,
}

struct Manager {
    acme: Acme,
    /// Where the account, certificates and tokens live. In a fleet every
    /// node's manager looks after every tenant's hosts; the host's lock
    /// in the store lets one order at a time.
    state: AcmeState,
    tenants: watch::Receiver<Tenants>,
    challenges: Challenges,
    http: AcmeHttp,
    tuning: Tuning,
    account: Option<Account>,
    /// The CA forgot our account: register a new one.
    fresh_account: bool,
    hosts: HashMap<String, HostState>,
    /// What status.json says, kept in step with each attempt.
    status: BTreeMap<String, Attempt>,
    /// The CA could not be reached: no host is tried before this, so an
    /// outage costs one failed attempt per backoff step, not one per host.
    ca_down_until: Option<SystemTime>,
}

impl Manager {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut eligible: Vec<String> = Vec::new();
        let mut first = true;
        loop {
            // A watcher that stopped leaves the last tenants in force.
            if first || self.tenants.has_changed().unwrap_or(false) {
                first = false;
                let tenants: Vec<_> = self.tenants.borrow_and_update().iter().cloned().collect();
                eligible = plan::plan_hosts(&tenants)
                    .into_iter()
                    .filter(|(_, _, e)| e.is_eligible())
                    .map(|(h, _, _)| h.as_str().to_owned())
                    .collect();
                self.hosts.retain(|h, _| eligible.contains(h));
                self.status.retain(|h, _| eligible.contains(h));
            }
            for host in &eligible {
                if *stop.borrow() {
                    return;
                }
                let now = SystemTime::now();
                let state = self.hosts.entry(host.clone()).or_default();
                if state.next.is_some_and(|t| t > now) {
                    continue;
                }
                let reason = match self.state.need(host, now) {
                    Need::Fine { renew_at } => {
                        state.next = Some(renew_at.min(now + self.tuning.recheck));
                        continue;
                    }
                    Need::Manual => {
                        state.next = Some(now + self.tuning.recheck);
                        continue;
                    }
                    Need::Order(reason) => reason,
                };
                if let Some(until) = self.ca_down_until.filter(|t| *t > now) {
                    state.next = Some(until);
                    continue;
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    () = self.obtain(host, &reason) => {}
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(self.tuning.tick) => {}
            }
        }
    }

    /// Orders a certificate for `host` and installs it, or schedules the
    /// next attempt.
    async fn obtain(&mut self, host: &str, reason: &str) {
        tracing::debug!(host, reason, "certificate due");
        let _ = self.http.take_retry_after();
        let (result, guard, prior) =
            tokio::time::timeout(self.tuning.order_timeout, self.attempt(host, reason))
                .await
                .unwrap_or_else(|_| {
                    let e = Error::Order {
                        host: host.to_owned(),
                        message: format!("no certificate within {:?}", self.tuning.order_timeout),
                    };
                    (Err(e), None, 0)
                });
        let now = SystemTime::now();
        let state = self.hosts.entry(host.to_owned()).or_default();
        let error = result.as_ref().err().map(|e| e.to_string());
        match result {
            Ok(Outcome::Later(a)) => {
                // Not our failure: no count of our own, the fleet's wait.
                state.failures = a.failures;
                state.next = a.next_attempt;
                tracing::info!(
                    host,
                    failures = a.failures,
                    next = %a.next_attempt.map(|t| humantime::format_rfc3339_seconds(t).to_string()).unwrap_or_default(),
                    "the fleet's last order for this host failed; waiting as the fleet does"
                );
                self.status.insert(host.to_owned(), a);
                if let Err(e) = certfile::write_status(self.state.certs_dir(), &self.status) {
                    tracing::warn!(error = %e, "ACME status not saved");
                }
                return;
            }
            Ok(Outcome::Leaf(leaf)) => {
                self.ca_down_until = None;
                state.failures = 0;
                state.next = Some(plan::renew_at(leaf.not_before, leaf.not_after));
                tracing::info!(
                    host,
                    issuer = %leaf.issuer,
                    expires = %humantime::format_rfc3339_seconds(leaf.not_after),
                    "certificate installed"
                );
            }
            Err(e) => {
                state.failures = state.failures.max(prior) + 1;
                let problem = e.problem_type().map(str::to_owned);
                if problem.as_deref() == Some(NO_ACCOUNT) {
                    self.account = None;
                    self.fresh_account = true;
                }
                let retry_after = self
                    .http
                    .take_retry_after()
                    .and_then(|t| t.duration_since(now).ok())
                    .or_else(|| {
                        (problem.as_deref() == Some(RATE_LIMITED))
                            .then_some(self.tuning.rate_limited)
                    });
                let wait = plan::backoff(
                    state.failures,
                    self.tuning.backoff_initial,
                    self.tuning.backoff_max,
                    retry_after,
                );
                state.next = Some(now + wait);
                if e.is_unreachable() {
                    self.ca_down_until = state.next;
                }
                tracing::warn!(
                    host,
                    error = %e,
                    failures = state.failures,
                    retry_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                    "certificate order failed; the current certificate (if any) is still served"
                );
            }
        }
        let attempt = Attempt {
            failures: state.failures,
            last_error: error,
            last_attempt: now,
            next_attempt: state.next,
        };
        // Recorded for every node before the lock goes: a node waiting for
        // it reads this first.
        if let Some(guard) = guard {
            let failed = (attempt.failures > 0).then_some(&attempt);
            self.state.record_attempt(host, failed).await;
            guard.release().await;
        }
        self.status.insert(host.to_owned(), attempt);
        if let Err(e) = certfile::write_status(self.state.certs_dir(), &self.status) {
            tracing::warn!(error = %e, "ACME status not saved");
        }
    }

    /// Takes the host's lock (in a fleet) and orders, unless another node
    /// stored a certificate or failed meanwhile. Returns the lock still
    /// held after an order (the caller records the outcome, then releases
    /// it) and the fleet's failures before this order.
    async fn attempt(
        &mut self,
        host: &str,
        reason: &str,
    ) -> (Result<Outcome, Error>, Option<OrderGuard>, u32) {
        let begun = self
            .state
            .begin(host, reason, self.tuning.order_timeout)
            .await;
        let (guard, prior) = match begun {
            Err(e) => return (Err(e), None, 0),
            Ok(Begin::Done(leaf)) => {
                tracing::info!(host, serial = %leaf.serial, "the fleet store has a certificate; no order");
                return (Ok(Outcome::Leaf(leaf)), None, 0);
            }
            Ok(Begin::Later(a)) => return (Ok(Outcome::Later(a)), None, 0),
            Ok(Begin::Order(guard, reason, prior)) => {
                tracing::info!(host, reason = %reason, "ordering a certificate");
                (guard, prior)
            }
        };
        let result = self.order(host, &guard).await.map(Outcome::Leaf);
        (result, Some(guard), prior)
    }

    async fn order(&mut self, host: &str, guard: &OrderGuard) -> Result<certfile::Leaf, Error> {
        let poll = poll_policy(self.tuning.order_timeout / 2);
        let mut tries = 0;
        loop {
            tries += 1;
            let account = match &self.account {
                Some(a) => a.clone(),
                None => {
                    let a = order::account(&self.http, &self.acme, &self.state, self.fresh_account)
                        .await?;
                    self.fresh_account = false;
                    self.account = Some(a.clone());
                    a
                }
            };
            let kind = self.tuning.challenge;
            let at = (&self.state, guard);
            match order::issue(&account, host, kind, at, &self.challenges, &poll).await {
                Ok(issued) => {
                    return self
                        .state
                        .install(
                            host,
                            &self.acme.directory,
                            &issued.chain_pem,
                            &issued.key_pem,
                        )
                        .await;
                }
                // instant-acme retries a rejected nonce three times per
                // request; pebble rejects 5% of them, so once in a while
                // all three fail. Start the order again at once.
                Err(e) if e.problem_type() == Some(BAD_NONCE) && tries < 3 => {
                    tracing::debug!(host, error = %e, "bad nonce; ordering again");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_must_be_https() {
        assert!(check_directory("https://acme-v02.api.letsencrypt.org/directory").is_ok());
        assert!(check_directory("http://ca/dir").is_err());
        assert!(check_directory("not a url").is_err());
        assert_eq!(
            directory_url("letsencrypt-staging"),
            "https://acme-staging-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(
            directory_url("letsencrypt"),
            "https://acme-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(directory_url("https://ca/dir"), "https://ca/dir");
    }

    #[test]
    fn off_unless_enabled() {
        let config = HostConfig::default();
        let (_tx, tenants) = watch::channel(Tenants::from(Vec::new()));
        assert!(start(&config, Challenges::new(), tenants)
            .expect("ok")
            .is_none());
    }
}
