//! The route table: which tenant serves a host name, and at which address.
//!
//! Pure data: built from tenant records (or a plain list in tests and
//! benches), looked up once per request, swapped whole on reload.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use sotolito_config::{Desired, HostName, Tenant};

use crate::source::TenantRoute;
use crate::Error;

/// Where requests for one host go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub tenant: Arc<str>,
    pub addr: SocketAddr,
    /// The tenant's desired state is stopped: its sites answer 503 at
    /// once instead of waiting on an address nothing answers.
    pub stopped: bool,
}

impl Route {
    pub fn new(tenant: &str, addr: SocketAddr) -> Route {
        Route {
            tenant: Arc::from(tenant),
            addr,
            stopped: false,
        }
    }
}

/// Host name -> route. Exact names win over `*.domain` wildcards; a wildcard
/// covers exactly one label, as in TLS (RFC 6125 6.4.3).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Arc<Route>>,
    /// Keyed by the domain under the `*.`.
    wildcard: HashMap<Box<str>, Arc<Route>>,
}

/// What a reload changed, as host names (`*.domain` for wildcards).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl RouteDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl RouteTable {
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Routes of every host of every tenant to `ip:http_port`.
    pub fn from_tenants(tenants: &[Tenant]) -> RouteTable {
        let records: Vec<TenantRoute> = tenants.iter().map(TenantRoute::from).collect();
        RouteTable::from_records(&records)
    }

    /// [`RouteTable::from_tenants`] from the proxy's view of the records.
    pub fn from_records(tenants: &[TenantRoute]) -> RouteTable {
        let mut table = RouteTable::new();
        for t in tenants {
            let route = Arc::new(Route {
                stopped: t.desired == Desired::Stopped,
                ..Route::new(t.name.as_str(), SocketAddr::from((t.ip, t.http_port.get())))
            });
            for host in &t.hosts {
                if let Some(owner) = table.insert_name(host, route.clone()) {
                    // The registry refuses duplicate hosts; a hand-edited
                    // record could still carry one: the first tenant keeps it.
                    tracing::warn!(host = %host, tenant = %t.name, owner = %owner, "host claimed twice; keeping the first tenant");
                }
            }
        }
        table
    }

    /// A table from `(host, tenant, address)` triples; hosts are validated
    /// as in tenant records.
    pub fn from_routes<'a, I>(routes: I) -> Result<RouteTable, Error>
    where
        I: IntoIterator<Item = (&'a str, &'a str, SocketAddr)>,
    {
        let mut table = RouteTable::new();
        for (host, tenant, addr) in routes {
            let name = HostName::new(host).map_err(|source| Error::InvalidHost {
                host: host.to_owned(),
                source,
            })?;
            table.insert_name(&name, Arc::new(Route::new(tenant, addr)));
        }
        Ok(table)
    }

    /// Returns the tenant already holding the name, if any (and keeps it).
    fn insert_name(&mut self, host: &HostName, route: Arc<Route>) -> Option<Arc<str>> {
        let (map, key) = match host.wildcard_domain() {
            Some(domain) => (&mut self.wildcard, domain),
            None => (&mut self.exact, host.as_str()),
        };
        match map.get(key) {
            Some(existing) if existing.tenant != route.tenant => Some(existing.tenant.clone()),
            Some(_) => None,
            None => {
                map.insert(key.into(), route);
                None
            }
        }
    }

    /// A copy that shares no reference counts with `self`: each worker
    /// clones routes on every request, and a count two cores write to
    /// bounces its cache line between them.
    pub(crate) fn detached(&self) -> RouteTable {
        let mut copies: HashMap<*const Route, Arc<Route>> = HashMap::new();
        let mut copy = |r: &Arc<Route>| {
            copies
                .entry(Arc::as_ptr(r))
                .or_insert_with(|| {
                    Arc::new(Route {
                        stopped: r.stopped,
                        ..Route::new(&r.tenant, r.addr)
                    })
                })
                .clone()
        };
        RouteTable {
            exact: self
                .exact
                .iter()
                .map(|(k, r)| (k.clone(), copy(r)))
                .collect(),
            wildcard: self
                .wildcard
                .iter()
                .map(|(k, r)| (k.clone(), copy(r)))
                .collect(),
        }
    }

    /// Whether some host still goes to `route`'s tenant at its address,
    /// and it is not stopped: a request already on its way there checks
    /// this while it waits (a scan; called a few times a second at most).
    pub(crate) fn still_routes(&self, route: &Route) -> bool {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .any(|r| r.tenant == route.tenant && r.addr == route.addr && !r.stopped)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route for a Host header or :authority value: port stripped,
    /// case and one trailing dot ignored.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host)?;
        if let Some(route) = self.exact.get(&*host) {
            return Some(route);
        }
        let (label, domain) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(domain)
    }

    /// Every name in the table, wildcards as `*.domain`, sorted.
    pub fn hosts(&self) -> BTreeSet<String> {
        self.entries().map(|(k, _)| k).collect()
    }

    fn entries(&self) -> impl Iterator<Item = (String, &Arc<Route>)> {
        self.exact
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(self.wildcard.iter().map(|(k, v)| (format!("*.{k}"), v)))
    }

    /// What changed from `old` to `self`.
    pub fn diff(&self, old: &RouteTable) -> RouteDiff {
        let new: HashMap<String, &Arc<Route>> = self.entries().collect();
        let old: HashMap<String, &Arc<Route>> = old.entries().collect();
        let mut diff = RouteDiff::default();
        for (host, route) in &new {
            match old.get(host) {
                None => diff.added.push(host.clone()),
                Some(prev) if **prev != **route => diff.changed.push(host.clone()),
                Some(_) => {}
            }
        }
        diff.removed = old
            .keys()
            .filter(|h| !new.contains_key(*h))
            .cloned()
            .collect();
        diff.added.sort();
        diff.removed.sort();
        diff.changed.sort();
        diff
    }
}

/// Strips a port and a trailing dot and lowercases; borrows when the name is
/// already in that form, as it nearly always is. `None` for an empty name.
pub(crate) fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets off: no tenant is named by one,
        // but it must not be mistaken for host:port.
        rest.split_once(']').map(|(ip, _)| ip)?
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn table() -> RouteTable {
        RouteTable::from_routes([
            ("acme.example.com", "acme", addr(1)),
            ("*.acme.example.com", "acme", addr(1)),
            ("shop.acme.example.com", "shop", addr(2)),
            ("beta.test", "beta", addr(3)),
        ])
        .unwrap()
    }

    fn tenant_of(t: &RouteTable, host: &str) -> Option<String> {
        t.lookup(host).map(|r| r.tenant.to_string())
    }

    #[test]
    fn a_detached_copy_routes_alike_and_shares_no_counts() {
        let t = table();
        let d = t.detached();
        assert_eq!(t.hosts(), d.hosts());
        assert!(t.diff(&d).is_empty());
        for host in [
            "acme.example.com",
            "x.acme.example.com",
            "shop.acme.example.com",
        ] {
            let (a, b) = (t.lookup(host).unwrap(), d.lookup(host).unwrap());
            assert_eq!(a, b, "{host}");
            assert!(!Arc::ptr_eq(a, b), "{host}");
            assert!(!Arc::ptr_eq(&a.tenant, &b.tenant), "{host}");
        }
    }

    #[test]
    fn exact_names_ignore_case_port_and_trailing_dot() {
        let t = table();
        for host in [
            "beta.test",
            "BETA.Test",
            "beta.test:8080",
            "beta.test.",
            "Beta.Test.:443",
        ] {
            assert_eq!(tenant_of(&t, host).as_deref(), Some("beta"), "{host}");
        }
        assert_eq!(t.lookup("beta.test").unwrap().addr, addr(3));
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label_deep() {
        let t = table();
        assert_eq!(
            tenant_of(&t, "shop.acme.example.com").as_deref(),
            Some("shop")
        );
        assert_eq!(
            tenant_of(&t, "www.acme.example.com").as_deref(),
            Some("acme")
        );
        assert_eq!(tenant_of(&t, "a.b.acme.example.com"), None);
        assert_eq!(tenant_of(&t, ".acme.example.com"), None);
        assert_eq!(tenant_of(&t, "acme.example.com").as_deref(), Some("acme"));
    }

    #[test]
    fn unknown_and_malformed_hosts_miss() {
        let t = table();
        for host in [
            "",
            ":80",
            ".",
            "example.com",
            "[::1]:80",
            "test",
            "beta.test:x",
        ] {
            assert_eq!(tenant_of(&t, host), None, "{host:?}");
        }
    }

    #[test]
    fn built_from_tenant_records() {
        let text = r#"
version = 1
name = "acme"
image = "debian"
ip = "172.18.0.2"
ssh_port = 2201
http_port = 8080
hosts = ["acme.example.com", "*.acme.example.com"]
ssh_keys = []
created = "2026-11-28T10:00:00Z"
desired = "running"
acme_opt_out = []
[limits]
memory = "512M"
cpu_weight = 100
pids = 4096
"#;
        let tenant = Tenant::from_toml(text).unwrap();
        let t = RouteTable::from_tenants(&[tenant]);
        assert_eq!(t.len(), 2);
        let r = t.lookup("WWW.acme.example.com").unwrap();
        assert_eq!(&*r.tenant, "acme");
        assert_eq!(r.addr, "172.18.0.2:8080".parse().unwrap());
    }

    #[test]
    fn invalid_hosts_are_refused() {
        let err = RouteTable::from_routes([("bad host", "x", addr(1))]).unwrap_err();
        assert!(err.to_string().contains("bad host"), "{err}");
    }

    #[test]
    fn diff_names_added_removed_and_changed() {
        let old = table();
        let new = RouteTable::from_routes([
            ("acme.example.com", "acme", addr(1)),
            ("shop.acme.example.com", "shop", addr(9)),
            ("new.test", "new", addr(4)),
        ])
        .unwrap();
        let d = new.diff(&old);
        assert_eq!(d.added, vec!["new.test"]);
        assert_eq!(d.removed, vec!["*.acme.example.com", "beta.test"]);
        assert_eq!(d.changed, vec!["shop.acme.example.com"]);
        assert!(new.diff(&new).is_empty());
    }
}
