//! What to request and when, as pure functions: which registry hosts are
//! eligible for an ACME certificate, when a certificate is due, and the
//! backoff after a failure.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use sotolito_config::{HostName, TenantName};

use crate::source::TenantRoute;

/// Why a host is or is not requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    Eligible,
    /// In the tenant record's `acme_opt_out`.
    OptedOut,
    /// A wildcard needs DNS-01, which the proxy cannot answer.
    Wildcard,
    /// A name no public CA issues for (RFC 2606, RFC 6761): the reason.
    Reserved(&'static str),
    IpLiteral,
    /// `localhost`, `intranet`: no CA issues for a single label.
    SingleLabel,
}

impl Eligibility {
    pub fn is_eligible(self) -> bool {
        self == Eligibility::Eligible
    }

    pub fn describe(self) -> &'static str {
        match self {
            Eligibility::Eligible => "eligible",
            Eligibility::OptedOut => "opted out in the tenant record",
            Eligibility::Wildcard => "wildcard (needs DNS-01, not supported)",
            Eligibility::Reserved(why) => why,
            Eligibility::IpLiteral => "IP address",
            Eligibility::SingleLabel => "single-label name",
        }
    }
}

/// Top-level names reserved by RFC 2606 and RFC 6761, never requested.
const RESERVED_TLDS: [&str; 4] = ["localhost", "test", "example", "invalid"];
/// Second-level names reserved by RFC 2606.
const RESERVED_DOMAINS: [&str; 3] = ["example.com", "example.net", "example.org"];

/// Whether `host` of `tenant` may be requested from the CA.
pub fn eligibility(host: &HostName, tenant: &TenantRoute) -> Eligibility {
    let name = host.as_str();
    if tenant.acme_opt_out.iter().any(|h| h == host) {
        return Eligibility::OptedOut;
    }
    if host.wildcard_domain().is_some() {
        return Eligibility::Wildcard;
    }
    if name.parse::<IpAddr>().is_ok() {
        return Eligibility::IpLiteral;
    }
    let Some((_, tld)) = name.rsplit_once('.') else {
        return Eligibility::SingleLabel;
    };
    if RESERVED_TLDS.contains(&tld) {
        return Eligibility::Reserved(match tld {
            "localhost" => ".localhost name (RFC 6761)",
            "test" => ".test name (RFC 6761)",
            "example" => ".example name (RFC 6761)",
            _ => ".invalid name (RFC 6761)",
        });
    }
    if RESERVED_DOMAINS
        .iter()
        .any(|d| name == *d || name.ends_with(&format!(".{d}")))
    {
        return Eligibility::Reserved("example domain (RFC 2606)");
    }
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        // 10.0.0.300 is a valid HostName but no DNS name: no CA issues.
        return Eligibility::IpLiteral;
    }
    Eligibility::Eligible
}

/// Every host of every tenant, with its tenant and eligibility.
pub fn plan_hosts(tenants: &[TenantRoute]) -> Vec<(HostName, TenantName, Eligibility)> {
    let mut out: Vec<_> = tenants
        .iter()
        .flat_map(|t| {
            t.hosts
                .iter()
                .map(move |h| (h.clone(), t.name.clone(), eligibility(h, t)))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// The moment a certificate valid over `[not_before, not_after]` is renewed:
/// two thirds into its lifetime (Let's Encrypt's advice for 90-day
/// certificates: renew with 30 days left).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life * 2 / 3
}

/// What a host's certificate files say about the need for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Usable; renew (or look again) at the given time.
    Fine { renew_at: SystemTime },
    /// A valid certificate the operator installed: never replaced while
    /// it is valid.
    Manual,
    /// Order now, for this reason.
    Order(String),
}

/// The parsed facts about a certificate on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub covers_host: bool,
    /// Issued by us (the ACME marker matches this certificate).
    pub ours: bool,
    /// privkey.pem holds the key of this certificate: the pair loads.
    pub key_usable: bool,
}

/// Decides from the files' state (`None`: no certificate; `Err`: unreadable
/// or unparsable) whether to order now.
pub fn assess(facts: Option<Result<CertFacts, String>>, now: SystemTime) -> Need {
    let facts = match facts {
        None => return Need::Order("no certificate".into()),
        Some(Err(e)) => return Need::Order(format!("certificate unusable: {e}")),
        Some(Ok(f)) => f,
    };
    if facts.not_after <= now {
        return Need::Order("certificate expired".into());
    }
    // A pair that cannot be served is replaced, whoever installed it (this
    // also repairs a renewal interrupted between the two renames).
    if !facts.key_usable {
        return Need::Order("private key missing or not the certificate's".into());
    }
    if !facts.ours {
        return Need::Manual;
    }
    if !facts.covers_host {
        return Need::Order("certificate does not name the host".into());
    }
    let at = renew_at(facts.not_before, facts.not_after);
    if at <= now {
        return Need::Order("two thirds of the certificate's lifetime passed".into());
    }
    Need::Fine { renew_at: at }
}

/// The wait after the `failures`-th consecutive failure: `initial` doubling
/// up to `max`; never shorter than the CA's Retry-After.
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let wait = initial.saturating_mul(1u32 << exp).min(max);
    match retry_after {
        Some(r) if r > wait => r,
        _ => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(hosts: &[&str], opt_out: &[&str]) -> TenantRoute {
        let text = format!(
            "version = 1\nname = \"t\"\nimage = \"debian\"\nip = \"172.18.0.2\"\nssh_port = 2201\n\
             hosts = [{}]\nacme_opt_out = [{}]\ncreated = \"2026-11-28T10:00:00Z\"\ndesired = \"running\"\n\
             [limits]\nmemory = \"512M\"\ncpu_weight = 100\npids = 4096\n",
            hosts.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(","),
            opt_out.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(","),
        );
        TenantRoute::from(&sotolito_config::Tenant::from_toml(&text).expect("tenant"))
    }

    fn elig(host: &str, opt_out: &[&str]) -> Eligibility {
        let t = tenant(&[host], opt_out);
        eligibility(&t.hosts[0], &t)
    }

    #[test]
    fn never_requested_names() {
        assert_eq!(elig("shop.sotolito.internal", &[]), Eligibility::Eligible);
        assert_eq!(elig("www.shop.io", &[]), Eligibility::Eligible);
        for host in [
            "a.localhost",
            "localhost",
            "x.test",
            "x.example",
            "x.invalid",
            "example.com",
            "acme.example.com",
            "www.example.org",
        ] {
            assert!(!elig(host, &[]).is_eligible(), "{host}");
        }
        assert_eq!(elig("10.0.0.1", &[]), Eligibility::IpLiteral);
        assert_eq!(elig("intranet", &[]), Eligibility::SingleLabel);
        assert_eq!(elig("*.shop.io", &[]), Eligibility::Wildcard);
        assert_eq!(elig("shop.io", &["shop.io"]), Eligibility::OptedOut);
        assert_eq!(elig("shop.io", &["www.shop.io"]), Eligibility::Eligible);
        // Not reserved: merely ends in "example".
        assert_eq!(elig("myexample.com", &[]), Eligibility::Eligible);
    }

    #[test]
    fn plan_lists_every_host_once() {
        let t = tenant(&["a.shop.io", "b.test"], &[]);
        let plan = plan_hosts(&[t]);
        assert_eq!(plan.len(), 2);
        assert!(plan[0].2.is_eligible());
        assert!(!plan[1].2.is_eligible());
    }

    #[test]
    fn due_at_two_thirds() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let facts = CertFacts {
            not_before: t0,
            not_after: t0 + Duration::from_secs(90),
            covers_host: true,
            ours: true,
            key_usable: true,
        };
        let at = t0 + Duration::from_secs(60);
        assert_eq!(
            assess(Some(Ok(facts.clone())), t0 + Duration::from_secs(10)),
            Need::Fine { renew_at: at }
        );
        assert!(matches!(
            assess(Some(Ok(facts.clone())), at),
            Need::Order(_)
        ));
        assert!(matches!(
            assess(Some(Ok(facts.clone())), t0 + Duration::from_secs(100)),
            Need::Order(r) if r.contains("expired")
        ));
        let manual = CertFacts {
            ours: false,
            ..facts.clone()
        };
        assert_eq!(assess(Some(Ok(manual.clone())), at), Need::Manual);
        assert!(matches!(
            assess(Some(Ok(manual)), t0 + Duration::from_secs(100)),
            Need::Order(_)
        ));
        let broken = CertFacts {
            key_usable: false,
            ours: false,
            ..facts.clone()
        };
        assert!(matches!(assess(Some(Ok(broken)), t0), Need::Order(_)));
        let other = CertFacts {
            covers_host: false,
            ..facts
        };
        assert!(matches!(assess(Some(Ok(other)), t0), Need::Order(_)));
        assert!(matches!(assess(None, t0), Need::Order(_)));
        assert!(matches!(
            assess(Some(Err("bad".into())), t0),
            Need::Order(_)
        ));
    }

    #[test]
    fn backoff_doubles_caps_and_respects_retry_after() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(300), s(43200), None), s(300));
        assert_eq!(backoff(2, s(300), s(43200), None), s(600));
        assert_eq!(backoff(4, s(300), s(43200), None), s(2400));
        assert_eq!(backoff(20, s(300), s(43200), None), s(43200));
        assert_eq!(backoff(u32::MAX, s(300), s(43200), None), s(43200));
        assert_eq!(backoff(1, s(300), s(43200), Some(s(3600))), s(3600));
        assert_eq!(backoff(3, s(300), s(43200), Some(s(10))), s(1200));
    }
}
