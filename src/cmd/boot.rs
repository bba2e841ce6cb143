//! `vpsctl boot` and `vpsctl shutdown`: the host brought to the registry's
//! desired state after a reboot, and every tenant stopped before one, on
//! hosts where systemd does not do it (OpenRC, a container's entry point).
//! Boot: network first, then every tenant whose desired state is running, a
//! few at a time, through the same start path as `vpsctl start`.

use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sotolito_host::Booted;
use sotolito_provisioner::supervise::{Stopped, DEFAULT_STOP_TIMEOUT};

use crate::context::Context;

/// Starts at once at most this many tenants by default: each start is
/// mostly waiting on runc and its hooks, so a few more than the cores.
const DEFAULT_JOBS: usize = 4;

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Start at most this many tenants at once.
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(DEFAULT_JOBS).unwrap())]
    pub jobs: NonZeroUsize,
}

#[derive(Debug, Args)]
pub struct ShutdownArgs {
    /// Seconds to wait after each tenant's stop signal before KILL.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_STOP_TIMEOUT.as_secs())]
    pub timeout: u64,
    /// Stop at most this many tenants at once.
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(SHUTDOWN_JOBS).unwrap())]
    pub jobs: NonZeroUsize,
}

/// A stop is mostly waiting for the tenant's init: many at once, so that a
/// host's shutdown takes about one stop timeout, not one per tenant.
const SHUTDOWN_JOBS: usize = 32;

/// One tenant's line of the outcome (`boot --json` prints an array of them).
#[derive(Debug, Serialize)]
struct Outcome {
    name: String,
    /// boot: started | running (it already was) | stopped (its desired
    /// state) | failed; shutdown: stopped | killed (after the timeout) |
    /// not-running | failed
    result: &'static str,
    /// Why it failed; null otherwise.
    error: Option<String>,
}

pub fn run(ctx: &Context, args: &BootArgs) -> anyhow::Result<bool> {
    ctx.host
        .sys
        .files
        .ensure_layout()
        .context("failed to boot")?;
    // Tenants are unreachable without the bridge and the DNAT map: no
    // tenant is started when the network cannot be made.
    let booted = ctx
        .host
        .boot(args.jobs.get())
        .context("failed to boot: cannot set up the tenant network")?;
    let outcomes: Vec<Outcome> = booted
        .into_iter()
        .map(|(name, b)| {
            let (result, error) = match b {
                Booted::Started => ("started", None),
                Booted::Running => ("running", None),
                Booted::Stopped => ("stopped", None),
                Booted::Failed(e) => ("failed", Some(format!("{:#}", anyhow::Error::from(e)))),
            };
            Outcome {
                name: name.to_string(),
                result,
                error,
            }
        })
        .collect();
    report(ctx, "boot", "did not start", &outcomes)
}

/// `vpsctl shutdown`: every tenant's container stopped (its image's stop
/// signal, KILL after the timeout), its desired state kept, so that the
/// next `boot` starts again what ran.
pub fn shutdown(ctx: &Context, args: &ShutdownArgs) -> anyhow::Result<bool> {
    let stopped = ctx
        .host
        .shutdown(Duration::from_secs(args.timeout), args.jobs.get())
        .context("failed to shut down: cannot read the tenant records")?;
    let outcomes: Vec<Outcome> = stopped
        .into_iter()
        .map(|(name, r)| {
            let (result, error) = match r {
                Ok(Stopped::NotRunning) => ("not-running", None),
                Ok(Stopped::Gracefully) => ("stopped", None),
                Ok(Stopped::Killed) => ("killed", None),
                Err(e) => ("failed", Some(format!("{:#}", anyhow::Error::from(e)))),
            };
            Outcome {
                name: name.to_string(),
                result,
                error,
            }
        })
        .collect();
    report(ctx, "shut down", "did not stop", &outcomes)
}

fn report(ctx: &Context, verb: &str, fail: &str, outcomes: &[Outcome]) -> anyhow::Result<bool> {
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    if ctx.json {
        crate::output::print_json(outcomes)?;
    } else {
        for o in outcomes {
            match &o.error {
                Some(e) => println!("{} {}: {e}", o.name, o.result),
                None => println!("{} {}", o.name, o.result),
            }
        }
    }
    if failed > 0 {
        // The one summary line of a failure; each tenant's cause is above.
        eprintln!(
            "vpsctl: failed to {verb}: {failed} of {} tenant(s) {fail} (see each one above)",
            outcomes.len()
        );
    }
    Ok(failed == 0)
}
