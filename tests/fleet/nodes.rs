//! Fleet nodes as vpsctl runs them (root): each node a network namespace
//! of its own with its own state dir and an etcd member on its private
//! address; vpsctl enters only the node's network (nsenter --net).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{Etcd, Lan};

pub struct Node {
    pub name: String,
    netns: String,
    pub root: PathBuf,
    config: PathBuf,
}

impl Node {
    pub fn new(lan: &Lan, etcd: &Etcd, i: usize, dir: &Path) -> Node {
        Node::with_network(lan, etcd, i, dir, "subnet = \"172.18.0.0/16\"\n")
    }

    /// Node i with `network` as its `[network]` table (the fleet's range
    /// and egress lists); its proxy listens on every address.
    pub fn with_network(lan: &Lan, etcd: &Etcd, i: usize, dir: &Path, network: &str) -> Node {
        let name = format!("node{}", i + 1);
        let root = dir.join(&name);
        std::fs::create_dir_all(&root).unwrap();
        let ip = Lan::address(i);
        let config = root.join("sotolito.toml");
        std::fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = \"{0}/state\"\nrun_dir = \"{0}/run\"\nconfig_dir = \"{0}/etc\"\nsystemd_dir = \"{0}/systemd\"\n\
                 [runtime]\ncgroup_manager = \"cgroupfs\"\n\
                 [network]\n{network}\
                 [proxy]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\n{1}",
                root.display(),
                etcd.cluster_toml(&name, ip, Node::public_address(i)),
            ),
        )
        .unwrap();
        Node {
            name,
            netns: lan.netns_path(i),
            root,
            config,
        }
    }

    /// Node i's public address (where clients reach its DNAT ports).
    pub fn public_address(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, 1 + u8::try_from(i).expect("few nodes"))
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns))
            .arg(env!("CARGO_BIN_EXE_vpsctl"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} vpsctl {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_slice(&self.ok(&a).stdout).unwrap()
    }

    pub fn busybox_image(&self) {
        let rootfs = self.root.join("busybox-rootfs");
        sotolito_provisioner::busybox::busybox_rootfs(&rootfs).unwrap();
        self.ok(&["image", "import", "busybox", rootfs.to_str().unwrap()]);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers first (they hold mounts and cgroups), then mounts under
        // the node's root; the state dir goes with the temp dir.
        let runc_root = self.root.join("run/runc");
        let ids = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "-f", id])
                .output();
        }
        crate::common::remove_instance_cgroups(&self.root.join("state/tenants"));
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(&self.root))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = Command::new("umount").args(["-l", m]).output();
            }
        }
    }
}

fn provision(node: &Node, name: &str, port: u16, host: &str) -> std::process::Child {
    node.cmd(&[
        "provision",
        name,
        "--image",
        "busybox",
        "--ssh-port",
        &port.to_string(),
        "--host",
        host,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Both at the same moment; exactly one succeeds. Returns the loser's
/// index and its stderr.
fn race(a: (&Node, &str, u16, &str), b: (&Node, &str, u16, &str)) -> (usize, String) {
    let ca = provision(a.0, a.1, a.2, a.3);
    let cb = provision(b.0, b.1, b.2, b.3);
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    match (oa.status.success(), ob.status.success()) {
        (true, false) => (1, String::from_utf8_lossy(&ob.stderr).into_owned()),
        (false, true) => (0, String::from_utf8_lossy(&oa.stderr).into_owned()),
        _ => panic!(
            "exactly one must win:\n{}\n{}",
            String::from_utf8_lossy(&oa.stderr),
            String::from_utf8_lossy(&ob.stderr)
        ),
    }
}

fn names(list: &serde_json::Value) -> Vec<(String, String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["node"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn nodes_register_and_racing_provisions_have_one_winner() {
    crate::common::require_root_and_tools();
    let lan = Lan::new(3);
    let etcd = Etcd::in_lan(&lan);
    let dir = tempfile::tempdir().unwrap();
    let n1 = Node::new(&lan, &etcd, 0, dir.path());
    let n2 = Node::new(&lan, &etcd, 1, dir.path());
    let i1 = n1.json(&["init"]);
    let i2 = n2.json(&["init"]);
    let (s1, s2) = (
        i1["node"]["subnet"].as_str().unwrap(),
        i2["node"]["subnet"].as_str().unwrap(),
    );
    assert_ne!(s1, s2, "each node its own tenant subnet");
    // init again keeps the subnet.
    assert_eq!(n1.json(&["init"])["node"]["subnet"], i1["node"]["subnet"]);
    let nodes = n2.json(&["nodes"]);
    let listed: Vec<(&str, &str)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["subnet"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("node1", s1), ("node2", s2)]);
    n1.busybox_image();
    n2.busybox_image();

    // Same ssh port at the same moment, from two nodes.
    let (loser, err) = race((&n1, "pa", 2300, "pa.test"), (&n2, "pb", 2300, "pb.test"));
    let (winner_name, loser_name) = if loser == 0 {
        ("pb", "pa")
    } else {
        ("pa", "pb")
    };
    assert_eq!(
        err.trim(),
        format!("vpsctl: failed to provision tenant {loser_name}: ssh port 2300 is taken by tenant {winner_name} (pick another with --ssh-port)")
    );
    // Same name.
    let (loser, err) = race(
        (&n1, "same", 2301, "s1.test"),
        (&n2, "same", 2302, "s2.test"),
    );
    let winner_node = if loser == 0 { "node2" } else { "node1" };
    assert_eq!(
        err.trim(),
        format!("vpsctl: failed to provision tenant same: tenant same lives on node {winner_node} (manage it there, or pick another name)")
    );
    // Same host name.
    let (loser, err) = race((&n1, "ha", 2303, "h.test"), (&n2, "hb", 2304, "h.test"));
    let (hw, hl) = if loser == 0 {
        ("hb", "ha")
    } else {
        ("ha", "hb")
    };
    assert_eq!(
        err.trim(),
        format!("vpsctl: failed to provision tenant {hl}: host h.test is taken by tenant {hw} (a host routes to one tenant; remove it there first)")
    );

    // Nothing half-made: every node lists exactly the winners, each with
    // its node; the other node's as remote (down: no proxy holds a lease).
    let all = names(&n1.json(&["list"]));
    let mut want: Vec<&str> = vec![winner_name, "same", hw];
    want.sort();
    assert_eq!(
        all.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
        want,
        "{all:?}"
    );
    for (name, node, state) in &all {
        if node == "node1" {
            assert_eq!(state, "stopped", "{name}");
        } else {
            assert_eq!(
                state, "unreachable",
                "{name}: node2 runs no proxy, so it is down"
            );
        }
    }
    for n in [&n1, &n2] {
        let dirs: Vec<String> = std::fs::read_dir(n.root.join("state/tenants"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| !f.starts_with('.'))
            .collect();
        let mine: Vec<String> = all
            .iter()
            .filter(|t| t.1 == n.name)
            .map(|t| t.0.clone())
            .collect();
        let mut dirs = dirs;
        dirs.sort();
        assert_eq!(dirs, mine, "{}: no tenant dir of a loser is left", n.name);
    }
    // status names the node and where its ssh is reached.
    let st = n2.json(&["status", winner_name]);
    assert_eq!(
        st["node"].as_str(),
        Some(if winner_name == "pa" {
            "node1"
        } else {
            "node2"
        })
    );
    assert!(st["ssh"].as_str().unwrap().ends_with(":2300"), "{st}");
}
