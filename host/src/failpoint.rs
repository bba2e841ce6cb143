//! Named failpoints: `SOTOLITO_FAILPOINT=NAME` makes the process die by
//! SIGKILL when it reaches the point NAME, as a crash or an OOM kill would
//! at that moment. The crash test kills vpsctl at each of [`NAMES`] in
//! turn and checks that the next run converges. Unset, a point costs one
//! environment lookup.

/// Every point, in the order a run passes them.
pub const NAMES: &[&str] = &[
    "provision.after-disk",
    "provision.after-bundle",
    "provision.after-seed",
    "provision.after-cfg",
    "provision.after-record",
    "provision.after-forward",
    "deprovision.after-stop",
    "deprovision.after-forward",
    "deprovision.after-files",
    "deprovision.after-record",
    "start.after-desired",
    "start.after-mounts",
    "start.after-container",
    "stop.after-desired",
    "stop.after-container",
];

/// The environment variable that names the point to die at.
pub const ENV: &str = "SOTOLITO_FAILPOINT";

/// Dies here if the environment names this point.
pub fn hit(name: &'static str) {
    debug_assert!(NAMES.contains(&name), "failpoint {name} is not in NAMES");
    if std::env::var_os(ENV).is_some_and(|v| v == name) {
        tracing::warn!(failpoint = name, "failpoint reached: killing this process");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
