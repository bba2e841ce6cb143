//! `vpsctl boot` and `vpsctl shutdown`: the host brought to the registry's
//! desired state after a reboot, and every tenant stopped before one, on
//! hosts where systemd does not do it (OpenRC, a container's entry point).
//! Boot: network first, then every tenant whose desired state is running, a
//! few at a time, through the same start path as `vpsctl start`.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sotolito_config::{Desired, Tenant};
use sotolito_host::Started;
use sotolito_provisioner::runtime::ContainerStatus;
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
    let tenants = ctx
        .host
        .reconcile()
        .context("failed to boot: cannot set up the tenant network")?;
    let outcomes = for_each(&tenants, args.jobs.get(), |t| boot_one(ctx, t));
    report(ctx, "boot", "did not start", &outcomes)
}

/// `vpsctl shutdown`: every tenant's container stopped (its image's stop
/// signal, KILL after the timeout), its desired state kept, so that the
/// next `boot` starts again what ran.
pub fn shutdown(ctx: &Context, args: &ShutdownArgs) -> anyhow::Result<bool> {
    let tenants = ctx
        .host
        .store
        .list()
        .context("failed to shut down: cannot read the tenant records")?;
    let timeout = Duration::from_secs(args.timeout);
    let outcomes = for_each(&tenants, args.jobs.get(), |t| {
        let name = t.name.to_string();
        let signal = ctx.host.sys.files.stop_signal(t);
        match ctx.host.stop_container(&t.name, signal, timeout) {
            Ok(how) => Outcome {
                name,
                result: match how {
                    Stopped::NotRunning => "not-running",
                    Stopped::Gracefully => "stopped",
                    Stopped::Killed => "killed",
                },
                error: None,
            },
            Err(e) => Outcome {
                name,
                result: "failed",
                error: Some(format!("{e:#}")),
            },
        }
    });
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

/// `f` of every tenant, in registry order, by `jobs` workers taking them
/// from a shared queue. One failing does not stop the others.
fn for_each(
    tenants: &[Tenant],
    jobs: usize,
    f: impl Fn(&Tenant) -> Outcome + Sync,
) -> Vec<Outcome> {
    let outcomes: Vec<Mutex<Option<Outcome>>> = tenants.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(tenants.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = tenants.get(i) else { break };
                let o = f(t);
                *outcomes[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
            });
        }
    });
    outcomes
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every tenant is taken by a worker")
        })
        .collect()
}

fn boot_one(ctx: &Context, t: &Tenant) -> Outcome {
    let name = t.name.to_string();
    if t.desired == Desired::Stopped {
        return Outcome {
            name,
            result: "stopped",
            error: None,
        };
    }
    // A running tenant is left alone (not even restricted or relinked).
    let running = ctx
        .host
        .sys
        .runtime
        .state(&t.name)
        .ok()
        .flatten()
        .is_some_and(|s| matches!(s.status, ContainerStatus::Running | ContainerStatus::Paused));
    if running {
        return Outcome {
            name,
            result: "running",
            error: None,
        };
    }
    match ctx.host.start(&t.name) {
        Ok(Started::Already) => Outcome {
            name,
            result: "running",
            error: None,
        },
        Ok(Started::Now) => {
            tracing::info!(tenant = %t.name, "started at boot");
            Outcome {
                name,
                result: "started",
                error: None,
            }
        }
        Err(e) => Outcome {
            name,
            result: "failed",
            error: Some(format!("{e:#}")),
        },
    }
}
