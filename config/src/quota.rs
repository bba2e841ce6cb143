//! The disk quota of a tenant: a size in binary units, or `unlimited`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{InvalidValue, MemorySize, Problem};

/// How much writable storage (overlay upper layer plus data dirs) a tenant
/// gets. `Unlimited` is an operator's explicit choice, and what a record
/// written before quotas existed means: its data is a plain directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DiskQuota {
    Limit(u64),
    Unlimited,
}

impl DiskQuota {
    /// The smallest quota: btrfs needs about 114 MiB for itself, and below
    /// 256 MiB its metadata takes a third of the space.
    pub const MIN: u64 = 256 << 20;
    const KIND: &'static str = "disk size";

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        if s.trim().eq_ignore_ascii_case("unlimited") {
            return Ok(DiskQuota::Unlimited);
        }
        let bad = |problem| InvalidValue {
            kind: Self::KIND,
            value: s.to_owned(),
            problem,
        };
        let bytes = MemorySize::new(s).map_err(|e| match e.problem {
            Problem::BadUnit | Problem::NotANumber => bad(Problem::BadUnit),
            _ => bad(Problem::OutOfRange {
                min: Self::MIN,
                max: 1 << 50,
            }),
        })?;
        if bytes.bytes() < Self::MIN {
            return Err(bad(Problem::OutOfRange {
                min: Self::MIN,
                max: 1 << 50,
            }));
        }
        Ok(DiskQuota::Limit(bytes.bytes()))
    }

    /// The limit in bytes; None when unlimited.
    pub fn bytes(self) -> Option<u64> {
        match self {
            DiskQuota::Limit(b) => Some(b),
            DiskQuota::Unlimited => None,
        }
    }
}

impl Default for DiskQuota {
    /// `[defaults] disk`: 10G, a small VPS plan's disk. Images are sparse,
    /// so a tenant costs the host only what it writes.
    fn default() -> Self {
        DiskQuota::Limit(10 << 30)
    }
}

impl fmt::Display for DiskQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // MemorySize prints the largest unit that divides evenly.
            DiskQuota::Limit(b) => match MemorySize::new(&b.to_string()) {
                Ok(m) => write!(f, "{m}"),
                Err(_) => write!(f, "{b}"),
            },
            DiskQuota::Unlimited => write!(f, "unlimited"),
        }
    }
}

impl FromStr for DiskQuota {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        DiskQuota::new(s)
    }
}

impl TryFrom<String> for DiskQuota {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        DiskQuota::new(&s)
    }
}

impl From<DiskQuota> for String {
    fn from(d: DiskQuota) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_unlimited() {
        assert_eq!(DiskQuota::new("10G").unwrap(), DiskQuota::Limit(10 << 30));
        assert_eq!(DiskQuota::new("512M").unwrap().to_string(), "512M");
        assert_eq!(DiskQuota::new("1536M").unwrap().to_string(), "1536M");
        assert_eq!(DiskQuota::new("Unlimited").unwrap(), DiskQuota::Unlimited);
        assert_eq!(DiskQuota::Unlimited.to_string(), "unlimited");
        assert_eq!(DiskQuota::Unlimited.bytes(), None);
        assert_eq!(DiskQuota::default().to_string(), "10G");
        assert_eq!(
            DiskQuota::new("100M").unwrap_err().to_string(),
            "disk size \"100M\" is out of range 268435456-1125899906842624"
        );
        assert!(DiskQuota::new("lots")
            .unwrap_err()
            .to_string()
            .contains("is not a size"));
        assert!(DiskQuota::new("").is_err());
    }
}
