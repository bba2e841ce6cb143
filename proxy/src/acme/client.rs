//! The HTTPS client towards the ACME CA: one connection per request (an
//! order makes a dozen), system roots plus `[acme] ca_roots`, a timeout on
//! every step, and the CA's Retry-After remembered for the backoff.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::Error;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The CA client; clones share the Retry-After record.
#[derive(Clone)]
pub(crate) struct AcmeHttp {
    tls: tokio_rustls::TlsConnector,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl AcmeHttp {
    /// Trusts the system roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` when
    /// set, else the distribution's bundle and directory) and `extra_roots`.
    pub(crate) fn new(extra_roots: &[PathBuf]) -> Result<AcmeHttp, Error> {
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        for e in &system.errors {
            tracing::warn!(error = %e, "some system CA roots not loaded");
        }
        // A bundle may hold certificates rustls rejects; skip those.
        let _ = roots.add_parsable_certificates(system.certs);
        for path in extra_roots {
            let certs = read_pem_certs(path)?;
            if certs.is_empty() {
                return Err(Error::Roots {
                    path: path.clone(),
                    message: "no certificate in the file".into(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| Error::Roots {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
        }
        if roots.is_empty() {
            return Err(Error::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Roots {
                path: PathBuf::new(),
                message: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(AcmeHttp {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            retry_after: Arc::new(Mutex::new(None)),
        })
    }

    /// The Retry-After of the last error response, and forgets it.
    pub(crate) fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    async fn send(&self, req: Request<BodyWrapper<Bytes>>) -> Result<BytesResponse, String> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(format!("{uri}: only https URLs are used for ACME"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{uri}: no host"))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
        )
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out"))?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS handshake with {host}:{port} timed out"))?
            .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake with {host}:{port} failed: {e}"))?;
        let conn = tokio::spawn(conn);

        let (mut parts, body) = req.into_parts();
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(host);
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
            .map_err(|e| e.to_string())?;
        if let Ok(v) = authority.parse() {
            parts.headers.insert(header::HOST, v);
        }
        let req = Request::from_parts(parts, body);
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request to {uri} failed: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the answer from {uri} failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await
        .map_err(|_| format!("request to {uri} timed out"));
        conn.abort();
        let (parts, body) = result??;
        if parts.status.is_client_error() || parts.status.is_server_error() {
            if let Some(at) = parts
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
            {
                *self.retry_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
            }
        }
        Ok(BytesResponse::from(http::Response::from_parts(
            parts,
            Full::new(body),
        )))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let this = self.clone();
        Box::pin(async move {
            this.send(req)
                .await
                .map_err(|e| instant_acme::Error::Other(e.into()))
        })
    }
}

/// RFC 9110 10.2.3: delay-seconds or an HTTP-date.
pub(crate) fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    httpdate::parse_http_date(value).ok()
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Roots {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        let at = parse_retry_after("120").expect("seconds");
        assert!(at >= now + Duration::from_secs(119));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            humantime::parse_rfc3339("1994-11-06T08:49:37Z").ok()
        );
        // The two obsolete forms recipients must accept (RFC 9110 5.6.7).
        for old in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(
                parse_retry_after(old),
                humantime::parse_rfc3339("1994-11-06T08:49:37Z").ok(),
                "{old}"
            );
        }
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn missing_root_file_is_named() {
        let err = AcmeHttp::new(&[PathBuf::from("/nonexistent/root.pem")])
            .err()
            .expect("error");
        assert!(err.to_string().contains("/nonexistent/root.pem"), "{err}");
    }
}
