//! Signal names and numbers as runc and images spell them.
//!
//! `runc kill ID SIGRTMIN+3` is refused (docs/facts.md "runc"), so every
//! signal is passed to runc as a number. Numbers are x86_64/aarch64
//! Linux's; SIGRTMIN is glibc's (34), so SIGRTMIN+3 = 37, what systemd
//! waits for.

/// glibc's SIGRTMIN (the kernel's 32 plus the two glibc keeps for itself).
pub const SIGRTMIN: i32 = 34;
pub const SIGRTMAX: i32 = 64;
/// systemd's "halt" signal, the default stop signal of an image.
pub const DEFAULT_STOP_SIGNAL: i32 = SIGRTMIN + 3;
pub const SIGKILL: i32 = 9;

const NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// Parses `37`, `SIGTERM`, `term`, `SIGRTMIN+3`, `RTMAX-1`.
pub fn parse_signal(s: &str) -> Result<i32, crate::Error> {
    let bad = || crate::Error::Signal(s.to_owned());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = |base: i32, rest: &str| -> Option<i32> {
        if rest.is_empty() {
            return Some(base);
        }
        let (sign, num) = rest.split_at(1);
        let off: i32 = num.parse().ok()?;
        let n = if sign == "+" {
            base + off
        } else if sign == "-" {
            base - off
        } else {
            return None;
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest).ok_or_else(bad);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest).ok_or_else(bad);
    }
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), 37);
        assert_eq!(parse_signal("rtmin+3").unwrap(), 37);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("37").unwrap(), 37);
        assert_eq!(parse_signal("SIGRTMAX-1").unwrap(), 63);
        for bad in ["0", "65", "SIGFOO", "RTMIN+40", "RTMIN*3", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
