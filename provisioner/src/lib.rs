//! sotolito-provisioner: images, OCI bundles, tenant data dirs, systemd units
//! and the runc driver.

pub mod runtime;

pub use runtime::{ContainerState, ContainerStatus, Runc};

/// Errors of this crate; each names the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program} (is it installed? apt-get install {package})")]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {action} failed: {stderr}")]
    Command {
        program: String,
        action: String,
        stderr: String,
    },
    #[error("cannot parse the output of {program} {action}: {message}")]
    Output {
        program: String,
        action: String,
        message: String,
    },
}
