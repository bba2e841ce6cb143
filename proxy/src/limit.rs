//! Connection limits, overall and per client address, and each address's
//! budget of concurrent HTTP/2 streams, shared by all workers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// After a refusal the client may still be sending (the rest of a head
/// over the limit, a body, pipelined requests): closing a socket with
/// unread bytes resets the connection, and the reset throws away what the
/// socket still had to send, the refusal included. So the connection is
/// shut for writing and what arrives is read and dropped until the
/// client closes, [`LINGER_QUIET`] passes without a byte, [`LINGER_TIME`]
/// in all, or [`LINGER_BYTES`] (nginx's lingering close). A lingering
/// connection keeps its place in the connection limits.
pub(crate) const LINGER_QUIET: Duration = Duration::from_secs(1);
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(5);
pub(crate) const LINGER_BYTES: usize = 1024 * 1024;

pub(crate) struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    max_streams_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, Arc<Slot>>>,
}

/// One client address: its connections (changed under the map's lock) and
/// its open HTTP/2 streams (changed per stream, without the lock).
#[derive(Default)]
struct Slot {
    conns: AtomicUsize,
    streams: AtomicUsize,
}

/// Holds one connection's place; gives it back on drop.
pub(crate) struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
    slot: Arc<Slot>,
}

/// Holds one HTTP/2 stream's place in its address's budget until dropped
/// (when the response body has been sent or abandoned).
pub(crate) struct StreamPermit {
    slot: Arc<Slot>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerIp,
}

impl ConnLimiter {
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        max_streams_per_ip: usize,
    ) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_ip,
            max_streams_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let slot = per_ip.entry(ip).or_default();
        if slot.conns.load(Ordering::Relaxed) >= self.max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerIp);
        }
        slot.conns.fetch_add(1, Ordering::Relaxed);
        let slot = slot.clone();
        drop(per_ip);
        Ok(ConnPermit {
            limiter: self.clone(),
            ip,
            slot,
        })
    }
}

/// The HTTP/2 stream budget of one connection's address.
#[derive(Clone)]
pub(crate) struct StreamBudget {
    slot: Arc<Slot>,
    max: usize,
}

impl ConnPermit {
    pub(crate) fn stream_budget(&self) -> StreamBudget {
        StreamBudget {
            slot: self.slot.clone(),
            max: self.limiter.max_streams_per_ip,
        }
    }
}

impl StreamBudget {
    /// A place for one more stream, or `None` when the address has its
    /// budget's worth open.
    pub(crate) fn acquire(&self) -> Option<StreamPermit> {
        let before = self.slot.streams.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.slot.streams.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(StreamPermit {
            slot: self.slot.clone(),
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.slot.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.slot.conns.fetch_sub(1, Ordering::Relaxed) == 1 {
            // A stream that outlives its connection counts on in its own
            // (detached) slot: the address starts afresh.
            per_ip.remove(&self.ip);
        }
        drop(per_ip);
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_permits_return() {
        let l = ConnLimiter::new(3, 2, 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.acquire(a).unwrap();
        let _p2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(Refused::PerIp));
        let _p3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(Refused::Total));
        assert_eq!(l.open(), 3);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.acquire(a).unwrap();
    }

    #[test]
    fn an_address_shares_one_stream_budget_over_its_connections() {
        let l = ConnLimiter::new(10, 10, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (c1, c2, other) = (
            l.acquire(a).unwrap(),
            l.acquire(a).unwrap(),
            l.acquire(b).unwrap(),
        );
        let (b1, b2) = (c1.stream_budget(), c2.stream_budget());
        let s1 = b1.acquire().unwrap();
        let _s2 = b2.acquire().unwrap();
        let _s3 = b1.acquire().unwrap();
        assert!(b2.acquire().is_none(), "the address's fourth stream");
        assert!(
            other.stream_budget().acquire().is_some(),
            "another address is unaffected"
        );
        drop(s1);
        assert!(b2.acquire().is_some());
    }
}
