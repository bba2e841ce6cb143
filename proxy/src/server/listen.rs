//! Listening and accepting: each worker's SO_REUSEPORT sockets, its accept
//! loops, the connections other workers hand it, and the drain on
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::accept::Acceptor;
use super::balance::{Assigned, Balance, Handoff};
use super::conn::Conn;
use super::park::Parked;
use super::{Kind, Listen};
use crate::forward::Shared;
use crate::h1::{self, ClientTcp};
use crate::limit::ConnLimiter;
use crate::metrics::RequestShard;
use crate::route::RouteTable;
use crate::upstream::Pool;
use crate::Error;

/// Every listening socket, bound before any thread starts.
pub(super) struct Bound {
    /// Each worker's own sockets, one per listener kind.
    pub(super) per_worker: Vec<Vec<(std::net::TcpListener, Kind)>>,
    pub(super) admin_listener: Option<std::net::TcpListener>,
    pub(super) http: Option<SocketAddr>,
    pub(super) https: Option<SocketAddr>,
    pub(super) admin: Option<SocketAddr>,
}

/// Binds `listen`'s addresses, one SO_REUSEPORT socket per worker for
/// HTTP and (with `tls`) HTTPS, one admin socket. Errors name the address.
pub(super) fn bind(listen: &Listen, workers: usize, tls: bool) -> Result<Bound, Error> {
    let mut per_worker: Vec<Vec<(std::net::TcpListener, Kind)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = |addr: Option<SocketAddr>,
                     kind: Kind,
                     what: &'static str|
     -> Result<Option<SocketAddr>, Error> {
        let Some(mut addr) = addr else {
            return Ok(None);
        };
        for slot in per_worker.iter_mut() {
            let listener =
                bind_reuseport(addr).map_err(|source| Error::Bind { what, addr, source })?;
            // Port 0: the first socket picks, the others share it.
            addr = listener
                .local_addr()
                .map_err(|source| Error::Bind { what, addr, source })?;
            slot.push((listener, kind));
        }
        Ok(Some(addr))
    };
    let http = bound(listen.http, Kind::Http, "http")?;
    let https = if tls {
        bound(listen.https, Kind::Https, "https")?
    } else {
        None
    };
    let admin_listener = match listen.admin {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| Error::Bind {
                    what: "admin",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let admin = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(|source| {
            Error::Bind {
                what: "admin",
                addr: listen
                    .admin
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
                source,
            }
        })?),
        None => None,
    };
    Ok(Bound {
        per_worker,
        admin_listener,
        http,
        https,
        admin,
    })
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // HTTP and TLS clients speak first: a connection is woken for once,
    // with its request, instead of at the handshake's last ACK and again
    // when the request comes (measured: 9 % less CPU per request with a
    // new connection per request). One that sends nothing is accepted
    // after about a second and meets the request-head timeout.
    sotolito_sys::set_defer_accept(&socket, 1)?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One worker thread's state: its route table copy, request figures, TLS
/// acceptor and place in the balance.
pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) routes: Arc<ArcSwap<RouteTable>>,
    pub(super) stats: Arc<RequestShard>,
    pub(super) tls: Option<TlsAcceptor>,
    pub(super) limiter: Arc<ConnLimiter>,
    pub(super) index: usize,
    pub(super) balance: Arc<Balance>,
    /// The HTTP/1 engine's buffers and tenant connections.
    pub(super) local: Arc<h1::Local>,
    /// Idle connections go to this worker's park (super::park).
    pub(super) park: mpsc::UnboundedSender<Parked>,
}

/// Held by every connection task; the worker drains until all are gone.
pub(super) type DrainToken = mpsc::Sender<()>;

impl Worker {
    pub(super) async fn run(
        self,
        listeners: Vec<(std::net::TcpListener, Kind)>,
        inbox: mpsc::UnboundedReceiver<Handoff>,
        parked: mpsc::UnboundedReceiver<Parked>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        let pool = Pool::new(this.shared.settings.connect_timeout, None);
        let (token, mut drained) = mpsc::channel::<()>(1);
        // Connections wait on this worker's own channel: a pending wait is
        // re-registered (under the channel's lock) on every poll of its
        // connection, and a lock both workers take bounces between cores.
        let (local_tx, local_rx) = watch::channel(false);
        for (listener, kind) in listeners {
            // What is accepted is not registered with the runtime until
            // it has to wait (h1::ClientTcp).
            let listener = match Acceptor::new(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "listener unusable");
                    continue;
                }
            };
            tokio::spawn(this.clone().accept_loop(
                listener,
                kind,
                pool.clone(),
                local_rx.clone(),
                token.clone(),
            ));
        }
        tokio::spawn(this.clone().take_handoffs(
            inbox,
            pool.clone(),
            local_rx.clone(),
            token.clone(),
        ));
        tokio::spawn(
            this.clone()
                .run_park(parked, pool.clone(), local_rx.clone()),
        );
        drop(token);
        drop(local_rx);
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let _ = local_tx.send(true);
        let deadline = this.shared.settings.drain_timeout;
        if tokio::time::timeout(deadline, drained.recv())
            .await
            .is_err()
        {
            tracing::warn!(?deadline, "drain deadline passed; closing open connections");
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: Acceptor,
        kind: Kind,
        pool: Arc<Pool>,
        mut shutdown: watch::Receiver<bool>,
        token: DrainToken,
    ) {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the
                    // listener stays.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let permit = match self.limiter.acquire(peer.ip()) {
                Ok(p) => p,
                Err(why) => {
                    tracing::debug!(client = %peer, ?why, "connection refused by limit");
                    self.shared.metrics.refused_connections.inc();
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let target = self.balance.pick(self.index);
            if target != self.index {
                let handoff = Handoff {
                    stream,
                    peer,
                    kind,
                    permit,
                };
                self.balance.hand_over(target, Some(handoff));
                continue;
            }
            let conn = Conn {
                worker: self.clone(),
                peer,
                pool: pool.clone(),
                shutdown: shutdown.clone(),
                permit,
                _token: token.clone(),
                _assigned: Assigned {
                    balance: self.balance.clone(),
                    worker: self.index,
                },
            };
            tokio::spawn(conn.serve(ClientTcp::new(stream), kind, false));
        }
    }

    /// Serves the connections other workers handed over.
    async fn take_handoffs(
        self: Arc<Self>,
        mut inbox: mpsc::UnboundedReceiver<Handoff>,
        pool: Arc<Pool>,
        mut shutdown: watch::Receiver<bool>,
        token: DrainToken,
    ) {
        loop {
            let handoff = tokio::select! {
                h = inbox.recv() => match h {
                    Some(h) => h,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            let assigned = Assigned {
                balance: self.balance.clone(),
                worker: self.index,
            };
            let stream = ClientTcp::new(handoff.stream);
            let conn = Conn {
                worker: self.clone(),
                peer: handoff.peer,
                pool: pool.clone(),
                shutdown: shutdown.clone(),
                permit: handoff.permit,
                _token: token.clone(),
                _assigned: assigned,
            };
            tokio::spawn(conn.serve(stream, handoff.kind, false));
        }
    }
}
