//! An upgraded connection (WebSocket and the like) after the tenant's
//! 101: bytes copied both ways, each side's end passed on to the other
//! (half-close), until both have ended or nothing moved for the idle
//! timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn::{send, ClientIo, Timer};
use super::local::Buf;

pub(crate) async fn run<T: ClientIo>(
    client: &mut T,
    tenant: &mut TcpStream,
    cbuf: &mut Buf,
    tbuf: &mut Buf,
    idle: Duration,
) {
    let mut timer = Timer::new();
    let (mut client_open, mut tenant_open) = (true, true);
    while client_open || tenant_open {
        let until = Instant::now() + idle;
        // Each branch borrows one side and its buffer.
        let step = timer
            .until(until, async {
                tokio::select! {
                    r = client.read(cbuf.spare()), if client_open => (true, r),
                    r = tenant.read(tbuf.spare()), if tenant_open => (false, r),
                }
            })
            .await;
        let Some((from_client, read)) = step else {
            tracing::debug!("upgraded connection idle; closed");
            return;
        };
        let n = match read {
            Ok(n) => n,
            Err(_) => return,
        };
        if from_client {
            if n == 0 {
                client_open = false;
                let _ = tenant.shutdown().await;
                continue;
            }
            cbuf.filled(n);
            if tenant.write_all(cbuf.data()).await.is_err() {
                return;
            }
            cbuf.consume(n);
        } else {
            if n == 0 {
                tenant_open = false;
                let _ = client.shutdown().await;
                continue;
            }
            tbuf.filled(n);
            if send(client, tbuf.data()).await.is_err() {
                return;
            }
            tbuf.consume(n);
        }
    }
}
