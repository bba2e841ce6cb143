//! The HTTP-01 challenge store: token -> key authorization, filled while an
//! order is pending and answered by the proxy's plain-HTTP handler before
//! routing (RFC 8555 section 8.3).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{header, HeaderValue, Response};

/// The path prefix of HTTP-01 requests.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 challenges, shared by the manager and the HTTP workers.
/// Cheap to clone; every clone sees the same challenges.
#[derive(Clone, Default)]
pub struct Challenges {
    tokens: Arc<RwLock<HashMap<String, String>>>,
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
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).len()
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
            token: token.to_owned(),
        }
    }
}

/// Removes its challenge when dropped, whatever way the order ended.
#[derive(Debug)]
pub struct ChallengeGuard {
    challenges: Challenges,
    token: String,
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        self.challenges
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
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
}
