//! `vpsctl init`: the state layout, created idempotently.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::context::Context;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    (|| -> anyhow::Result<()> {
        let host = &ctx.host;
        host.sys.files.ensure_layout()?;
        // Every tenant dir gets the private modes (those made before them, too).
        for t in host.store.list()? {
            host.sys.files.restrict(&t)?;
        }
        Ok(host.ensure_network()?)
    })()
    .context("failed to initialize")?;
    #[derive(Serialize)]
    struct Out<'a> {
        state_dir: &'a Path,
        config: &'a Path,
    }
    let out = Out {
        state_dir: &ctx.config().paths.state_dir,
        config: &ctx.loaded.path,
    };
    if ctx.json {
        crate::output::print_json(&out)?;
    } else {
        println!("initialized {}", out.state_dir.display());
    }
    Ok(())
}
