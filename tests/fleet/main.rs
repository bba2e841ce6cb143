//! The fleet: hosts sharing one registry in etcd (real members, mutual
//! TLS). `vpsctl proxy` with `[cluster]` routes from an etcd watch, keeps
//! serving the last-known routes while etcd is down, and holds its node's
//! liveness lease.

#[path = "../../fleet/tests/support/mod.rs"]
mod support;

mod acme;
mod e2e;
mod nodes;
mod proxy;

#[path = "../common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;
