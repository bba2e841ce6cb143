//! Dispatch: one module per command group, each thin.

pub(crate) mod boot;
pub(crate) mod certs;
mod demo;
pub(crate) mod image;
mod init;
pub(crate) mod lifecycle;
pub(crate) mod net;
pub(crate) mod provision;
pub(crate) mod proxy;
pub(crate) mod remap;
pub(crate) mod set;
pub(crate) mod tenants;
pub(crate) mod units;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::context::Context;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The demo makes its own config and state; it never reads the host's.
    if let Command::Demo { debian, check } = cli.command {
        let ok = demo::run(demo::Options { debian, check })?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    // The console pump reads no config: start passes it all it needs.
    if let Command::ConsoleLog { max, path } = &cli.command {
        lifecycle::console_log(path, *max)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = Context::load(&cli.global)?;
    match cli.command {
        Command::Init => init::run(&ctx),
        Command::Boot(args) => {
            return Ok(if boot::run(&ctx, &args)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Shutdown(args) => {
            return Ok(if boot::shutdown(&ctx, &args)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::List => tenants::list(&ctx),
        Command::Status { name } => tenants::status(&ctx, &name),
        Command::Image(cmd) => image::run(&ctx, cmd),
        Command::Provision(args) => provision::run(&ctx, args),
        Command::Deprovision(args) => provision::deprovision(&ctx, args),
        Command::Start { name } => lifecycle::start(&ctx, &name),
        Command::Stop(args) => lifecycle::stop(&ctx, &args),
        Command::Restart(args) => lifecycle::restart(&ctx, &args),
        Command::Kill(args) => lifecycle::kill(&ctx, &args),
        Command::Remap(args) => remap::run(&ctx, &args),
        Command::Run { name } => return lifecycle::run(&ctx, &name),
        Command::Exec(args) => return lifecycle::exec(&ctx, &args),
        Command::Set(args) => set::run(&ctx, &args),
        Command::Units(cmd) => units::run(&ctx, cmd),
        Command::Net(cmd) => net::run(&ctx, cmd),
        Command::Proxy(args) => proxy::run(&ctx, args),
        Command::Certs(cmd) => certs::run(&ctx, cmd),
        Command::Demo { .. } | Command::ConsoleLog { .. } => {
            unreachable!("handled before the config is loaded")
        }
    }?;
    Ok(ExitCode::SUCCESS)
}
