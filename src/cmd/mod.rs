//! Dispatch: one module per command group, each thin.

mod init;
pub(crate) mod net;
mod tenants;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::context::Context;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Context::load(&cli.global)?;
    match cli.command {
        Command::Init => init::run(&ctx),
        Command::List => tenants::list(&ctx),
        Command::Status { name } => tenants::status(&ctx, &name),
        Command::Net(cmd) => net::run(&ctx, cmd),
    }?;
    Ok(ExitCode::SUCCESS)
}
