//! The control thread: the admin listener (`/metrics`, `/healthz`), off
//! the workers' runtimes. Certificates are re-read when the route source
//! says so (`source::Watcher`).

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
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
