//! Automatic HTTPS: certificates for the registry's hosts from an ACME CA
//! (RFC 8555) with HTTP-01 answered by the proxy's own :80 listener, or
//! TLS-ALPN-01 (RFC 8737) by its :443 resolver.
//!
//! Decided apart from done: [`plan`] says which hosts may be requested and
//! when a certificate is due (pure), [`certfile`] reads and writes the certs
//! dir, [`state`] says where the account, certificates and tokens live (the
//! certs dir, or with `[cluster]` the fleet's etcd store, followed by
//! [`shared`]), [`client`] is the HTTPS client towards the CA, [`order`]
//! runs one order and [`manager`] schedules them with backoff. The proxy only needs
//! [`Challenges`] (shared with its HTTP handler) and [`start`].

mod certfile;
mod challenge;
mod client;
mod manager;
mod order;
pub mod plan;
mod shared;
mod state;

use std::path::PathBuf;

pub use certfile::{list_certs, list_certs_for, CertInfo, CertStatus};
pub use challenge::{
    challenge_response, ChallengeGuard, Challenges, ACME_TLS_ALPN, CHALLENGE_PREFIX,
};
pub use manager::{directory_url, start, start_with, AcmeHandle, Tuning};
pub use order::ChallengeKind;
pub(crate) use shared::mirror;

/// Errors of certificate management; each names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source} (is the certs dir writable by the proxy?)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ACME account file {path} is invalid: {source} (remove it to register a new account)")]
    AccountFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot load trusted CA roots from {path}: {message} (check [acme] ca_roots)")]
    Roots { path: PathBuf, message: String },
    #[error("no trusted CA roots: no system bundle found and [acme] ca_roots is empty")]
    NoRoots,
    #[error("ACME directory URL {url:?} is invalid: {message} (check [acme] directory)")]
    Directory { url: String, message: String },
    #[error("ACME server: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("ACME order for {host} failed: {message}")]
    Order { host: String, message: String },
    #[error("cannot make a key or CSR for {host}: {source}")]
    Key {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot read the tenant registry: {0}")]
    Registry(#[source] sotolito_config::Error),
    #[error(
        "ACME account record {location} is invalid: {source} (remove it to register a new account)"
    )]
    AccountRecord {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("ACME state in the fleet store: {0}")]
    Fleet(#[source] sotolito_fleet::Error),
    #[error("cannot start the ACME manager: {0}")]
    Start(#[source] std::io::Error),
}

impl Error {
    /// The CA's problem type, if the error came from the CA
    /// (`urn:ietf:params:acme:error:rateLimited`, ...).
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            Error::Acme(instant_acme::Error::Api(p)) => p.r#type.as_deref(),
            _ => None,
        }
    }

    /// The CA did not answer with an ACME problem (connection refused,
    /// timeout, TLS failure, garbage): it is down or unreachable, for every
    /// host alike.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Acme(e) if !matches!(e, instant_acme::Error::Api(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_problems_are_not_outages() {
        let problem: instant_acme::Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down","status":429}"#,
        )
        .expect("problem");
        let limited = Error::Acme(instant_acme::Error::Api(problem));
        assert_eq!(
            limited.problem_type(),
            Some("urn:ietf:params:acme:error:rateLimited")
        );
        assert!(!limited.is_unreachable());
        let down = Error::Acme(instant_acme::Error::Other("connection refused".into()));
        assert!(down.is_unreachable());
        assert_eq!(down.problem_type(), None);
        let local = Error::NoRoots;
        assert!(!local.is_unreachable());
    }
}
