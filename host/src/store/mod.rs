//! The store of tenant records: the seam between the lifecycle and where
//! records live (files on one host today, etcd for a fleet).
//!
//! The contract is claims, not a lock: a record claims its name, address,
//! SSH port, hosts and isolated id range ([`claims`]). [`Store::create`]
//! writes a new record only if no other record holds any of its claims;
//! [`Store::update`] replaces a record only if it is still at the revision
//! the caller read, moving the claims that changed; [`Store::remove`]
//! releases them all. Each call is atomic on its own, so a backend needs
//! no host-wide lock (etcd: one transaction with `create_revision == 0`
//! compares on the claim keys); the file store keeps its flock inside.

mod etcd;
mod file;

use std::fmt;
use std::net::Ipv4Addr;

use sotolito_config::{HostName, SshPort, Tenant, TenantName};

pub use etcd::EtcdStore;
pub use file::FileStore;

/// A record's version as the store counts it: opaque, compared for
/// equality only (a content hash for files, `mod_revision` for etcd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A record as read, with the revision to hand back to [`Store::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub tenant: Tenant,
    pub revision: Revision,
}

/// One thing a record holds alone among all records of the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Claim {
    Name(TenantName),
    Address(Ipv4Addr),
    SshPort(SshPort),
    Host(HostName),
    /// The first host id of an isolated id range (the shared range is
    /// everyone's and claims nothing).
    IdRange(u32),
}

impl Claim {
    /// A key-safe form (`name/acme`, `ip/172.18.0.2`, `ssh/2201`,
    /// `host/acme.example`, `idrange/1065536`): the etcd store's claim keys.
    pub fn key(&self) -> String {
        match self {
            Claim::Name(n) => format!("name/{n}"),
            Claim::Address(ip) => format!("ip/{ip}"),
            Claim::SshPort(p) => format!("ssh/{p}"),
            Claim::Host(h) => format!("host/{h}"),
            Claim::IdRange(id) => format!("idrange/{id}"),
        }
    }

    /// How a conflict names it, and what to do about it.
    fn describe(&self) -> (String, &'static str) {
        match self {
            Claim::Name(n) => (format!("tenant name {n}"), "pick another name"),
            Claim::Address(ip) => (
                format!("address {ip}"),
                "pick another with --ip, or leave it out to get a free one",
            ),
            Claim::SshPort(p) => (format!("ssh port {p}"), "pick another with --ssh-port"),
            Claim::Host(h) => (
                format!("host {h}"),
                "a host routes to one tenant; remove it there first",
            ),
            Claim::IdRange(id) => (
                format!("id range starting at {id}"),
                "provision again to get a free one",
            ),
        }
    }
}

/// Everything `tenant` holds alone.
pub fn claims(tenant: &Tenant) -> Vec<Claim> {
    let mut out = vec![
        Claim::Name(tenant.name.clone()),
        Claim::Address(tenant.ip),
        Claim::SshPort(tenant.ssh_port),
    ];
    out.extend(tenant.hosts.iter().cloned().map(Claim::Host));
    if let Some(m) = tenant.idmap.filter(|m| m.isolated) {
        out.push(Claim::IdRange(m.host_id));
    }
    out
}

/// The first claim of `tenant` that a record of `others` (other than
/// `tenant`'s own) holds, with its holder. For stores that check claims
/// against a list they read under their own lock.
pub fn first_conflict(others: &[Tenant], tenant: &Tenant) -> Option<(Claim, TenantName)> {
    let mine = claims(tenant);
    for other in others.iter().filter(|o| o.name != tenant.name) {
        let theirs = claims(other);
        if let Some(c) = mine.iter().find(|c| theirs.contains(c)) {
            return Some((c.clone(), other.name.clone()));
        }
        // Isolated ranges may differ in start yet overlap.
        if let (Some(a), Some(b)) = (tenant.idmap, other.idmap) {
            if a.isolated && b.isolated && a.overlaps(&b) {
                return Some((Claim::IdRange(a.host_id), other.name.clone()));
            }
        }
    }
    None
}

/// Errors of a store; each names the record or claim and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} is taken by tenant {owner} ({})", claim.describe().0, claim.describe().1)]
    Conflict { claim: Claim, owner: TenantName },
    #[error("tenant {0} exists already")]
    Exists(TenantName),
    #[error("tenant {0} does not exist (see vpsctl list)")]
    NotFound(TenantName),
    #[error("tenant {0} was changed by another command meanwhile (run this again)")]
    Stale(TenantName),
    #[error(transparent)]
    Backend(#[from] sotolito_config::Error),
    /// The fleet's etcd store: unreachable, or a tenant of another node.
    #[error(transparent)]
    Fleet(#[from] sotolito_fleet::Error),
}

/// Where tenant records live. Every method is atomic on its own; none
/// needs the caller to hold a lock.
pub trait Store: Send + Sync {
    /// All records of this host, sorted by name.
    fn list(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Every record whose claims a new record must avoid: this host's, or
    /// in a fleet every node's (what provision picks free addresses and
    /// ports against).
    fn claimed(&self) -> Result<Vec<Tenant>, StoreError> {
        self.list()
    }
    fn get(&self, name: &TenantName) -> Result<Option<Versioned>, StoreError>;
    /// Writes a new record and takes its claims, all or nothing:
    /// [`StoreError::Exists`] when the name has a record,
    /// [`StoreError::Conflict`] naming the holder of any other claim.
    fn create(&self, tenant: &Tenant) -> Result<Revision, StoreError>;
    /// Replaces the record if it is still at `expected`
    /// ([`StoreError::Stale`] otherwise, [`StoreError::NotFound`] when it
    /// is gone), releasing the claims it dropped and taking the new ones
    /// ([`StoreError::Conflict`] when another record holds one).
    fn update(&self, tenant: &Tenant, expected: Revision) -> Result<Revision, StoreError>;
    /// Removes the record and releases its claims; returns whether it
    /// existed.
    fn remove(&self, name: &TenantName) -> Result<bool, StoreError>;
    /// A number that changes whenever a record is written or removed (what
    /// the proxy polls; a store with watches may count its own way).
    fn generation(&self) -> Result<u64, StoreError>;
    /// For messages: where the records live.
    fn describe(&self) -> String;
}

impl dyn Store + '_ {
    /// Like [`Store::get`], but a missing record is an error.
    pub fn require(&self, name: &TenantName) -> Result<Versioned, StoreError> {
        self.get(name)?
            .ok_or_else(|| StoreError::NotFound(name.clone()))
    }

    /// Reads, changes and writes back one record, reading again when
    /// another writer got in between (a bounded number of times).
    /// `change` returns false to leave the record as it is.
    pub fn modify(
        &self,
        name: &TenantName,
        mut change: impl FnMut(&mut Tenant) -> bool,
    ) -> Result<Tenant, StoreError> {
        let mut attempts = 0;
        loop {
            let Versioned {
                mut tenant,
                revision,
            } = self.require(name)?;
            if !change(&mut tenant) {
                return Ok(tenant);
            }
            match self.update(&tenant, revision) {
                Err(StoreError::Stale(_)) if attempts < 8 => attempts += 1,
                Err(e) => return Err(e),
                Ok(_) => return Ok(tenant),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod contract {
    //! The behaviour every store owes the lifecycle, run against each
    //! implementation.

    use super::*;
    use crate::testdata::tenant;

    pub fn check(store: &dyn Store) {
        let a = tenant("alpha", 2, 2201, &["alpha.example"]);
        let rev = store.create(&a).unwrap();
        assert_eq!(store.get(&a.name).unwrap().unwrap().revision, rev);
        assert!(matches!(
            store.create(&a).unwrap_err(),
            StoreError::Exists(n) if n == a.name
        ));
        // Every claim of another record is refused, naming the holder.
        for (b, want) in [
            (
                tenant("beta", 2, 2202, &[]),
                "address 172.18.0.2 is taken by tenant alpha (pick another with --ip, or leave it out to get a free one)",
            ),
            (
                tenant("beta", 3, 2201, &[]),
                "ssh port 2201 is taken by tenant alpha (pick another with --ssh-port)",
            ),
            (
                tenant("beta", 3, 2202, &["x.example", "alpha.example"]),
                "host alpha.example is taken by tenant alpha (a host routes to one tenant; remove it there first)",
            ),
        ] {
            assert_eq!(store.create(&b).unwrap_err().to_string(), want);
            assert!(store.get(&b.name).unwrap().is_none());
        }
        let g0 = store.generation().unwrap();
        // Update with the revision read: ok; with an old one: stale.
        let mut a2 = a.clone();
        a2.hosts.push("www.alpha.example".parse().unwrap());
        let rev2 = store.update(&a2, rev).unwrap();
        assert_ne!(rev2, rev);
        assert_ne!(store.generation().unwrap(), g0);
        assert!(matches!(
            store.update(&a, rev).unwrap_err(),
            StoreError::Stale(_)
        ));
        // A dropped host is released; a taken one refused on update too.
        let b = tenant("beta", 3, 2202, &["beta.example"]);
        let rb = store.create(&b).unwrap();
        let mut b2 = b.clone();
        b2.hosts = vec!["www.alpha.example".parse().unwrap()];
        assert!(matches!(
            store.update(&b2, rb).unwrap_err(),
            StoreError::Conflict { owner, .. } if owner == a.name
        ));
        store.update(&a, rev2).unwrap();
        store.update(&b2, rb).unwrap();
        let names: Vec<String> = store
            .list()
            .unwrap()
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(names, ["alpha", "beta"]);
        assert!(store.remove(&a.name).unwrap());
        assert!(!store.remove(&a.name).unwrap());
        assert!(matches!(
            store.update(&a, rev).unwrap_err(),
            StoreError::NotFound(_)
        ));
        // Released: another record may take alpha's address now.
        store.create(&tenant("gamma", 2, 2201, &[])).unwrap();
        // modify reads again past a concurrent change.
        let t = (store as &dyn Store)
            .modify(&b.name, |t| {
                t.http_port = "8080".parse().unwrap();
                true
            })
            .unwrap();
        assert_eq!(t.http_port.get(), 8080);
        assert_eq!(
            store.get(&b.name).unwrap().unwrap().tenant.http_port.get(),
            8080
        );
    }

    #[test]
    fn claims_cover_what_must_be_unique() {
        let mut t = tenant("acme", 2, 2201, &["a.example", "b.example"]);
        t.idmap = Some(sotolito_config::Idmap {
            host_id: 1_065_536,
            size: 65536,
            isolated: true,
        });
        let keys: Vec<String> = claims(&t).iter().map(Claim::key).collect();
        assert_eq!(
            keys,
            [
                "name/acme",
                "ip/172.18.0.2",
                "ssh/2201",
                "host/a.example",
                "host/b.example",
                "idrange/1065536"
            ]
        );
        t.idmap = Some(sotolito_config::Idmap {
            host_id: 1_000_000,
            size: 65536,
            isolated: false,
        });
        assert_eq!(claims(&t).len(), 5, "the shared range is no claim");
    }
}
