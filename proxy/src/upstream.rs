//! Connections to tenants: per-worker pools of keep-alive HTTP/1.1
//! connections, and the PROXY protocol v2 header when the host asks for one.
//!
//! A connection is lent to one request and comes back when its response
//! body has ended, so a worker's requests never wait on another thread's
//! pool or on a shared lock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::ReqBody;

/// The largest response head a tenant may send, and what of a body waits
/// here for a slow client (HAProxy: 16 KiB in all, nginx: 4-8 KiB).
pub(crate) const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// Idle connections kept per tenant address; more are closed when returned.
const MAX_IDLE_PER_ADDR: usize = 512;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Http(hyper::Error),
}

/// Keep-alive connections to tenants, by address.
pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<ReqBody>>>>,
    connect_timeout: Duration,
    /// Sent first on every new connection; a pool with one serves a single
    /// client connection, since the header names that client.
    proxy_header: Option<Bytes>,
}

/// A pooled connection checked out by one request.
pub(crate) struct Checkout {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: SendRequest<ReqBody>,
}

impl Checkout {
    /// Back to the pool once the response is over; a connection the tenant
    /// closed (or will close) is dropped.
    pub(crate) fn release(self) {
        if !self.sender.is_closed() {
            self.pool.put(self.addr, self.sender);
        }
    }
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, proxy_header: Option<Bytes>) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            proxy_header,
        })
    }

    fn take(&self, addr: SocketAddr) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(&addr)?.pop()
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<ReqBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(sender);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<ReqBody>, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        if let Some(header) = &self.proxy_header {
            stream
                .write_all(header)
                .await
                .map_err(UpstreamError::Connect)?;
        }
        // Flat writes, as on the client side (see server/conn.rs). A response
        // the client does not read waits in this read buffer: bounded to
        // what a head may be plus one stream window (hyper's default grows
        // to ~400 KiB). A head over 64 KiB is refused (502), as the h1
        // engine refuses it.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .max_buf_size(UPSTREAM_READ_BUFFER)
            // The buffer bounds a head only roughly (a read may overshoot).
            .max_header_size(UPSTREAM_READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "tenant connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on an idle connection to `addr`, or a new one. A pooled
    /// connection the tenant closed meanwhile hands the request back unsent
    /// and the next one is tried.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Checkout), UpstreamError> {
        while let Some(mut sender) = self.take(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.checkout(addr, sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        // Boxed: the connect and handshake state would otherwise make every
        // request's future (moved several times per request) kilobytes larger.
        Box::pin(self.send_on_new(addr, req)).await
    }

    async fn send_on_new(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Checkout), UpstreamError> {
        let mut sender = self.connect(addr).await?;
        sender.ready().await.map_err(UpstreamError::Http)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Http)?;
        Ok((resp, self.checkout(addr, sender)))
    }

    fn checkout(self: &Arc<Self>, addr: SocketAddr, sender: SendRequest<ReqBody>) -> Checkout {
        Checkout {
            pool: self.clone(),
            addr,
            sender,
        }
    }
}

/// The PROXY protocol v2 header for a TCP connection from `src` to `dst`
/// (haproxy.org/download/2.6/doc/proxy-protocol.txt, section 2.2).
pub(crate) fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Bytes {
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let mut b = BytesMut::with_capacity(52);
    b.put_slice(SIGNATURE);
    b.put_u8(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.put_u8(0x11); // TCP over IPv4
            b.put_u16(12);
            b.put_slice(&s.octets());
            b.put_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            b.put_u8(0x21); // TCP over IPv6
            b.put_u16(36);
            b.put_slice(&v6(s).octets());
            b.put_slice(&v6(d).octets());
        }
    }
    b.put_u16(src.port());
    b.put_u16(dst.port());
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_header_for_ipv4() {
        let h = proxy_v2_header(
            "192.0.2.1:4321".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(
            &h[12..],
            &[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2, 0x10, 0xe1, 0x01, 0xbb]
        );
    }

    #[test]
    fn proxy_v2_header_for_mixed_families_is_ipv6() {
        let h = proxy_v2_header(
            "[2001:db8::1]:80".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[13], 0x21);
        assert_eq!(&h[14..16], &[0, 36]);
        assert_eq!(
            &h[32..48],
            &std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets()
        );
    }
}
