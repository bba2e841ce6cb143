//! The commands: one module per command group, each thin (parse, call
//! sotolito-host, print). They import only `context` and `output`, never
//! each other (but `net`, which hands fleet nodes to `fleet_net`); `main`
//! dispatches.

pub(crate) mod boot;
pub(crate) mod certs;
pub(crate) mod demo;
pub(crate) mod fleet_net;
pub(crate) mod image;
pub(crate) mod init;
pub(crate) mod lifecycle;
pub(crate) mod net;
pub(crate) mod nodes;
pub(crate) mod provision;
pub(crate) mod proxy;
pub(crate) mod remap;
pub(crate) mod set;
pub(crate) mod tenants;
pub(crate) mod units;
