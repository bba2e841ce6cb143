//! TLS: a certificate per SNI name from the certs directory
//! (HOST/fullchain.pem + HOST/privkey.pem, a wildcard as `_.example.com/`),
//! swapped in when the files change, without a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::route::normalize_host;
use crate::Error;

/// Modification time and size of both files: a change in either reloads.
type Stamp = [(Option<SystemTime>, u64); 2];

/// The loaded certificates, keyed by host name (`*.domain` for wildcards).
pub struct CertStore {
    dir: PathBuf,
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    stamps: Mutex<HashMap<String, Stamp>>,
    /// Pending TLS-ALPN-01 challenge certificates (RFC 8737).
    acme: crate::acme::Challenges,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("dir", &self.dir).finish()
    }
}

impl CertStore {
    /// Loads what is there now; a missing directory is an empty store.
    pub fn open(dir: impl Into<PathBuf>) -> Arc<CertStore> {
        CertStore::open_with_acme(dir, crate::acme::Challenges::default())
    }

    /// [`CertStore::open`], also answering `acme`'s TLS-ALPN-01 challenges.
    pub fn open_with_acme(
        dir: impl Into<PathBuf>,
        acme: crate::acme::Challenges,
    ) -> Arc<CertStore> {
        let store = Arc::new(CertStore {
            dir: dir.into(),
            certs: ArcSwap::from_pointee(HashMap::new()),
            stamps: Mutex::new(HashMap::new()),
            acme,
        });
        store.reload();
        store
    }

    /// Re-reads hosts whose files changed; a host whose new files fail to
    /// load keeps its previous certificate. Returns whether anything changed.
    pub fn reload(&self) -> bool {
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.certs.load_full();
        let mut next: HashMap<String, Arc<CertifiedKey>> = HashMap::new();
        let mut seen: HashMap<String, Stamp> = HashMap::new();
        let mut changed = false;
        let scanned = match scan(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read certs dir");
                return false;
            }
        };
        for (host, (path, stamp)) in scanned {
            seen.insert(host.clone(), stamp);
            if stamps.get(&host) == Some(&stamp) {
                if let Some(old) = current.get(&host) {
                    next.insert(host, old.clone());
                }
                continue;
            }
            changed = true;
            match load(&path, &host) {
                Ok(key) => {
                    tracing::info!(host = %host, "certificate loaded");
                    next.insert(host, Arc::new(key));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate not loaded");
                    if let Some(old) = current.get(&host) {
                        next.insert(host, old.clone());
                    }
                }
            }
        }
        for gone in current.keys().filter(|h| !seen.contains_key(*h)) {
            tracing::info!(host = %gone, "certificate removed");
            changed = true;
        }
        *stamps = seen;
        if changed {
            self.certs.store(Arc::new(next));
        }
        changed
    }

    /// The certificate that serves `host` (exact, then one-label wildcard).
    pub fn lookup(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = normalize_host(host)?;
        let certs = self.certs.load();
        if let Some(c) = certs.get(&*host) {
            return Some(c.clone());
        }
        let (_, domain) = host.split_once('.')?;
        certs.get(&format!("*.{domain}")).cloned()
    }

    pub fn has_cert(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // ALPN acme-tls/1 gets the challenge certificate or nothing.
        if let Some(answer) = self.acme.tls_alpn_answer(&hello) {
            return answer;
        }
        // No SNI, no certificate: a tenant is chosen by name, never by IP.
        hello.server_name().and_then(|name| self.lookup(name))
    }
}

/// Each host directory holding a `fullchain.pem`, by host name (`*.domain`
/// for `_.domain/`), with the stamp of its files. A missing directory is
/// empty.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<String, (PathBuf, Stamp)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e.flatten().collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_ascii_lowercase) else {
            continue;
        };
        let host = match name.strip_prefix("_.") {
            Some(domain) => format!("*.{domain}"),
            None => name,
        };
        let path = entry.path();
        if !path.join("fullchain.pem").exists() {
            continue;
        }
        let stamp = stamp(&path);
        out.insert(host, (path, stamp));
    }
    Ok(out)
}

/// What of the certs dir a reload looks at, to tell whether one is due;
/// `None` when the directory cannot be read.
pub(crate) fn dir_stamps(dir: &Path) -> Option<BTreeMap<String, Stamp>> {
    let scanned = scan(dir).ok()?;
    Some(scanned.into_iter().map(|(h, (_, s))| (h, s)).collect())
}

fn stamp(dir: &Path) -> Stamp {
    let one = |f: &str| match std::fs::metadata(dir.join(f)) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    };
    [one("fullchain.pem"), one("privkey.pem")]
}

fn load(dir: &Path, host: &str) -> Result<CertifiedKey, Error> {
    let err = |path: &Path, message: String| Error::Cert {
        host: host.to_owned(),
        path: path.to_owned(),
        message,
    };
    let chain_path = dir.join("fullchain.pem");
    let key_path = dir.join("privkey.pem");
    let certs = CertificateDer::pem_file_iter(&chain_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(&chain_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(&chain_path, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| match e {
        pem::Error::NoItemsFound => err(&key_path, "no private key in the file".into()),
        e => err(&key_path, e.to_string()),
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err(&key_path, e.to_string()))?;
    let key = CertifiedKey::new(certs, signer);
    key.keys_match().map_err(|e| {
        err(
            &key_path,
            format!("key does not match the certificate: {e}"),
        )
    })?;
    Ok(key)
}

/// TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, certificates from `store`.
pub(crate) fn server_config(
    store: Arc<CertStore>,
    resumption: bool,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    if !resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        crate::acme::ACME_TLS_ALPN.to_vec(),
    ];
    Ok(Arc::new(config))
}
