//! The reliability suite: faults, crashes and bad input against real
//! vpsctl, runc, nft and network namespaces. Root only; each test makes its
//! own throwaway host and removes it after. Every loop is bounded.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod boot;
mod crash;
mod faults;
mod hostile;
mod http_abuse;
mod isolation;
mod stop;
