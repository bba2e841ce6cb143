//! The fleet's side of ACME on every node: [`mirror`] follows the store's
//! certificates and tokens through one etcd watch (no polling), copies
//! each certificate into this node's certs dir and tells the TLS resolver
//! at once (`CertsChanged`), and keeps the tokens the proxy answers. What
//! was copied keeps serving while etcd is unreachable.

use std::path::Path;
use std::time::{Duration, SystemTime};

use sotolito_config::HostName;
use sotolito_fleet::{AcmeEvent, AcmeFeed, SharedCert, Store};
use tokio::sync::{mpsc, watch};

use super::certfile::{self, install, parse_leaf};
use super::challenge::Challenges;
use super::plan::Need;
use super::Error;
use crate::source::SourceEvent;

/// The store's record of a certificate we just issued.
pub(crate) fn record(
    host: &str,
    directory: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<SharedCert, Error> {
    let leaf = parse_leaf(chain_pem.as_bytes()).map_err(|message| Error::Order {
        host: host.to_owned(),
        message: format!("the CA sent an unusable certificate: {message}"),
    })?;
    Ok(SharedCert {
        directory: directory.to_owned(),
        serial: leaf.serial,
        issued: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        chain_pem: chain_pem.to_owned(),
        key_pem: key_pem.to_owned(),
    })
}

/// Copies the fleet's certificate for `host` into the certs dir unless
/// that copy is there already, or the operator installed a valid
/// certificate of their own there (never replaced while valid, as on one
/// host). Returns whether files changed.
pub(crate) fn copy_in(certs_dir: &Path, host: &str, cert: &SharedCert) -> Result<bool, Error> {
    // The key comes from the store: it must be a host name, never a path.
    let valid = HostName::new(host).is_ok_and(|h| h.as_str() == host);
    if !valid {
        tracing::warn!(host, "fleet certificate with an invalid host name skipped");
        return Ok(false);
    }
    // Anyone with a fleet client key can write the store: a record that
    // could not be served (another name, a key not the certificate's)
    // never replaces a working copy.
    match certfile::facts_of(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes(), host) {
        Ok((f, _)) if f.key_usable && f.covers_host => {}
        Ok(_) => {
            tracing::warn!(host, "fleet certificate not copied: it does not name the host or its key is not the certificate's");
            return Ok(false);
        }
        Err(e) => {
            tracing::warn!(host, error = %e, "fleet certificate not copied: unreadable");
            return Ok(false);
        }
    }
    if let Some(Ok((facts, leaf))) = certfile::read_facts(certs_dir, host) {
        if facts.ours && leaf.serial == cert.serial && facts.key_usable {
            return Ok(false);
        }
        let need = super::plan::assess(Some(Ok(facts)), SystemTime::now());
        if need == Need::Manual {
            tracing::info!(
                host,
                "the operator's certificate kept; the fleet's not copied"
            );
            return Ok(false);
        }
    }
    install(
        certs_dir,
        host,
        &cert.directory,
        &cert.chain_pem,
        &cert.key_pem,
    )?;
    tracing::info!(host, serial = %cert.serial, "certificate copied from the fleet store");
    Ok(true)
}

/// Waits until this node's watch shows `token` (5 s at most), then a
/// little more: every node's watch gets the same event at about the same
/// moment, and the CA may ask any of them right after it is told to.
pub(crate) async fn wait_until_mirrored(challenges: &Challenges, token: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !challenges.has_shared(token) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !challenges.has_shared(token) {
        tracing::warn!(token, "this node's watch did not show the token within 5 s");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Follows the store's ACME state until `stop` changes: tokens into
/// `challenges`, certificates into `certs_dir`, `CertsChanged` to the
/// route watcher whenever files changed.
pub(crate) async fn mirror(
    store: Store,
    challenges: Challenges,
    certs_dir: std::path::PathBuf,
    events: mpsc::Sender<SourceEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let _feed = AcmeFeed::spawn(store, tx);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let certs: Vec<(String, SharedCert)> = match event {
            AcmeEvent::Snapshot { certs, tokens } => {
                challenges.replace_shared(tokens);
                certs
            }
            AcmeEvent::Cert(host, cert) => vec![(host, cert)],
            AcmeEvent::Token(token, key_authorization) => {
                challenges.set_shared(token, key_authorization);
                continue;
            }
            AcmeEvent::TokenGone(token) => {
                challenges.remove_shared(&token);
                continue;
            }
            AcmeEvent::Stale(problem) => {
                tracing::warn!(error = %problem, "fleet store unreachable: the certificates copied so far keep serving");
                continue;
            }
        };
        if certs.is_empty() {
            continue;
        }
        let dir = certs_dir.clone();
        // File writes stay off this runtime's thread.
        let changed = tokio::task::spawn_blocking(move || {
            let mut changed = false;
            for (host, cert) in &certs {
                match copy_in(&dir, host, cert) {
                    Ok(c) => changed |= c,
                    Err(e) => tracing::warn!(host, error = %e, "fleet certificate not copied"),
                }
            }
            changed
        })
        .await
        .unwrap_or(false);
        if changed && events.send(SourceEvent::CertsChanged).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(host: &str) -> (String, String) {
        let params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn copies_once_keeps_the_operators_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = self_signed("shop.io");
        let cert = record("shop.io", "https://ca/dir", &chain, &key).unwrap();
        assert!(copy_in(dir.path(), "shop.io", &cert).unwrap());
        assert!(
            !copy_in(dir.path(), "shop.io", &cert).unwrap(),
            "copied twice"
        );
        let (facts, _) = certfile::read_facts(dir.path(), "shop.io")
            .unwrap()
            .unwrap();
        assert!(facts.ours && facts.key_usable);

        // The operator's own valid certificate stays.
        let (mine, my_key) = self_signed("own.io");
        let own = dir.path().join("own.io");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("fullchain.pem"), &mine).unwrap();
        std::fs::write(own.join("privkey.pem"), &my_key).unwrap();
        let (chain2, key2) = self_signed("own.io");
        let fleet = record("own.io", "https://ca/dir", &chain2, &key2).unwrap();
        assert!(!copy_in(dir.path(), "own.io", &fleet).unwrap());
        assert_eq!(
            std::fs::read_to_string(own.join("fullchain.pem")).unwrap(),
            mine
        );

        // A record that could not be served is not copied over a good one.
        let (_, stray) = self_signed("shop.io");
        let (other_chain, _) = self_signed("shop.io");
        let mismatched = SharedCert {
            chain_pem: other_chain,
            key_pem: stray,
            ..cert.clone()
        };
        assert!(!copy_in(dir.path(), "shop.io", &mismatched).unwrap());
        let wrong_name = record("shop.io", "https://ca/dir", &chain2, &key2).unwrap();
        assert!(!copy_in(dir.path(), "shop.io", &wrong_name).unwrap());
        let (facts, leaf) = certfile::read_facts(dir.path(), "shop.io")
            .unwrap()
            .unwrap();
        assert!(facts.key_usable && leaf.serial == cert.serial);

        // A key that is not a host name never becomes a path.
        assert!(!copy_in(dir.path(), "../escape", &cert).unwrap());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
