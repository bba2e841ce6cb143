//! The bodies of a proxied exchange: the request body read ahead and then
//! streamed to the tenant, the response body streamed back (returning the
//! tenant connection to its pool when it ends), and the access log line
//! written when it is done.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::limit::StreamPermit;
use crate::upstream::Checkout;

/// Read before the tenant is contacted, so a body that is malformed from the
/// start never reaches it.
const PREREAD_LIMIT: usize = 64 * 1024;

/// The request body sent upstream: frames read ahead, then the rest.
pub(crate) struct ReqBody {
    read_ahead: VecDeque<Frame<Bytes>>,
    read_ahead_len: u64,
    rest: Incoming,
    /// Set when the client's body failed (the gate refused it midway):
    /// the tenant request then failed because of the client (400).
    client_failed: Arc<AtomicBool>,
}

impl ReqBody {
    pub(crate) fn new(rest: Incoming) -> ReqBody {
        ReqBody {
            read_ahead: VecDeque::new(),
            read_ahead_len: 0,
            rest,
            client_failed: Arc::default(),
        }
    }

    /// Tells, after the exchange, whether the client's body failed.
    pub(crate) fn failure_flag(&self) -> Arc<AtomicBool> {
        self.client_failed.clone()
    }

    /// Nothing was read ahead and the client sends no more.
    pub(crate) fn is_empty(&self) -> bool {
        self.read_ahead.is_empty() && self.rest.is_end_stream()
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.read_ahead.pop_front() {
            if let Some(data) = frame.data_ref() {
                this.read_ahead_len -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let r = Pin::new(&mut this.rest).poll_frame(cx);
        if matches!(r, Poll::Ready(Some(Err(_)))) {
            this.client_failed.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.read_ahead.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.read_ahead_len);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.read_ahead_len);
        }
        hint
    }
}

/// The response body: the tenant's, streamed, or one of ours.
pub(crate) enum ResBody {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        /// The tenant connection, returned to the pool when the body ends.
        checkout: Option<Checkout>,
        log: Option<Box<AccessLog>>,
        /// The first frame, read before the head went out ([`first_frame`]).
        ahead: Option<Frame<Bytes>>,
    },
    /// An HTTP/2 stream's body read from a pooled engine connection.
    Tenant(Box<crate::h2tenant::TenantBody>),
}

impl ResBody {
    pub(crate) fn upstream(body: Incoming, checkout: Checkout) -> ResBody {
        let mut checkout = Some(checkout);
        if body.is_end_stream() {
            // hyper never polls an empty body: the connection is free now.
            if let Some(l) = checkout.take() {
                l.release();
            }
        }
        ResBody::Upstream {
            body,
            checkout,
            log: None,
            ahead: None,
        }
    }
}

/// Reads the first frame of a tenant's response body if it is already on
/// hand (one turn of the connection's task), so that a body malformed
/// from its first bytes becomes a 502 instead of a head followed by a
/// cut. `Err` when it is malformed; a body that is not on hand yet is
/// left alone.
pub(crate) async fn first_frame(resp: &mut ResBody) -> Result<(), ()> {
    let ResBody::Upstream {
        body,
        checkout,
        ahead,
        ..
    } = resp
    else {
        return Ok(());
    };
    if body.is_end_stream() || ahead.is_some() {
        return Ok(());
    }
    // hyper decodes body bytes on the connection's task, when asked: ask,
    // let that task run once, and take what it had buffered.
    let mut next = body.frame();
    let polled = match futures::poll!(&mut next) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => {
            tokio::task::yield_now().await;
            match futures::poll!(&mut next) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            }
        }
    };
    match polled {
        Some(Some(Ok(frame))) => {
            *ahead = Some(frame);
            if body.is_end_stream() {
                if let Some(l) = checkout.take() {
                    l.release();
                }
            }
            Ok(())
        }
        Some(Some(Err(_))) => {
            *checkout = None;
            Err(())
        }
        Some(None) => {
            if let Some(l) = checkout.take() {
                l.release();
            }
            Ok(())
        }
        None => Ok(()),
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResBody::Tenant(body) => Pin::new(&mut **body)
                .poll_frame(cx)
                .map(|r| r.map(|r| r.map_err(BodyError::Tenant))),
            ResBody::Upstream {
                body,
                checkout,
                log,
                ahead,
            } => {
                if let Some(frame) = ahead.take() {
                    if let (Some(log), Some(data)) = (log, frame.data_ref()) {
                        log.bytes += data.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                let r = Pin::new(&mut *body).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(log), Some(data)) = (log, frame.data_ref()) {
                            log.bytes += data.len() as u64;
                        }
                        // hyper stops polling once the body says it ended.
                        if body.is_end_stream() {
                            if let Some(l) = checkout.take() {
                                l.release();
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(l) = checkout.take() {
                            l.release();
                        }
                    }
                    // A failed body leaves the connection unusable: drop it.
                    Poll::Ready(Some(Err(_))) => *checkout = None,
                    Poll::Pending => {}
                }
                r.map(|r| r.map(|r| r.map_err(BodyError::Hyper)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResBody::Full(b) => b.is_none(),
            ResBody::Upstream { body, ahead, .. } => ahead.is_none() && body.is_end_stream(),
            ResBody::Tenant(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResBody::Full(None) => SizeHint::with_exact(0),
            ResBody::Upstream { body, ahead, .. } => {
                let extra = ahead
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |d| d.len() as u64);
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + extra);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            ResBody::Tenant(body) => body.size_hint(),
        }
    }
}

/// Why a response body stopped short: the connection to the client
/// ends (HTTP/1) or the stream is reset (HTTP/2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("{0}")]
    Hyper(hyper::Error),
    #[error("tenant connection: {0}")]
    Tenant(std::io::Error),
}

/// An HTTP/2 response body holding its stream's place in the client
/// address's budget until it is done (or dropped).
pub(crate) struct BudgetedBody {
    pub body: ResBody,
    pub _permit: Option<StreamPermit>,
}

impl Body for BudgetedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The access log line of one request, written when its response body is
/// done (or dropped), so it can say how many bytes went out.
pub(crate) struct AccessLog {
    pub tenant: Arc<str>,
    pub host: String,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub start: Instant,
    pub upstream: Duration,
    pub peer: SocketAddr,
    /// A JSON line on stdout instead of a tracing event.
    pub json: bool,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream.as_secs_f64() * 1000.0;
        if self.json {
            let line = serde_json::json!({
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "client": self.peer.to_string(),
                "tenant": &*self.tenant,
                "host": self.host,
                "method": self.method.as_str(),
                "path": self.path,
                "status": self.status,
                "bytes": self.bytes,
                "duration_ms": duration_ms,
                "upstream_ms": upstream_ms,
            });
            let mut text = line.to_string();
            text.push('\n');
            // One write per line under stdout's lock: lines of the workers
            // never interleave.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            return;
        }
        tracing::info!(
            target: "sotolito_proxy::access",
            client = %self.peer,
            tenant = %Field(&self.tenant),
            host = %Field(&self.host),
            method = %Field(self.method.as_str()),
            path = %Field(&self.path),
            status = self.status,
            bytes = self.bytes,
            duration_ms,
            upstream_ms,
        );
    }
}

/// A text access-log value no client input can break out of (logfmt):
/// bare when it is printable ASCII without spaces, quotes or backslashes
/// (a bare `=` cannot start a field: fields are split at spaces), else
/// quoted, with quotes, backslashes and control characters escaped.
struct Field<'a>(&'a str);

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        let plain = self
            .0
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if plain {
            return f.write_str(self.0);
        }
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:04x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

pub(crate) fn access_log_enabled() -> bool {
    tracing::enabled!(target: "sotolito_proxy::access", tracing::Level::INFO)
}

/// Reads the first body frame (waiting for it), then whatever else has
/// already arrived, up to [`PREREAD_LIMIT`].
pub(crate) async fn read_ahead(body: &mut ReqBody, wait: Duration) -> Result<(), ()> {
    let first = tokio::time::timeout(wait, body.rest.frame()).await;
    let push = |body: &mut ReqBody, frame: Frame<Bytes>| {
        if let Some(d) = frame.data_ref() {
            body.read_ahead_len += d.len() as u64;
        }
        body.read_ahead.push_back(frame);
    };
    match first {
        Ok(Some(Ok(frame))) => push(body, frame),
        Ok(None) => return Ok(()),
        Ok(Some(Err(_))) | Err(_) => return Err(()),
    }
    while body.read_ahead_len < PREREAD_LIMIT as u64 && !body.rest.is_end_stream() {
        // hyper decodes the next frame only when asked, on the connection's
        // task: ask, let that task run once, and take what it had buffered.
        let mut next = body.rest.frame();
        let polled = match futures::poll!(&mut next) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => {
                tokio::task::yield_now().await;
                match futures::poll!(&mut next) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => None,
                }
            }
        };
        match polled {
            Some(Some(Ok(frame))) => push(body, frame),
            Some(Some(Err(_))) => return Err(()),
            Some(None) | None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Field;

    #[test]
    fn log_fields_are_bare_when_plain_and_quoted_otherwise() {
        let shown = |s: &str| Field(s).to_string();
        assert_eq!(shown("a.test"), "a.test");
        assert_eq!(shown("/x?y=1"), "/x?y=1");
        assert_eq!(shown(""), "");
        assert_eq!(
            shown("a status=200 \"b\"\\\n\t\u{1b}"),
            "\"a status=200 \\\"b\\\"\\\\\\n\\t\\u{001b}\""
        );
    }
}
