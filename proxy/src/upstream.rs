//! Connections to tenants: a pooled keep-alive HTTP/1.1 client per worker,
//! and the PROXY protocol v2 header when the host asks for one.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::forward::ReqBody;
use crate::Settings;

pub(crate) type Client = hyper_util::client::legacy::Client<Connector, ReqBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Plain TCP to the tenant, optionally opened with a PROXY v2 header.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    proxy_header: Option<Bytes>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let header = self.proxy_header.clone();
        Box::pin(async move {
            let mut io = connecting.await?;
            if let Some(header) = header {
                io.inner_mut().write_all(&header).await?;
            }
            Ok(io)
        })
    }
}

/// A client whose idle connections are kept for reuse. With a PROXY
/// header the client must serve one client connection only: the header
/// names that client.
pub(crate) fn client(settings: &Settings, proxy_header: Option<Bytes>) -> Client {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(Connector { http, proxy_header })
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
