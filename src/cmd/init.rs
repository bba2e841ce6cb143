//! `vpsctl init`: the state layout, created idempotently.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::context::Context;

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    // A fleet node registers again: its addresses may have changed.
    let node = match (&ctx.fleet, &ctx.config().cluster) {
        (Some(fleet), Some(cluster)) => Some(crate::context::register(
            ctx.config(),
            cluster,
            fleet.range,
        )?),
        _ => None,
    };
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
        /// The fleet node this host registered as; null without `[cluster]`.
        node: Option<&'a sotolito_fleet::NodeRecord>,
    }
    let out = Out {
        state_dir: &ctx.config().paths.state_dir,
        config: &ctx.loaded.path,
        node: node.as_ref(),
    };
    if ctx.json {
        crate::output::print_json(&out)?;
    } else {
        println!("initialized {}", out.state_dir.display());
        if let Some(n) = &node {
            println!("node {} registered: tenant subnet {}", n.name, n.subnet);
        }
    }
    Ok(())
}
