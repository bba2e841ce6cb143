//! `vpsctl start | stop | restart | kill | run | exec`: arguments in, a
//! call to sotolito-host, the outcome printed; and the console pump, this
//! binary's entry point for a detached container's log.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sotolito_config::TenantName;
use sotolito_host::{KillRequest, StopRequest};
use sotolito_provisioner::signal::{parse_signal, SIGKILL};
use sotolito_provisioner::supervise::{Stopped, DEFAULT_STOP_TIMEOUT};

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

pub fn start(ctx: &Context, name: &TenantName) -> anyhow::Result<()> {
    ctx.host
        .start(name)
        .with_context(|| format!("failed to start tenant {name}"))?;
    ctx.print_tenant(name, &format!("{name} started"))
}

fn stop_request(args: &StopArgs) -> StopRequest {
    StopRequest {
        name: args.name.clone(),
        timeout: Duration::from_secs(args.timeout),
    }
}

pub fn stop(ctx: &Context, args: &StopArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let outcome = ctx
        .host
        .stop(&stop_request(args))
        .with_context(|| format!("failed to stop tenant {name}"))?;
    let how = match outcome {
        Stopped::NotRunning => "was not running",
        Stopped::Gracefully => "stopped",
        Stopped::Killed => "killed after the stop timeout",
    };
    ctx.print_tenant(name, &format!("{name} {how}"))
}

pub fn restart(ctx: &Context, args: &StopArgs) -> anyhow::Result<()> {
    let name = &args.name;
    ctx.host
        .restart(&stop_request(args))
        .with_context(|| format!("failed to restart tenant {name}"))?;
    ctx.print_tenant(name, &format!("{name} restarted"))
}

pub fn kill(ctx: &Context, args: &KillArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let sig = (|| -> anyhow::Result<i32> {
        let signal = args
            .signal
            .as_deref()
            .map(parse_signal)
            .transpose()?
            .unwrap_or(SIGKILL);
        ctx.host.kill(&KillRequest {
            name: name.clone(),
            signal,
        })?;
        Ok(signal)
    })()
    .with_context(|| format!("failed to kill tenant {name}"))?;
    ctx.print_tenant(name, &format!("{name} sent signal {sig}"))
}

/// `runc exec` with our stdio; exits with the command's status.
pub fn exec(ctx: &Context, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let code = ctx
        .host
        .exec(name, &args.cmd, tty)
        .with_context(|| format!("failed to exec in tenant {name}"))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `vpsctl run NAME`: the unit's ExecStart, in the foreground.
pub fn run(ctx: &Context, name: &TenantName) -> anyhow::Result<ExitCode> {
    let code = ctx
        .host
        // The unit is Type=notify: `systemctl start` returns once the
        // container runs, not when `runc run` was merely spawned.
        .run(name, &|| {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        })
        .with_context(|| format!("failed to run tenant {name}"))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
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
