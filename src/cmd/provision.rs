//! `vpsctl provision` and `vpsctl deprovision`: the registry record, the
//! lease from sotolito-net, and the bundle, data, cfg and unit link from
//! sotolito-provisioner, wired together under the registry lock.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use clap::Args;
use sotolito_config::names::parse_connections;
use sotolito_config::tenant::FORMAT_VERSION;
use sotolito_config::{
    CpuWeight, Desired, DiskQuota, HostName, HttpPort, ImageName, Limits, MemorySize, Pids,
    SshPort, SwapLimit, Tenant, TenantName,
};
use sotolito_provisioner::data::{self, Seed};
use sotolito_provisioner::tenantfs::Owner;
use sotolito_provisioner::{bundle, disk, overlay, units, HookCommand, Image, TenantLayout};

use crate::cmd::{image, lifecycle};
use crate::context::Context;

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    pub name: TenantName,
    /// Image to boot (see vpsctl image list).
    #[arg(long)]
    pub image: ImageName,
    /// Host name the proxy routes to this tenant (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<HostName>,
    /// Public SSH port [default: the first free one in network.ssh_ports]
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<SshPort>,
    /// OpenSSH public key file for root (repeatable).
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// Tenant address [default: the first free one in network.subnet]
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<Ipv4Addr>,
    /// Port the tenant serves HTTP on.
    #[arg(long, value_name = "PORT", default_value = "80")]
    pub http_port: HttpPort,
    /// Memory limit, e.g. 512M, 2G [default: config defaults.memory]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<MemorySize>,
    /// CPU weight 1-10000 [default: config defaults.cpu_weight]
    #[arg(long, value_name = "WEIGHT")]
    pub cpu_weight: Option<CpuWeight>,
    /// Process limit [default: config defaults.pids]
    #[arg(long, value_name = "N")]
    pub pids: Option<Pids>,
    /// Concurrent connections the tenant may open (a tenant over it is
    /// refused new ones) [default: config defaults.connections]
    #[arg(long, value_name = "N", value_parser = parse_connections)]
    pub connections: Option<u32>,
    /// Writable storage (overlay upper layer plus /etc, /var, /home, /root
    /// together), e.g. 10G, or `unlimited` [default: config defaults.disk]
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<DiskQuota>,
    /// Swap beyond the memory limit: 0, a size, or unlimited [default:
    /// config defaults.swap]
    #[arg(long, value_name = "SIZE")]
    pub swap: Option<SwapLimit>,
    /// Never request an ACME certificate for this host (repeatable; one of
    /// the --host names).
    #[arg(long = "no-acme", value_name = "HOST")]
    pub no_acme: Vec<HostName>,
    /// Let the tenant create user, network and mount namespaces (Docker or
    /// Podman inside the VPS). This opens the kernel's unprivileged
    /// user-namespace surface to it; io_uring and the keyring stay refused.
    #[arg(long)]
    pub nesting: bool,
    /// Give the tenant a host id range of its own instead of the shared
    /// one (runtime.idmap_base): its root is then a different host user
    /// from every other tenant's.
    #[arg(long)]
    pub isolated_idmap: bool,
    /// Start it once provisioned.
    #[arg(long)]
    pub start: bool,
}

#[derive(Debug, Args)]
pub struct DeprovisionArgs {
    pub name: TenantName,
    /// Also delete the tenant's data (its /etc, /var, /home, /root and
    /// overlay upper layer).
    #[arg(long)]
    pub purge: bool,
    /// Seconds to wait after the stop signal before KILL.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

pub fn layout(ctx: &Context, name: &TenantName) -> TenantLayout {
    TenantLayout::new(&ctx.config().tenants_dir(), name)
}

pub fn cfg_path(ctx: &Context, name: &TenantName) -> PathBuf {
    ctx.config().tenant_cfg_dir().join(format!("{name}.cfg"))
}

/// The hooks call this very binary with this instance's config.
pub fn hook_command(ctx: &Context) -> anyhow::Result<HookCommand> {
    let exe = std::env::current_exe().context("cannot find the vpsctl binary")?;
    Ok(HookCommand {
        vpsctl: fs::canonicalize(&exe).unwrap_or(exe),
        config: ctx.loaded.path.clone(),
        state_dir: ctx.loaded.state_dir_override.clone(),
    })
}

/// The tenant's root as the host sees it: the owner of every file the host
/// makes in its tree, and the group its private dirs are traversable by.
/// Its mapped root; host root only for a tenant made before user
/// namespaces (which start refuses until `vpsctl remap`).
pub fn tenant_owner(_ctx: &Context, tenant: &Tenant) -> Owner {
    tenant.idmap.map_or(Owner::ROOT, |m| Owner {
        uid: m.host_id,
        gid: m.host_id,
    })
}

/// Writes the tenant's config.json (derived state, rewritten freely).
pub fn write_bundle(ctx: &Context, tenant: &Tenant) -> anyhow::Result<TenantLayout> {
    let layout = layout(ctx, &tenant.name);
    let cgroup = ctx.tenant_cgroup(&tenant.name)?.container();
    let spec = bundle::render_spec(tenant, &layout, Some(&hook_command(ctx)?), &cgroup)?;
    bundle::write_spec(&layout, &spec)?;
    restrict(ctx, tenant)?;
    Ok(layout)
}

/// The private modes on the tenant's dirs (tightens a tenant made before
/// them, too).
pub fn restrict(ctx: &Context, tenant: &Tenant) -> anyhow::Result<()> {
    let layout = layout(ctx, &tenant.name);
    sotolito_provisioner::private::restrict_tenant(&layout, tenant_owner(ctx, tenant))?;
    Ok(())
}

pub fn run(ctx: &Context, args: ProvisionArgs) -> anyhow::Result<()> {
    let name = args.name.clone();
    let start = args.start;
    let (tenant, outcome) =
        provision(ctx, args).with_context(|| format!("failed to provision tenant {name}"))?;
    if start {
        lifecycle::start_tenant(ctx, &name)
            .with_context(|| format!("provisioned tenant {name} but failed to start it"))?;
    }
    let view = crate::cmd::tenants::view(ctx, &tenant);
    if ctx.json {
        crate::output::print_json(&view)
    } else {
        let what = match outcome {
            Outcome::Unchanged => "already provisioned with these settings",
            Outcome::ReusedData => {
                "provisioned, reusing its kept data (its /etc, /root and authorized_keys as they were)"
            }
            Outcome::New => "provisioned",
        };
        println!(
            "{} {what}: ip {}, ssh port {}, image {}{}",
            tenant.name,
            tenant.ip,
            tenant.ssh_port,
            tenant.image,
            if start { ", running" } else { "" }
        );
        Ok(())
    }
}

/// What a provision did, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    New,
    /// A new record over data kept by an earlier deprovision.
    ReusedData,
    /// The record existed with the same settings.
    Unchanged,
}

fn provision(ctx: &Context, args: ProvisionArgs) -> anyhow::Result<(Tenant, Outcome)> {
    crate::cmd::init::ensure_layout(ctx)?;
    let config = ctx.config();
    let mut keys = Vec::new();
    for f in &args.ssh_keys {
        keys.extend(data::read_key_file(f)?);
    }
    if let Some(h) = args.no_acme.iter().find(|h| !args.hosts.contains(h)) {
        bail!("--no-acme {h} is not one of the tenant's hosts (add it with --host {h})");
    }
    let image = image::store(ctx).require(&args.image)?;
    let registry = ctx.registry();
    let lock = registry.lock()?;
    let existing = registry.get(&args.name)?;
    // An existing record keeps its quota unless one is given (`set --disk`
    // changes it); a new one gets the configured default.
    let disk_quota = args
        .disk
        .or(existing.as_ref().map(|t| t.disk))
        .unwrap_or(config.defaults.disk);
    let (ip, ssh_port) = match &existing {
        Some(t) => (args.ip.unwrap_or(t.ip), args.ssh_port.unwrap_or(t.ssh_port)),
        None => {
            let lease = sotolito_net::allocate(
                config,
                &registry.list()?,
                &args.name,
                args.ip,
                args.ssh_port,
            )?;
            (lease.ip, lease.ssh_port)
        }
    };
    // A record keeps its range (its files are owned by it); a new one gets
    // the shared range or a free one of its own.
    let idmap = match &existing {
        Some(t) if t.idmap.is_some_and(|m| m.isolated) == args.isolated_idmap => t.idmap,
        _ => Some(
            config
                .runtime
                .idmap_pool()
                .plan(&registry.list()?, args.isolated_idmap)?,
        ),
    };
    let tenant = Tenant {
        version: FORMAT_VERSION,
        name: args.name.clone(),
        image: args.image.clone(),
        ip,
        ssh_port,
        http_port: args.http_port,
        hosts: args.hosts.clone(),
        ssh_keys: keys,
        created: existing
            .as_ref()
            .map_or_else(SystemTime::now, |t| t.created),
        desired: existing.as_ref().map_or(
            if args.start {
                Desired::Running
            } else {
                Desired::Stopped
            },
            |t| t.desired,
        ),
        acme_opt_out: args.no_acme.clone(),
        // A limit flag left out keeps the record's value (it may have been
        // changed by `set`), or takes the host's default for a new record.
        limits: {
            let base = existing
                .as_ref()
                .map_or_else(|| config.defaults.limits(), |t| t.limits);
            Limits {
                memory: args.memory.unwrap_or(base.memory),
                cpu_weight: args.cpu_weight.unwrap_or(base.cpu_weight),
                pids: args.pids.unwrap_or(base.pids),
                swap: args.swap.or(base.swap),
                connections: args.connections.or(base.connections),
            }
        },
        nesting: args.nesting,
        disk: disk_quota,
        idmap,
    };
    if let Some(old) = &existing {
        let diff = old.differences(&tenant);
        if !diff.is_empty() {
            bail!(
                "tenant {} exists with other settings: {} (provision it with its current settings, or deprovision it first)",
                tenant.name,
                diff.join(", ")
            );
        }
    }
    registry.check_conflicts(&tenant)?;
    check_disk(&layout(ctx, &tenant.name), &tenant)?;
    // Everything below is idempotent: a rerun after a failure converges,
    // and a rerun with the same settings changes nothing.
    let seeded = apply(ctx, &tenant, &image)?;
    if existing.is_none() {
        registry.put(&lock, &tenant)?;
    }
    sotolito_net::add_forward(config, &tenant)?;
    let outcome = match (existing.is_some(), seeded) {
        (true, _) => Outcome::Unchanged,
        (false, true) => Outcome::New,
        (false, false) => Outcome::ReusedData,
    };
    Ok((tenant, outcome))
}

/// Refuses, before anything changes, a quota this host cannot enforce and
/// kept data that does not match the quota asked for.
fn check_disk(layout: &TenantLayout, tenant: &Tenant) -> anyhow::Result<()> {
    let name = &tenant.name;
    match tenant.disk {
        DiskQuota::Limit(_) => {
            disk::check_enforceable()?;
            if !disk::has_image(layout) && data::is_seeded(layout) {
                bail!(
                    "its kept data in {} is not on a disk image (provision it with --disk unlimited, then put it under a quota with vpsctl set {name} --disk SIZE while it is stopped)",
                    layout.data().display()
                );
            }
        }
        DiskQuota::Unlimited => {
            if let Some(size) = disk::image_size(layout) {
                bail!(
                    "its kept data is on a disk image of {} (provision it with --disk {})",
                    DiskQuota::Limit(size),
                    DiskQuota::Limit(size)
                );
            }
        }
    }
    Ok(())
}

/// Returns whether the data was seeded now.
/// The boot link is `start`'s and `stop`'s to set (a stopped tenant stays
/// stopped across a reboot); a running one that lost it gets it back.
fn apply(ctx: &Context, tenant: &Tenant, image: &Image) -> anyhow::Result<bool> {
    // The disk before the bundle: writing the bundle sets the modes of
    // data/, which is then the image's root.
    if let Some(bytes) = tenant.disk.bytes() {
        let layout = layout(ctx, &tenant.name);
        disk::create_image(&layout, bytes)?;
        disk::mount_data(tenant.name.as_str(), &layout)?;
        // A kept image of another size (or a `set --disk` cut short).
        if disk::image_size(&layout) != Some(bytes) {
            disk::resize(tenant.name.as_str(), &layout, bytes)?;
        }
    }
    let layout = write_bundle(ctx, tenant)?;
    let seed = Seed {
        hostname: tenant.name.to_string(),
        ip: tenant.ip,
        ssh_keys: tenant.ssh_keys.clone(),
        resolv_conf: data::resolv_conf_for_tenants(),
        owner: tenant_owner(ctx, tenant),
    };
    let seeded = data::seed(&layout, &image.rootfs(), &seed, tenant.idmap.as_ref())?;
    if seeded {
        tracing::info!(tenant = %tenant.name, image = %tenant.image, "data seeded");
    } else if let Some(map) = &tenant.idmap {
        // Data kept from a tenant that had another range (or none): it was
        // stopped by its deprovision, so its files can move.
        if let Some(s) = data::shift_into(&layout, map)? {
            tracing::info!(tenant = %tenant.name, idmap = %map, changed = s.changed, "kept data moved into the tenant's id range");
        }
    }
    let cfg = cfg_path(ctx, &tenant.name);
    let text = units::render_tenant_cfg(tenant.ip, &ctx.config().network.bridge);
    if fs::read_to_string(&cfg).ok().as_deref() != Some(text.as_str()) {
        sotolito_config::atomic::write(&cfg, text.as_bytes(), 0o644)?;
    }
    // The boot link follows the desired state: a tenant provisioned
    // without --start is not started by sotolito-vps.target at boot (as
    // `vpsctl boot` does not start it).
    if tenant.desired == Desired::Running {
        units::enable_instance(&ctx.config().paths.systemd_dir, &tenant.name)?;
    }
    Ok(seeded)
}

pub fn deprovision(ctx: &Context, args: DeprovisionArgs) -> anyhow::Result<()> {
    let name = args.name.clone();
    let kept =
        teardown(ctx, &args).with_context(|| format!("failed to deprovision tenant {name}"))?;
    if ctx.json {
        crate::output::print_json(
            &serde_json::json!({"deprovisioned": name.to_string(), "data_kept": kept}),
        )
    } else {
        if kept {
            let l = layout(ctx, &name);
            let place = if disk::has_image(&l) {
                l.disk_image()
            } else {
                l.data()
            };
            println!(
                "deprovisioned {name}; its data is kept in {} (remove it with --purge)",
                place.display()
            );
        } else {
            println!("deprovisioned {name}; its data is removed");
        }
        Ok(())
    }
}

/// Removes everything of a tenant by name, record or not (so a provision
/// that failed midway can always be cleared), going on past errors.
/// Returns whether data was kept.
fn teardown(ctx: &Context, args: &DeprovisionArgs) -> anyhow::Result<bool> {
    crate::cmd::init::ensure_layout(ctx)?;
    let name = &args.name;
    let config = ctx.config();
    let registry = ctx.registry();
    let lock = registry.lock()?;
    let tenant = registry.get(name)?;
    let layout = layout(ctx, name);
    let cfg = cfg_path(ctx, name);
    let link = units::instance_link(&config.paths.systemd_dir, name);
    let found = tenant.is_some()
        || layout.dir.exists()
        || cfg.exists()
        || fs::symlink_metadata(&link).is_ok()
        || ctx.runc().state(name.as_str()).ok().flatten().is_some();
    if !found {
        return Err(sotolito_config::Error::NotFound(name.clone()).into());
    }
    // A tenant that cannot be stopped keeps everything: removing its record
    // would leave a running container no command knows.
    let signal = tenant
        .as_ref()
        .map_or(sotolito_provisioner::signal::DEFAULT_STOP_SIGNAL, |t| {
            lifecycle::stop_signal(ctx, t)
        });
    lifecycle::stop_container(
        ctx,
        name,
        signal,
        std::time::Duration::from_secs(args.timeout),
    )?;

    let mut errors: Vec<String> = Vec::new();
    let mut note = |what: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            errors.push(format!("{what}: {e:#}"));
        }
    };
    if let Some(t) = &tenant {
        note(
            "ssh forward",
            sotolito_net::remove_forward(config, t).map_err(Into::into),
        );
        note(
            "record",
            registry.remove(&lock, name).map(|_| ()).map_err(Into::into),
        );
    }
    note(
        "unit link",
        units::disable_instance(&config.paths.systemd_dir, name).map_err(Into::into),
    );
    note("unit cfg", remove_file(&cfg));
    note("config.json", remove_file(&layout.config_json()));
    note("console log", remove_file(&layout.console_log()));
    note(
        "disk image",
        disk::unmount_data(&layout).map_err(Into::into),
    );
    let view = layout.image_view();
    if !overlay::is_mounted(&view) && view.exists() {
        note(
            "image view",
            fs::remove_dir(&view).with_context(|| format!("cannot remove {}", view.display())),
        );
    }
    let root = layout.rootfs();
    if overlay::is_mounted(&root) {
        note(
            "rootfs",
            Err(anyhow::anyhow!("{} is still mounted", root.display())),
        );
    } else if root.exists() {
        note(
            "rootfs",
            fs::remove_dir(&root).with_context(|| format!("cannot remove {}", root.display())),
        );
    }
    let mut kept = layout.data().exists() || disk::has_image(&layout);
    if args.purge {
        note(
            "lock file",
            remove_file(&sotolito_provisioner::lock::lock_path(
                &config.tenants_dir(),
                name,
            )),
        );
    }
    if args.purge
        && !overlay::is_mounted(&root)
        && !overlay::is_mounted(&layout.data())
        && layout.dir.exists()
    {
        note(
            "data",
            fs::remove_dir_all(&layout.dir)
                .with_context(|| format!("cannot remove {}", layout.dir.display())),
        );
        kept = false;
    } else if !kept && layout.dir.exists() {
        let _ = fs::remove_dir(&layout.dir);
    }
    if !errors.is_empty() {
        bail!("{} (rerun deprovision to finish)", errors.join("; "));
    }
    Ok(kept && !args.purge)
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
