//! One ACME order for one host with HTTP-01 or TLS-ALPN-01, and the
//! account it is made with (created once, kept where [`AcmeState`] says).

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, KeyAuthorization,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sotolito_config::host::Acme;

use super::certfile::account_path;
use super::challenge::Challenges;
use super::client::AcmeHttp;
use super::state::{AcmeState, OrderGuard};
use super::Error;

/// The account record (CERTS_DIR/acme/account.json, or the fleet's
/// `acme/account` key): the credentials and the directory they belong to,
/// so a change of `[acme] directory` (staging -> production) registers anew.
#[derive(Serialize, Deserialize)]
struct AccountFile {
    directory: String,
    credentials: AccountCredentials,
}

fn parse_record(state: &AcmeState, bytes: &[u8]) -> Result<AccountFile, Error> {
    serde_json::from_slice(bytes).map_err(|source| match state {
        AcmeState::Files { certs_dir } => Error::AccountFile {
            path: account_path(certs_dir),
            source,
        },
        AcmeState::Fleet { .. } => Error::AccountRecord {
            location: state.account_location(),
            source,
        },
    })
}

/// The account for `acme.directory`: restored from its record, or
/// registered and saved (0600 on one host) when missing, made for another
/// directory, or `fresh` (the CA forgot it). In a fleet, a node that loses
/// the race to save a new account uses the winner's.
pub(crate) async fn account(
    http: &AcmeHttp,
    acme: &Acme,
    state: &AcmeState,
    fresh: bool,
) -> Result<Account, Error> {
    let saved = state.account_record().await?;
    if let (false, Some(bytes)) = (fresh, &saved) {
        let file = parse_record(state, bytes)?;
        if file.directory == acme.directory {
            return Ok(Account::builder_with_http(Box::new(http.clone()))
                .from_credentials(file.credentials)
                .await?);
        }
        tracing::info!(
            old = %file.directory,
            new = %acme.directory,
            "ACME directory changed; registering a new account"
        );
    }
    let contact = format!("mailto:{}", acme.email);
    let contacts: Vec<&str> = if acme.email.is_empty() {
        Vec::new()
    } else {
        vec![contact.as_str()]
    };
    let (account, credentials) = Account::builder_with_http(Box::new(http.clone()))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await?;
    let file = AccountFile {
        directory: acme.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|source| Error::AccountRecord {
        location: state.account_location(),
        source,
    })?;
    let stored = state.save_account(&json, saved.as_deref()).await?;
    if stored != json {
        let theirs = parse_record(state, &stored)?;
        tracing::info!(
            location = %state.account_location(),
            "another node registered the fleet's ACME account first; using it"
        );
        return Ok(Account::builder_with_http(Box::new(http.clone()))
            .from_credentials(theirs.credentials)
            .await?);
    }
    tracing::info!(id = %account.id(), location = %state.account_location(), "ACME account registered");
    Ok(account)
}

/// The challenge the proxy answers for the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChallengeKind {
    /// A token on :80 (RFC 8555 section 8.3).
    #[default]
    Http01,
    /// A self-signed certificate on :443 for ALPN `acme-tls/1` (RFC 8737),
    /// for hosts whose port 80 is not reachable.
    TlsAlpn01,
}

/// A certificate chain and its private key, both PEM.
pub(crate) struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// How order and certificate readiness are polled.
pub(crate) fn poll_policy(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(timeout)
}

/// Orders a certificate for `host`, publishing the challenge answers in
/// `challenges` (HTTP-01 in a fleet: through `state`, under `guard`) while
/// the CA validates.
pub(crate) async fn issue(
    account: &Account,
    host: &str,
    kind: ChallengeKind,
    (state, guard): (&AcmeState, &OrderGuard),
    challenges: &Challenges,
    poll: &RetryPolicy,
) -> Result<Issued, Error> {
    let order_err = |message: String| Error::Order {
        host: host.to_owned(),
        message,
    };
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut guards = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(order_err(format!("authorization is {other:?}"))),
        }
        let (r#type, name) = match kind {
            ChallengeKind::Http01 => (ChallengeType::Http01, "http-01"),
            ChallengeKind::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        };
        let mut challenge = authz
            .challenge(r#type)
            .ok_or_else(|| order_err(format!("the CA offers no {name} challenge")))?;
        let key_auth = challenge.key_authorization();
        guards.push(match kind {
            ChallengeKind::Http01 => {
                state
                    .publish_token(guard, challenges, &challenge.token, key_auth.as_str())
                    .await?
            }
            ChallengeKind::TlsAlpn01 => {
                challenges.insert_tls_alpn(host, tls_alpn_cert(host, &key_auth)?)
            }
        });
        challenge.set_ready().await?;
    }
    let status = order.poll_ready(poll).await?;
    if status != OrderStatus::Ready {
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            if let Ok(state) = authz.refresh().await {
                why.extend(
                    state
                        .challenges
                        .iter()
                        .filter_map(|c| c.error.as_ref())
                        .map(|p| p.to_string()),
                );
            }
        }
        return Err(order_err(format!(
            "order is {status:?}: {}",
            if why.is_empty() {
                "the CA gave no reason".to_owned()
            } else {
                why.join("; ")
            }
        )));
    }
    drop(guards);
    let key = rcgen::KeyPair::generate().map_err(|source| Error::Key {
        host: host.to_owned(),
        source,
    })?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|source| Error::Key {
            host: host.to_owned(),
            source,
        })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|source| Error::Key {
            host: host.to_owned(),
            source,
        })?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(poll).await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The TLS-ALPN-01 certificate: self-signed, naming only `host`, carrying
/// the SHA-256 of the key authorization in the critical acmeIdentifier
/// extension (RFC 8737 section 3).
fn tls_alpn_cert(host: &str, key_auth: &KeyAuthorization) -> Result<Arc<CertifiedKey>, Error> {
    let key_err = |source| Error::Key {
        host: host.to_owned(),
        source,
    };
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(key_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        key_auth.digest().as_ref(),
    )];
    let key = rcgen::KeyPair::generate().map_err(key_err)?;
    let cert = params.self_signed(&key).map_err(key_err)?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| Error::Order {
            host: host.to_owned(),
            message: format!("cannot use the TLS-ALPN-01 key: {e}"),
        })?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}
