//! The fleet store's errors: each names the store or the thing, and what to do.

use std::path::PathBuf;

use sotolito_config::{NodeName, TenantName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// etcd could not be reached or refused the request; `message` is the
    /// one line of the gRPC status or transport error.
    #[error("etcd store {endpoints} failed: {message} (check that the members in [cluster] etcd run and are reachable)")]
    Store { endpoints: String, message: String },
    #[error("{what} is taken by tenant {owner} ({hint})")]
    Conflict {
        /// The claim's key (see [`crate::keys`]).
        key: String,
        what: String,
        owner: TenantName,
        hint: &'static str,
    },
    #[error("tenant {name} lives on node {node} (manage it there, or pick another name)")]
    OtherNode { name: TenantName, node: NodeName },
    #[error("tenant {0} was changed by another command meanwhile (run the command again)")]
    Raced(TenantName),
    #[error("tenant {0} does not exist in the fleet (see vpsctl list)")]
    NotFound(TenantName),
    #[error(
        "etcd key {key} holds an unreadable record: {message} (fix or delete it with etcdctl)"
    )]
    Record { key: String, message: String },
    #[error("the fleet's range {range} has no free /{prefix} left for node {node} (widen [network] subnet or use a longer [cluster] node_prefix)")]
    RangeFull {
        range: ipnet::Ipv4Net,
        prefix: u8,
        node: NodeName,
    },
    #[error("node {node} is registered from {registered} and alive; this host is {ours} (give this host another [cluster] node name)")]
    NodeTaken {
        node: NodeName,
        registered: std::net::Ipv4Addr,
        ours: std::net::Ipv4Addr,
    },
    #[error("node {node} was registered with the fleet range {stored}, this host's config says {configured} (every node needs the same [network] subnet and [cluster] node_prefix)")]
    RangeMismatch {
        node: NodeName,
        stored: ipnet::Ipv4Net,
        configured: ipnet::Ipv4Net,
    },
}

/// One line for an etcd client error: the gRPC status message without
/// tonic's metadata dump.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut msg, mut src) = match e {
        // Not the status's own Display: it dumps the metadata map.
        etcd_client::Error::GRpcStatus(s) => {
            (format!("{:?}: {}", s.code(), s.message()), s.source())
        }
        other => (other.to_string(), other.source()),
    };
    // A transport failure hides its cause in the source chain; tonic and
    // hyper repeat one another there, so each distinct part once.
    while let Some(inner) = src {
        let part = inner.to_string();
        if !msg.contains(&part) {
            msg = format!("{msg}: {part}");
        }
        src = inner.source();
    }
    msg
}
