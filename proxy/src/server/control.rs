//! The control thread: the admin listener (`/metrics`, `/healthz`) and the
//! periodic certificate re-read, off the workers' runtimes.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::forward::Shared;

/// Runs until `shutdown` changes.
pub(super) async fn control(
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Some(listener) = admin {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                tokio::spawn(crate::admin::serve(
                    l,
                    shared.metrics.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => tracing::error!(error = %e, "admin listener unusable"),
        }
    }
    let mut tick = tokio::time::interval(shared.settings.cert_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(certs) = &shared.certs {
                    let certs = certs.clone();
                    // File reads stay off the runtime's thread.
                    let _ = tokio::task::spawn_blocking(move || certs.reload()).await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
