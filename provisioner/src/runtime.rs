//! The runc driver: every call to the runtime goes through [`Runc`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

use crate::Error;

/// How to call runc for one sotolito instance (its own `--root`).
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Stopped => "stopped",
        }
    }
}

/// What `runc state` says of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub status: ContainerStatus,
    /// The container's init, as seen from the host; None unless it runs.
    pub pid: Option<u32>,
    /// RFC 3339, as runc reports it.
    pub created: Option<String>,
}

#[derive(Deserialize)]
struct RawState {
    status: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    created: Option<String>,
}

/// What the supervisor needs of a runtime: runc, or a recording fake in
/// tests, so the stop logic is tested without root.
pub trait Runtime {
    fn state(&self, id: &str) -> Result<Option<ContainerState>, Error>;
    fn kill(&self, id: &str, signal: i32) -> Result<(), Error>;
    fn delete(&self, id: &str, force: bool) -> Result<(), Error>;
    /// `stdio`: the container's stdout and stderr (the console pipe).
    fn create(&self, id: &str, bundle: &Path, stdio: OwnedFd) -> Result<(), Error>;
    fn start(&self, id: &str) -> Result<(), Error>;
    /// For messages.
    fn name(&self) -> String;
}

impl Runtime for Runc {
    fn state(&self, id: &str) -> Result<Option<ContainerState>, Error> {
        Runc::state(self, id)
    }
    fn kill(&self, id: &str, signal: i32) -> Result<(), Error> {
        Runc::kill(self, id, signal)
    }
    fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        Runc::delete(self, id, force)
    }
    fn create(&self, id: &str, bundle: &Path, stdio: OwnedFd) -> Result<(), Error> {
        Runc::create(self, id, bundle, stdio)
    }
    fn start(&self, id: &str) -> Result<(), Error> {
        Runc::start(self, id)
    }
    fn name(&self) -> String {
        self.binary.clone()
    }
}

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c
    }

    fn spawn_err(&self) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Spawn {
            program: self.binary.clone(),
            package: "runc",
            source,
        }
    }

    fn failed(&self, action: String, stderr: &[u8]) -> Error {
        Error::Command {
            program: self.binary.clone(),
            action,
            stderr: String::from_utf8_lossy(stderr).trim().to_owned(),
        }
    }

    /// Runs a short runc command that holds no container stdio.
    fn simple(&self, args: &[&str]) -> Result<Output, Error> {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(self.spawn_err())
    }

    /// `runc create`: the container's stdout and stderr go to `stdio`, the
    /// console pipe (whose reader is a pump, never this process: runc
    /// keeps it open until the container exits). runc's own errors go
    /// there too, so a failure's message is left to the caller to read
    /// from the console log (the `stderr` of the error is empty).
    pub fn create(&self, id: &str, bundle: &Path, stdio: OwnedFd) -> Result<(), Error> {
        let err = stdio
            .try_clone()
            .map_err(crate::io_err("duplicate the console pipe of", bundle))?;
        let status = self
            .command()
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(err)
            .status()
            .map_err(self.spawn_err())?;
        if status.success() {
            return Ok(());
        }
        Err(self.failed(format!("create {id}"), b""))
    }

    pub fn start(&self, id: &str) -> Result<(), Error> {
        let out = self.simple(&["start", id])?;
        if !out.status.success() {
            return Err(self.failed(format!("start {id}"), &out.stderr));
        }
        Ok(())
    }

    /// Sends a signal by number (runc refuses names like SIGRTMIN+3).
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), Error> {
        let sig = signal.to_string();
        let out = self.simple(&["kill", id, &sig])?;
        if !out.status.success() {
            return Err(self.failed(format!("kill {id} {sig}"), &out.stderr));
        }
        Ok(())
    }

    /// Deletes the container (runs the poststop hooks); gone is fine.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        let out = self.simple(&args)?;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("does not exist")
        {
            return Err(self.failed(format!("delete {id}"), &out.stderr));
        }
        Ok(())
    }

    /// `runc run` in the foreground, for the caller to spawn and wait on.
    pub fn run_command(&self, id: &str, bundle: &Path) -> Command {
        let mut c = self.command();
        c.args(["run", "--bundle"]).arg(bundle).arg(id);
        c
    }

    /// `runc exec ID CMD...` with the caller's stdio; a tty when asked.
    pub fn exec_command(&self, id: &str, args: &[String], tty: bool) -> Command {
        let mut c = self.command();
        c.arg("exec");
        if tty {
            c.arg("--tty");
        }
        c.arg(id).args(args);
        c
    }

    pub fn spawn_error(&self, source: std::io::Error) -> Error {
        (self.spawn_err())(source)
    }

    /// The container's state, or None when runc does not know it.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>, Error> {
        // runc keeps one directory per container under its root: without it
        // there is nothing to ask (and no need for runc to be installed).
        if !self.root.join(id).exists() {
            return Ok(None);
        }
        let out = self
            .command()
            .args(["state", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: self.binary.clone(),
                package: "runc",
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(Error::Command {
                program: self.binary.clone(),
                action: format!("state {id}"),
                stderr: stderr.trim().to_owned(),
            });
        }
        parse_state(&out.stdout)
            .map(Some)
            .map_err(|message| Error::Output {
                program: self.binary.clone(),
                action: format!("state {id}"),
                message,
            })
    }
}

/// The last lines written to `path` after offset `start`.
pub(crate) fn tail_since(path: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(start));
        let _ = f.take(64 * 1024).read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("; ");
    if tail.is_empty() {
        format!("no output (see {})", path.display())
    } else {
        tail
    }
}

fn parse_state(json: &[u8]) -> Result<ContainerState, String> {
    let raw: RawState = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let status = match raw.status.as_str() {
        "created" => ContainerStatus::Created,
        "running" => ContainerStatus::Running,
        "paused" => ContainerStatus::Paused,
        "stopped" => ContainerStatus::Stopped,
        other => return Err(format!("unknown status {other:?}")),
    };
    let pid = match status {
        ContainerStatus::Stopped => None,
        _ => u32::try_from(raw.pid).ok().filter(|p| *p > 0),
    };
    Ok(ContainerState {
        status,
        pid,
        created: raw.created,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_runc_state() {
        let s = parse_state(
            br#"{"ociVersion":"1.0.2","id":"acme","pid":4242,"status":"running","bundle":"/b","rootfs":"/r","created":"2026-11-28T10:00:00.5Z","owner":""}"#,
        )
        .unwrap();
        assert_eq!(s.status, ContainerStatus::Running);
        assert_eq!(s.pid, Some(4242));
        assert_eq!(s.created.as_deref(), Some("2026-11-28T10:00:00.5Z"));
        let s = parse_state(br#"{"id":"acme","pid":0,"status":"stopped"}"#).unwrap();
        assert_eq!((s.status, s.pid), (ContainerStatus::Stopped, None));
        assert!(parse_state(br#"{"status":"weird"}"#).is_err());
    }

    #[test]
    fn unknown_container_needs_no_runc() {
        let tmp = tempfile::tempdir().unwrap();
        let runc = Runc {
            binary: "/nonexistent/runc".into(),
            root: tmp.path().into(),
            systemd_cgroup: false,
        };
        assert_eq!(runc.state("acme").unwrap(), None);
    }
}
