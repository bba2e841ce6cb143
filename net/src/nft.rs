//! Applying nft scripts: the only module that runs `nft`. Each call is one
//! `nft -f -` transaction in the caller's network namespace.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sotolito_config::{HostConfig, Tenant};

use crate::ruleset::{self, MAP_SSH, TABLE};
use crate::Error;

/// One element of the live `ssh_ports` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveForward {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Replaces our tables with `script` (from [`ruleset::render_ruleset`]).
pub fn apply_ruleset(script: &str) -> Result<(), Error> {
    run_script(script, "load the sotolito ruleset")
}

/// Replaces the fleet's sets (from [`ruleset::render_fleet`]).
pub fn apply_fleet(script: &str) -> Result<(), Error> {
    run_script(script, "update the fleet's sets")
}

/// Checks `script` without applying it (`nft -c`).
pub fn check_ruleset(script: &str) -> Result<(), Error> {
    run(
        &["-c", "-f", "-"],
        Some(script),
        "check the sotolito ruleset",
    )
    .map(drop)
}

/// Whether both our tables exist. Asked as a dry-run delete (`nft -c`):
/// any `list` command makes nft 1.0.6 fetch every set element first,
/// ~0.2 s with 10,000 tenants, while this stays flat.
pub fn tables_present() -> Result<bool, Error> {
    let probe = format!("delete table inet {TABLE}\ndelete table bridge {TABLE}\n");
    match run(
        &["-c", "-f", "-"],
        Some(&probe),
        "look for the sotolito tables",
    ) {
        Ok(_) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether nft failed because a table, map or set does not exist.
pub fn is_missing(e: &Error) -> bool {
    matches!(e, Error::Nft { stderr, .. } if stderr.contains("No such file or directory"))
}

pub fn add_forward(config: &HostConfig, tenant: &Tenant) -> Result<(), Error> {
    let action = format!("add the ssh forward of tenant {}", tenant.name);
    match run_script(&ruleset::render_add_forward(config, tenant), &action) {
        // The port or the address maps to something else (a stale element,
        // a changed cap); nft does not say which: replace each in turn.
        Err(Error::Nft { stderr, .. }) if is_exists(&stderr) => {
            tracing::warn!(tenant = %tenant.name, port = %tenant.ssh_port, "replacing stale elements");
            add_or_replace(
                &ruleset::render_add_ssh(config, tenant),
                &ruleset::render_replace_forward(config, tenant),
                &action,
            )?;
            let action = format!("set the connection cap of tenant {}", tenant.name);
            add_or_replace(
                &ruleset::render_add_cap(config, tenant),
                &ruleset::render_replace_cap(config, tenant),
                &action,
            )?;
            run_script(&ruleset::render_add_port(config, tenant), &action)
        }
        other => other,
    }
}

/// Runs `add`; when an element exists with another value, `replace`.
fn add_or_replace(add: &str, replace: &str, action: &str) -> Result<(), Error> {
    match run_script(add, action) {
        Err(Error::Nft { stderr, .. }) if is_exists(&stderr) => run_script(replace, action),
        other => other,
    }
}

fn is_exists(stderr: &str) -> bool {
    stderr.contains("File exists")
}

/// Removes the tenant's SSH forward (unless the port maps elsewhere now:
/// not ours to remove), connection cap and anti-spoofing element.
pub fn remove_forward(config: &HostConfig, tenant: &Tenant) -> Result<(), Error> {
    let action = format!("remove the ssh forward of tenant {}", tenant.name);
    match run_script(&ruleset::render_remove_ssh(config, tenant), &action) {
        Err(Error::Nft { stderr, .. }) if is_exists(&stderr) => {
            tracing::warn!(tenant = %tenant.name, port = %tenant.ssh_port, "ssh port maps elsewhere; left alone");
        }
        other => other?,
    }
    // The address is the tenant's alone (the registry refuses duplicates).
    run_script(&ruleset::render_remove_cap(config, tenant), &action).or_else(|e| match e {
        Error::Nft { ref stderr, .. } if is_exists(stderr) => run_script(
            &format!(
                "delete element inet {TABLE} {} {{ {} }}\n",
                ruleset::MAP_CAPS,
                tenant.ip
            ),
            &action,
        ),
        e => Err(e),
    })?;
    run_script(&ruleset::render_remove_port(config, tenant), &action)
}

/// The live `ssh_ports` map, or `None` when our table does not exist.
pub fn live_forwards() -> Result<Option<BTreeMap<u16, LiveForward>>, Error> {
    match run(
        &["list", "map", "inet", TABLE, MAP_SSH],
        None,
        "list the ssh_ports map",
    ) {
        Ok(out) => Ok(Some(parse_map_elements(&out))),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses `2201 : 172.18.0.2 . 22` elements out of `nft list map` text
/// (stable across nft versions, unlike its JSON for concatenations).
pub fn parse_map_elements(text: &str) -> BTreeMap<u16, LiveForward> {
    let Some(start) = text.find("elements = {") else {
        return BTreeMap::new();
    };
    let body = &text[start + "elements = {".len()..];
    let body = body.split('}').next().unwrap_or("");
    body.split(',')
        .filter_map(|e| {
            let (key, value) = e.split_once(':')?;
            let (ip, port) = value.rsplit_once(" . ")?;
            Some((
                key.trim().parse().ok()?,
                LiveForward {
                    ip: ip.trim().parse().ok()?,
                    port: port.trim().parse().ok()?,
                },
            ))
        })
        .collect()
}

/// `nft` from PATH, or from the usual sbin directories when PATH is unset:
/// runc runs hooks with only the environment in config.json, and execvp's
/// default search path has no sbin.
fn nft_program() -> PathBuf {
    let has_path = std::env::var_os("PATH").is_some_and(|p| !p.is_empty());
    if !has_path {
        for dir in ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"] {
            let candidate = Path::new(dir).join("nft");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("nft")
}

fn run_script(script: &str, action: &str) -> Result<(), Error> {
    run(&["-f", "-"], Some(script), action).map(drop)
}

fn run(args: &[&str], stdin: Option<&str>, action: &str) -> Result<String, Error> {
    let spawn_err = |source| Error::Spawn {
        program: "nft",
        package: "nftables",
        source,
    };
    let mut child = Command::new(nft_program())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means nft exited early; its stderr says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Nft {
            action: action.to_owned(),
            stderr: first_error(&stderr),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// nft prints an error, the offending line and a caret line; keep the
/// messages (with their line numbers) on one line.
fn first_error(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Error:"))
        .map(str::trim)
        .collect();
    if errors.is_empty() {
        stderr.trim().replace('\n', "; ")
    } else {
        errors.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listed_map() {
        let text = "table inet sotolito {\n\tmap ssh_ports {\n\t\ttype inet_service : ipv4_addr . inet_service\n\t\telements = { 2201 : 172.18.0.2 . 22, 2202 : 172.18.0.3 . 22,\n\t\t\t     2203 : 172.18.0.4 . 22 }\n\t}\n}\n";
        let m = parse_map_elements(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[&2202],
            LiveForward {
                ip: Ipv4Addr::new(172, 18, 0, 3),
                port: 22
            }
        );
        assert!(parse_map_elements("map ssh_ports {\n}\n").is_empty());
    }

    #[test]
    fn errors_fit_on_one_line() {
        let e = "/dev/stdin:44:3-14: Error: Could not process rule: Operation not supported\n\t\tmeta ibrname\n\t\t^^^^\n";
        assert_eq!(
            first_error(e),
            "/dev/stdin:44:3-14: Error: Could not process rule: Operation not supported"
        );
    }
}
