//! sotolito-fleet: the registry of a fleet of hosts, kept in etcd v3.
//!
//! Tenant records, the claims that keep names, host names, SSH ports and
//! addresses unique across the fleet, and the nodes with their tenant
//! subnets, and the ACME state every node's proxy shares ([`acme`]), live
//! under one versioned prefix ([`keys`]). Every change that
//! touches more than one key is one etcd transaction, so a failed or lost
//! race leaves nothing half-made.

pub mod acme;
pub mod error;
pub mod feed;
pub mod keys;
pub mod nodes;
pub mod store;
pub mod tenants;

pub use acme::{AcmeEvent, AcmeFeed, HostLock, SharedCert};
pub use error::Error;
pub use feed::{FeedState, TenantFeed};
pub use nodes::{NodeRecord, NodeStatus, Registration};
pub use store::Store;
pub use tenants::{Stored, TenantEntry};
