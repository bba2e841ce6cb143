//! The OCI bundle of a tenant: where its files live on the host and the
//! config.json that runc boots it from (a pure [`render_spec`]).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, HookBuilder, HooksBuilder, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use sotolito_config::{Tenant, TenantName};

use crate::cgroup::ContainerCgroup;
use crate::{io_err, Error};

/// The data dirs bound over the shared image, as in the original design.
pub const DATA_DIRS: [&str; 4] = ["etc", "var", "home", "root"];

/// Where one tenant's files live: STATE_DIR/tenants/NAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLayout {
    pub dir: PathBuf,
}

impl TenantLayout {
    pub fn new(tenants_dir: &Path, name: &TenantName) -> TenantLayout {
        TenantLayout {
            dir: tenants_dir.join(name.as_str()),
        }
    }
    /// The bundle dir runc is pointed at.
    pub fn bundle(&self) -> &Path {
        &self.dir
    }
    pub fn config_json(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// The overlay's merged dir: the container's root.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    /// Everything that is the tenant's: kept unless purged.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn upper(&self) -> PathBuf {
        self.data().join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.data().join("work")
    }
    /// The tenant's disk image, mounted on `data` (absent: no quota).
    pub fn disk_image(&self) -> PathBuf {
        self.dir.join("disk.img")
    }
    /// Where the idmapped view of the image is mounted while the overlay
    /// is being mounted (empty otherwise).
    pub fn image_view(&self) -> PathBuf {
        self.dir.join("image")
    }
    /// The container's console (stdout and stderr of its init).
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// How the runc hooks call back into vpsctl: runc passes no environment,
/// so the absolute binary and the instance's config are embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCommand {
    pub vpsctl: PathBuf,
    pub config: PathBuf,
    /// `--state-dir`, when the instance's state dir came from a flag or the
    /// environment rather than the config file.
    pub state_dir: Option<PathBuf>,
}

impl HookCommand {
    fn args(&self, verb: &str, name: &TenantName) -> Vec<String> {
        let mut a = vec![
            "vpsctl".into(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        if let Some(dir) = &self.state_dir {
            a.extend(["--state-dir".into(), dir.display().to_string()]);
        }
        a.extend([String::from("net"), verb.into(), name.to_string()]);
        a
    }
}

/// `sotolito` for the default tenants dir, else `sotolito-HASH` of it: two
/// instances on one host (the demo or tests beside a real install) must
/// never share a tenant's cgroup, or deleting one would kill the other.
pub fn cgroup_prefix(tenants_dir: &Path) -> String {
    if tenants_dir == Path::new("/var/lib/sotolito/tenants") {
        return "sotolito".to_owned();
    }
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let hash = tenants_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("sotolito-{:08x}", hash as u32)
}

/// Docker's default capability set: systemd and sshd boot with it and
/// without CAP_SYS_ADMIN (docs/facts.md "systemd inside runc").
pub fn default_capabilities() -> HashSet<Capability> {
    use Capability::*;
    [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, Error> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The config.json of `tenant`: overlay root, rw binds of its data dirs,
/// /sbin/init as PID 1 in `cgroup` (a child of the cgroup holding its
/// limits, which the spec does not set), net hooks.
pub fn render_spec(
    tenant: &Tenant,
    layout: &TenantLayout,
    hooks: Option<&HookCommand>,
    cgroup: &ContainerCgroup,
) -> Result<Spec, Error> {
    let caps = default_capabilities();
    let seccomp = crate::seccomp::render_seccomp(&caps, tenant.nesting)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(vec!["/sbin/init".to_owned()])
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            "TERM=xterm".to_owned(),
            "container=oci".to_owned(),
        ])
        .cwd("/")
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()?,
        )
        // No rlimits: the container inherits the host's (a fixed NOFILE
        // above the host's hard limit makes runc create fail).
        .no_new_privileges(false)
        .build()?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &[])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        // In the cgroup namespace each hierarchy shows the container's own
        // cgroup as its root. cgroup v1: every controller read-only (the
        // limits sit on the parent anyway), the name=systemd one made
        // writable below; v2: the tenant's delegated subtree, writable.
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                if cgroup.systemd_bind.is_some() {
                    "ro"
                } else {
                    "rw"
                },
            ],
        )?,
        mount("/run", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=755"])?,
        mount(
            "/run/lock",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "noexec"],
        )?,
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"])?,
    ];
    if let Some(dir) = &cgroup.systemd_bind {
        // systemd needs its own hierarchy writable: the
        // container's own name=systemd cgroup, which runc has made by the
        // time it mounts, and nothing above it.
        let after = mounts
            .iter()
            .position(|m| m.destination() == Path::new("/sys/fs/cgroup"))
            .map_or(mounts.len(), |i| i + 1);
        mounts.insert(
            after,
            mount(
                "/sys/fs/cgroup/systemd",
                "bind",
                &dir.display().to_string(),
                &["rbind", "nosuid", "noexec", "nodev", "rw"],
            )?,
        );
    }
    for d in DATA_DIRS {
        let src = layout.data().join(d);
        mounts.push(mount(
            &format!("/{d}"),
            "bind",
            &src.display().to_string(),
            &["rbind", "rw"],
        )?);
    }

    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
        // runc creates it; the createRuntime hook plugs the veth in.
        ns(LinuxNamespaceType::Network)?,
        ns(LinuxNamespaceType::Cgroup)?,
    ];
    let mut id_mappings = Vec::new();
    if let Some(map) = &tenant.idmap {
        // Tenant root is host id map.host_id: an unprivileged host user.
        namespaces.push(ns(LinuxNamespaceType::User)?);
        id_mappings.push(
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(map.host_id)
                .size(map.size)
                .build()?,
        );
    }
    // Only the device rules: memory, pids and CPU live on the parent
    // cgroup (crate::cgroup), out of the tenant's reach.
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?])
        .build()?;
    let mut linux = LinuxBuilder::default()
        .resources(resources)
        .cgroups_path(&cgroup.path)
        .namespaces(namespaces)
        .seccomp(seccomp)
        .masked_paths(
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ]
            .map(String::from)
            .to_vec(),
        )
        .readonly_paths(
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec(),
        )
        .build()?;
    if !id_mappings.is_empty() {
        linux.set_uid_mappings(Some(id_mappings.clone()));
        linux.set_gid_mappings(Some(id_mappings));
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path(layout.rootfs())
                .readonly(false)
                .build()?,
        )
        .hostname(tenant.name.to_string())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?;
    if let Some(unit) = &cgroup.stop_first {
        // runc passes `org.systemd.property.*` to the scope it creates, as
        // GVariant text (an array of unit names here).
        spec.set_annotations(Some(
            [(
                "org.systemd.property.Before".to_owned(),
                format!("['{unit}']"),
            )]
            .into(),
        ));
    }
    if let Some(h) = hooks {
        let hook = |verb| {
            HookBuilder::default()
                .path(&h.vpsctl)
                .args(h.args(verb, &tenant.name))
                .timeout(30i64)
                .build()
        };
        spec.set_hooks(Some(
            HooksBuilder::default()
                .create_runtime(vec![hook("attach")?])
                .poststop(vec![hook("detach")?])
                .build()?,
        ));
    }
    Ok(spec)
}

/// The spec as JSON, byte-identical for equal specs: oci-spec keeps
/// capabilities in a HashSet, whose order changes from run to run.
pub fn spec_json(spec: &Spec) -> Vec<u8> {
    let mut v = serde_json::to_value(spec).expect("a spec always serializes");
    if let Some(caps) = v
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in caps.values_mut() {
            if let Some(a) = set.as_array_mut() {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    let mut text = serde_json::to_vec_pretty(&v).expect("JSON always serializes");
    text.push(b'\n');
    text
}

/// Writes config.json atomically (it is derived state: rewritten freely).
pub fn write_spec(layout: &TenantLayout, spec: &Spec) -> Result<(), Error> {
    fs::create_dir_all(&layout.dir).map_err(io_err("create", &layout.dir))?;
    let text = spec_json(spec);
    let path = layout.config_json();
    if fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    Ok(sotolito_config::atomic::write(&path, &text, 0o644)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;
    use sotolito_config::{ImageName, SshPort};

    fn tenant() -> Tenant {
        Tenant::new(
            TenantName::new("acme").unwrap(),
            ImageName::new("debian").unwrap(),
            "172.18.0.2".parse().unwrap(),
            SshPort::new(2201).unwrap(),
            sotolito_config::HostConfig::default().defaults.limits(),
        )
    }

    #[test]
    fn instances_never_share_a_cgroup() {
        assert_eq!(
            cgroup_prefix(Path::new("/var/lib/sotolito/tenants")),
            "sotolito"
        );
        let a = cgroup_prefix(Path::new("/tmp/a/state/tenants"));
        let b = cgroup_prefix(Path::new("/tmp/b/state/tenants"));
        assert!(a.starts_with("sotolito-") && b.starts_with("sotolito-"));
        assert_ne!(a, b);
    }

    /// cgroup v1, as on a hybrid host.
    fn cgroup() -> ContainerCgroup {
        ContainerCgroup {
            path: "/sotolito/acme/tenant".into(),
            systemd_bind: Some("/sys/fs/cgroup/systemd/sotolito/acme/tenant".into()),
            stop_first: None,
        }
    }

    fn rendered_in(hooks: Option<&HookCommand>, cgroup: &ContainerCgroup) -> Value {
        let layout = TenantLayout::new(
            Path::new("/state/tenants"),
            &TenantName::new("acme").unwrap(),
        );
        serde_json::to_value(render_spec(&tenant(), &layout, hooks, cgroup).unwrap()).unwrap()
    }

    fn rendered(hooks: Option<&HookCommand>) -> Value {
        rendered_in(hooks, &cgroup())
    }

    #[test]
    fn cgroup_controllers_read_only_systemd_writable() {
        let s = rendered(None);
        let mounts = s["mounts"].as_array().unwrap();
        let at = |d: &str| mounts.iter().position(|m| m["destination"] == d).unwrap();
        let cg = &mounts[at("/sys/fs/cgroup")];
        assert!(cg["options"].as_array().unwrap().contains(&"ro".into()));
        let sd = &mounts[at("/sys/fs/cgroup/systemd")];
        assert_eq!(at("/sys/fs/cgroup/systemd"), at("/sys/fs/cgroup") + 1);
        assert_eq!(sd["source"], "/sys/fs/cgroup/systemd/sotolito/acme/tenant");
        assert!(sd["options"].as_array().unwrap().contains(&"rw".into()));
        assert_eq!(s["linux"]["cgroupsPath"], "/sotolito/acme/tenant");
        // The limits are not the container's to hold.
        let r = &s["linux"]["resources"];
        assert!(r.get("memory").is_none() && r.get("pids").is_none() && r.get("cpu").is_none());
        assert_eq!(r["devices"][0]["allow"], false);
        // v2: the tenant's delegated subtree, writable, nothing bound.
        let v2 = rendered_in(
            None,
            &ContainerCgroup {
                path: "/sotolito/acme/tenant".into(),
                systemd_bind: None,
                stop_first: None,
            },
        );
        let mounts = v2["mounts"].as_array().unwrap();
        assert!(!mounts
            .iter()
            .any(|m| m["destination"] == "/sys/fs/cgroup/systemd"));
        let cg = mounts
            .iter()
            .find(|m| m["destination"] == "/sys/fs/cgroup")
            .unwrap();
        assert!(cg["options"].as_array().unwrap().contains(&"rw".into()));
        assert!(v2
            .pointer("/annotations/org.systemd.property.Before")
            .is_none());
    }

    #[test]
    fn systemd_scope_stops_after_the_tenant_unit() {
        let s = rendered_in(
            None,
            &ContainerCgroup {
                path: "sotolito-acme.slice:sotolito:acme".into(),
                systemd_bind: None,
                stop_first: Some("sotolito-vps@acme.service".into()),
            },
        );
        assert_eq!(
            s["annotations"]["org.systemd.property.Before"],
            "['sotolito-vps@acme.service']"
        );
    }

    #[test]
    fn boots_init_on_the_overlay_with_data_binds() {
        let s = rendered(None);
        assert_eq!(s["root"]["path"], "/state/tenants/acme/rootfs");
        assert_eq!(s["hostname"], "acme");
        assert_eq!(s["process"]["args"], serde_json::json!(["/sbin/init"]));
        assert_eq!(s["process"]["terminal"], false);
        assert_eq!(s["process"]["noNewPrivileges"], false);
        assert!(s["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&"container=oci".into()));
        let mounts = s["mounts"].as_array().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == d)
                .cloned()
                .unwrap_or_else(|| panic!("no {d}"))
        };
        for d in DATA_DIRS {
            let m = find(&format!("/{d}"));
            assert_eq!(m["source"], format!("/state/tenants/acme/data/{d}"));
            assert_eq!(m["options"], serde_json::json!(["rbind", "rw"]));
        }
        for d in ["/run", "/run/lock", "/tmp"] {
            assert_eq!(find(d)["type"], "tmpfs");
        }
        assert!(s.get("hooks").is_none());
    }

    #[test]
    fn a_user_namespace_maps_root_to_the_tenants_range() {
        let mut t = tenant();
        t.idmap = Some(sotolito_config::Idmap {
            host_id: 1_065_536,
            size: 65536,
            isolated: true,
        });
        let layout = TenantLayout::new(Path::new("/s"), &TenantName::new("acme").unwrap());
        let s = serde_json::to_value(render_spec(&t, &layout, None, &cgroup()).unwrap()).unwrap();
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "user" && n.get("path").is_none()));
        let want = serde_json::json!([{"containerID": 0, "hostID": 1_065_536, "size": 65536}]);
        assert_eq!(s["linux"]["uidMappings"], want);
        assert_eq!(s["linux"]["gidMappings"], want);
    }

    #[test]
    fn json_is_stable() {
        let layout = TenantLayout::new(Path::new("/s"), &TenantName::new("acme").unwrap());
        let a = spec_json(&render_spec(&tenant(), &layout, None, &cgroup()).unwrap());
        for _ in 0..5 {
            assert_eq!(
                spec_json(&render_spec(&tenant(), &layout, None, &cgroup()).unwrap()),
                a
            );
        }
    }

    #[test]
    fn docker_capabilities_without_sys_admin() {
        let s = rendered(None);
        let bounding: Vec<&str> = s["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(bounding.len(), 14);
        assert!(bounding.contains(&"CAP_NET_BIND_SERVICE"));
        assert!(!bounding.contains(&"CAP_SYS_ADMIN"));
    }

    #[test]
    fn seccomp_on_by_default_and_lifted_by_nesting() {
        let s = rendered(None);
        let sc = &s["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            sc["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let rule_of = |spec: &Value, name: &str| {
            spec["linux"]["seccomp"]["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["names"].as_array().unwrap().contains(&name.into()))
                .cloned()
                .unwrap_or_else(|| panic!("no rule for {name}"))
        };
        assert_eq!(rule_of(&s, "unshare")["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rule_of(&s, "keyctl")["errnoRet"], 38);
        let layout = TenantLayout::new(
            Path::new("/state/tenants"),
            &TenantName::new("acme").unwrap(),
        );
        let nested = Tenant {
            nesting: true,
            ..tenant()
        };
        let n =
            serde_json::to_value(render_spec(&nested, &layout, None, &cgroup()).unwrap()).unwrap();
        assert_eq!(rule_of(&n, "unshare")["action"], "SCMP_ACT_ALLOW");
        assert_eq!(rule_of(&n, "keyctl")["errnoRet"], 38);
    }

    #[test]
    fn namespaces_and_hooks() {
        let h = HookCommand {
            vpsctl: "/usr/bin/vpsctl".into(),
            config: "/etc/sotolito/sotolito.toml".into(),
            state_dir: None,
        };
        let with_state = HookCommand {
            state_dir: Some("/srv/sotolito".into()),
            ..h.clone()
        };
        assert_eq!(
            with_state.args("attach", &TenantName::new("acme").unwrap())[1..6],
            [
                "--config",
                "/etc/sotolito/sotolito.toml",
                "--state-dir",
                "/srv/sotolito",
                "net"
            ]
        );
        let s = rendered(Some(&h));
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network", "cgroup"]);
        assert!(s["linux"]["namespaces"][4].get("path").is_none());
        assert!(s["linux"].get("uidMappings").is_none());
        let attach = &s["hooks"]["createRuntime"][0];
        assert_eq!(attach["path"], "/usr/bin/vpsctl");
        assert_eq!(
            attach["args"],
            serde_json::json!([
                "vpsctl",
                "--config",
                "/etc/sotolito/sotolito.toml",
                "net",
                "attach",
                "acme"
            ])
        );
        assert_eq!(s["hooks"]["poststop"][0]["args"][4], "detach");
    }
}
