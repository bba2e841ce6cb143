//! Running code in another network namespace: on a scoped thread that
//! `setns`es first, so the calling thread (and the rest of the process)
//! stays where it is. Sockets and children made on that thread live in the
//! target namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::Error;

/// Runs `f` on a thread inside the network namespace at `path`
/// (`/proc/PID/ns/net` or `/run/netns/NAME`) and returns its result.
pub fn run_in<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    let ns_err = |source| Error::Netns {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(ns_err)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| ns_err(e.into()))?;
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
