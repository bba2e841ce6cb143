//! `vpsctl start | stop | restart | kill | run | exec`: the runc lifecycle
//! of a tenant, through systemd where systemd manages it.

use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use sotolito_config::{Desired, Idmap, Tenant, TenantName};
use sotolito_provisioner::runtime::ContainerStatus;
use sotolito_provisioner::signal::{parse_signal, SIGKILL};
use sotolito_provisioner::supervise::{self, Stopped, DEFAULT_STOP_TIMEOUT};
use sotolito_provisioner::{data, disk, idmap, overlay, units};

use crate::cmd::{image, provision};
use crate::context::Context;

#[derive(Debug, Args)]
pub struct StopArgs {
    pub name: TenantName,
    /// Seconds to wait after the stop signal before KILL.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_STOP_TIMEOUT.as_secs())]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    pub name: TenantName,
    /// Signal name or number [default: KILL]
    pub signal: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub name: TenantName,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// systemd manages tenants when it is PID 1 and our units are installed
/// where it reads them; then start/stop go through systemctl so that
/// Restart=always neither fights a stop nor misses a start.
fn systemd_manages(ctx: &Context) -> bool {
    let dir = &ctx.config().paths.systemd_dir;
    Path::new("/run/systemd/system").is_dir()
        && (dir.starts_with("/etc/systemd/system") || dir.starts_with("/run/systemd/system"))
        && dir.join(units::TEMPLATE).exists()
}

fn systemctl(verb: &str, name: &TenantName) -> anyhow::Result<()> {
    let unit = units::instance(name);
    let out = Command::new("systemctl")
        .args([verb, &unit])
        .stdin(Stdio::null())
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {verb} {unit} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The image's stop signal; systemd's when the image is gone.
pub fn stop_signal(ctx: &Context, tenant: &Tenant) -> i32 {
    image::store(ctx)
        .get(&tenant.image)
        .ok()
        .flatten()
        .map_or(sotolito_provisioner::signal::DEFAULT_STOP_SIGNAL, |i| {
            i.meta.stop_signal
        })
}

/// Serializes lifecycle operations on one tenant. Taken after (never
/// while holding) the registry lock's callers release it, except by
/// deprovision, which holds the registry lock first: always registry, then
/// tenant.
pub(crate) fn lock(
    ctx: &Context,
    name: &TenantName,
) -> anyhow::Result<sotolito_provisioner::lock::TenantLock> {
    Ok(sotolito_provisioner::lock::lock_tenant(
        &ctx.config().tenants_dir(),
        name,
    )?)
}

fn set_desired(ctx: &Context, name: &TenantName, desired: Desired) -> anyhow::Result<Tenant> {
    let registry = ctx.registry();
    let lock = registry.lock()?;
    let mut t = registry.require(name)?;
    if t.desired != desired {
        t.desired = desired;
        registry.put(&lock, &t)?;
    }
    Ok(t)
}

pub fn start(ctx: &Context, name: &TenantName) -> anyhow::Result<()> {
    start_tenant(ctx, name).with_context(|| format!("failed to start tenant {name}"))?;
    print_state(ctx, name, "started")
}

/// Refuses a tenant made before tenants ran in a user namespace: its root
/// would be host root. `vpsctl remap` converts it.
pub fn require_idmap(tenant: &Tenant) -> anyhow::Result<Idmap> {
    let name = &tenant.name;
    tenant.idmap.with_context(|| {
        format!(
            "tenant {name} was made before tenants ran in a user namespace and would run as host root (convert it, stopped, with: vpsctl remap {name})"
        )
    })
}

/// Once its data is mounted: refuses a tenant whose files are not in its
/// id range (an interrupted remap), or whose files its mapped root cannot
/// reach on the host.
fn require_owned(ctx: &Context, tenant: &Tenant, map: &Idmap) -> anyhow::Result<()> {
    let name = &tenant.name;
    let layout = provision::layout(ctx, name);
    if !data::owned_by(&layout, map)? {
        bail!(
            "tenant {name}'s files are not owned by its id range {map} yet (an interrupted provision or remap; finish it with: vpsctl remap {name})"
        );
    }
    if let Some((dir, mode)) = idmap::blocked_for(&layout.data(), map.host_id) {
        bail!(
            "its root, host uid {}, may not pass through {} (mode {mode:o}) on the way to its files (chmod o+x {}, or put paths.state_dir where every user may pass)",
            map.host_id,
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

pub fn start_tenant(ctx: &Context, name: &TenantName) -> anyhow::Result<()> {
    crate::cmd::init::ensure_layout(ctx)?;
    let map = require_idmap(&ctx.registry().require(name)?)?;
    let tenant = set_desired(ctx, name, Desired::Running)?;
    // Even when it runs already: start is when an upgrade tightens it.
    provision::restrict(ctx, &tenant)?;
    // Started at boot again (see stop).
    units::enable_instance(&ctx.config().paths.systemd_dir, name)?;
    let runc = ctx.runc();
    if systemd_manages(ctx) {
        systemctl("start", name)?;
        if !supervise::wait_running(&runc, name.as_str(), Duration::from_secs(30))? {
            bail!(
                "{} started but the container is not running (see journalctl -u {})",
                units::instance(name),
                units::instance(name)
            );
        }
        return Ok(());
    }
    let _lock = lock(ctx, name)?;
    match runc.state(name.as_str())?.map(|s| s.status) {
        Some(ContainerStatus::Running) | Some(ContainerStatus::Paused) => return Ok(()),
        // Stale: left by a crash or an init that exited on its own.
        Some(_) => runc.delete(name.as_str(), true)?,
        None => {}
    }
    let img = image::store(ctx).require(&tenant.image)?;
    // The disk first: the overlay's upper layer lives on it, and writing
    // the bundle sets the modes of its root. It stays mounted while the
    // tenant is provisioned (this mounts it after a reboot).
    disk::mount_data(name.as_str(), &provision::layout(ctx, name))?;
    // After the bundle: writing it sets the modes of data/.
    let layout = provision::write_bundle(ctx, &tenant)?;
    require_owned(ctx, &tenant, &map)?;
    // Read again under the tenant lock: a `set` may have changed them.
    ctx.apply_limits(&ctx.registry().require(name)?)?;
    overlay::mount_root(name.as_str(), &img.rootfs(), &layout, Some(&map))?;
    if let Err(e) = supervise::start_detached(
        &runc,
        name.as_str(),
        layout.bundle(),
        &layout.console_log(),
        console_pump(ctx, &layout.console_log())?,
        provision::tenant_owner(ctx, &tenant),
    ) {
        // A concurrent start won the race: its container uses the mount.
        if runc
            .state(name.as_str())
            .ok()
            .flatten()
            .is_some_and(|s| s.status == ContainerStatus::Running)
        {
            return Ok(());
        }
        let _ = overlay::unmount_root(&layout);
        let _ = ctx.tenant_cgroup(name).map(|c| c.teardown());
        return Err(e.into());
    }
    Ok(())
}

/// Stops the container by name (no record needed): the stop signal, KILL
/// after `timeout`, delete, unmount.
pub fn stop_container(
    ctx: &Context,
    name: &TenantName,
    signal: i32,
    timeout: Duration,
) -> anyhow::Result<Stopped> {
    if systemd_manages(ctx) {
        systemctl("stop", name)?;
    }
    let _lock = lock(ctx, name)?;
    let outcome = supervise::stop(&ctx.runc(), name.as_str(), signal, timeout)?;
    overlay::unmount_root(&provision::layout(ctx, name))?;
    ctx.tenant_cgroup(name)?.teardown()?;
    Ok(outcome)
}

pub fn stop(ctx: &Context, args: &StopArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let outcome = (|| -> anyhow::Result<Stopped> {
        let tenant = set_desired(ctx, name, Desired::Stopped)?;
        // A stopped tenant stays stopped across a reboot: no boot link.
        units::disable_instance(&ctx.config().paths.systemd_dir, name)?;
        stop_container(
            ctx,
            name,
            stop_signal(ctx, &tenant),
            Duration::from_secs(args.timeout),
        )
    })()
    .with_context(|| format!("failed to stop tenant {name}"))?;
    let how = match outcome {
        Stopped::NotRunning => "was not running",
        Stopped::Gracefully => "stopped",
        Stopped::Killed => "killed after the stop timeout",
    };
    print_state(ctx, name, how)
}

pub fn restart(ctx: &Context, args: &StopArgs) -> anyhow::Result<()> {
    let name = &args.name;
    (|| -> anyhow::Result<()> {
        let tenant = ctx.registry().require(name)?;
        // Refused before it is stopped, not after.
        require_idmap(&tenant)?;
        if systemd_manages(ctx) {
            set_desired(ctx, name, Desired::Running)?;
            return systemctl("restart", name);
        }
        stop_container(
            ctx,
            name,
            stop_signal(ctx, &tenant),
            Duration::from_secs(args.timeout),
        )?;
        start_tenant(ctx, name)
    })()
    .with_context(|| format!("failed to restart tenant {name}"))?;
    print_state(ctx, name, "restarted")
}

pub fn kill(ctx: &Context, args: &KillArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let sig = (|| -> anyhow::Result<i32> {
        ctx.registry().require(name)?;
        let sig = args
            .signal
            .as_deref()
            .map(parse_signal)
            .transpose()?
            .unwrap_or(SIGKILL);
        let runc = ctx.runc();
        if !runc
            .state(name.as_str())?
            .is_some_and(|s| s.status == ContainerStatus::Running)
        {
            bail!("tenant {name} is not running");
        }
        runc.kill(name.as_str(), sig)?;
        Ok(sig)
    })()
    .with_context(|| format!("failed to kill tenant {name}"))?;
    print_state(ctx, name, &format!("sent signal {sig}"))
}

/// `runc exec` with our stdio; exits with the command's status.
pub fn exec(ctx: &Context, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let status = (|| -> anyhow::Result<std::process::ExitStatus> {
        ctx.registry().require(name)?;
        let runc = ctx.runc();
        if !runc
            .state(name.as_str())?
            .is_some_and(|s| s.status == ContainerStatus::Running)
        {
            bail!("tenant {name} is not running (start it with vpsctl start {name})");
        }
        let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        runc.exec_command(name.as_str(), &args.cmd, tty)
            .status()
            .map_err(|e| runc.spawn_error(e).into())
    })()
    .with_context(|| format!("failed to exec in tenant {name}"))?;
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `vpsctl run NAME`: the unit's ExecStart. Network, overlay, `runc run`
/// in the foreground; SIGTERM becomes the image's stop signal.
pub fn run(ctx: &Context, name: &TenantName) -> anyhow::Result<ExitCode> {
    let code = (|| -> anyhow::Result<i32> {
        crate::cmd::init::ensure_layout(ctx)?;
        let registry = ctx.registry();
        let tenant = registry.require(name)?;
        let map = require_idmap(&tenant)?;
        let img = image::store(ctx).require(&tenant.image)?;
        // Bridge and tables (if missing); sotolito-net.service reconciles at boot.
        crate::cmd::net::ensure_network(ctx)?;
        let runc = ctx.runc();
        // Held while preparing, released before the container runs (a
        // stop must be able to get it).
        let prep_lock = lock(ctx, name)?;
        match runc.state(name.as_str())?.map(|s| s.status) {
            // Left by a `run` that was killed (its container lives in a
            // cgroup of its own): stop it rather than fail on every
            // Restart=always.
            Some(ContainerStatus::Running) | Some(ContainerStatus::Paused) => {
                tracing::warn!(tenant = %name, "a container of a previous run is still running; stopping it");
                supervise::stop(&runc, name.as_str(), img.meta.stop_signal, DEFAULT_STOP_TIMEOUT)?;
            }
            Some(_) => runc.delete(name.as_str(), true)?,
            None => {}
        }
        disk::mount_data(name.as_str(), &provision::layout(ctx, name))?;
        let layout = provision::write_bundle(ctx, &tenant)?;
        require_owned(ctx, &tenant, &map)?;
        ctx.apply_limits(&registry.require(name)?)?;
        overlay::mount_root(name.as_str(), &img.rootfs(), &layout, Some(&map))?;
        drop(prep_lock);
        tracing::info!(tenant = %name, console = %layout.console_log().display(), "running");
        let result = supervise::run_foreground(
            &runc,
            name.as_str(),
            layout.bundle(),
            &layout.console_log(),
            ctx.config().runtime.console_log_max.bytes(),
            img.meta.stop_signal,
            DEFAULT_STOP_TIMEOUT,
            provision::tenant_owner(ctx, &tenant),
            // The unit is Type=notify: `systemctl start` returns once the
            // container runs, not when `runc run` was merely spawned.
            || sotolito_proxy::notify("READY=1"),
        );
        overlay::unmount_root(&layout)?;
        let cleaned = ctx.tenant_cgroup(name)?.teardown();
        let code = result?;
        cleaned?;
        tracing::info!(tenant = %name, code, "exited");
        Ok(code)
    })()
    .with_context(|| format!("failed to run tenant {name}"))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `vpsctl console-log --max SIZE PATH`, this very binary: the pump of a
/// detached container's console.
fn console_pump(ctx: &Context, console: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new(&provision::hook_command(ctx)?.vpsctl);
    c.arg("console-log")
        .arg("--max")
        .arg(ctx.config().runtime.console_log_max.to_string())
        .arg(console)
        .env_remove("RUST_LOG");
    Ok(c)
}

/// The console pump: stdin into the capped log until the container's last
/// writer closes the pipe. Its own session, so the terminal `start` ran
/// from can close without taking the tenant's console with it.
pub fn console_log(path: &Path, max: sotolito_config::LogSize) -> anyhow::Result<()> {
    let _ = rustix::process::setsid();
    let mut log = sotolito_provisioner::console::CappedLog::open(path, max.bytes())
        .with_context(|| format!("failed to open the console log {}", path.display()))?;
    sotolito_provisioner::console::pump(std::io::stdin().lock(), &mut log);
    Ok(())
}

fn print_state(ctx: &Context, name: &TenantName, what: &str) -> anyhow::Result<()> {
    let tenant = ctx.registry().require(name)?;
    let view = crate::cmd::tenants::view(ctx, &tenant);
    if ctx.json {
        crate::output::print_json(&view)
    } else {
        println!("{name} {what}");
        Ok(())
    }
}
