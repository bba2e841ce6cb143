//! `vpsctl image`: import, debootstrap, list, rm.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use sotolito_config::ImageName;
use sotolito_provisioner::image::{host_mirror, Debootstrap, ImportOptions};
use sotolito_provisioner::signal::parse_signal;
use sotolito_provisioner::{Image, ImageStore};

use crate::context::Context;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a rootfs directory, a rootfs .tar/.tar.gz, an OCI image layout
    /// (directory or tarball) or a `docker save` archive.
    Import {
        name: ImageName,
        path: PathBuf,
        /// Signal that shuts the image's init down, when the image's own
        /// config names none [default: SIGRTMIN+3, systemd's]
        #[arg(long, value_name = "SIG")]
        stop_signal: Option<String>,
    },
    /// Build a Debian image with systemd and openssh-server.
    Debootstrap {
        name: ImageName,
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Debian mirror [default: the host's apt source]
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// More packages, comma separated.
        #[arg(long, value_name = "PKG,...", value_delimiter = ',')]
        include: Vec<String>,
        #[arg(long, value_name = "SIG")]
        stop_signal: Option<String>,
    },
    /// A tiny image from the host's busybox-static (init, httpd on 80, a
    /// banner on 22): for tests and demos.
    Busybox { name: ImageName },
    /// List images.
    List,
    /// Remove an image no tenant uses.
    Rm { name: ImageName },
}

fn store(ctx: &Context) -> ImageStore {
    ImageStore::new(ctx.config().images_dir())
}

pub fn run(ctx: &Context, cmd: ImageCommand) -> anyhow::Result<()> {
    ctx.host.sys.files.ensure_layout()?;
    match cmd {
        ImageCommand::Import {
            name,
            path,
            stop_signal,
        } => {
            let img = (|| -> anyhow::Result<Image> {
                let sig = stop_signal.as_deref().map(parse_signal).transpose()?;
                Ok(store(ctx).import(&name, &path, &ImportOptions::new(sig))?)
            })()
            .with_context(|| format!("failed to import image {name}"))?;
            print_one(ctx, &img, "imported")
        }
        ImageCommand::Debootstrap {
            name,
            suite,
            mirror,
            include,
            stop_signal,
        } => {
            let img = (|| -> anyhow::Result<Image> {
                let sig = stop_signal.as_deref().map(parse_signal).transpose()?;
                let plan = Debootstrap {
                    suite,
                    mirror: mirror.unwrap_or_else(host_mirror),
                    include: include.into_iter().filter(|p| !p.is_empty()).collect(),
                };
                Ok(store(ctx).debootstrap(&name, &plan, sig)?)
            })()
            .with_context(|| format!("failed to build image {name}"))?;
            print_one(ctx, &img, "built")
        }
        ImageCommand::Busybox { name } => {
            let img = store(ctx)
                .import_built(
                    &name,
                    sotolito_provisioner::busybox::busybox_rootfs,
                    sotolito_provisioner::busybox::HOST_BUSYBOX,
                    15,
                )
                .with_context(|| format!("failed to build image {name}"))?;
            print_one(ctx, &img, "built")
        }
        ImageCommand::List => {
            let images = store(ctx).list().context("failed to list images")?;
            let views: Vec<ImageView> = images.iter().map(ImageView::from).collect();
            if ctx.json {
                return crate::output::print_json(&views);
            }
            println!(
                "{:<20} {:>10}  {:<5} {:<14} {:<20}  SOURCE",
                "NAME", "SIZE", "STOP", "FORMAT", "CREATED"
            );
            for v in views {
                println!(
                    "{:<20} {:>10}  {:<5} {:<14} {:<20}  {}",
                    v.name,
                    human_size(v.size),
                    v.stop_signal,
                    v.format,
                    v.created,
                    v.source
                );
            }
            Ok(())
        }
        ImageCommand::Rm { name } => {
            (|| -> anyhow::Result<()> {
                // Under the host lock: no provision can pick the image
                // meanwhile.
                let _lock = ctx.host.lock()?;
                let users: Vec<String> = ctx
                    .host
                    .store
                    .list()?
                    .into_iter()
                    .filter(|t| t.image == name)
                    .map(|t| t.name.to_string())
                    .collect();
                Ok(store(ctx).remove(&name, &users)?)
            })()
            .with_context(|| format!("failed to remove image {name}"))?;
            if !ctx.json {
                println!("removed image {name}");
            } else {
                crate::output::print_json(&serde_json::json!({"removed": name.to_string()}))?;
            }
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct ImageView {
    name: String,
    source: String,
    format: String,
    stop_signal: i32,
    created: String,
    size: u64,
    path: PathBuf,
}

impl From<&Image> for ImageView {
    fn from(i: &Image) -> ImageView {
        ImageView {
            name: i.meta.name.clone(),
            source: i.meta.source.clone(),
            format: i.meta.format.clone(),
            stop_signal: i.meta.stop_signal,
            created: i.meta.created.clone(),
            size: i.meta.size,
            path: i.rootfs(),
        }
    }
}

fn print_one(ctx: &Context, img: &Image, verb: &str) -> anyhow::Result<()> {
    if ctx.json {
        return crate::output::print_json(&ImageView::from(img));
    }
    println!(
        "{verb} image {} ({}, {}, stop signal {})",
        img.meta.name,
        img.meta.format,
        human_size(img.meta.size),
        img.meta.stop_signal
    );
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
