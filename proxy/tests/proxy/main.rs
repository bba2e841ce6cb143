//! End-to-end tests of the proxy on loopback, against real backends.

mod common;
mod hardening;
mod http;
mod tls;
