//! A throwaway network sandbox: named network namespaces, veth links between
//! them, and commands run inside one, all removed when dropped. `vpsctl
//! demo` plays a VPS host and the internet in one; the root tests build
//! theirs with it, so there is one way to make and remove them.
//!
//! Commands enter with `nsenter --net`, never `ip netns exec`: the latter
//! also unshares the mount namespace and remounts /sys, which hides the
//! cgroup mounts runc needs and pins every mount (other tenants' disks)
//! for as long as the command runs.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::Ipv4Net;

use crate::Error;

/// The host's and the client's address on a sandbox's link: RFC 2544's
/// benchmarking range (198.18.0.0/15), never a real network.
pub const HOST_ADDR: &str = "198.18.0.1";
pub const CLIENT_ADDR: &str = "198.18.0.2";

/// The host's end of the link: the interface a VPS host calls public.
pub const UPLINK: &str = "uplink";

/// A named network namespace (`/run/netns/NAME`, loopback up); deleted on
/// drop, or by [`Netns::delete`] to see the error.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates the namespace `name`; fails if it exists.
    pub fn create(name: impl Into<String>) -> Result<Netns, Error> {
        let name = name.into();
        ip(&["netns", "add", &name], "add a network namespace")?;
        let ns = Netns {
            name,
            deleted: false,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"], "set lo up")?;
        Ok(ns)
    }

    /// Creates a namespace named `PREFIX-PID-N`: unique on the machine
    /// while this process runs, so parallel tests and runs never collide.
    pub fn unique(prefix: &str) -> Result<Netns, Error> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        Netns::create(format!("{prefix}-{}-{n}", std::process::id()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, what `nsenter --net`, `setns` and runc take.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `program` with this namespace's network and everything else of the
    /// caller's (mounts, /sys, cgroups).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Removes the namespace (and the links in it); idempotent.
    pub fn delete(&mut self) -> Result<(), Error> {
        if !self.deleted {
            ip(&["netns", "del", &self.name], "delete a network namespace")?;
            self.deleted = true;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.delete();
    }
}

/// One end of a veth link: its namespace, interface name and address with
/// prefix (`198.18.0.1/24`).
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub ns: &'a Netns,
    pub ifname: &'a str,
    pub addr: Ipv4Net,
}

/// Links two namespaces with a veth pair, each end addressed and up.
pub fn wire(a: End<'_>, b: End<'_>) -> Result<(), Error> {
    ip(
        &[
            "-n", &a.ns.name, "link", "add", a.ifname, "type", "veth", "peer", "name", b.ifname,
            "netns", &b.ns.name,
        ],
        "add a veth pair",
    )?;
    for end in [a, b] {
        let addr = end.addr.to_string();
        ip(
            &["-n", &end.ns.name, "addr", "add", &addr, "dev", end.ifname],
            "add an address",
        )?;
        ip(
            &["-n", &end.ns.name, "link", "set", end.ifname, "up"],
            "set a link up",
        )?;
    }
    Ok(())
}

/// A VPS host and the internet: `host` reaches `client` over one link,
/// `host`'s [`UPLINK`] to `client`'s `eth0`.
#[derive(Debug)]
pub struct Sandbox {
    pub host: Netns,
    pub client: Netns,
}

impl Sandbox {
    /// Namespaces `PREFIX-host-PID-N` and `PREFIX-client-PID-N` on
    /// [`HOST_ADDR`]/24 and [`CLIENT_ADDR`]/24.
    pub fn create(prefix: &str) -> Result<Sandbox, Error> {
        let net = |a: &str| Ipv4Net::new(a.parse().expect("a constant address"), 24);
        let host = net(HOST_ADDR).expect("a valid prefix length");
        let client = net(CLIENT_ADDR).expect("a valid prefix length");
        Sandbox::with_link(prefix, UPLINK, host, client)
    }

    /// As [`Sandbox::create`], with the host's interface and both
    /// addresses given.
    pub fn with_link(
        prefix: &str,
        host_if: &str,
        host_addr: Ipv4Net,
        client_addr: Ipv4Net,
    ) -> Result<Sandbox, Error> {
        let host = Netns::unique(&format!("{prefix}-host"))?;
        let client = Netns::unique(&format!("{prefix}-client"))?;
        wire(
            End {
                ns: &host,
                ifname: host_if,
                addr: host_addr,
            },
            End {
                ns: &client,
                ifname: "eth0",
                addr: client_addr,
            },
        )?;
        Ok(Sandbox { host, client })
    }

    /// Removes both namespaces, trying both; the first error is returned.
    pub fn delete(&mut self) -> Result<(), Error> {
        let client = self.client.delete();
        let host = self.host.delete();
        client.and(host)
    }
}

fn ip(args: &[&str], action: &'static str) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: "ip",
            package: "iproute2",
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Ip {
            action,
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_addresses_of_one_24() {
        let h: std::net::Ipv4Addr = HOST_ADDR.parse().unwrap();
        let c: std::net::Ipv4Addr = CLIENT_ADDR.parse().unwrap();
        let net = Ipv4Net::new(h, 24).unwrap().trunc();
        assert!(net.contains(&c) && h != c);
        // RFC 2544's range, never a real network.
        assert!("198.18.0.0/15".parse::<Ipv4Net>().unwrap().contains(&net));
    }
}
