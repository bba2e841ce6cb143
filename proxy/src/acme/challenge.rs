//! The challenge store, filled while an order is pending: HTTP-01 token ->
//! key authorization, answered by the proxy's plain-HTTP handler before
//! routing (RFC 8555 section 8.3), and TLS-ALPN-01 host -> challenge
//! certificate, answered by the TLS resolver for ALPN `acme-tls/1`
//! (RFC 8737). With `[cluster]` the fleet's pending tokens are mirrored
//! here from the store's watch ([`super::shared`]), so every node answers
//! whichever node ordered.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;

/// The path prefix of HTTP-01 requests.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737 section 6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending HTTP-01 challenges, shared by the manager and the HTTP workers.
/// Cheap to clone; every clone sees the same challenges.
#[derive(Clone, Default)]
pub struct Challenges {
    tokens: Arc<RwLock<HashMap<String, String>>>,
    /// The fleet's tokens as the store's watch last showed them.
    shared: Arc<RwLock<HashMap<String, String>>>,
    alpn: Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("pending", &self.len())
            .finish()
    }
}

impl Challenges {
    pub fn new() -> Challenges {
        Challenges::default()
    }

    /// The key authorization for `token`, if a challenge is pending.
    pub fn get(&self, token: &str) -> Option<String> {
        let local = self
            .tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        local.or_else(|| {
            self.shared
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(token)
                .cloned()
        })
    }

    /// Pending challenges of both kinds, the fleet's included.
    pub fn len(&self) -> usize {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).len()
            + self.shared.read().unwrap_or_else(|p| p.into_inner()).len()
            + self.alpn.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Replaces the fleet's tokens (after a read of the store).
    pub(crate) fn replace_shared(&self, tokens: impl IntoIterator<Item = (String, String)>) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = tokens.into_iter().collect();
    }

    pub(crate) fn set_shared(&self, token: String, key_authorization: String) {
        self.shared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, key_authorization);
    }

    pub(crate) fn remove_shared(&self, token: &str) {
        self.shared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// Whether the fleet's mirror shows `token` (the orderer waits for
    /// its own watch before telling the CA to validate).
    pub(crate) fn has_shared(&self, token: &str) -> bool {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(token)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes a challenge until the returned guard is dropped.
    pub fn insert(&self, token: &str, key_authorization: &str) -> ChallengeGuard {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
        ChallengeGuard {
            challenges: self.clone(),
            key: Key::Token(token.to_owned()),
        }
    }

    /// Publishes a TLS-ALPN-01 certificate for `host` until the guard drops.
    pub fn insert_tls_alpn(&self, host: &str, cert: Arc<CertifiedKey>) -> ChallengeGuard {
        self.alpn
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_ascii_lowercase(), cert);
        ChallengeGuard {
            challenges: self.clone(),
            key: Key::Host(host.to_ascii_lowercase()),
        }
    }

    /// For a ClientHello offering only `acme-tls/1`: `Some(answer)`, the
    /// pending challenge certificate for its SNI or `None` (no handshake);
    /// `None` for every other hello, which the resolver serves as usual.
    pub fn tls_alpn_answer(&self, hello: &ClientHello<'_>) -> Option<Option<Arc<CertifiedKey>>> {
        let mut alpn = hello.alpn()?;
        if !(alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none()) {
            return None;
        }
        let host = hello.server_name()?.to_ascii_lowercase();
        Some(
            self.alpn
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&host)
                .cloned(),
        )
    }
}

#[derive(Debug)]
enum Key {
    Token(String),
    Host(String),
}

/// Removes its challenge when dropped, whatever way the order ended.
#[derive(Debug)]
pub struct ChallengeGuard {
    challenges: Challenges,
    key: Key,
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        match &self.key {
            Key::Token(t) => {
                self.challenges
                    .tokens
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(t);
            }
            Key::Host(h) => {
                self.challenges
                    .alpn
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(h);
            }
        }
    }
}

/// The answer to `GET /.well-known/acme-challenge/TOKEN` when TOKEN is a
/// pending challenge; `None` otherwise, so that the request goes on to the
/// tenant (which may run its own ACME client). `body` wraps the bytes in the
/// caller's body type.
pub fn challenge_response<B>(
    challenges: &Challenges,
    path: &str,
    body: impl FnOnce(Bytes) -> B,
) -> Option<Response<B>> {
    let token = path.strip_prefix(CHALLENGE_PREFIX)?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    let key_auth = challenges.get(token)?;
    let mut resp = Response::new(body(Bytes::from(key_auth)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_pending_tokens_only() {
        let c = Challenges::new();
        let path = "/.well-known/acme-challenge/tok123";
        assert!(challenge_response(&c, path, |b| b).is_none());
        let guard = c.insert("tok123", "tok123.thumb");
        let resp = challenge_response(&c, path, |b| b).expect("pending");
        assert_eq!(resp.body(), &Bytes::from("tok123.thumb"));
        assert!(challenge_response(&c, "/.well-known/acme-challenge/other", |b| b).is_none());
        assert!(challenge_response(&c, "/.well-known/acme-challenge/", |b| b).is_none());
        assert!(challenge_response(&c, "/tok123", |b| b).is_none());
        assert!(challenge_response(&c, "/.well-known/acme-challenge/tok123/x", |b| b).is_none());
        drop(guard);
        assert!(challenge_response(&c, path, |b| b).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn the_fleets_tokens_are_answered_until_the_store_drops_them() {
        let c = Challenges::new();
        let path = "/.well-known/acme-challenge/fleet1";
        c.replace_shared([("fleet1".to_owned(), "fleet1.thumb".to_owned())]);
        let resp = challenge_response(&c, path, |b| b).expect("shared token");
        assert_eq!(resp.body(), &Bytes::from("fleet1.thumb"));
        c.set_shared("fleet2".into(), "fleet2.thumb".into());
        assert!(c.has_shared("fleet2"));
        c.remove_shared("fleet2");
        assert!(!c.has_shared("fleet2"));
        // A read of the store replaces what the watch had shown.
        c.replace_shared(Vec::new());
        assert!(challenge_response(&c, path, |b| b).is_none());
        assert!(c.is_empty());
    }
}
