//! sotolito-config: the host config, tenant records, validated names and the
//! registry that every other part reads.

pub mod atomic;
pub mod cluster;
pub mod host;
pub mod idmap;
pub mod names;
pub mod quota;
pub mod registry;
pub mod tenant;

use std::fmt;
use std::path::PathBuf;

pub use atomic::WriteError;
pub use cluster::{Cluster, EtcdEndpoint, FleetNetwork, FleetPeer};
pub use host::{HostConfig, Loaded, Overrides};
pub use idmap::{Idmap, IdmapPool};
pub use names::{
    CpuWeight, HostName, HttpPort, ImageName, InvalidValue, LogSize, MemorySize, NodeName, Pids,
    SshPort, SwapLimit, TenantName,
};
pub use quota::DiskQuota;
pub use registry::{Registry, RegistryLock};
pub use tenant::{Desired, Limits, Tenant};

/// Errors of this crate; each names the thing and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", ConfigLocation { path, key, line: *line, message })]
    Config {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
    #[error("tenant record {path} is unreadable: {message} (fix or remove the file)")]
    Record { path: PathBuf, message: String },
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{what} is taken by tenant {owner} ({hint})")]
    Conflict {
        what: String,
        owner: TenantName,
        hint: &'static str,
    },
    #[error("tenant {0} does not exist (see vpsctl list)")]
    NotFound(TenantName),
}

struct ConfigLocation<'a> {
    path: &'a PathBuf,
    key: &'a str,
    line: Option<usize>,
    message: &'a str,
}

impl fmt::Display for ConfigLocation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}
