//! End-to-end tests of the proxy on loopback, against real backends.

#![allow(clippy::unwrap_used)]

mod common;
mod h2;
mod hardening;
mod http;
mod refusals;
mod tls;
