//! Putting a file into place on the host so that a reader sees the old file
//! or the new one, never a part, and the new one outlives a crash once the
//! call returns: one mechanism for every writer of the workspace.
//!
//! The recipe is rename(2)'s: write a temporary file in the same directory
//! (so the rename stays on one filesystem), fsync it, rename it over the
//! target, fsync the directory (the rename itself is only durable once the
//! directory entry is; see fsync(2), "Calling fsync() does not necessarily
//! ensure that the entry in the directory containing the file has also
//! reached disk").
//!
//! Temporary names are `.NAME.tmp.PID.SEQ`: unique per call, so writers that
//! are not serialized never write into one another's file, and starting
//! with a dot, so directory scans (the registry) skip them. A call removes
//! its own temporary file on any error, and the ones of the same target
//! left by processes that no longer exist (a writer killed mid-write), so a
//! rerun converges to a directory without leftovers.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A step of putting a file into place failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}")]
pub struct WriteError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn fail<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with a file holding `data`, with permission bits `mode`
/// whatever the umask (0o600 for secrets, 0o640 for what a group reads,
/// 0o644 for the rest). The file is owned by the caller.
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    let (dir, tmp) = temporary(path)?;
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(fail("create", &tmp))?;
        // The mode given to open(2) is filtered by the umask; this one is not.
        f.set_permissions(Permissions::from_mode(mode))
            .map_err(fail("chmod", &tmp))?;
        f.write_all(data).map_err(fail("write", &tmp))?;
        f.sync_all().map_err(fail("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(fail("rename into place", path))
    })();
    finish(written, &dir, &tmp)
}

/// Replaces `path` with a symlink to `target`; the name is never missing in
/// between, so concurrent callers all succeed.
pub fn symlink(target: &Path, path: &Path) -> Result<(), WriteError> {
    let (dir, tmp) = temporary(path)?;
    let written = (|| {
        std::os::unix::fs::symlink(target, &tmp).map_err(fail("link", &tmp))?;
        fs::rename(&tmp, path).map_err(fail("rename into place", path))
    })();
    finish(written, &dir, &tmp)
}

/// Puts `built`, a file a tool made (mkfs, tar), in place as `path`:
/// fsync, rename, fsync of the directory. `built` must be in the same
/// directory as `path`; on error it is left for the caller to remove.
pub fn commit(built: &Path, path: &Path) -> Result<(), WriteError> {
    File::open(built)
        .and_then(|f| f.sync_all())
        .map_err(fail("sync", built))?;
    fs::rename(built, path).map_err(fail("rename into place", path))?;
    sync_dir(&parent(path))
}

/// The directory of `path` and a fresh temporary name in it, after removing
/// the temporary files of `path` that dead writers left.
fn temporary(path: &Path) -> Result<(PathBuf, PathBuf), WriteError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| WriteError {
        action: "write",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
    })?;
    let dir = parent(path);
    let prefix = temp_prefix(name);
    remove_dead_temporaries(&dir, &prefix);
    let mut tmp = prefix;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    tmp.push(format!("{}.{seq}", std::process::id()));
    Ok((dir.clone(), dir.join(tmp)))
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.tmp.`: what every temporary file of `name` starts with.
fn temp_prefix(name: &std::ffi::OsStr) -> OsString {
    let mut p = OsString::from(".");
    p.push(name);
    p.push(".tmp.");
    p
}

fn finish(written: Result<(), WriteError>, dir: &Path, tmp: &Path) -> Result<(), WriteError> {
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("sync", dir))
}

/// Best effort: a temporary file whose writer is gone is garbage; one whose
/// writer runs (another process, or another thread of this one) is not.
fn remove_dead_temporaries(dir: &Path, prefix: &OsString) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = prefix.as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_encoded_bytes().strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split_once('.'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_content_and_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write(&path, b"first", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        // A replacement takes the new mode, and a mode the umask (022 or
        // 077 here) would strip is kept.
        write(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        write(&path, b"third", 0o664).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o664, "mode {mode:o}: the umask was applied");
        assert_eq!(names(dir.path()), ["key.pem"]);
    }

    #[test]
    fn no_temporary_is_left_on_error() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the target is a non-empty directory.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "x").unwrap();
        let err = write(&path, b"data", 0o644).unwrap_err();
        assert_eq!(err.action, "rename into place");
        assert_eq!(
            err.to_string(),
            format!("cannot rename into place {}", path.display())
        );
        assert_eq!(names(dir.path()), ["busy"]);
        let err = symlink(Path::new("target"), &path).unwrap_err();
        assert_eq!(err.action, "rename into place");
        assert_eq!(names(dir.path()), ["busy"]);
        // The directory is missing: nothing is made anywhere.
        let err = write(&dir.path().join("none/file"), b"data", 0o644).unwrap_err();
        assert_eq!(err.action, "create");
        assert_eq!(names(dir.path()), ["busy"]);
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation");
        // PID 1 always runs; the largest pid_max is 4194304, so this one
        // never does.
        let live = String::from(".generation.tmp.1.0");
        let dead = format!(".generation.tmp.{}.3", 4_194_305);
        let other = format!(".other.tmp.{}.3", 4_194_305);
        for n in [&live, &dead, &other] {
            fs::write(dir.path().join(n), "half").unwrap();
        }
        write(&path, b"7\n", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"7\n");
        assert_eq!(names(dir.path()), [live.as_str(), &other, "generation"]);
    }

    #[test]
    fn symlink_replaces_a_link_and_commit_a_built_file() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("unit.service");
        symlink(Path::new("../a"), &link).unwrap();
        symlink(Path::new("../b"), &link).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../b"));
        let built = dir.path().join(".disk.img.partial");
        fs::write(&built, "image").unwrap();
        let img = dir.path().join("disk.img");
        commit(&built, &img).unwrap();
        assert_eq!(fs::read(&img).unwrap(), b"image");
        assert_eq!(names(dir.path()), ["disk.img", "unit.service"]);
        let err = commit(&built, &img).unwrap_err();
        assert_eq!(err.to_string(), format!("cannot sync {}", built.display()));
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = write(Path::new("/"), b"x", 0o644).unwrap_err();
        assert_eq!(err.to_string(), "cannot write /");
    }

    #[test]
    fn a_relative_name_writes_into_the_working_directory_parent() {
        assert_eq!(parent(Path::new("file")), PathBuf::from("."));
        assert_eq!(parent(Path::new("a/file")), PathBuf::from("a"));
    }
}
