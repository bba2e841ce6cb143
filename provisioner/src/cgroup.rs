//! A tenant's cgroups: its limits live on a cgroup the tenant cannot write
//! (`/PREFIX/NAME`, made and written by us before runc runs), and its
//! container runs in a child of it (`/PREFIX/NAME/tenant`), which is the
//! tenant's cgroup namespace root. Whatever the tenant writes at or below
//! its root, the kernel enforces the ancestor's limits on it.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sotolito_config::{Limits, SwapLimit, TenantName};

use crate::Error;

/// The container's cgroup, below the one holding the limits.
pub const CONTAINER_LEAF: &str = "tenant";

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchies {
    /// cgroup v1, alone or hybrid with a cgroup2 mount beside it.
    V1 {
        /// Mount point of each v1 controller (`memory`, `pids`, `cpu`, ...).
        controllers: BTreeMap<String, PathBuf>,
        /// Every hierarchy's mount point (named ones and cgroup2 included):
        /// runc makes the container's path in each, and each is cleaned.
        all: Vec<PathBuf>,
        /// The `name=systemd` hierarchy.
        systemd: Option<PathBuf>,
    },
    /// The unified hierarchy alone.
    V2 { root: PathBuf },
}

impl Hierarchies {
    /// What this host has mounted (from /proc/self/mountinfo).
    pub fn detect() -> Result<Hierarchies, Error> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(crate::io_err("read", path))?;
        Hierarchies::parse(&text).ok_or(Error::NoCgroups)
    }

    /// Parses mountinfo; None without a usable cgroup mount.
    pub fn parse(mountinfo: &str) -> Option<Hierarchies> {
        let mut controllers = BTreeMap::new();
        let mut all = Vec::new();
        let mut systemd = None;
        let mut unified = None;
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(root), Some(point), Some(fstype), Some(opts)) = (
                fields.get(3),
                fields.get(4),
                fields.get(dash + 1),
                fields.get(dash + 3),
            ) else {
                continue;
            };
            // A bind of a sub-cgroup is not the hierarchy's root.
            if *root != "/" {
                continue;
            }
            let point = PathBuf::from(*point);
            match *fstype {
                "cgroup2" if unified.is_none() => {
                    unified = Some(point.clone());
                    all.push(point);
                }
                "cgroup" => {
                    let mut named = false;
                    for opt in opts.split(',') {
                        if opt == "name=systemd" {
                            named = true;
                            systemd.get_or_insert_with(|| point.clone());
                        } else if let Some(c) = KNOWN_V1.iter().find(|c| **c == opt) {
                            named = true;
                            controllers.entry(c.to_string()).or_insert(point.clone());
                        }
                    }
                    if named && !all.contains(&point) {
                        all.push(point);
                    }
                }
                _ => {}
            }
        }
        if controllers.contains_key("memory") {
            Some(Hierarchies::V1 {
                controllers,
                all,
                systemd,
            })
        } else {
            unified.map(|root| Hierarchies::V2 { root })
        }
    }
}

const KNOWN_V1: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
];

/// One write into a cgroup file of the limit-holding cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWrite {
    /// v1 controller whose hierarchy holds the file; "" on v2.
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

/// The writes that set `limits` with `swap` beyond memory, in an order the
/// kernel accepts. `swap_files`: the kernel accounts swap (v1
/// `memory.memsw.*`, v2 `memory.swap.max`). `raising_memory`: the new
/// memory limit is above the current one (v1 requires memsw >= memory at
/// every step, so memsw moves first when raising, last when lowering).
pub fn plan_writes(
    v2: bool,
    limits: &Limits,
    swap: SwapLimit,
    swap_files: bool,
    raising_memory: bool,
) -> Vec<LimitWrite> {
    let w = |controller, file, value: String| LimitWrite {
        controller,
        file,
        value,
    };
    let memory = limits.memory.bytes();
    let mut out = Vec::new();
    if v2 {
        out.push(w("", "memory.max", memory.to_string()));
        if swap_files {
            let v = match swap {
                SwapLimit::Unlimited => "max".to_owned(),
                SwapLimit::Bytes(b) => b.to_string(),
            };
            out.push(w("", "memory.swap.max", v));
        }
        out.push(w("", "pids.max", limits.pids.to_string()));
        out.push(w("", "cpu.weight", limits.cpu_weight.get().to_string()));
        return out;
    }
    let mem = w("memory", "memory.limit_in_bytes", memory.to_string());
    if swap_files {
        let memsw = match swap {
            SwapLimit::Unlimited => "-1".to_owned(),
            SwapLimit::Bytes(b) => memory.saturating_add(b).to_string(),
        };
        let memsw = w("memory", "memory.memsw.limit_in_bytes", memsw);
        if raising_memory {
            out.extend([memsw, mem]);
        } else {
            out.extend([mem, memsw]);
        }
    } else {
        out.push(mem);
    }
    out.push(w("pids", "pids.max", limits.pids.to_string()));
    out.push(w(
        "cpu",
        "cpu.shares",
        limits.cpu_weight.cpu_shares().to_string(),
    ));
    out
}

/// The properties of the tenant's slice under the systemd driver.
pub fn systemd_properties(limits: &Limits, swap: SwapLimit) -> Vec<String> {
    vec![
        format!("MemoryMax={}", limits.memory.bytes()),
        format!(
            "MemorySwapMax={}",
            match swap {
                SwapLimit::Unlimited => "infinity".to_owned(),
                SwapLimit::Bytes(b) => b.to_string(),
            }
        ),
        format!("TasksMax={}", limits.pids),
        format!("CPUWeight={}", limits.cpu_weight.get()),
    ]
}

/// A unit name component as systemd escapes it: its `-` means nesting.
fn systemd_escape(s: &str) -> String {
    s.replace('-', "\\x2d")
}

/// What the container's spec needs of its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// runc's cgroupsPath.
    pub path: String,
    /// cgroup v1: the host dir of the container's own `name=systemd`
    /// cgroup, bound read-write over the tenant's /sys/fs/cgroup/systemd
    /// while every controller stays read-only. None on v2, where the
    /// tenant's cgroup2 mount shows only its own (delegated) subtree.
    pub systemd_bind: Option<PathBuf>,
    /// systemd driver: the unit that must stop before the container's
    /// scope does (its `Before=`). At a host's shutdown systemd stops every
    /// unit at once; unordered, the scope's stop SIGTERMs every process of
    /// the tenant, its systemd re-executes on that, and the tenant's stop
    /// signal, sent a moment later by the unit, hits a PID 1 without
    /// handlers and is lost (the tenant is killed after the timeout).
    pub stop_first: Option<String>,
}

/// One tenant's cgroups under one driver.
#[derive(Debug, Clone)]
pub struct TenantCgroup {
    pub hierarchies: Hierarchies,
    /// The instance's prefix (see [`crate::bundle::cgroup_prefix`]).
    pub prefix: String,
    pub name: TenantName,
    /// runc's systemd driver: the limits are a slice's properties.
    pub systemd: bool,
}

impl TenantCgroup {
    /// The limit-holding cgroup's path below each hierarchy's root.
    pub fn relative(&self) -> PathBuf {
        if self.systemd {
            // sotolito-x.slice nests in sotolito.slice: systemd's own rule.
            let slice = self.slice();
            let stem = slice.trim_end_matches(".slice");
            let mut path = PathBuf::new();
            let parts: Vec<&str> = stem.split('-').collect();
            for i in 1..=parts.len() {
                path.push(format!("{}.slice", parts[..i].join("-")));
            }
            path
        } else {
            PathBuf::from(&self.prefix).join(self.name.as_str())
        }
    }

    /// The slice holding the limits under the systemd driver.
    pub fn slice(&self) -> String {
        format!(
            "{}-{}.slice",
            self.prefix,
            systemd_escape(self.name.as_str())
        )
    }

    /// The container's cgroup below each hierarchy's root.
    fn container_relative(&self) -> PathBuf {
        if self.systemd {
            self.relative()
                .join(format!("{}-{}.scope", self.prefix, self.name))
        } else {
            self.relative().join(CONTAINER_LEAF)
        }
    }

    pub fn container(&self) -> ContainerCgroup {
        let path = if self.systemd {
            format!("{}:{}:{}", self.slice(), self.prefix, self.name)
        } else {
            format!("/{}", self.container_relative().display())
        };
        let systemd_bind = match &self.hierarchies {
            Hierarchies::V1 {
                systemd: Some(dir), ..
            } => Some(dir.join(self.container_relative())),
            _ => None,
        };
        ContainerCgroup {
            path,
            systemd_bind,
            stop_first: self.systemd.then(|| crate::units::instance(&self.name)),
        }
    }

    /// The limit-holding cgroup's dir in `controller`'s hierarchy (v1) or
    /// in the unified one (v2).
    pub fn limit_dir(&self, controller: &str) -> Option<PathBuf> {
        match &self.hierarchies {
            Hierarchies::V1 { controllers, .. } => {
                controllers.get(controller).map(|m| m.join(self.relative()))
            }
            Hierarchies::V2 { root } => Some(root.join(self.relative())),
        }
    }

    fn v2(&self) -> bool {
        matches!(self.hierarchies, Hierarchies::V2 { .. })
    }

    /// Makes the limit-holding cgroup and writes `limits` to it: before the
    /// container exists, or live while it runs. On a failed write the ones
    /// already made are undone, so nothing changes.
    pub fn apply(&self, limits: &Limits, swap: SwapLimit) -> Result<(), Error> {
        if self.systemd {
            return self.apply_systemd(limits, swap);
        }
        let memory_dir = self.limit_dir("memory").ok_or(Error::NoCgroups)?;
        if let Hierarchies::V2 { root } = &self.hierarchies {
            // Each ancestor hands the controllers down to its children.
            let mut dir = root.clone();
            for part in self.relative().components() {
                write_file(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
                dir.push(part);
                mkdir(&dir)?;
            }
        } else {
            for c in ["memory", "pids", "cpu"] {
                mkdir(&self.limit_dir(c).ok_or(Error::NoCgroups)?)?;
            }
        }
        let swap_file = if self.v2() {
            "memory.swap.max"
        } else {
            "memory.memsw.limit_in_bytes"
        };
        let swap_files = memory_dir.join(swap_file).exists();
        if !swap_files && swap != SwapLimit::Unlimited && host_has_swap() {
            return Err(Error::SwapUnaccounted {
                tenant: self.name.to_string(),
            });
        }
        let mem_file = memory_dir.join(if self.v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        });
        let current = read_number(&mem_file).unwrap_or(u64::MAX);
        let raising = limits.memory.bytes() > current;
        let plan = plan_writes(self.v2(), limits, swap, swap_files, raising);
        let mut done: Vec<(PathBuf, String)> = Vec::new();
        for w in &plan {
            let dir = self.limit_dir(if self.v2() { "" } else { w.controller });
            let path = dir.ok_or(Error::NoCgroups)?.join(w.file);
            let old = fs::read_to_string(&path)
                .map_err(crate::io_err("read", &path))?
                .trim()
                .to_owned();
            if let Err(e) = write_file(&path, &w.value) {
                for (p, v) in done.iter().rev() {
                    if let Err(e) = write_file(p, v) {
                        tracing::warn!(path = %p.display(), error = %e, "cannot restore");
                    }
                }
                return Err(match e {
                    Error::Io { source, .. }
                        if source.raw_os_error() == Some(16) && w.file.starts_with("memory") =>
                    {
                        Error::MemoryInUse {
                            tenant: self.name.to_string(),
                            memory: limits.memory.to_string(),
                        }
                    }
                    e => e,
                });
            }
            done.push((path, old));
        }
        Ok(())
    }

    fn apply_systemd(&self, limits: &Limits, swap: SwapLimit) -> Result<(), Error> {
        let slice = self.slice();
        let out = Command::new("systemctl")
            .args(["set-property", "--runtime", &slice])
            .args(systemd_properties(limits, swap))
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: "systemctl".into(),
                package: "systemd",
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                program: "systemctl".into(),
                action: format!("set-property {slice}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Removes the limit-holding cgroup (and anything left below it) from
    /// every hierarchy, after runc deleted the container; gone is fine.
    /// Goes on past failures and reports them all.
    pub fn teardown(&self) -> Result<(), Error> {
        if self.systemd {
            // A slice without units goes away when stopped.
            let _ = Command::new("systemctl")
                .args(["stop", &self.slice()])
                .stdin(Stdio::null())
                .output();
            return Ok(());
        }
        let roots: Vec<PathBuf> = match &self.hierarchies {
            Hierarchies::V1 { all, .. } => all.clone(),
            Hierarchies::V2 { root } => vec![root.clone()],
        };
        let mut failed = Vec::new();
        for root in roots {
            let dir = root.join(self.relative());
            if let Err(e) = remove_tree(&dir) {
                failed.push(format!("{}: {e}", dir.display()));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::CgroupBusy {
                tenant: self.name.to_string(),
                dirs: failed.join("; "),
            })
        }
    }
}

/// rmdir of a cgroup dir and its sub-cgroups, deepest first (cgroupfs
/// removes a dir with its control files; only empty cgroups go).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        r => r?,
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn mkdir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(crate::io_err("create", dir))
}

fn write_file(path: &Path, value: &str) -> Result<(), Error> {
    fs::write(path, value).map_err(crate::io_err("write", path))
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True when swap is on (/proc/swaps lists a device or file).
fn host_has_swap() -> bool {
    fs::read_to_string("/proc/swaps").is_ok_and(|t| t.lines().count() > 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sotolito_config::{CpuWeight, MemorySize};

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
29 26 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
30 26 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
31 26 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,pids
40 30 0:28 /sotolito/x /srv/elsewhere rw - cgroup cgroup rw,memory
";

    fn tenant(systemd: bool, h: Hierarchies) -> TenantCgroup {
        TenantCgroup {
            hierarchies: h,
            prefix: "sotolito".into(),
            name: TenantName::new("web-1").unwrap(),
            systemd,
        }
    }

    fn limits() -> Limits {
        Limits {
            memory: MemorySize::new("512M").unwrap(),
            cpu_weight: CpuWeight::new(200).unwrap(),
            pids: sotolito_config::Pids::new(100).unwrap(),
            swap: None,
            connections: None,
        }
    }

    #[test]
    fn finds_the_hierarchies() {
        let h = Hierarchies::parse(HYBRID).unwrap();
        let Hierarchies::V1 {
            controllers,
            all,
            systemd,
        } = &h
        else {
            panic!("{h:?}")
        };
        assert_eq!(controllers["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            controllers["cpuacct"],
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(controllers["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            systemd.as_deref(),
            Some(Path::new("/sys/fs/cgroup/systemd"))
        );
        assert_eq!(all.len(), 5, "{all:?}");
        let v2 = "30 26 0:28 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Hierarchies::parse(v2),
            Some(Hierarchies::V2 {
                root: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(
            Hierarchies::parse("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn the_container_is_a_child_of_the_limits() {
        let t = tenant(false, Hierarchies::parse(HYBRID).unwrap());
        assert_eq!(
            t.limit_dir("pids").unwrap(),
            Path::new("/sys/fs/cgroup/pids/sotolito/web-1")
        );
        let c = t.container();
        assert_eq!(c.path, "/sotolito/web-1/tenant");
        assert_eq!(
            c.systemd_bind.as_deref(),
            Some(Path::new("/sys/fs/cgroup/systemd/sotolito/web-1/tenant"))
        );
        let v2 = tenant(
            false,
            Hierarchies::V2 {
                root: "/sys/fs/cgroup".into(),
            },
        );
        assert_eq!(v2.container().systemd_bind, None);
        assert_eq!(c.stop_first, None);
        assert_eq!(
            v2.limit_dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/sotolito/web-1")
        );
    }

    #[test]
    fn systemd_driver_uses_a_slice_per_tenant() {
        let t = tenant(true, Hierarchies::parse(HYBRID).unwrap());
        assert_eq!(t.slice(), "sotolito-web\\x2d1.slice");
        assert_eq!(
            t.relative(),
            Path::new("sotolito.slice/sotolito-web\\x2d1.slice")
        );
        let c = t.container();
        assert_eq!(c.path, "sotolito-web\\x2d1.slice:sotolito:web-1");
        assert_eq!(c.stop_first.as_deref(), Some("sotolito-vps@web-1.service"));
        assert_eq!(
            c.systemd_bind.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/systemd/sotolito.slice/sotolito-web\\x2d1.slice/sotolito-web-1.scope"
            ))
        );
        assert_eq!(
            systemd_properties(&limits(), SwapLimit::NONE),
            [
                "MemoryMax=536870912",
                "MemorySwapMax=0",
                "TasksMax=100",
                "CPUWeight=200"
            ]
        );
    }

    #[test]
    fn v1_writes_keep_memsw_above_memory() {
        let files = |p: Vec<LimitWrite>| {
            p.iter()
                .map(|w| format!("{}={}", w.file, w.value))
                .collect::<Vec<_>>()
        };
        let m = 512u64 << 20;
        assert_eq!(
            files(plan_writes(false, &limits(), SwapLimit::NONE, true, false)),
            [
                format!("memory.limit_in_bytes={m}"),
                format!("memory.memsw.limit_in_bytes={m}"),
                "pids.max=100".into(),
                "cpu.shares=2048".into(),
            ]
        );
        let raised = plan_writes(false, &limits(), SwapLimit::Bytes(1 << 20), true, true);
        assert_eq!(raised[0].file, "memory.memsw.limit_in_bytes");
        assert_eq!(raised[0].value, (m + (1 << 20)).to_string());
        assert_eq!(raised[1].file, "memory.limit_in_bytes");
        let unlimited = plan_writes(false, &limits(), SwapLimit::Unlimited, true, false);
        assert_eq!(unlimited[1].value, "-1");
        // No swap accounting: memory alone.
        assert_eq!(
            plan_writes(false, &limits(), SwapLimit::NONE, false, false).len(),
            3
        );
        assert_eq!(
            files(plan_writes(true, &limits(), SwapLimit::NONE, true, false)),
            [
                format!("memory.max={m}"),
                "memory.swap.max=0".into(),
                "pids.max=100".into(),
                "cpu.weight=200".into(),
            ]
        );
    }
}
