//! The park: keep-alive connections idle for longer than
//! `h1::PARK_AFTER` wait here, each a small record (its socket, limits,
//! balance count, drain token and idle deadline) instead of a task with
//! its request state. One task per worker waits on all of them; one that
//! becomes readable gets a connection task again, one whose idle deadline
//! passes is closed, and all of them close when the worker drains.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::balance::Assigned;
use super::conn::Conn;
use super::listen::{DrainToken, Worker};
use super::Kind;
use crate::h1::ClientTcp;
use crate::limit::ConnPermit;
use crate::upstream::Pool;

/// An idle client connection and what it holds.
pub(super) struct Parked {
    pub(super) io: ClientTcp,
    pub(super) peer: SocketAddr,
    pub(super) permit: ConnPermit,
    pub(super) _token: DrainToken,
    pub(super) _assigned: Assigned,
    /// Its idle deadline, from when its last request ended.
    pub(super) until: Instant,
}

/// `p` again once it is readable (a request, or its client closing: the
/// connection task finds out); `None` once its idle deadline passes. (A
/// plain function returning an `async move` block: an `async fn` would
/// keep a second copy of `p` in every parked connection.)
fn wait(mut p: Parked) -> impl Future<Output = Option<Parked>> {
    async move {
        let mut deadline = pin!(tokio::time::sleep_until(p.until));
        let readable = poll_fn(|cx| match p.io.poll_readable(cx) {
            Poll::Ready(r) => Poll::Ready(r.is_ok()),
            Poll::Pending => deadline.as_mut().poll(cx).map(|()| false),
        })
        .await;
        readable.then_some(p)
    }
}

impl Worker {
    /// Runs the worker's park until the worker drains, which closes every
    /// parked connection.
    pub(super) async fn run_park(
        self: Arc<Self>,
        mut arrivals: mpsc::UnboundedReceiver<Parked>,
        pool: Arc<Pool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let metrics = &self.shared.metrics;
        let mut parked = FuturesUnordered::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                p = arrivals.recv() => match p {
                    Some(p) => {
                        metrics.parked_connections.inc();
                        parked.push(wait(p));
                    }
                    None => break,
                },
                Some(woken) = parked.next(), if !parked.is_empty() => {
                    metrics.parked_connections.dec();
                    match woken {
                        Some(p) => self.resume(p, &pool, &shutdown),
                        None => {
                            metrics.open_connections.dec();
                        }
                    }
                }
            }
        }
        // What is dropped here closes; the gauges let go of it.
        arrivals.close();
        let was_parked = i64::try_from(parked.len()).unwrap_or(i64::MAX);
        let mut closed = was_parked;
        while arrivals.try_recv().is_ok() {
            closed += 1;
        }
        metrics.parked_connections.dec_by(was_parked);
        metrics.open_connections.dec_by(closed);
    }

    /// Gives a readable parked connection a connection task again.
    fn resume(self: &Arc<Self>, p: Parked, pool: &Arc<Pool>, shutdown: &watch::Receiver<bool>) {
        let conn = Conn {
            worker: self.clone(),
            peer: p.peer,
            pool: pool.clone(),
            shutdown: shutdown.clone(),
            permit: p.permit,
            _token: p._token,
            _assigned: p._assigned,
        };
        tokio::spawn(conn.serve(p.io, Kind::Http, true));
    }
}
