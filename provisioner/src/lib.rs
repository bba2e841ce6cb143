//! sotolito-provisioner: images, OCI bundles, tenant data dirs, systemd units
//! and the runc driver.

pub mod bundle;
pub mod busybox;
pub mod cgroup;
pub mod console;
pub mod data;
pub mod disk;
pub mod idmap;
pub mod image;
pub mod lock;
pub mod overlay;
pub mod private;
pub mod proxy_user;
pub mod runtime;
pub mod seccomp;
pub mod signal;
pub mod supervise;
pub mod tenantfs;
pub mod units;

use std::path::PathBuf;

pub use bundle::{render_spec, HookCommand, TenantLayout};
pub use image::{Image, ImageMeta, ImageStore};
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
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {0} already exists (remove it with vpsctl image rm, or pick another name)")]
    ImageExists(String),
    #[error(
        "image {0} does not exist (see vpsctl image list; import it with vpsctl image import)"
    )]
    ImageNotFound(String),
    #[error("image {name} is used by tenant(s) {tenants} (deprovision them first)")]
    ImageInUse { name: String, tenants: String },
    #[error("image {name} is unreadable: {message} (remove {path} and import it again)")]
    ImageMeta {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("cannot import {path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("digest mismatch for {what}: expected sha256:{expected}, got sha256:{actual} (the image is corrupt; export it again)")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("unknown signal {0:?} (use a name like SIGTERM or SIGRTMIN+3, or a number 1-64)")]
    Signal(String),
    #[error("cannot build the OCI spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("ssh key file {path}: {message}")]
    SshKey { path: PathBuf, message: String },
    #[error("cannot mount the root of tenant {tenant} on {path}")]
    Mount {
        tenant: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to write {path}: {message}")]
    UnsafePath { path: PathBuf, message: String },
    #[error("a disk quota cannot be enforced here: {reason} ({fix}, or provision with --disk unlimited)")]
    DiskUnenforceable { reason: String, fix: String },
    #[error("cannot mount the disk image of tenant {tenant} on {path}: {message}")]
    DiskMount {
        tenant: String,
        path: PathBuf,
        message: String,
    },
    #[error("the data dir {data} of tenant {tenant} holds files that its disk image would hide (move them into the image, or remove them)")]
    DiskHidden { tenant: String, data: PathBuf },
    #[error("the disk image of tenant {tenant} is not mounted on {data} (start the tenant, or provision it again)")]
    DiskNotMounted { tenant: String, data: PathBuf },
    #[error("cannot shrink the disk of tenant {tenant} to {bytes} bytes: {message} (its data does not fit below that size: free space inside the tenant, shrink in smaller steps, or pick a larger size)")]
    DiskShrink {
        tenant: String,
        bytes: u64,
        message: String,
    },
    #[error("user namespace: {0}")]
    Idmap(String),
    #[error("{0} (see the busybox-static package)")]
    Busybox(String),
    #[error("the seccomp profile is unusable: {0} (a bug in this vpsctl build: report it)")]
    Seccomp(String),
    #[error("no cgroup v1 memory hierarchy or cgroup2 mount found in /proc/self/mountinfo (is /sys/fs/cgroup mounted? run vpsctl in the host's mount namespace)")]
    NoCgroups,
    #[error("swap is on but this kernel does not account it per cgroup, so tenant {tenant}'s swap limit cannot hold (boot with swapaccount=1, turn swap off, or allow it with [defaults] swap = \"unlimited\" or --swap unlimited)")]
    SwapUnaccounted { tenant: String },
    #[error("tenant {tenant} uses more than {memory} and the kernel could not reclaim enough (free memory inside the tenant, or pick a larger size)")]
    MemoryInUse { tenant: String, memory: String },
    #[error("cannot remove the cgroups of tenant {tenant}, processes are still in them: {dirs} (stop the tenant, then rerun)")]
    CgroupBusy { tenant: String, dirs: String },
}

/// A file put into place with `sotolito_config::atomic` keeps its step and
/// path.
impl From<sotolito_config::WriteError> for Error {
    fn from(e: sotolito_config::WriteError) -> Self {
        Error::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// Attaches a path to an io::Error.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
