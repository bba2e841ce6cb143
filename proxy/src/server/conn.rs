//! One client connection: TLS handshake, then HTTP/1 (the engine in
//! `h1`, or hyper behind the strict framing gate) or HTTP/2, each request handed to `forward`, and a
//! graceful close when the worker drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::balance::Assigned;
use super::listen::{DrainToken, Worker};
use super::park::Parked;
use super::Kind;
use crate::body::BudgetedBody;
use crate::forward::{self, ConnCtx};
use crate::gate::{Gate, Switch};
use crate::h1::{self, ClientIo, ClientTcp, Served};
use crate::headers::PeerValues;
use crate::limit::ConnPermit;
use crate::route::normalize_host;
use crate::stream::{GuardedStream, Timeouts};
use crate::upstream::{self, Pool};

const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_SEND_BUFFER: usize = 64 * 1024;
/// Streams a client may reset before the proxy accepted them, on one
/// connection, before it gets GOAWAY (ENHANCE_YOUR_CALM): the rapid-reset
/// attack (CVE-2023-44487). hyper's default, stated here because the
/// test `h2::rapid_reset_streams_end_the_connection` relies on it.
const H2_MAX_PENDING_RESETS: usize = 20;

/// A connection being served by `worker`; what it holds is given back
/// (limits, balance count, drain token) when it is dropped.
pub(super) struct Conn {
    pub(super) worker: Arc<Worker>,
    pub(super) peer: SocketAddr,
    pub(super) pool: Arc<Pool>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) permit: ConnPermit,
    pub(super) _token: DrainToken,
    pub(super) _assigned: Assigned,
}

impl Conn {
    /// (A plain function returning an `async move` block: an `async fn`
    /// would keep a second copy of its arguments in every connection's
    /// task.)
    ///
    /// `resumed`: a parked connection taken up again, already counted open.
    pub(super) fn serve(
        self,
        stream: ClientTcp,
        kind: Kind,
        resumed: bool,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let metrics = self.worker.shared.metrics.clone();
            if !resumed {
                metrics.open_connections.inc();
            }
            let settings = &self.worker.shared.settings;
            let proxy_header = settings.proxy_protocol.then(|| {
                let local = stream.local_addr().unwrap_or(self.peer);
                upstream::proxy_v2_header(self.peer, local)
            });
            let pool = match &proxy_header {
                Some(header) => Pool::new(settings.connect_timeout, Some(header.clone())),
                None => self.pool.clone(),
            };
            let trusted = settings
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&self.peer.ip()));
            let ctx = ConnCtx {
                shared: self.worker.shared.clone(),
                routes: self.worker.routes.clone(),
                stats: self.worker.stats.clone(),
                peer: self.peer,
                tls: false,
                sni: None,
                h2: false,
                pool,
                peer_values: PeerValues::new(self.peer.ip()),
                trusted,
                forwarded: Default::default(),
                switch: None,
                // PROXY headers name one client: its tenant connections
                // are not the worker's to pool.
                local: (settings.engine == crate::ProxyEngine::H1 && proxy_header.is_none())
                    .then(|| self.worker.local.clone()),
            };
            let served = match (kind, &self.worker.tls) {
                // Boxed, as the TLS and HTTP/2 states are kilobytes that every
                // plain connection's task would otherwise carry (and tokio's
                // spawn copies).
                (Kind::Https, Some(acceptor)) => {
                    Box::pin(self.serve_tls(stream, acceptor, ctx, proxy_header.as_deref())).await;
                    Served::Done
                }
                _ => self.serve_h1(stream, ctx, proxy_header.as_deref()).await,
            };
            match served {
                // Still open: the gauge counts it until the park lets go.
                Served::Park { io, until } => self.park(io, until),
                Served::Done => {
                    metrics.open_connections.dec();
                }
            }
        }
    }

    /// Hands an idle connection to its worker's park, with what it holds
    /// (limits, balance count, drain token); its task ends.
    fn park(self, io: ClientTcp, until: tokio::time::Instant) {
        let Conn {
            worker,
            peer,
            permit,
            _token,
            _assigned,
            ..
        } = self;
        let parked = Parked {
            io,
            peer,
            permit,
            _token,
            _assigned,
            until,
        };
        if worker.park.send(parked).is_err() {
            // The worker is draining: the connection closes.
            worker.shared.metrics.open_connections.dec();
        }
    }
    async fn serve_tls(
        &self,
        stream: ClientTcp,
        acceptor: &TlsAcceptor,
        mut ctx: ConnCtx,
        proxy_header: Option<&[u8]>,
    ) {
        let metrics = &self.worker.shared.metrics;
        let timeout = self.worker.shared.settings.header_read_timeout;
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                metrics.tls_handshakes.inc();
                tls
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed");
                metrics.tls_handshake_failures.inc();
                return;
            }
            Err(_) => {
                metrics.tls_handshake_failures.inc();
                return;
            }
        };
        let (_, session) = tls.get_ref();
        ctx.tls = true;
        ctx.sni = session
            .server_name()
            .and_then(normalize_host)
            .map(|s| s.into_owned().into_boxed_str());
        ctx.h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        if ctx.h2 {
            Box::pin(self.serve_h2(tls, ctx)).await;
        } else {
            // TLS buffers what it decrypts: never parked.
            self.serve_h1(tls, ctx, proxy_header).await;
        }
    }

    fn timeouts(&self) -> Timeouts {
        let s = &self.worker.shared.settings;
        Timeouts {
            header_read: s.header_read_timeout,
            idle: s.idle_timeout,
        }
    }

    fn serve_h1<'a, T>(
        &'a self,
        io: T,
        ctx: ConnCtx,
        proxy_header: Option<&'a [u8]>,
    ) -> impl Future<Output = Served<T>> + Send + 'a
    where
        T: ClientIo + 'static,
    {
        async move {
            let s = &self.worker.shared.settings;
            if s.engine == crate::ProxyEngine::H1 {
                let engine = h1::Engine {
                    ctx: &ctx,
                    local: &self.worker.local,
                    proxy_header,
                };
                // Boxed: the engine's state is only for HTTP/1 connections.
                return Box::pin(engine.serve(io, self.shutdown.clone())).await;
            }
            // Boxed: hyper's connection state is kilobytes that every
            // connection's task would otherwise carry, idle ones too.
            Box::pin(self.serve_hyper_h1(io, ctx)).await;
            Served::Done
        }
    }

    async fn serve_hyper_h1<T>(&self, io: T, mut ctx: ConnCtx)
    where
        T: ClientIo + 'static,
    {
        let s = &self.worker.shared.settings;
        let switch = Switch::default();
        ctx.switch = Some(switch.clone());
        let tunnel = switch.clone();
        let gate = Gate::new(s.max_header_bytes, switch);
        let io = GuardedStream::new(io, Some(gate), self.timeouts());
        let ctx = Arc::new(ctx);
        let svc = service_fn(move |req| forward::handle(ctx.clone(), req));
        let mut builder = http1::Builder::new();
        builder
            .max_buf_size(s.max_header_bytes.max(8192))
            .max_headers(s.max_headers)
            // GuardedStream times out slow heads and idle connections.
            .header_read_timeout(None)
            // One flat write per response: measured ~4% less CPU per
            // request than writev of head and body for small responses.
            .writev(false);
        let conn = builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        let mut shutdown = self.shutdown.clone();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %self.peer, error = %e, "connection ended");
                }
            }
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        // An upgraded connection is served by its tunnel: it keeps its
        // place in the limits and the gauge until that ends, as in the h1
        // engine (else one address could open WebSockets without bound).
        tunnel.tunnel_ended().await;
    }

    async fn serve_h2<T>(&self, io: T, ctx: ConnCtx)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let s = &self.worker.shared.settings;
        let io = GuardedStream::new(io, None, self.timeouts());
        let ctx = Arc::new(ctx);
        let budget = self.permit.stream_budget();
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            // Taken when the stream opens, given back when its response
            // body is done: a client that never reads keeps its places.
            let permit = budget.acquire();
            async move {
                let Some(permit) = permit else {
                    return Ok(forward::too_many_streams().map(|body| BudgetedBody {
                        body,
                        _permit: None,
                    }));
                };
                let resp = forward::handle(ctx, req).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| BudgetedBody {
                    body,
                    _permit: Some(permit),
                }))
            }
        });
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // Envoy's edge guidance: 64 KiB per stream, 1 MiB per connection
        // for what a client may send before we read it; and at most one
        // stream window of response queued per stream whatever windows the
        // client announces (hyper's default is 400 KiB: a client that
        // opens its windows and never reads pinned ~650 KiB per stream,
        // measured with benches/h2-memory).
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .adaptive_window(false)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_concurrent_streams(s.max_h2_streams)
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        let mut shutdown = self.shutdown.clone();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %self.peer, error = %e, "h2 connection ended");
                }
                return;
            }
            _ = shutdown.changed() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
