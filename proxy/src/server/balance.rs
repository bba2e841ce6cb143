//! Worker balance: which worker serves a connection another accepted, the
//! handoff between them, and the `worker_connections` gauge.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use tokio::sync::mpsc;

use super::Kind;
use crate::limit::ConnPermit;

/// A connection accepted by one worker for another to serve.
pub(super) struct Handoff {
    pub(super) stream: std::net::TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) kind: Kind,
    pub(super) permit: ConnPermit,
}

/// Spreads connections evenly over the workers. The kernel hashes
/// connections onto the SO_REUSEPORT listeners, which for a few dozen
/// clients leaves one worker with a quarter more of them than another
/// (measured): that worker's requests wait longer. A worker that accepts
/// while holding more connections than another hands the new one over.
pub(super) struct Balance {
    /// Connections each worker serves or is about to.
    assigned: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Balance {
    pub(super) fn new(workers: usize) -> (Arc<Balance>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Balance {
            assigned: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders,
        };
        (Arc::new(balance), receivers)
    }

    /// Which worker serves a connection `me` accepted; counts it there.
    pub(super) fn pick(&self, me: usize) -> usize {
        let mine = self.assigned[me].load(Ordering::Relaxed);
        let (least, count) = self
            .assigned
            .iter()
            .enumerate()
            .map(|(i, a)| (i, a.load(Ordering::Relaxed)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((me, mine));
        // Ties stay with the accepting worker: no handoff between equals.
        let target = if count < mine { least } else { me };
        self.assigned[target].fetch_add(1, Ordering::Relaxed);
        target
    }

    /// Sends `handoff` to worker `target`, which [`Balance::pick`] chose.
    /// A worker that stopped takes nothing: its count is given back and
    /// the connection closes.
    pub(super) fn hand_over(&self, target: usize, handoff: Option<Handoff>) {
        let sent = handoff.is_some_and(|h| self.inboxes[target].send(h).is_ok());
        if !sent {
            self.assigned[target].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One connection counted on its worker until dropped.
pub(super) struct Assigned {
    pub(super) balance: Arc<Balance>,
    pub(super) worker: usize,
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.balance.assigned[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("assigned", &self.assigned)
            .finish_non_exhaustive()
    }
}

/// `worker_connections{worker}`: what each worker serves, so an operator
/// (and a test) can see the spread.
impl Collector for Balance {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "worker_connections",
            "Client connections each worker serves",
            None,
            MetricType::Gauge,
        )?;
        for (i, n) in self.assigned.iter().enumerate() {
            let n = i64::try_from(n.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            family
                .encode_family(&[("worker", i.to_string())])?
                .encode_gauge(&n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balance) -> Vec<usize> {
        b.assigned
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn connections_go_to_the_least_loaded_worker() {
        let (b, _inboxes) = Balance::new(3);
        // Equal loads: the accepting worker keeps its connection.
        assert_eq!(b.pick(0), 0);
        assert_eq!(counts(&b), [1, 0, 0]);
        assert_eq!(b.pick(0), 1);
        assert_eq!(counts(&b), [1, 1, 0]);
        assert_eq!(b.pick(0), 2);
        assert_eq!(b.pick(0), 0);
        assert_eq!(counts(&b), [2, 1, 1]);
        // A burst on one listener spreads evenly.
        for _ in 0..30 {
            b.pick(1);
        }
        let c = counts(&b);
        assert_eq!(c.iter().sum::<usize>(), 34);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
    }

    #[test]
    fn a_finished_connection_frees_its_place() {
        let (b, _inboxes) = Balance::new(2);
        let w = b.pick(1);
        let assigned = Assigned {
            balance: b.clone(),
            worker: w,
        };
        assert_eq!(counts(&b), [0, 1]);
        drop(assigned);
        assert_eq!(counts(&b), [0, 0]);
    }
}
