//! The systemd host: a Debian test host with systemd as PID 1 under
//! `systemd-nspawn --boot`, our units, tenants, and reboots. Root only;
//! it fails (never skips) without systemd-nspawn, ssh or debootstrap
//! (scripts/install-deps). Its two images are built on first use and
//! cached under /var/cache/sotolito (SOTOLITO_CACHE_DIR to choose another
//! dir).

#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

mod host;
