//! The runc driver: every call to the runtime goes through [`Runc`].

use std::path::PathBuf;
use std::process::{Command, Stdio};

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

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c
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
