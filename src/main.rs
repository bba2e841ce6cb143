//! vpsctl: the sotolito command line. Thin: parse, load config, dispatch
//! to a command, which calls sotolito-host and prints.

mod cli;
mod cmd;
mod context;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::context::Context;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let hook = cli.command.hook_tenant().cloned();
    init_logging(cli.command.default_log_level(), hook.as_ref());
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            // The whole chain on one line: "vpsctl: context: cause".
            eprintln!("vpsctl: {err:#}");
            if hook.is_some() {
                tracing::error!(target: JOURNAL_ONLY, "vpsctl: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The demo makes its own config and state; it never reads the host's.
    if let Command::Demo { debian, check } = cli.command {
        let ok = cmd::demo::run(cmd::demo::Options { debian, check })?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    // The console pump reads no config: start passes it all it needs.
    if let Command::ConsoleLog { max, path } = &cli.command {
        cmd::lifecycle::console_log(path, *max)?;
        return Ok(ExitCode::SUCCESS);
    }
    let g = cli.global;
    let ctx = Context::load(g.config, g.state_dir, g.json)?;
    match cli.command {
        Command::Init => cmd::init::run(&ctx),
        Command::Boot(args) => {
            return Ok(if cmd::boot::run(&ctx, &args)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Shutdown(args) => {
            return Ok(if cmd::boot::shutdown(&ctx, &args)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::List => cmd::tenants::list(&ctx),
        Command::Nodes => cmd::nodes::run(&ctx),
        Command::Status { name } => cmd::tenants::status(&ctx, &name),
        Command::Image(c) => cmd::image::run(&ctx, c),
        Command::Provision(args) => cmd::provision::run(&ctx, args),
        Command::Deprovision(args) => cmd::provision::deprovision(&ctx, args),
        Command::Start { name } => cmd::lifecycle::start(&ctx, &name),
        Command::Stop(args) => cmd::lifecycle::stop(&ctx, &args),
        Command::Restart(args) => cmd::lifecycle::restart(&ctx, &args),
        Command::Kill(args) => cmd::lifecycle::kill(&ctx, &args),
        Command::Remap(args) => cmd::remap::run(&ctx, &args),
        Command::Run { name } => return cmd::lifecycle::run(&ctx, &name),
        Command::Exec(args) => return cmd::lifecycle::exec(&ctx, &args),
        Command::Set(args) => cmd::set::run(&ctx, &args),
        Command::Units(c) => cmd::units::run(&ctx, c),
        Command::Net(c) => cmd::net::run(&ctx, c),
        Command::Proxy(args) => cmd::proxy::run(&ctx, args),
        Command::Certs(c) => cmd::certs::run(&ctx, c),
        Command::Demo { .. } | Command::ConsoleLog { .. } => {
            unreachable!("handled before the config is loaded")
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Events for the journal alone (stderr has them already).
const JOURNAL_ONLY: &str = "vpsctl::journal";

/// Logs to stderr; a hook also to the journal when there is one.
fn init_logging(default_level: &str, hook: Option<&sotolito_config::TenantName>) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let journal = hook
        .filter(|_| std::path::Path::new("/run/systemd/journal/socket").exists())
        .and_then(|name| {
            let layer = tracing_journald::layer().ok()?;
            Some(
                layer
                    .with_syslog_identifier("vpsctl-hook".to_owned())
                    // TENANT=NAME, as `journalctl TENANT=NAME` expects.
                    .with_field_prefix(None)
                    // `journalctl -u` shows it with the tenant's unit even
                    // when journald finds the hook gone before it could
                    // read its cgroup (a root sender may name the unit).
                    .with_custom_fields([(
                        "OBJECT_SYSTEMD_UNIT",
                        sotolito_provisioner::units::instance(name),
                    )]),
            )
        });
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // No colour codes in files and journals.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() != JOURNAL_ONLY
                })),
        )
        .with(journal)
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
