//! Tenant id maps: which host uids/gids a tenant's 0-65535 become, and how
//! ranges are handed out (one shared range, or one of its own per tenant).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::tenant::Tenant;

/// Ids a tenant sees: 0-65535, as a Debian system expects (nobody is 65534).
pub const RANGE_SIZE: u32 = 65536;

/// The host ids a tenant's ids 0..size map to: `host_id + id`, for uids and
/// gids alike. Recorded in the tenant record: the tenant's files on disk
/// are owned by these ids, so a config change never moves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idmap {
    pub host_id: u32,
    pub size: u32,
    /// A range of its own (`provision --isolated-idmap`), not the shared one.
    #[serde(default)]
    pub isolated: bool,
}

impl Idmap {
    /// The host id of tenant id `id`, if the map covers it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        (id < self.size).then(|| self.host_id + id)
    }

    /// The last host id of the range.
    pub fn last(&self) -> u32 {
        self.host_id + (self.size - 1)
    }

    pub fn overlaps(&self, other: &Idmap) -> bool {
        self.host_id <= other.last() && other.host_id <= self.last()
    }
}

impl fmt::Display for Idmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}{}",
            self.host_id,
            self.last(),
            if self.isolated {
                " (isolated)"
            } else {
                " (shared)"
            }
        )
    }
}

/// The config's `[runtime] idmap_base` and `idmap_ranges`: range 0 (host
/// ids base..base+65535) is shared by every tenant without an isolated
/// map; ranges 1..ranges are handed out one per isolated tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdmapPool {
    pub base: u32,
    pub ranges: u32,
}

/// No isolated range is free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no isolated id range is free ({used} of {max} in use; raise runtime.idmap_ranges in the config, or provision without --isolated-idmap)")]
pub struct PoolExhausted {
    pub used: usize,
    pub max: u32,
}

impl IdmapPool {
    pub fn shared(&self) -> Idmap {
        Idmap {
            host_id: self.base,
            size: RANGE_SIZE,
            isolated: false,
        }
    }

    /// The map a new tenant gets: the shared range, or the lowest isolated
    /// range that overlaps no other tenant's recorded map (records keep
    /// their maps across config changes, so overlap is checked, not slots).
    pub fn plan(&self, others: &[Tenant], isolated: bool) -> Result<Idmap, PoolExhausted> {
        if !isolated {
            return Ok(self.shared());
        }
        let taken: Vec<Idmap> = others.iter().filter_map(|t| t.idmap).collect();
        for slot in 1..self.ranges {
            let candidate = Idmap {
                host_id: self.base + slot * RANGE_SIZE,
                size: RANGE_SIZE,
                isolated: true,
            };
            if !taken.iter().any(|t| t.overlaps(&candidate)) {
                return Ok(candidate);
            }
        }
        Err(PoolExhausted {
            used: taken.iter().filter(|t| t.isolated).count(),
            max: self.ranges.saturating_sub(1),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tenant::tests::sample;

    const POOL: IdmapPool = IdmapPool {
        base: 1_000_000,
        ranges: 3,
    };

    #[test]
    fn shared_by_default_isolated_ranges_disjoint() {
        let mut a = sample("a", [172, 18, 0, 2], 2201, &[]);
        a.idmap = Some(POOL.plan(&[], false).unwrap());
        assert_eq!(a.idmap.unwrap().host_id, 1_000_000);
        let mut b = sample("b", [172, 18, 0, 3], 2202, &[]);
        b.idmap = Some(POOL.plan(std::slice::from_ref(&a), true).unwrap());
        assert_eq!(b.idmap.unwrap().host_id, 1_065_536);
        let mut c = sample("c", [172, 18, 0, 4], 2203, &[]);
        c.idmap = Some(POOL.plan(&[a.clone(), b.clone()], true).unwrap());
        assert_eq!(c.idmap.unwrap().host_id, 1_131_072);
        assert!(!b.idmap.unwrap().overlaps(&c.idmap.unwrap()));
        assert!(!a.idmap.unwrap().overlaps(&b.idmap.unwrap()));
        let full = POOL.plan(&[a.clone(), b.clone(), c], true).unwrap_err();
        assert_eq!(full, PoolExhausted { used: 2, max: 2 });
        assert!(full.to_string().contains("runtime.idmap_ranges"));
        // Deprovisioning b frees its range for the next one.
        assert_eq!(POOL.plan(&[a], true).unwrap().host_id, 1_065_536);
    }

    #[test]
    fn a_moved_base_never_hands_out_a_recorded_range() {
        let mut old = sample("old", [172, 18, 0, 2], 2201, &[]);
        old.idmap = Some(Idmap {
            host_id: 1_070_000,
            size: RANGE_SIZE,
            isolated: true,
        });
        // It straddles slots 1 and 2: the next free one is slot 3.
        let pool = IdmapPool { ranges: 4, ..POOL };
        assert_eq!(pool.plan(&[old], true).unwrap().host_id, 1_196_608);
    }

    #[test]
    fn mapping() {
        let m = POOL.shared();
        assert_eq!(m.to_host(0), Some(1_000_000));
        assert_eq!(m.to_host(65534), Some(1_065_534));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.to_string(), "1000000-1065535 (shared)");
    }
}
