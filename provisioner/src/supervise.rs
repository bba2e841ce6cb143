//! Running and stopping a tenant's container: the stop signal, a timeout,
//! then KILL; the foreground runner that systemd supervises.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::console::{self, CappedLog};
use crate::runtime::{tail_since, ContainerStatus, Runc, Runtime};
use crate::signal::SIGKILL;
use crate::tenantfs::Owner;
use crate::Error;

/// Default time between the stop signal and KILL. systemd inside a
/// container halts in well under a second here (docs/facts.md "runc");
/// 30 s leaves slow services room.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(100);

/// How often the stop signal is sent again while the container runs. A
/// PID 1 in a pid namespace drops every signal it has no handler for, so
/// one sent before its handlers exist (a tenant still starting, a systemd
/// re-executing) is lost; sent again, it lands once they are back. systemd
/// takes a repeated SIGRTMIN+3 as the same halt.
pub const RESEND: Duration = Duration::from_secs(1);

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// There was no container.
    NotRunning,
    /// Its init exited on the stop signal.
    Gracefully,
    /// It ignored the stop signal and was killed after the timeout.
    Killed,
}

/// True once runc reports the container stopped or gone, polling until
/// `deadline`.
pub fn wait_stopped(runc: &impl Runtime, id: &str, deadline: Instant) -> Result<bool, Error> {
    loop {
        match runc.state(id)? {
            None => return Ok(true),
            Some(s) if s.status == ContainerStatus::Stopped => return Ok(true),
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until runc reports the container running.
pub fn wait_running(runc: &impl Runtime, id: &str, timeout: Duration) -> Result<bool, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if runc
            .state(id)?
            .is_some_and(|s| s.status == ContainerStatus::Running)
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
}

/// Sends `signal`, and again every [`RESEND`] (KILL only once: nothing
/// ignores it), until the container stops or `deadline`; true if it
/// stopped.
fn signal_until_stopped(
    runc: &impl Runtime,
    id: &str,
    signal: i32,
    deadline: Instant,
) -> Result<bool, Error> {
    loop {
        if let Err(e) = runc.kill(id, signal) {
            // It may have stopped meanwhile; the state says.
            tracing::debug!(container = id, error = %e, "stop signal");
        }
        let next = if signal == SIGKILL {
            deadline
        } else {
            (Instant::now() + RESEND).min(deadline)
        };
        if wait_stopped(runc, id, next)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Stops a detached container: the stop signal (repeated, see [`RESEND`]),
/// KILL after `timeout`, then delete (which runs the poststop hooks).
pub fn stop(
    runc: &impl Runtime,
    id: &str,
    signal: i32,
    timeout: Duration,
) -> Result<Stopped, Error> {
    let Some(state) = runc.state(id)? else {
        return Ok(Stopped::NotRunning);
    };
    let mut outcome = Stopped::NotRunning;
    if state.status != ContainerStatus::Stopped {
        // A created container has not run its init yet: nothing to ask.
        let graceful = state.status == ContainerStatus::Running
            && signal_until_stopped(runc, id, signal, Instant::now() + timeout)?;
        outcome = if graceful {
            Stopped::Gracefully
        } else {
            if let Err(e) = runc.kill(id, SIGKILL) {
                tracing::debug!(container = id, error = %e, "kill");
            }
            if !wait_stopped(runc, id, Instant::now() + Duration::from_secs(10))? {
                tracing::warn!(
                    container = id,
                    "still running 10 s after KILL; deleting by force"
                );
            }
            Stopped::Killed
        };
    }
    runc.delete(id, true)?;
    Ok(outcome)
}

/// The container's end of its console pipe belongs to its root (as runc
/// does with the stdio pipes it makes): under a user namespace, tenant
/// root may then reopen it as /proc/1/fd/1 like any container's logger.
fn give_to(writer: &impl std::os::fd::AsFd, owner: Owner, console: &Path) -> Result<(), Error> {
    if owner == Owner::ROOT {
        return Ok(());
    }
    std::os::unix::fs::fchown(writer, Some(owner.uid), Some(owner.gid)).map_err(crate::io_err(
        "hand to the tenant the console pipe of",
        console,
    ))
}

/// Creates and starts the container detached and waits until it runs. Its
/// console goes through a pipe to `pump`, a small process of its own
/// (`vpsctl console-log`) that outlives us and writes the capped log at
/// `console`; it exits when the container's last writer closes the pipe.
pub fn start_detached(
    runc: &impl Runtime,
    id: &str,
    bundle: &Path,
    console: &Path,
    mut pump: Command,
    owner: Owner,
) -> Result<(), Error> {
    let (reader, writer) = console::pipe()?;
    give_to(&writer, owner, console)?;
    let mut pumper = pump
        .stdin(reader)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(crate::io_err("start the console pump for", console))?;
    // Our copy of the read end goes with the command.
    drop(pump);
    let start = console::len(console);
    if let Err(e) = runc.create(id, bundle, writer.into()) {
        // runc's message went through the pipe: let the pump write it.
        wait_child(&mut pumper, Duration::from_secs(5));
        return Err(with_console_tail(e, console, start));
    }
    if let Err(e) = runc.start(id) {
        let _ = runc.delete(id, true);
        return Err(e);
    }
    if !wait_running(runc, id, Duration::from_secs(10))? {
        return Err(Error::Command {
            program: runc.name(),
            action: format!("start {id}"),
            stderr: format!(
                "the container is not running (its init exited? see {})",
                console.display()
            ),
        });
    }
    Ok(())
}

/// A failed `runc create` says why in the console log.
fn with_console_tail(e: Error, console: &Path, start: u64) -> Error {
    match e {
        Error::Command {
            program,
            action,
            stderr,
        } if stderr.is_empty() => Error::Command {
            program,
            action,
            stderr: tail_since(console, start),
        },
        other => other,
    }
}

/// Waits for `child` up to `timeout` (a pump ends at its pipe's EOF).
fn wait_child(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `vpsctl run`: `runc run` in the foreground, its console piped to a
/// thread of ours that writes the log at `console`, capped at `log_max`
/// bytes (see [`crate::console`]). SIGTERM, SIGINT or SIGHUP to us becomes the image's stop
/// signal to the container, then KILL after `timeout`. `on_running` is
/// called once, when runc first reports the container running (systemd's
/// readiness). Returns the container's exit code, but 0 when it ended on
/// the stop signal it was sent (KILL for an image whose stop signal is
/// KILL): a stop that went as asked, not a failed unit. KILL after the
/// timeout stays 137.
#[allow(clippy::too_many_arguments)] // one caller, `vpsctl run`, names each
pub fn run_foreground(
    runc: &Runc,
    id: &str,
    bundle: &Path,
    console: &Path,
    log_max: u64,
    stop_signal: i32,
    timeout: Duration,
    owner: Owner,
    on_running: impl FnOnce(),
) -> Result<i32, Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use std::os::unix::process::CommandExt;

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| crate::io_err("handle signals for", bundle)(e))?;
    let mut log = CappedLog::open(console, log_max)?;
    let (reader, writer) = console::pipe()?;
    give_to(&writer, owner, console)?;
    let err_writer = writer
        .try_clone()
        .map_err(crate::io_err("duplicate the console pipe of", bundle))?;
    let pump = std::thread::spawn(move || console::pump(reader, &mut log));
    let mut child = runc
        .run_command(id, bundle)
        // runc would relay the tenant's own sd_notify to our unit (as
        // another PID, refused); readiness is ours to tell (`on_running`).
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(err_writer)
        // Our own process group: a Ctrl-C reaches us, and we decide.
        .process_group(0)
        .spawn()
        .map_err(|e| runc.spawn_error(e))?;
    let mut stopping: Option<Instant> = None;
    let mut signalled: Option<Instant> = None;
    let mut killed = false;
    let mut on_running = Some(on_running);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(crate::io_err("wait for runc in", bundle))?
        {
            break status;
        }
        if on_running.is_some()
            && runc
                .state(id)
                .ok()
                .flatten()
                .is_some_and(|s| s.status == ContainerStatus::Running)
        {
            if let Some(f) = on_running.take() {
                f();
            }
        }
        if signals.pending().next().is_some() && stopping.is_none() {
            tracing::info!(container = id, signal = stop_signal, "stopping");
            stopping = Some(Instant::now());
        }
        if let Some(since) = stopping {
            // Again every RESEND (see there) until it stops or is killed.
            let due = signalled.is_none_or(|at| at.elapsed() >= RESEND && stop_signal != SIGKILL);
            if !killed && due {
                if signalled.is_some() {
                    tracing::debug!(
                        container = id,
                        signal = stop_signal,
                        "still running; stop signal again"
                    );
                }
                if let Err(e) = runc.kill(id, stop_signal) {
                    tracing::warn!(container = id, error = %e, "cannot send the stop signal");
                }
                signalled = Some(Instant::now());
            }
            if !killed && since.elapsed() >= timeout {
                tracing::warn!(container = id, "did not stop in time; killing");
                let _ = runc.kill(id, SIGKILL);
                killed = true;
            }
        }
        std::thread::sleep(POLL);
    };
    signals.handle().close();
    runc.delete(id, true)?;
    // The container's processes are gone with its init: the pipe's last
    // writers close, the pump drains what is left and ends.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pump.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(exit_code(code, stopping.is_some(), killed, stop_signal))
}

/// `runc run` reports a container killed by signal N as 128 + N.
fn exit_code(code: i32, stopping: bool, killed: bool, stop_signal: i32) -> i32 {
    if stopping && !killed && code == 128 + stop_signal {
        0
    } else {
        code
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runtime::ContainerState;
    use std::cell::RefCell;

    /// A container whose init exits on `exits_on` (or never), recording
    /// every call.
    struct Fake {
        status: RefCell<Option<ContainerStatus>>,
        exits_on: Option<i32>,
        calls: RefCell<Vec<String>>,
    }

    impl Fake {
        fn new(status: Option<ContainerStatus>, exits_on: Option<i32>) -> Fake {
            Fake {
                status: RefCell::new(status),
                exits_on,
                calls: RefCell::new(Vec::new()),
            }
        }
        fn calls(&self) -> Vec<String> {
            let mut c = self.calls.borrow().clone();
            c.dedup();
            c
        }
    }

    impl Runtime for Fake {
        fn state(&self, _: &str) -> Result<Option<ContainerState>, Error> {
            self.calls.borrow_mut().push("state".into());
            Ok(self.status.borrow().map(|status| ContainerState {
                status,
                pid: None,
                created: None,
            }))
        }
        fn kill(&self, _: &str, signal: i32) -> Result<(), Error> {
            self.calls.borrow_mut().push(format!("kill {signal}"));
            if signal == SIGKILL || Some(signal) == self.exits_on {
                *self.status.borrow_mut() = Some(ContainerStatus::Stopped);
            }
            Ok(())
        }
        fn delete(&self, _: &str, _: bool) -> Result<(), Error> {
            self.calls.borrow_mut().push("delete".into());
            *self.status.borrow_mut() = None;
            Ok(())
        }
        fn create(&self, _: &str, _: &Path, _: std::os::fd::OwnedFd) -> Result<(), Error> {
            self.calls.borrow_mut().push("create".into());
            *self.status.borrow_mut() = Some(ContainerStatus::Created);
            Ok(())
        }
        fn start(&self, _: &str) -> Result<(), Error> {
            self.calls.borrow_mut().push("start".into());
            *self.status.borrow_mut() = Some(ContainerStatus::Running);
            Ok(())
        }
        fn name(&self) -> String {
            "fake".into()
        }
    }

    const T: Duration = Duration::from_millis(300);

    #[test]
    fn the_stop_signal_is_sent_again_until_it_lands() {
        // Its init has no handler for the first signal (still starting):
        // the second one, a RESEND later, stops it.
        struct Late {
            inner: Fake,
            ignored: RefCell<u32>,
        }
        impl Runtime for Late {
            fn state(&self, id: &str) -> Result<Option<ContainerState>, Error> {
                self.inner.state(id)
            }
            fn kill(&self, id: &str, signal: i32) -> Result<(), Error> {
                if *self.ignored.borrow() == 0 {
                    *self.ignored.borrow_mut() += 1;
                    self.inner
                        .calls
                        .borrow_mut()
                        .push(format!("kill {signal} (lost)"));
                    return Ok(());
                }
                self.inner.kill(id, signal)
            }
            fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
                self.inner.delete(id, force)
            }
            fn create(&self, id: &str, b: &Path, fd: std::os::fd::OwnedFd) -> Result<(), Error> {
                self.inner.create(id, b, fd)
            }
            fn start(&self, id: &str) -> Result<(), Error> {
                self.inner.start(id)
            }
            fn name(&self) -> String {
                self.inner.name()
            }
        }
        let f = Late {
            inner: Fake::new(Some(ContainerStatus::Running), Some(37)),
            ignored: RefCell::new(0),
        };
        assert_eq!(
            stop(&f, "acme", 37, Duration::from_secs(5)).unwrap(),
            Stopped::Gracefully
        );
        assert_eq!(
            f.inner.calls(),
            [
                "state",
                "kill 37 (lost)",
                "state",
                "kill 37",
                "state",
                "delete"
            ]
        );
    }

    #[test]
    fn ending_on_the_stop_signal_is_a_clean_exit() {
        assert_eq!(exit_code(137, true, false, SIGKILL), 0);
        assert_eq!(exit_code(143, true, false, 15), 0);
        // Killed after the timeout, dead of another signal, or not asked.
        assert_eq!(exit_code(137, true, true, 37), 137);
        assert_eq!(exit_code(137, true, false, 15), 137);
        assert_eq!(exit_code(137, false, false, SIGKILL), 137);
        assert_eq!(exit_code(0, true, false, 37), 0);
    }

    #[test]
    fn kill_as_the_stop_signal_is_sent_once() {
        let f = Fake::new(Some(ContainerStatus::Running), Some(SIGKILL));
        assert_eq!(stop(&f, "acme", SIGKILL, T).unwrap(), Stopped::Gracefully);
        assert_eq!(f.calls(), ["state", "kill 9", "state", "delete"]);
    }

    #[test]
    fn stop_signal_then_delete() {
        let f = Fake::new(Some(ContainerStatus::Running), Some(37));
        assert_eq!(stop(&f, "acme", 37, T).unwrap(), Stopped::Gracefully);
        assert_eq!(f.calls(), ["state", "kill 37", "state", "delete"]);
    }

    #[test]
    fn kill_after_the_timeout() {
        let f = Fake::new(Some(ContainerStatus::Running), None);
        let t0 = Instant::now();
        assert_eq!(stop(&f, "acme", 37, T).unwrap(), Stopped::Killed);
        assert!(t0.elapsed() >= T);
        assert_eq!(
            f.calls(),
            ["state", "kill 37", "state", "kill 9", "state", "delete"]
        );
    }

    #[test]
    fn nothing_to_stop() {
        let f = Fake::new(None, None);
        assert_eq!(stop(&f, "acme", 37, T).unwrap(), Stopped::NotRunning);
        assert_eq!(f.calls(), ["state"]);
        // A stopped container is only deleted; a created one is killed.
        let f = Fake::new(Some(ContainerStatus::Stopped), None);
        assert_eq!(stop(&f, "acme", 37, T).unwrap(), Stopped::NotRunning);
        assert_eq!(f.calls(), ["state", "delete"]);
        let f = Fake::new(Some(ContainerStatus::Created), None);
        assert_eq!(stop(&f, "acme", 37, T).unwrap(), Stopped::Killed);
        assert_eq!(f.calls(), ["state", "kill 9", "state", "delete"]);
    }

    #[test]
    fn start_waits_for_running() {
        let f = Fake::new(None, None);
        let tmp = tempfile::tempdir().unwrap();
        let console = tmp.path().join("console.log");
        let mut pump = Command::new("sh");
        pump.arg("-c").arg(format!("cat > {}", console.display()));
        start_detached(&f, "acme", Path::new("/b"), &console, pump, Owner::ROOT).unwrap();
        assert_eq!(f.calls(), ["create", "start", "state"]);
    }
}
