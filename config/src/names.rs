//! Validated names and values: checked once at construction, trusted after.
//!
//! Each newtype deserializes through `TryFrom<String>`, so a bad value in a
//! config file or tenant record fails with the same message as on the
//! command line.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Why a value was refused. The `Display` of [`InvalidValue`] puts the kind
/// and the value in front, so each message reads as one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Empty,
    TooLong { max: usize },
    BadChar(char),
    Uppercase,
    HyphenEdge,
    EmptyLabel,
    LabelTooLong,
    BareWildcard,
    NotANumber,
    OutOfRange { min: u64, max: u64 },
    BadUnit,
    NotInSubnet(Ipv4Net),
    Reserved(Ipv4Net),
    BadSwap,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => write!(f, "is empty"),
            Problem::TooLong { max } => write!(f, "is longer than {max} characters"),
            Problem::BadChar(c) => write!(
                f,
                "contains {c:?} (use lowercase letters a-z, digits and '-')"
            ),
            Problem::Uppercase => write!(f, "has uppercase letters (use lowercase)"),
            Problem::HyphenEdge => write!(f, "must start and end with a letter or digit"),
            Problem::EmptyLabel => write!(
                f,
                "has an empty label (two dots in a row, or a dot at the start)"
            ),
            Problem::LabelTooLong => write!(f, "has a label longer than 63 characters"),
            Problem::BareWildcard => {
                write!(f, "is a wildcard without a domain (write *.example.com)")
            }
            Problem::NotANumber => write!(f, "is not a number"),
            Problem::OutOfRange { min, max } => write!(f, "is out of range {min}-{max}"),
            Problem::BadUnit => write!(
                f,
                "is not a size (write a number with K, M, G or T, e.g. 512M or 2G)"
            ),
            Problem::BadSwap => write!(
                f,
                "is not a swap size (write 0, a size like 256M or 1G, or unlimited)"
            ),
            Problem::NotInSubnet(net) => write!(f, "is not inside the subnet {net}"),
            Problem::Reserved(net) => write!(
                f,
                "is reserved in {net} (the network, gateway or broadcast address)"
            ),
        }
    }
}

/// A value that failed validation: `tenant name "../x" contains '.' (...)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} {problem}")]
pub struct InvalidValue {
    pub kind: &'static str,
    pub value: String,
    pub problem: Problem,
}

fn invalid(kind: &'static str, value: &str, problem: Problem) -> InvalidValue {
    InvalidValue {
        kind,
        value: value.to_owned(),
        problem,
    }
}

/// Checks one DNS label in the lowercase form we accept for names.
fn check_label(
    kind: &'static str,
    whole: &str,
    label: &str,
    max: usize,
) -> Result<(), InvalidValue> {
    if label.is_empty() {
        return Err(invalid(kind, whole, Problem::Empty));
    }
    if label.chars().count() > max {
        return Err(invalid(kind, whole, Problem::TooLong { max }));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        if c.is_ascii_uppercase() {
            return Err(invalid(kind, whole, Problem::Uppercase));
        }
        return Err(invalid(kind, whole, Problem::BadChar(c)));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(invalid(kind, whole, Problem::HyphenEdge));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                Self::new(&s)
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::new(s)
            }
        }
    };
}

string_newtype!(
    /// A tenant's name: a lowercase DNS label of 1-32 characters. It is used
    /// as a file name, a systemd instance name, a runc container id and (hashed)
    /// in interface names, so nothing else is allowed.
    TenantName
);

impl TenantName {
    pub const MAX: usize = 32;

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        check_label("tenant name", s, s, Self::MAX)?;
        Ok(TenantName(s.to_owned()))
    }
}

string_newtype!(
    /// An image's name: the same rules as a tenant name (it names a directory).
    ImageName
);

impl ImageName {
    pub const MAX: usize = 32;

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        check_label("image name", s, s, Self::MAX)?;
        Ok(ImageName(s.to_owned()))
    }
}

string_newtype!(
    /// A host's name in a fleet (`[cluster] node`): the same rules as a
    /// tenant name (it is part of etcd keys and shown in `list`).
    NodeName
);

impl NodeName {
    pub const MAX: usize = 32;

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        check_label("node name", s, s, Self::MAX)?;
        Ok(NodeName(s.to_owned()))
    }
}

string_newtype!(
    /// A host name routed to a tenant (RFC 1123), stored lowercase, with an
    /// optional leading `*.` wildcard. A trailing dot (FQDN form) is dropped.
    HostName
);

impl HostName {
    pub const MAX: usize = 253;

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "host name";
        if s.is_empty() {
            return Err(invalid(KIND, s, Problem::Empty));
        }
        let lower = s.to_ascii_lowercase();
        let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
        if trimmed.len() > Self::MAX {
            return Err(invalid(KIND, s, Problem::TooLong { max: Self::MAX }));
        }
        let rest = match trimmed.strip_prefix("*.") {
            Some("") => return Err(invalid(KIND, s, Problem::BareWildcard)),
            Some(rest) => rest,
            None if trimmed == "*" => return Err(invalid(KIND, s, Problem::BareWildcard)),
            None => trimmed,
        };
        for label in rest.split('.') {
            if label.is_empty() {
                return Err(invalid(KIND, s, Problem::EmptyLabel));
            }
            if label.len() > 63 {
                return Err(invalid(KIND, s, Problem::LabelTooLong));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(invalid(KIND, s, Problem::BadChar(c)));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid(KIND, s, Problem::HyphenEdge));
            }
        }
        Ok(HostName(trimmed.to_owned()))
    }

    /// `*.example.com` -> `Some("example.com")`.
    pub fn wildcard_domain(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }
}

fn parse_in_range(kind: &'static str, s: &str, min: u64, max: u64) -> Result<u64, InvalidValue> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(kind, s, Problem::Empty));
    }
    let n: u64 = t
        .parse()
        .map_err(|_| invalid(kind, s, Problem::NotANumber))?;
    if n < min || n > max {
        return Err(invalid(kind, s, Problem::OutOfRange { min, max }));
    }
    Ok(n)
}

/// A bounded integer: validated by `new` (a number from a file) and
/// `from_str` (text from the command line) with one message, kept in the
/// smallest type that holds it, and written back as a plain number.
macro_rules! number_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $kind:literal, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "u64", into = "u64")]
        pub struct $name($inner);

        impl $name {
            pub const MIN: $inner = $min;
            pub const MAX: $inner = $max;

            pub fn new(n: u64) -> Result<Self, InvalidValue> {
                if n < u64::from(Self::MIN) || n > u64::from(Self::MAX) {
                    return Err(invalid(
                        $kind,
                        &n.to_string(),
                        Problem::OutOfRange {
                            min: Self::MIN.into(),
                            max: Self::MAX.into(),
                        },
                    ));
                }
                Ok($name(n as $inner))
            }

            pub fn get(self) -> $inner {
                self.0
            }
        }

        impl TryFrom<u64> for $name {
            type Error = InvalidValue;
            fn try_from(v: u64) -> Result<Self, InvalidValue> {
                $name::new(v)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0.into()
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                $name::new(parse_in_range($kind, s, Self::MIN.into(), Self::MAX.into())?)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

number_newtype!(
    /// A TCP port on the host that forwards to a tenant's sshd (1-65535).
    SshPort(u16), "ssh port", 1, 65535
);

number_newtype!(
    /// The port a tenant's web server listens on inside the tenant
    /// (1-65535): where the proxy sends the requests for its hosts.
    HttpPort(u16), "http port", 1, 65535
);

impl HttpPort {
    /// A tenant provisioned without `--http-port` serves on 80.
    pub const DEFAULT: HttpPort = HttpPort(80);
}

impl Default for HttpPort {
    fn default() -> Self {
        HttpPort::DEFAULT
    }
}

number_newtype!(
    /// A tenant's process limit (`pids.max`, systemd's `TasksMax`): at
    /// least 16, since systemd needs a few to boot, and at most the
    /// kernel's PID_MAX_LIMIT (4194304, include/linux/threads.h).
    Pids(u32), "pids limit", 16, 4_194_304
);

/// Bytes from `512M`, `1G`, `64K` or a plain number (binary units), between
/// `min` and 1 PiB.
fn parse_size(kind: &'static str, s: &str, min: u64) -> Result<u64, InvalidValue> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(kind, s, Problem::Empty));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(invalid(kind, s, Problem::BadUnit));
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(invalid(kind, s, Problem::BadUnit)),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| invalid(kind, s, Problem::NotANumber))?;
    let range = Problem::OutOfRange { min, max: 1 << 50 };
    let bytes = n
        .checked_mul(1u64 << shift)
        .filter(|b| *b <= (1u64 << 50))
        .ok_or_else(|| invalid(kind, s, range.clone()))?;
    if bytes < min {
        return Err(invalid(kind, s, range));
    }
    Ok(bytes)
}

/// The largest binary unit that divides evenly: 512M, 2G, 1536M.
fn fmt_size(bytes: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes.is_multiple_of(1u64 << shift) {
            return write!(f, "{}{unit}", bytes >> shift);
        }
    }
    write!(f, "{bytes}")
}

/// A memory size in bytes, written with binary units as systemd reads them
/// (`512M` = 512 MiB). At least 4M: less cannot boot anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemorySize(u64);

impl MemorySize {
    pub const MIN: u64 = 4 << 20;

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        parse_size("memory size", s, Self::MIN).map(MemorySize)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_size(self.0, f)
    }
}

impl From<MemorySize> for String {
    fn from(m: MemorySize) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for MemorySize {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        MemorySize::new(&s)
    }
}

impl FromStr for MemorySize {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        MemorySize::new(s)
    }
}

/// The cap of a tenant's console log (`[runtime] console_log_max`): at
/// least 64K, one pipe read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogSize(u64);

impl LogSize {
    pub const MIN: u64 = 64 << 10;

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        parse_size("log size", s, Self::MIN).map(LogSize)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LogSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_size(self.0, f)
    }
}

impl From<LogSize> for String {
    fn from(m: LogSize) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for LogSize {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        LogSize::new(&s)
    }
}

impl FromStr for LogSize {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        LogSize::new(s)
    }
}

/// Swap a tenant may use beyond its memory limit: `0` (none, the default),
/// a size written as for [`MemorySize`] (`256M`, `1G`), or `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SwapLimit {
    Bytes(u64),
    Unlimited,
}

impl SwapLimit {
    pub const NONE: SwapLimit = SwapLimit::Bytes(0);

    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "swap size";
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "unlimited" | "max" => return Ok(SwapLimit::Unlimited),
            "0" => return Ok(SwapLimit::NONE),
            _ => {}
        }
        let bytes = parse_size(KIND, s, 0).map_err(|e| match e.problem {
            Problem::BadUnit => invalid(KIND, s, Problem::BadSwap),
            _ => e,
        })?;
        Ok(SwapLimit::Bytes(bytes))
    }
}

impl fmt::Display for SwapLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwapLimit::Unlimited => f.write_str("unlimited"),
            SwapLimit::Bytes(0) => f.write_str("0"),
            SwapLimit::Bytes(b) => fmt_size(*b, f),
        }
    }
}

impl From<SwapLimit> for String {
    fn from(s: SwapLimit) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for SwapLimit {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        SwapLimit::new(&s)
    }
}

impl FromStr for SwapLimit {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        SwapLimit::new(s)
    }
}

/// systemd's CPUWeight scale, 1-10000 (100 is the default share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct CpuWeight(u16);

impl CpuWeight {
    pub fn new(w: u64) -> Result<Self, InvalidValue> {
        if !(1..=10_000).contains(&w) {
            return Err(invalid(
                "cpu weight",
                &w.to_string(),
                Problem::OutOfRange {
                    min: 1,
                    max: 10_000,
                },
            ));
        }
        Ok(CpuWeight(w as u16))
    }

    pub fn get(self) -> u64 {
        u64::from(self.0)
    }

    /// cgroup v1 `cpu.shares` for this weight, as systemd converts it:
    /// weight 100 = 1024 shares.
    pub fn cpu_shares(self) -> u64 {
        (self.get() * 1024 / 100).clamp(2, 262_144)
    }
}

impl TryFrom<u64> for CpuWeight {
    type Error = InvalidValue;
    fn try_from(v: u64) -> Result<Self, InvalidValue> {
        CpuWeight::new(v)
    }
}

impl From<CpuWeight> for u64 {
    fn from(w: CpuWeight) -> u64 {
        w.get()
    }
}

impl FromStr for CpuWeight {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        CpuWeight::new(parse_in_range("cpu weight", s, 1, 10_000)?)
    }
}

impl fmt::Display for CpuWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The bounds of a connection cap: one connection can never be enough, and
/// a cap above the kernel's conntrack table size means no cap.
pub const CONNECTIONS_MIN: u64 = 16;
pub const CONNECTIONS_MAX: u64 = 4_194_304;

/// Parses a tenant's connection cap (concurrent connections it may open).
pub fn parse_connections(s: &str) -> Result<u32, InvalidValue> {
    Ok(parse_in_range("connection cap", s, CONNECTIONS_MIN, CONNECTIONS_MAX)? as u32)
}

/// Checks a connection cap read from a file.
pub fn check_connections(n: u64) -> Result<u32, InvalidValue> {
    parse_connections(&n.to_string())
}

/// Checks that `ip` may be given to a tenant in `subnet`: inside it, and not
/// its network, gateway (first host) or broadcast address.
pub fn check_tenant_ip(ip: Ipv4Addr, subnet: Ipv4Net) -> Result<Ipv4Addr, InvalidValue> {
    const KIND: &str = "tenant address";
    if !subnet.contains(&ip) {
        return Err(invalid(KIND, &ip.to_string(), Problem::NotInSubnet(subnet)));
    }
    if ip == subnet.network() || ip == subnet.broadcast() || ip == gateway(subnet) {
        return Err(invalid(KIND, &ip.to_string(), Problem::Reserved(subnet)));
    }
    Ok(ip)
}

/// The bridge's own address in `subnet`: the first host address.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_sizes() {
        for (text, want) in [
            ("0", "0"),
            ("256M", "256M"),
            ("1g", "1G"),
            ("1K", "1K"),
            ("unlimited", "unlimited"),
            ("max", "unlimited"),
        ] {
            assert_eq!(SwapLimit::new(text).unwrap().to_string(), want, "{text}");
        }
        assert_eq!(SwapLimit::new("256M").unwrap(), SwapLimit::Bytes(256 << 20));
        assert_eq!(
            SwapLimit::new("lots").unwrap_err().to_string(),
            r#"swap size "lots" is not a swap size (write 0, a size like 256M or 1G, or unlimited)"#
        );
        assert_eq!(
            SwapLimit::new("-1").unwrap_err().to_string(),
            r#"swap size "-1" is not a swap size (write 0, a size like 256M or 1G, or unlimited)"#
        );
        assert!(SwapLimit::new("").is_err());
        assert!(SwapLimit::new("2000T").is_err());
    }

    #[test]
    fn tenant_names() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("acme", Ok("acme")),
            ("a", Ok("a")),
            ("web-1", Ok("web-1")),
            ("0day", Ok("0day")),
            (&"a".repeat(32), Ok("")),
            (
                "../x",
                Err(
                    r#"tenant name "../x" contains '.' (use lowercase letters a-z, digits and '-')"#,
                ),
            ),
            (
                "A",
                Err(r#"tenant name "A" has uppercase letters (use lowercase)"#),
            ),
            (
                "-a",
                Err(r#"tenant name "-a" must start and end with a letter or digit"#),
            ),
            (
                "a-",
                Err(r#"tenant name "a-" must start and end with a letter or digit"#),
            ),
            ("", Err(r#"tenant name "" is empty"#)),
            (
                "a..b",
                Err(
                    r#"tenant name "a..b" contains '.' (use lowercase letters a-z, digits and '-')"#,
                ),
            ),
            (
                "é",
                Err(r#"tenant name "é" contains 'é' (use lowercase letters a-z, digits and '-')"#),
            ),
            (
                "a b",
                Err(
                    r#"tenant name "a b" contains ' ' (use lowercase letters a-z, digits and '-')"#,
                ),
            ),
            (
                "a/b",
                Err(
                    r#"tenant name "a/b" contains '/' (use lowercase letters a-z, digits and '-')"#,
                ),
            ),
        ];
        for (input, want) in cases {
            let got = TenantName::new(input)
                .map(|n| n.to_string())
                .map_err(|e| e.to_string());
            match want {
                Ok("") => assert!(got.is_ok(), "{input}: {got:?}"),
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "{input}"),
                Err(w) => assert_eq!(got.as_ref().map_err(|e| e.as_str()), Err(*w), "{input}"),
            }
        }
        let long = "a".repeat(33);
        assert_eq!(
            TenantName::new(&long).unwrap_err().to_string(),
            format!("tenant name \"{long}\" is longer than 32 characters")
        );
    }

    #[test]
    fn host_names() {
        let ok: &[(&str, &str)] = &[
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("*.example.com", "*.example.com"),
            ("alpha.localhost.", "alpha.localhost"),
            ("localhost", "localhost"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ];
        for (input, want) in ok {
            assert_eq!(HostName::new(input).unwrap().as_str(), *want, "{input}");
        }
        let bad: &[(&str, &str)] = &[
            ("", r#"host name "" is empty"#),
            (
                "*.",
                r#"host name "*." is a wildcard without a domain (write *.example.com)"#,
            ),
            (
                "*",
                r#"host name "*" is a wildcard without a domain (write *.example.com)"#,
            ),
            (
                "a..b",
                r#"host name "a..b" has an empty label (two dots in a row, or a dot at the start)"#,
            ),
            (
                ".a",
                r#"host name ".a" has an empty label (two dots in a row, or a dot at the start)"#,
            ),
            (
                "../x",
                r#"host name "../x" has an empty label (two dots in a row, or a dot at the start)"#,
            ),
            (
                "bücher.de",
                r#"host name "bücher.de" contains 'ü' (use lowercase letters a-z, digits and '-')"#,
            ),
            (
                "-a.com",
                r#"host name "-a.com" must start and end with a letter or digit"#,
            ),
            (
                "a.*.com",
                r#"host name "a.*.com" contains '*' (use lowercase letters a-z, digits and '-')"#,
            ),
            (
                "a_b.com",
                r#"host name "a_b.com" contains '_' (use lowercase letters a-z, digits and '-')"#,
            ),
        ];
        for (input, want) in bad {
            assert_eq!(
                HostName::new(input).unwrap_err().to_string(),
                *want,
                "{input}"
            );
        }
        let label = "a".repeat(64);
        assert_eq!(
            HostName::new(&format!("{label}.com")).unwrap_err().problem,
            Problem::LabelTooLong
        );
        let long = vec!["a".repeat(60); 5].join(".");
        assert_eq!(
            HostName::new(&long).unwrap_err().problem,
            Problem::TooLong { max: 253 }
        );
        assert_eq!(
            HostName::new("*.example.com").unwrap().wildcard_domain(),
            Some("example.com")
        );
    }

    #[test]
    fn ports_sizes_weights() {
        assert_eq!("2201".parse::<SshPort>().unwrap().get(), 2201);
        assert_eq!(
            "0".parse::<SshPort>().unwrap_err().to_string(),
            r#"ssh port "0" is out of range 1-65535"#
        );
        assert_eq!(
            "70000".parse::<SshPort>().unwrap_err().to_string(),
            r#"ssh port "70000" is out of range 1-65535"#
        );
        assert_eq!(
            "x".parse::<SshPort>().unwrap_err().to_string(),
            r#"ssh port "x" is not a number"#
        );
        assert_eq!(
            SshPort::new(0).unwrap_err().problem,
            Problem::OutOfRange { min: 1, max: 65535 }
        );

        assert_eq!(MemorySize::new("512M").unwrap().bytes(), 512 << 20);
        assert_eq!(MemorySize::new("2G").unwrap().bytes(), 2 << 30);
        assert_eq!(MemorySize::new("2g").unwrap().to_string(), "2G");
        assert_eq!(MemorySize::new("1536M").unwrap().to_string(), "1536M");
        assert_eq!(
            MemorySize::new("12Q").unwrap_err().to_string(),
            r#"memory size "12Q" is not a size (write a number with K, M, G or T, e.g. 512M or 2G)"#
        );
        assert_eq!(
            MemorySize::new("M").unwrap_err().to_string(),
            r#"memory size "M" is not a size (write a number with K, M, G or T, e.g. 512M or 2G)"#
        );
        assert_eq!(
            MemorySize::new("1K").unwrap_err().to_string(),
            r#"memory size "1K" is out of range 4194304-1125899906842624"#
        );
        assert_eq!(MemorySize::new("").unwrap_err().problem, Problem::Empty);

        assert_eq!("100".parse::<CpuWeight>().unwrap().cpu_shares(), 1024);
        assert_eq!(
            "0".parse::<CpuWeight>().unwrap_err().to_string(),
            r#"cpu weight "0" is out of range 1-10000"#
        );
        assert_eq!(
            "10001".parse::<CpuWeight>().unwrap_err().to_string(),
            r#"cpu weight "10001" is out of range 1-10000"#
        );
        assert_eq!("4096".parse::<Pids>().unwrap().get(), 4096);
        assert_eq!(
            "1".parse::<Pids>().unwrap_err().to_string(),
            r#"pids limit "1" is out of range 16-4194304"#
        );
        assert_eq!(
            Pids::new(4_194_305).unwrap_err().to_string(),
            r#"pids limit "4194305" is out of range 16-4194304"#
        );
        assert_eq!(
            "0".parse::<HttpPort>().unwrap_err().to_string(),
            r#"http port "0" is out of range 1-65535"#
        );
        assert_eq!(
            HttpPort::new(65536).unwrap_err().to_string(),
            r#"http port "65536" is out of range 1-65535"#
        );
        assert_eq!("8080".parse::<HttpPort>().unwrap().get(), 8080);
        assert_eq!(HttpPort::default().get(), 80);
        assert_eq!(
            "x".parse::<SshPort>().unwrap_err().problem,
            Problem::NotANumber
        );
    }

    #[test]
    fn tenant_ips() {
        let net: Ipv4Net = "172.18.0.0/16".parse().unwrap();
        assert!(check_tenant_ip("172.18.0.2".parse().unwrap(), net).is_ok());
        assert_eq!(
            check_tenant_ip("10.0.0.2".parse().unwrap(), net)
                .unwrap_err()
                .to_string(),
            r#"tenant address "10.0.0.2" is not inside the subnet 172.18.0.0/16"#
        );
        for reserved in ["172.18.0.0", "172.18.0.1", "172.18.255.255"] {
            assert_eq!(
                check_tenant_ip(reserved.parse().unwrap(), net)
                    .unwrap_err()
                    .problem,
                Problem::Reserved(net)
            );
        }
        assert_eq!(gateway(net).to_string(), "172.18.0.1");
    }
}
