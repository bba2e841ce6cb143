//! File tree copies and sizes.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{io_err, Error};

/// Copies the tree at `from` to `to` (which must not exist) keeping owners,
/// modes, times, symlinks, hard links, device nodes and xattrs: `cp -a`,
/// which does all of that correctly and is on every host.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    let out = Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: "cp".into(),
            package: "coreutils",
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            program: "cp".into(),
            action: format!("-a {} {}", from.display(), to.display()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Bytes of regular files under `root`, each inode counted once.
pub fn tree_size(root: &Path) -> Result<u64, Error> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read", &dir))?;
            let md = entry.metadata().map_err(io_err("stat", entry.path()))?;
            if md.is_dir() {
                stack.push(entry.path());
            } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
                total += md.len();
            }
        }
    }
    Ok(total)
}
