//! The certs dir as ACME sees it: CERTS_DIR/HOST/{fullchain,privkey}.pem
//! (what the TLS resolver serves), CERTS_DIR/HOST/acme.json (the marker
//! saying which certificate we issued), CERTS_DIR/acme/account.json (the
//! ACME account), CERTS_DIR/acme/status.json (the manager's last attempt
//! per host, for `vpsctl certs list`). Every file is written to a temp file
//! and renamed, 0600.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sotolito_config::{HostConfig, Registry};

use super::plan::{self, CertFacts, Eligibility, Need};
use super::Error;
use crate::source::TenantRoute;

pub(crate) const ACCOUNT_DIR: &str = "acme";
pub(crate) const ACCOUNT_FILE: &str = "account.json";
pub(crate) const MARKER_FILE: &str = "acme.json";
pub(crate) const STATUS_FILE: &str = "status.json";

/// The manager's record of its last attempt for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attempt {
    /// Consecutive failures; 0 after a success.
    pub failures: u32,
    pub last_error: Option<String>,
    #[serde(with = "rfc3339")]
    pub last_attempt: SystemTime,
    #[serde(with = "rfc3339_opt", default)]
    pub next_attempt: Option<SystemTime>,
}

pub(crate) fn read_status(certs_dir: &Path) -> BTreeMap<String, Attempt> {
    fs::read(certs_dir.join(ACCOUNT_DIR).join(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub(crate) fn write_status(
    certs_dir: &Path,
    status: &BTreeMap<String, Attempt>,
) -> Result<(), Error> {
    let dir = certs_dir.join(ACCOUNT_DIR);
    ensure_dir(&dir)?;
    let json = serde_json::to_vec_pretty(status).unwrap_or_default();
    write_private(&dir.join(STATUS_FILE), &json)
}

/// CERTS_DIR/HOST, a wildcard as `_.domain` (the resolver's layout).
pub(crate) fn host_dir(certs_dir: &Path, host: &str) -> PathBuf {
    match host.strip_prefix("*.") {
        Some(domain) => certs_dir.join(format!("_.{domain}")),
        None => certs_dir.join(host),
    }
}

pub(crate) fn account_path(certs_dir: &Path) -> PathBuf {
    certs_dir.join(ACCOUNT_DIR).join(ACCOUNT_FILE)
}

/// Written next to a certificate we issued; a certificate whose serial
/// differs was put there by someone else and is left alone while valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub directory: String,
    pub serial: String,
    #[serde(with = "rfc3339")]
    pub issued: SystemTime,
}

/// What the leaf of a PEM chain says.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub dns_names: Vec<String>,
}

pub(crate) fn parse_leaf(pem: &[u8]) -> Result<Leaf, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let time = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| cert.issuer().to_string());
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Leaf {
        issuer,
        serial: cert.raw_serial_as_string(),
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
        dns_names,
    })
}

/// The facts about HOST's certificate files: `None` when there is none.
pub(crate) fn read_facts(
    certs_dir: &Path,
    host: &str,
) -> Option<Result<(CertFacts, Leaf), String>> {
    let dir = host_dir(certs_dir, host);
    let chain = match fs::read(dir.join("fullchain.pem")) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(e.to_string())),
    };
    let leaf = match parse_leaf(&chain) {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    let marker: Option<Marker> = fs::read(dir.join(MARKER_FILE))
        .ok()
        .and_then(|m| serde_json::from_slice(&m).ok());
    let key_usable = fs::read(dir.join("privkey.pem")).is_ok_and(|k| key_matches(&chain, &k));
    let facts = CertFacts {
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        covers_host: leaf.dns_names.iter().any(|n| n == host),
        ours: marker.is_some_and(|m| m.serial == leaf.serial),
        key_usable,
    };
    Some(Ok((facts, leaf)))
}

/// The facts of a certificate held in memory (the fleet's record), which
/// is always one we issued.
pub(crate) fn facts_of(
    chain_pem: &[u8],
    key_pem: &[u8],
    host: &str,
) -> Result<(CertFacts, Leaf), String> {
    let leaf = parse_leaf(chain_pem)?;
    let facts = CertFacts {
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        covers_host: leaf.dns_names.iter().any(|n| n == host),
        ours: true,
        key_usable: key_matches(chain_pem, key_pem),
    };
    Ok((facts, leaf))
}

/// Whether `key_pem` is the private key of the chain's leaf, as the TLS
/// resolver checks before serving the pair.
fn key_matches(chain_pem: &[u8], key_pem: &[u8]) -> bool {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(chain_pem)
        .filter_map(Result::ok)
        .collect();
    let Ok(key) = PrivateKeyDer::from_pem_slice(key_pem) else {
        return false;
    };
    let Ok(signer) = rustls::crypto::ring::sign::any_supported_type(&key) else {
        return false;
    };
    !certs.is_empty()
        && rustls::sign::CertifiedKey::new(certs, signer)
            .keys_match()
            .is_ok()
}

/// Whether HOST needs an order now.
pub(crate) fn need(certs_dir: &Path, host: &str, now: SystemTime) -> Need {
    let facts = read_facts(certs_dir, host).map(|r| r.map(|(f, _)| f));
    plan::assess(facts, now)
}

/// Creates `dir` (and parents) with mode 0700 when missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `data` to `path` atomically, mode 0600 (`sotolito_config::atomic`).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    sotolito_config::atomic::write(path, data, 0o600).map_err(|e| Error::Write {
        path: e.path,
        source: e.source,
    })
}

/// Installs a new certificate for HOST: the marker first (so a crash never
/// leaves a certificate of ours looking like the operator's), then the key,
/// then the chain, each atomic. The resolver reloads when the chain
/// changes; between the two renames it keeps serving the old pair.
pub(crate) fn install(
    certs_dir: &Path,
    host: &str,
    directory: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Leaf, Error> {
    let leaf = parse_leaf(chain_pem.as_bytes()).map_err(|message| Error::Order {
        host: host.to_owned(),
        message: format!("the CA sent an unusable certificate: {message}"),
    })?;
    let dir = host_dir(certs_dir, host);
    ensure_dir(&dir)?;
    let marker = Marker {
        directory: directory.to_owned(),
        serial: leaf.serial.clone(),
        issued: SystemTime::now(),
    };
    let marker = serde_json::to_vec_pretty(&marker).unwrap_or_default();
    write_private(&dir.join(MARKER_FILE), &marker)?;
    write_private(&dir.join("privkey.pem"), key_pem.as_bytes())?;
    write_private(&dir.join("fullchain.pem"), chain_pem.as_bytes())?;
    Ok(leaf)
}

/// The state of a certificate, for `vpsctl certs list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertStatus {
    /// Valid and not yet due for renewal.
    Valid,
    /// Valid, past two thirds of its lifetime: renewal is due.
    RenewalDue,
    Expired,
    /// The files exist but cannot be used.
    Invalid,
    /// No certificate.
    Missing,
}

impl CertStatus {
    /// The word `--json` prints, for tables too.
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::RenewalDue => "renewal-due",
            CertStatus::Expired => "expired",
            CertStatus::Invalid => "invalid",
            CertStatus::Missing => "missing",
        }
    }
}

impl std::fmt::Display for CertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `vpsctl certs list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub host: String,
    /// The tenant routing this host; `None` for a certificate of no tenant.
    pub tenant: Option<String>,
    pub status: CertStatus,
    /// The issuer's common name (or whole name).
    pub issuer: Option<String>,
    /// RFC 3339.
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    /// When ACME renews it (RFC 3339), for certificates it manages.
    pub renew_at: Option<String>,
    /// `acme` (issued by us), `manual` (installed by the operator) or
    /// `none`.
    pub source: &'static str,
    /// Whether ACME requests this host, or why not.
    pub acme: String,
    /// Why the files are unusable, for `invalid`.
    pub error: Option<String>,
    /// The manager's last failed order for this host, if the last attempt
    /// failed, and how many failed in a row.
    pub last_error: Option<String>,
    pub failures: u32,
    /// When the manager tries again (RFC 3339), after a failure.
    pub next_attempt: Option<String>,
}

/// Every registry host and every certificate in the certs dir, by host.
pub fn list_certs(config: &HostConfig) -> Result<Vec<CertInfo>, Error> {
    let tenants: Vec<TenantRoute> = Registry::new(config.registry_dir())
        .list()
        .map_err(Error::Registry)?
        .iter()
        .map(TenantRoute::from)
        .collect();
    list_certs_for(config, &tenants)
}

/// [`list_certs`] for the given tenants (on a fleet node: every node's,
/// whose certificates this node serves too).
pub fn list_certs_for(
    config: &HostConfig,
    tenants: &[TenantRoute],
) -> Result<Vec<CertInfo>, Error> {
    let certs_dir = config.certs_dir();
    let mut hosts: Vec<(String, Option<String>, Option<Eligibility>)> = plan::plan_hosts(tenants)
        .into_iter()
        .map(|(h, t, e)| (h.as_str().to_owned(), Some(t.as_str().to_owned()), Some(e)))
        .collect();
    match fs::read_dir(&certs_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_ascii_lowercase) else {
                    continue;
                };
                if name == ACCOUNT_DIR || !entry.path().join("fullchain.pem").exists() {
                    continue;
                }
                let host = match name.strip_prefix("_.") {
                    Some(d) => format!("*.{d}"),
                    None => name,
                };
                if !hosts.iter().any(|(h, _, _)| *h == host) {
                    hosts.push((host, None, None));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Read {
                path: certs_dir,
                source,
            })
        }
    }
    hosts.sort_by(|a, b| a.0.cmp(&b.0));
    let now = SystemTime::now();
    let status = read_status(&certs_dir);
    Ok(hosts
        .into_iter()
        .map(|(host, tenant, elig)| {
            let mut info = cert_info(&certs_dir, host, tenant, elig, config.acme.enabled, now);
            if let Some(a) = status.get(&info.host).filter(|a| a.failures > 0) {
                info.last_error = a.last_error.clone();
                info.failures = a.failures;
                info.next_attempt = a
                    .next_attempt
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string());
            }
            info
        })
        .collect())
}

fn cert_info(
    certs_dir: &Path,
    host: String,
    tenant: Option<String>,
    elig: Option<Eligibility>,
    enabled: bool,
    now: SystemTime,
) -> CertInfo {
    let acme = match elig {
        _ if !enabled => "off ([acme] enabled = false)".to_owned(),
        None => "no: not a registry host".to_owned(),
        Some(Eligibility::Eligible) => "yes".to_owned(),
        Some(e) => format!("no: {}", e.describe()),
    };
    let mut info = CertInfo {
        host,
        tenant,
        status: CertStatus::Missing,
        issuer: None,
        not_before: None,
        not_after: None,
        renew_at: None,
        source: "none",
        acme,
        error: None,
        last_error: None,
        failures: 0,
        next_attempt: None,
    };
    match read_facts(certs_dir, &info.host) {
        None => {}
        Some(Err(e)) => {
            info.status = CertStatus::Invalid;
            info.error = Some(e);
        }
        Some(Ok((facts, leaf))) => {
            let rfc = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            let renew = plan::renew_at(facts.not_before, facts.not_after);
            info.issuer = Some(leaf.issuer);
            info.not_before = Some(rfc(facts.not_before));
            info.not_after = Some(rfc(facts.not_after));
            info.source = if facts.ours { "acme" } else { "manual" };
            if facts.ours {
                info.renew_at = Some(rfc(renew));
            }
            info.status = if facts.not_after <= now {
                CertStatus::Expired
            } else if renew <= now {
                CertStatus::RenewalDue
            } else {
                CertStatus::Valid
            };
            if !facts.key_usable {
                info.status = CertStatus::Invalid;
                info.error = Some("privkey.pem missing or not the certificate's key".into());
            }
        }
    }
    info
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => humantime::parse_rfc3339_weak(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn status_words_match_json() {
        for st in [
            CertStatus::Valid,
            CertStatus::RenewalDue,
            CertStatus::Expired,
            CertStatus::Invalid,
            CertStatus::Missing,
        ] {
            let json = serde_json::to_string(&st).expect("json");
            assert_eq!(json, format!("\"{st}\""));
        }
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut status = BTreeMap::new();
        let t = humantime::parse_rfc3339("2026-11-28T10:00:00Z").expect("time");
        status.insert(
            "shop.io".to_owned(),
            Attempt {
                failures: 2,
                last_error: Some("connection refused".into()),
                last_attempt: t,
                next_attempt: Some(t),
            },
        );
        write_status(dir.path(), &status).expect("write");
        assert_eq!(read_status(dir.path()), status);
        let mode = fs::metadata(dir.path().join("acme/status.json"))
            .expect("status")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn self_signed(host: &str, days: u64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).expect("params");
        let now = rcgen::date_time_ymd(2020, 1, 1);
        params.not_before = now;
        params.not_after = now + Duration::from_secs(days * 86400);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn install_writes_0600_and_marks_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (chain, key) = self_signed("shop.sotolito.internal", 90);
        let leaf = install(
            dir.path(),
            "shop.sotolito.internal",
            "https://ca/dir",
            &chain,
            &key,
        )
        .expect("install");
        assert_eq!(leaf.dns_names, vec!["shop.sotolito.internal".to_owned()]);
        let hd = dir.path().join("shop.sotolito.internal");
        for f in ["fullchain.pem", "privkey.pem", "acme.json"] {
            let mode = fs::metadata(hd.join(f)).expect(f).permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let (facts, _) = read_facts(dir.path(), "shop.sotolito.internal")
            .expect("some")
            .expect("ok");
        assert!(facts.ours && facts.key_usable && facts.covers_host);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800); // 2020-01-01
        assert_eq!(
            need(
                dir.path(),
                "shop.sotolito.internal",
                t0 + Duration::from_secs(86400)
            ),
            Need::Fine {
                renew_at: t0 + Duration::from_secs(60 * 86400)
            }
        );
        // A key that is not the certificate's (an interrupted renewal).
        let (_, stray_key) = self_signed("shop.sotolito.internal", 90);
        let good_key = fs::read(hd.join("privkey.pem")).expect("key");
        write_private(&hd.join("privkey.pem"), stray_key.as_bytes()).expect("write");
        assert!(matches!(
            need(dir.path(), "shop.sotolito.internal", t0),
            Need::Order(r) if r.contains("key")
        ));
        write_private(&hd.join("privkey.pem"), &good_key).expect("write");
        // Replaced by the operator: not ours any more.
        let (other, key2) = self_signed("shop.sotolito.internal", 90);
        write_private(&hd.join("fullchain.pem"), other.as_bytes()).expect("write");
        write_private(&hd.join("privkey.pem"), key2.as_bytes()).expect("write");
        assert_eq!(
            need(
                dir.path(),
                "shop.sotolito.internal",
                t0 + Duration::from_secs(80 * 86400)
            ),
            Need::Manual
        );
        // Garbage is replaced.
        write_private(&hd.join("fullchain.pem"), b"garbage").expect("write");
        assert!(matches!(
            need(dir.path(), "shop.sotolito.internal", t0),
            Need::Order(_)
        ));
        assert!(matches!(need(dir.path(), "other.io", t0), Need::Order(_)));
    }
}
