//! A tenant's console log: its init's stdout and stderr come through a pipe
//! that we read, and the log is capped: past `max` bytes `console.log` is
//! renamed to `console.log.1` (replacing the older one) and started afresh,
//! so a tenant writing without end holds at most twice `max` of the host's
//! disk. Both files are 0600. (conmon's `log-size-max` is the model; it
//! truncates, we keep one rotated copy for the operator.)

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{io_err, Error};

/// One pipe read; also the smallest cap (`LogSize::MIN`).
const CHUNK: usize = 64 * 1024;

/// `console.log.1` beside `console.log`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The console log as a capped writer.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    len: u64,
}

/// Appends to `path` (made 0600, even when it existed with another mode),
/// never through a symlink.
fn open_append(path: &Path) -> Result<File, Error> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = f.metadata().map_err(io_err("open", path))?;
    if meta.mode() & 0o777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("restrict", path))?;
    }
    Ok(f)
}

impl CappedLog {
    pub fn open(path: &Path, max: u64) -> Result<CappedLog, Error> {
        let file = open_append(path)?;
        let len = file.metadata().map_err(io_err("open", path))?.len();
        let mut log = CappedLog {
            path: path.to_owned(),
            max: max.max(CHUNK as u64),
            file: Some(file),
            len,
        };
        if log.len >= log.max {
            log.rotate()?;
        }
        Ok(log)
    }

    /// Writes `buf`, rotating first if it would pass the cap. A failed
    /// write (a full disk) loses that output, never blocks the tenant.
    pub fn write(&mut self, buf: &[u8]) {
        if self.len > 0 && self.len + buf.len() as u64 > self.max {
            if let Err(e) = self.rotate() {
                tracing::warn!(log = %self.path.display(), error = %e, "cannot rotate the console log");
            }
        }
        // A chunk is never larger than the cap (CHUNK <= max).
        let Some(f) = self.file.as_mut() else {
            return;
        };
        match f.write_all(buf) {
            Ok(()) => self.len += buf.len() as u64,
            Err(e) => {
                tracing::warn!(log = %self.path.display(), error = %e, "console output lost");
            }
        }
    }

    fn rotate(&mut self) -> Result<(), Error> {
        self.file = None;
        let old = rotated(&self.path);
        std::fs::rename(&self.path, &old).map_err(io_err("rotate", &self.path))?;
        self.file = Some(open_append(&self.path)?);
        self.len = 0;
        Ok(())
    }
}

/// Copies `input` into the log until every writer has closed the pipe.
pub fn pump(mut input: impl Read, log: &mut CappedLog) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => log.write(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(log = %log.path.display(), error = %e, "console pipe failed");
                return;
            }
        }
    }
}

/// For a runc command: a pipe whose write end becomes the container's
/// stdout and stderr, and whose read end goes to a pump.
pub fn pipe() -> Result<(std::io::PipeReader, std::io::PipeWriter), Error> {
    std::io::pipe().map_err(io_err("create a pipe for", PathBuf::from("the console")))
}

/// Opens the log for reading what runc wrote after `start` (for errors).
pub fn len(path: &Path) -> u64 {
    File::open(path)
        .and_then(|f| f.metadata())
        .map_or(0, |m| m.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn caps_and_rotates_and_keeps_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let max = 64 * 1024;
        let mut log = CappedLog::open(&path, max).unwrap();
        let mut text = Vec::new();
        for i in 0..20_000 {
            text.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        pump(&text[..], &mut log);
        let cur = fs::read_to_string(&path).unwrap();
        let old = fs::read_to_string(rotated(&path)).unwrap();
        assert!(cur.len() as u64 <= max && old.len() as u64 <= max);
        assert!(cur.ends_with("line 19999\n"), "{}", &cur[cur.len() - 20..]);
        for p in [&path, &rotated(&path)] {
            assert_eq!(fs::metadata(p).unwrap().mode() & 0o777, 0o600);
        }
        // Reopening a full log rotates it first.
        fs::write(&path, vec![b'x'; max as usize]).unwrap();
        let mut log = CappedLog::open(&path, max).unwrap();
        log.write(b"fresh\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "fresh\n");
    }

    #[test]
    fn never_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        fs::write(&target, "keep").unwrap();
        let path = tmp.path().join("console.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(CappedLog::open(&path, 1 << 20).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }
}
