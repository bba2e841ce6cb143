//! Where the proxy learns about tenants and certificates: a source sends
//! [`SourceEvent`]s down one channel, and the [`Watcher`] applies them to
//! the route table, republishes the tenants for ACME and reloads the
//! certificates. [`FileSource`] (the registry and the certs dir) is the
//! only place that polls files; another store feeds the same channel by
//! implementing [`RouteSource`]. The message contract is in docs/proxy.md.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sotolito_config::{Desired, HostName, HttpPort, NodeName, Registry, Tenant, TenantName};
use tokio::sync::{mpsc, watch};

use crate::route::RouteTable;
use crate::server::ProxyUpdater;
use crate::Error;

/// How often [`FileSource`] reads the registry's generation by default: a
/// provision is routed within this (plus one read of the records).
pub const REGISTRY_POLL: Duration = Duration::from_millis(100);
/// How often [`FileSource`] looks at the certs dir by default.
pub const CERT_POLL: Duration = Duration::from_secs(1);

/// What the proxy needs of one tenant record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRoute {
    pub name: TenantName,
    pub hosts: Vec<HostName>,
    pub ip: Ipv4Addr,
    pub http_port: HttpPort,
    pub desired: Desired,
    /// Hosts for which no ACME certificate is requested.
    pub acme_opt_out: Vec<HostName>,
    /// The fleet node the tenant lives on; `None` from this host's own
    /// registry.
    pub node: Option<NodeName>,
}

impl From<&Tenant> for TenantRoute {
    fn from(t: &Tenant) -> TenantRoute {
        TenantRoute {
            name: t.name.clone(),
            hosts: t.hosts.clone(),
            ip: t.ip,
            http_port: t.http_port,
            desired: t.desired,
            acme_opt_out: t.acme_opt_out.clone(),
            node: None,
        }
    }
}

/// The tenants as the watcher last applied them, sorted by name.
pub type Tenants = Arc<[TenantRoute]>;

/// One message from a source. Events apply in order, on top of the
/// tenants the proxy started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// Every tenant there is now; replaces all that came before.
    Snapshot(Vec<TenantRoute>),
    /// Tenants added or changed (whole records, matched by name) and
    /// tenants removed.
    Changed {
        upserted: Vec<TenantRoute>,
        removed: Vec<TenantName>,
    },
    /// Certificate files may have changed: re-read them.
    CertsChanged,
    /// The store cannot be read (sent once per distinct problem); what was
    /// applied before stays in force.
    Unavailable(String),
}

/// A store that reports tenants (and certificate changes) to the proxy.
pub trait RouteSource: Send + 'static {
    /// Sends events until `stop` changes or the receiver is gone.
    fn run(
        self,
        events: mpsc::Sender<SourceEvent>,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;
}

/// The tenants, kept from the events.
#[derive(Debug, Default)]
struct View {
    by_name: BTreeMap<TenantName, TenantRoute>,
}

/// What an event asks of the watcher.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Tenants,
    Certs,
    Problem(String),
}

impl View {
    fn new(tenants: Vec<TenantRoute>) -> View {
        let mut view = View::default();
        view.apply(SourceEvent::Snapshot(tenants));
        view
    }

    fn apply(&mut self, event: SourceEvent) -> Applied {
        match event {
            SourceEvent::Snapshot(tenants) => {
                self.by_name = tenants.into_iter().map(|t| (t.name.clone(), t)).collect();
                Applied::Tenants
            }
            SourceEvent::Changed { upserted, removed } => {
                for name in &removed {
                    self.by_name.remove(name);
                }
                for t in upserted {
                    self.by_name.insert(t.name.clone(), t);
                }
                Applied::Tenants
            }
            SourceEvent::CertsChanged => Applied::Certs,
            SourceEvent::Unavailable(problem) => Applied::Problem(problem),
        }
    }

    fn tenants(&self) -> Tenants {
        self.by_name.values().cloned().collect()
    }
}

/// Applies a source's events to a running proxy, on a thread of its own.
/// Dropping it stops the source.
#[derive(Debug)]
pub struct Watcher {
    stop: watch::Sender<bool>,
    tenants: watch::Receiver<Tenants>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts `source` and applies what it sends through `proxy`.
    /// `initial` are the tenants the proxy's routes were built from.
    pub fn start<S: RouteSource>(
        source: S,
        proxy: ProxyUpdater,
        initial: Vec<TenantRoute>,
    ) -> Result<Watcher, Error> {
        let view = View::new(initial);
        let (tenants_tx, tenants) = watch::channel(view.tenants());
        let (stop, stop_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Start {
                what: "route watcher runtime",
                source,
            })?;
        let thread = std::thread::Builder::new()
            .name("proxy-watch".into())
            .spawn(move || {
                rt.block_on(async move {
                    // Big enough that a source never waits on a busy
                    // watcher in practice; a full channel just slows it.
                    let (tx, rx) = mpsc::channel(64);
                    let source = tokio::spawn(source.run(tx, stop_rx));
                    follow(rx, view, proxy, tenants_tx).await;
                    let _ = source.await;
                });
            })
            .map_err(|source| Error::Start {
                what: "route watcher thread",
                source,
            })?;
        Ok(Watcher {
            stop,
            tenants,
            thread: Some(thread),
        })
    }

    /// The tenants as last applied; changes with every tenant event.
    pub fn tenants(&self) -> watch::Receiver<Tenants> {
        self.tenants.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Applies events until the source is gone.
async fn follow(
    mut events: mpsc::Receiver<SourceEvent>,
    mut view: View,
    proxy: ProxyUpdater,
    tenants: watch::Sender<Tenants>,
) {
    while let Some(event) = events.recv().await {
        match view.apply(event) {
            Applied::Tenants => {
                let list = view.tenants();
                proxy.set_routes(RouteTable::from_records(&list));
                tenants.send_replace(list);
            }
            Applied::Certs => {
                proxy.reload_certs();
            }
            Applied::Problem(p) => {
                tracing::warn!(error = %p, "registry unreadable; keeping the current routes");
            }
        }
    }
}

/// The file store: the registry's generation (its records read again when
/// it changes) and the certs dir's files (mtime and size), each polled.
#[derive(Debug)]
pub struct FileSource {
    registry: Option<(Registry, u64)>,
    registry_poll: Duration,
    certs: Option<PathBuf>,
    cert_poll: Duration,
}

impl Default for FileSource {
    fn default() -> Self {
        FileSource::new()
    }
}

impl FileSource {
    /// Watches nothing until told what.
    pub fn new() -> FileSource {
        FileSource {
            registry: None,
            registry_poll: REGISTRY_POLL,
            certs: None,
            cert_poll: CERT_POLL,
        }
    }

    /// Reports the registry's tenants when its generation moves on from
    /// `known` (the generation the proxy's routes were read at).
    pub fn registry(mut self, registry: Registry, known: u64) -> FileSource {
        self.registry = Some((registry, known));
        self
    }

    pub fn registry_poll(mut self, every: Duration) -> FileSource {
        self.registry_poll = every;
        self
    }

    /// Reports changes of the certificate files under `dir`.
    pub fn certs(mut self, dir: PathBuf, every: Duration) -> FileSource {
        self.certs = Some(dir);
        self.cert_poll = every;
        self
    }
}

impl RouteSource for FileSource {
    async fn run(self, events: mpsc::Sender<SourceEvent>, mut stop: watch::Receiver<bool>) {
        let tick = |every: Duration| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut registry_tick = tick(self.registry_poll);
        let mut cert_tick = tick(self.cert_poll);
        let (registry, mut generation) = match self.registry {
            Some((r, g)) => (Some(r), g),
            None => (None, 0),
        };
        // None: not looked at yet, so the first look always reports (the
        // store re-reads only what changed since it loaded).
        let mut cert_stamps = None;
        let mut last_problem: Option<String> = None;
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return,
                _ = registry_tick.tick(), if registry.is_some() => {
                    let Some(registry) = &registry else { continue };
                    // A broken registry is reported once per distinct
                    // problem, not ten times a second.
                    let (event, problem) = match registry.generation() {
                        Ok(g) if g != generation => match registry.list() {
                            Ok(tenants) => {
                                generation = g;
                                let tenants = tenants.iter().map(TenantRoute::from).collect();
                                (Some(SourceEvent::Snapshot(tenants)), None)
                            }
                            Err(e) => (None, Some(e.to_string())),
                        },
                        Ok(_) => (None, None),
                        Err(e) => (None, Some(e.to_string())),
                    };
                    let new_problem = problem.as_ref().filter(|p| last_problem.as_ref() != Some(*p));
                    let event = event.or_else(|| new_problem.cloned().map(SourceEvent::Unavailable));
                    last_problem = problem;
                    event
                }
                _ = cert_tick.tick(), if self.certs.is_some() => {
                    let Some(dir) = &self.certs else { continue };
                    let dir = dir.clone();
                    // File reads stay off this runtime's thread.
                    let stamps = tokio::task::spawn_blocking(move || crate::tls::dir_stamps(&dir))
                        .await
                        .ok();
                    let changed = stamps.is_some() && stamps != cert_stamps;
                    cert_stamps = stamps.or(cert_stamps);
                    changed.then_some(SourceEvent::CertsChanged)
                }
            };
            if let Some(event) = event {
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: &str, ip: u8) -> TenantRoute {
        TenantRoute {
            name: TenantName::new(name).unwrap(),
            hosts: vec![HostName::new(host).unwrap()],
            ip: Ipv4Addr::new(10, 0, 0, ip),
            http_port: HttpPort::DEFAULT,
            desired: Desired::Running,
            acme_opt_out: Vec::new(),
            node: None,
        }
    }

    fn names(view: &View) -> Vec<String> {
        view.tenants().iter().map(|t| t.name.to_string()).collect()
    }

    #[test]
    fn a_snapshot_replaces_everything_and_is_sorted_by_name() {
        let mut view = View::new(vec![route("old", "old.example.net", 2)]);
        let applied = view.apply(SourceEvent::Snapshot(vec![
            route("zed", "z.example.net", 3),
            route("abe", "a.example.net", 4),
        ]));
        assert_eq!(applied, Applied::Tenants);
        assert_eq!(names(&view), ["abe", "zed"]);
    }

    #[test]
    fn changes_upsert_by_name_and_remove() {
        let mut view = View::new(vec![
            route("a", "a.example.net", 2),
            route("b", "b.example.net", 3),
        ]);
        let moved = route("a", "a.example.net", 9);
        let applied = view.apply(SourceEvent::Changed {
            upserted: vec![moved.clone(), route("c", "c.example.net", 4)],
            removed: vec![TenantName::new("b").unwrap()],
        });
        assert_eq!(applied, Applied::Tenants);
        assert_eq!(names(&view), ["a", "c"]);
        assert_eq!(view.tenants()[0], moved);
        // Removing what is not there changes nothing else.
        view.apply(SourceEvent::Changed {
            upserted: Vec::new(),
            removed: vec![TenantName::new("nobody").unwrap()],
        });
        assert_eq!(names(&view), ["a", "c"]);
    }

    async fn next(rx: &mut mpsc::Receiver<SourceEvent>) -> SourceEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the source is running")
    }

    /// Nothing arrives for ten polls.
    async fn quiet(rx: &mut mpsc::Receiver<SourceEvent>) {
        let got = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
        assert!(got.is_err(), "unexpected event: {got:?}");
    }

    #[test]
    fn the_file_source_reports_each_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("registry"));
        registry.create().unwrap();
        let certs = dir.path().join("certs");
        let record = |name: &str| {
            Tenant::from_toml(&format!(
                "version = 1\nname = {name:?}\nimage = \"busybox\"\nip = \"10.0.0.2\"\n\
                 ssh_port = 2201\nhosts = [\"a.example.net\"]\ncreated = \"2026-11-28T10:00:00Z\"\n\
                 desired = \"running\"\n[limits]\nmemory = \"512M\"\ncpu_weight = 100\npids = 4096\n"
            ))
            .unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(8);
            let (_stop, stop) = watch::channel(false);
            let source = FileSource::new()
                .registry(Registry::new(dir.path().join("registry")), 0)
                .registry_poll(Duration::from_millis(10))
                .certs(certs.clone(), Duration::from_millis(10));
            tokio::spawn(source.run(tx, stop));
            // The first look at the certs dir always reports; the registry
            // is at the generation it was started with: nothing.
            assert_eq!(next(&mut rx).await, SourceEvent::CertsChanged);
            quiet(&mut rx).await;

            let lock = registry.lock().unwrap();
            registry.put(&lock, &record("acme")).unwrap();
            drop(lock);
            match next(&mut rx).await {
                SourceEvent::Snapshot(t) => assert_eq!(t, [TenantRoute::from(&record("acme"))]),
                other => panic!("expected a snapshot, got {other:?}"),
            }
            quiet(&mut rx).await;

            // An unreadable registry: one report, however many polls.
            let generation = dir.path().join("registry/generation");
            std::fs::rename(&generation, dir.path().join("saved")).unwrap();
            std::fs::create_dir(&generation).unwrap();
            assert!(matches!(next(&mut rx).await, SourceEvent::Unavailable(_)));
            quiet(&mut rx).await;
            std::fs::remove_dir(&generation).unwrap();
            std::fs::rename(dir.path().join("saved"), &generation).unwrap();
            quiet(&mut rx).await;

            let host = certs.join("a.example.net");
            std::fs::create_dir_all(&host).unwrap();
            std::fs::write(host.join("fullchain.pem"), "x").unwrap();
            assert_eq!(next(&mut rx).await, SourceEvent::CertsChanged);
            quiet(&mut rx).await;
        });
    }

    #[test]
    fn problems_and_certificate_changes_keep_the_tenants() {
        let mut view = View::new(vec![route("a", "a.example.net", 2)]);
        assert_eq!(
            view.apply(SourceEvent::Unavailable("disk on fire".into())),
            Applied::Problem("disk on fire".into())
        );
        assert_eq!(view.apply(SourceEvent::CertsChanged), Applied::Certs);
        assert_eq!(names(&view), ["a"]);
    }
}
