//! The seccomp filter a tenant runs under: Docker's default profile (found
//! at build time by `build.rs`: Debian's golang-github-docker-docker-dev
//! ships Docker's own file) resolved for our capability set on x86_64,
//! plus sotolito's own rules: no
//! new user or network namespaces, no io_uring, no kernel keyring.
//!
//! Both steps are pure ([`resolve`], [`apply_rules`]) and unit-tested;
//! [`render_seccomp`] chains them for `bundle::render_spec`.

use std::collections::{BTreeSet, HashSet};

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use crate::Error;

/// Docker's `profiles/seccomp/default.json`, byte for byte (see build.rs).
const DOCKER_DEFAULT: &str = include_str!(concat!(env!("OUT_DIR"), "/docker-default.json"));

/// The oldest kernel sotolito runs on (Debian 12's 6.1). A rule's
/// `minKernel` is judged against it, not against the kernel that happens to
/// run at provision time: config.json must not change with a host's kernel,
/// and an allow list errs on the side of allowing less.
pub const KERNEL_FLOOR: (u32, u32) = (6, 1);

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Every namespace flag `clone` can take (Docker's mask: NEWNS, NEWCGROUP,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// io_uring: a large kernel surface with a long record of local privilege
/// escalations; refused as the kernel's own `io_uring_disabled` refuses it.
pub const IO_URING: [&str; 3] = ["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// The kernel keyring is not namespaced: host root and every tenant share
/// it. ENOSYS, not EPERM, so that systemd and runc take their no-keyring
/// path (as under Incus) instead of failing.
pub const KEYRING: [&str; 3] = ["keyctl", "add_key", "request_key"];

/// What `--nesting` allows beyond the default: creating and entering
/// namespaces, and the mount calls that only work inside a user namespace
/// the tenant made (the kernel still checks capabilities there).
pub const NESTING: [&str; 16] = [
    "clone3",
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "sethostname",
    "setdomainname",
];

/// Docker's profile format (`profiles/seccomp/seccomp.go`): unknown fields
/// are refused so that a newer profile cannot be half-understood.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ArchMap {
    architecture: Arch,
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    /// Docker's older profiles write `"args": null` for "no conditions".
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    #[allow(dead_code)]
    comment: String,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

/// A rule's condition: capabilities in the bounding set, libseccomp's
/// architecture names (`amd64`, `x86`, ...), a minimum kernel.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

/// What a profile is resolved for.
#[derive(Debug, Clone)]
pub struct Target {
    /// libseccomp's name of the native architecture (`amd64` on x86_64).
    pub arch: &'static str,
    /// The same architecture as the archMap names it.
    pub seccomp_arch: Arch,
    /// The bounding set, as `CAP_...` names.
    pub caps: BTreeSet<String>,
    pub kernel: (u32, u32),
}

impl Target {
    /// x86_64 with `caps`, judged against [`KERNEL_FLOOR`].
    pub fn x86_64(caps: &HashSet<Capability>) -> Target {
        Target {
            arch: "amd64",
            seccomp_arch: Arch::ScmpArchX86_64,
            caps: caps.iter().map(|c| cap_name(*c)).collect(),
            kernel: KERNEL_FLOOR,
        }
    }
}

fn cap_name(c: Capability) -> String {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("CAP_{c}"),
    }
}

/// Docker's default profile, parsed.
pub fn docker_default() -> Result<Profile, Error> {
    serde_json::from_str(DOCKER_DEFAULT)
        .map_err(|e| Error::Seccomp(format!("Docker's default profile: {e}")))
}

fn parse_kernel(v: &str) -> Result<(u32, u32), Error> {
    let bad = || Error::Seccomp(format!("minKernel {v:?} is not MAJOR.MINOR"));
    let (major, minor) = v.split_once('.').ok_or_else(bad)?;
    let minor = minor.split(['.', '-']).next().unwrap_or(minor);
    Ok((
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    ))
}

/// Whether a rule applies to `target`, with Docker's semantics
/// (`setupSeccomp` in moby's `profiles/seccomp/seccomp_linux.go`): any
/// excluded arch or capability present, or a kernel at or above an excluded
/// minimum, drops it; every included arch list, capability and minimum
/// kernel must hold.
fn applies(rule: &Rule, target: &Target) -> Result<bool, Error> {
    let ex = &rule.excludes;
    if ex.arches.iter().any(|a| a == target.arch) || ex.caps.iter().any(|c| target.caps.contains(c))
    {
        return Ok(false);
    }
    if let Some(v) = &ex.min_kernel {
        if target.kernel >= parse_kernel(v)? {
            return Ok(false);
        }
    }
    let inc = &rule.includes;
    if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == target.arch) {
        return Ok(false);
    }
    if !inc.caps.iter().all(|c| target.caps.contains(c)) {
        return Ok(false);
    }
    if let Some(v) = &inc.min_kernel {
        if target.kernel < parse_kernel(v)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> Result<LinuxSyscall, Error> {
    let mut b = LinuxSyscallBuilder::default().names(names).action(action);
    if let Some(e) = errno_ret {
        b = b.errno_ret(e);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    Ok(b.build()?)
}

/// The OCI seccomp section Docker would give a container of `target`.
pub fn resolve(profile: &Profile, target: &Target) -> Result<LinuxSeccomp, Error> {
    let mut arches = Vec::new();
    if let Some(m) = profile
        .arch_map
        .iter()
        .find(|m| m.architecture == target.seccomp_arch)
    {
        arches.push(m.architecture);
        arches.extend(m.sub_architectures.iter().flatten().copied());
    }
    let mut syscalls = Vec::new();
    for rule in &profile.syscalls {
        if applies(rule, target)? {
            syscalls.push(syscall(
                rule.names.clone(),
                rule.action,
                rule.errno_ret,
                rule.args.clone().unwrap_or_default(),
            )?);
        }
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(profile.default_action)
        .syscalls(syscalls);
    if let Some(e) = profile.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if !arches.is_empty() {
        b = b.architectures(arches);
    }
    Ok(b.build()?)
}

/// Our rules over a resolved profile: every name they govern is taken out of
/// the profile's rules first, so exactly one rule decides each of them.
/// `nesting` lifts the namespace rules (see [`NESTING`]); io_uring and the
/// keyring stay refused either way.
pub fn apply_rules(base: LinuxSeccomp, nesting: bool) -> Result<LinuxSeccomp, Error> {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut ours = vec![
        syscall(
            owned(&IO_URING),
            LinuxSeccompAction::ScmpActErrno,
            Some(EPERM),
            vec![],
        )?,
        syscall(
            owned(&KEYRING),
            LinuxSeccompAction::ScmpActErrno,
            Some(ENOSYS),
            vec![],
        )?,
    ];
    if nesting {
        let mut allowed = owned(&NESTING);
        allowed.insert(0, "clone".to_owned());
        ours.push(syscall(
            allowed,
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![],
        )?);
    } else {
        // clone without namespace flags, whatever capabilities the profile
        // was resolved for (x86 and x32 take the flags first too).
        let arg = oci_spec::runtime::LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(CLONE_NAMESPACE_FLAGS)
            .value_two(0u64)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?;
        ours.push(syscall(
            vec!["clone".to_owned()],
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![arg],
        )?);
        // clone3 keeps its flags in memory a filter cannot read: ENOSYS
        // makes glibc fall back to clone, which the rule above checks.
        ours.push(syscall(
            vec!["clone3".to_owned()],
            LinuxSeccompAction::ScmpActErrno,
            Some(ENOSYS),
            vec![],
        )?);
        let refused: Vec<String> = NESTING
            .iter()
            .filter(|n| **n != "clone3")
            .map(|s| s.to_string())
            .collect();
        ours.push(syscall(
            refused,
            LinuxSeccompAction::ScmpActErrno,
            Some(EPERM),
            vec![],
        )?);
    }
    let governed: HashSet<&str> = ours
        .iter()
        .flat_map(|r| r.names().iter().map(String::as_str))
        .collect();
    let mut syscalls = Vec::new();
    for rule in base.syscalls().iter().flatten() {
        let names: Vec<String> = rule
            .names()
            .iter()
            .filter(|n| !governed.contains(n.as_str()))
            .cloned()
            .collect();
        if !names.is_empty() {
            let mut r = rule.clone();
            r.set_names(names);
            syscalls.push(r);
        }
    }
    syscalls.extend(ours);
    let mut out = base;
    out.set_syscalls(Some(syscalls));
    Ok(out)
}

/// The `linux.seccomp` of a tenant with capability set `caps` on x86_64.
pub fn render_seccomp(caps: &HashSet<Capability>, nesting: bool) -> Result<LinuxSeccomp, Error> {
    let base = resolve(&docker_default()?, &Target::x86_64(caps))?;
    apply_rules(base, nesting)
}

/// The names a filter lets through (unconditionally or on some arguments).
pub fn allowed_names(s: &LinuxSeccomp) -> BTreeSet<String> {
    s.syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
        .flat_map(|r| r.names().iter().cloned())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bundle::default_capabilities;

    fn rules_for<'a>(s: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        s.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .collect()
    }

    fn only_rule<'a>(s: &'a LinuxSeccomp, name: &str) -> &'a LinuxSyscall {
        let r = rules_for(s, name);
        assert_eq!(r.len(), 1, "{name}: {r:?}");
        r[0]
    }

    fn profile(json: &str) -> Profile {
        serde_json::from_str(json).unwrap()
    }

    fn target(caps: &[&str]) -> Target {
        Target {
            arch: "amd64",
            seccomp_arch: Arch::ScmpArchX86_64,
            caps: caps.iter().map(|c| c.to_string()).collect(),
            kernel: (6, 1),
        }
    }

    #[test]
    fn docker_semantics_of_includes_and_excludes() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
            "archMap":[{"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]},
                       {"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86","SCMP_ARCH_X32"]}],
            "syscalls":[
             {"names":["read"],"action":"SCMP_ACT_ALLOW"},
             {"names":["arm_only"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm","arm64"]}},
             {"names":["x86_too"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["amd64","x86"]}},
             {"names":["admin"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
             {"names":["both"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_CHOWN","CAP_KILL"]}},
             {"names":["not_admin"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"excludes":{"caps":["CAP_SYS_ADMIN"]}},
             {"names":["not_s390"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["s390x"]}},
             {"names":["not_amd64"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["amd64"]}},
             {"names":["new_kernel"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"6.2"}},
             {"names":["old_kernel"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
             {"names":["until_6_1"],"action":"SCMP_ACT_ALLOW","excludes":{"minKernel":"6.1"}},
             {"names":["arg"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}],"comment":"x"}
            ]}"#,
        );
        let s = resolve(&p, &target(&["CAP_CHOWN"])).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(1));
        assert_eq!(
            s.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        let names: Vec<&str> = s
            .syscalls()
            .iter()
            .flatten()
            .map(|r| r.names()[0].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "read",
                "x86_too",
                "not_admin",
                "not_s390",
                "old_kernel",
                "arg"
            ]
        );
        assert_eq!(only_rule(&s, "not_admin").errno_ret(), Some(38));
        assert_eq!(only_rule(&s, "arg").args().as_ref().unwrap()[0].value(), 8);

        let s = resolve(&p, &target(&["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"])).unwrap();
        let names: Vec<&str> = s
            .syscalls()
            .iter()
            .flatten()
            .map(|r| r.names()[0].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "read",
                "x86_too",
                "admin",
                "both",
                "not_s390",
                "old_kernel",
                "arg"
            ]
        );
        let mut old = target(&[]);
        old.kernel = (5, 10);
        assert!(rules_for(&resolve(&p, &old).unwrap(), "until_6_1").len() == 1);
    }

    #[test]
    fn a_bad_min_kernel_is_an_error() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["x"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"six"}}]}"#,
        );
        assert!(resolve(&p, &target(&[])).is_err());
        assert!(serde_json::from_str::<Profile>(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[],"newField":1}"#
        )
        .is_err());
    }

    #[test]
    fn docker_default_for_our_capabilities() {
        let s = resolve(
            &docker_default().unwrap(),
            &Target::x86_64(&default_capabilities()),
        )
        .unwrap();
        let allowed = allowed_names(&s);
        // Granted through CAP_SYS_CHROOT, which we keep.
        assert!(allowed.contains("chroot"));
        assert!(allowed.contains("arch_prctl") && allowed.contains("ptrace"));
        // Gated on capabilities we do not grant.
        for n in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "reboot",
            "init_module",
            "open_by_handle_at",
        ] {
            assert!(!allowed.contains(n), "{n} allowed");
        }
        // Other architectures' calls stay out.
        assert!(!allowed.contains("set_tls") && !allowed.contains("s390_runtime_instr"));
        // clone only without namespace flags; clone3 answers ENOSYS.
        let clone = only_rule(&s, "clone");
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!((arg.index(), arg.value()), (0, CLONE_NAMESPACE_FLAGS));
        assert_eq!(only_rule(&s, "clone3").errno_ret(), Some(ENOSYS));
        // What our rules add to it: Docker (this version) allows io_uring.
        assert!(allowed.contains("io_uring_setup"));
    }

    fn names_with(
        s: &LinuxSeccomp,
        action: LinuxSeccompAction,
        errno: Option<u32>,
    ) -> BTreeSet<String> {
        s.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.action() == action && r.errno_ret() == errno)
            .flat_map(|r| r.names().iter().cloned())
            .collect()
    }

    #[test]
    fn tenant_filter_refuses_namespaces_io_uring_and_the_keyring() {
        let s = render_seccomp(&default_capabilities(), false).unwrap();
        let allowed = allowed_names(&s);
        for n in IO_URING.iter().chain(&KEYRING).chain(&NESTING) {
            assert!(!allowed.contains(*n), "{n} allowed");
        }
        let enosys = names_with(&s, LinuxSeccompAction::ScmpActErrno, Some(ENOSYS));
        assert_eq!(
            enosys,
            ["add_key", "clone3", "keyctl", "request_key"]
                .map(String::from)
                .into()
        );
        let eperm = names_with(&s, LinuxSeccompAction::ScmpActErrno, Some(EPERM));
        for n in IO_URING.iter().chain(["unshare", "setns", "mount"].iter()) {
            assert!(eperm.contains(*n), "{n} not refused");
        }
        let clone = only_rule(&s, "clone");
        assert_eq!(clone.action(), LinuxSeccompAction::ScmpActAllow);
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_ne!(arg.value() & libc::CLONE_NEWUSER as u64, 0);
        assert_ne!(arg.value() & libc::CLONE_NEWNET as u64, 0);
        assert_eq!(arg.value_two(), Some(0));
        // Everyday calls are untouched.
        for n in [
            "read", "openat", "execve", "socket", "chroot", "seccomp", "prctl",
        ] {
            assert!(allowed.contains(n), "{n} refused");
        }
    }

    #[test]
    fn no_call_is_both_allowed_and_refused() {
        for nesting in [false, true] {
            let s = render_seccomp(&default_capabilities(), nesting).unwrap();
            let allowed = allowed_names(&s);
            let refused: BTreeSet<String> = s
                .syscalls()
                .iter()
                .flatten()
                .filter(|r| r.action() != LinuxSeccompAction::ScmpActAllow)
                .flat_map(|r| r.names().iter().cloned())
                .collect();
            let both: Vec<_> = allowed.intersection(&refused).collect();
            assert!(both.is_empty(), "nesting {nesting}: {both:?}");
        }
    }

    #[test]
    fn nesting_lifts_only_the_namespace_rules() {
        let s = render_seccomp(&default_capabilities(), true).unwrap();
        let allowed = allowed_names(&s);
        for n in NESTING.iter().chain(&["clone"]) {
            assert!(allowed.contains(*n), "{n} refused");
        }
        let clone = only_rule(&s, "clone");
        assert!(clone.args().is_none(), "clone is still filtered on flags");
        for n in IO_URING.iter().chain(&KEYRING) {
            assert!(!allowed.contains(*n), "{n} allowed with nesting");
        }
        assert_eq!(
            names_with(&s, LinuxSeccompAction::ScmpActErrno, Some(ENOSYS)),
            KEYRING.map(String::from).into()
        );
        // Still not granted: what Docker keeps for CAP_SYS_ADMIN beyond namespaces.
        for n in [
            "bpf",
            "perf_event_open",
            "quotactl",
            "syslog",
            "fanotify_init",
        ] {
            assert!(!allowed.contains(n), "{n} allowed with nesting");
        }
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel("4.8").unwrap(), (4, 8));
        assert_eq!(parse_kernel("5.15.0-91").unwrap(), (5, 15));
        assert!(parse_kernel("5").is_err());
    }
}
