//! The systemd host (work in progress, not in CI): a Debian test host with
//! systemd as PID 1 under `systemd-nspawn --boot`, our units, tenants, and
//! reboots. Run by hand with `cargo test --test systemd_host`; it is kept
//! out of `cargo test --all-targets` (test = false in Cargo.toml) until a
//! Debian tenant stops reliably during a host halt: it sometimes ignores
//! SIGRTMIN+3 there and is killed after the timeout (docs/architecture.md,
//! "Boot").

#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

mod host;
