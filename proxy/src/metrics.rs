//! Prometheus metrics, served on the admin address.
//!
//! The per-request figures (requests by tenant and status, the latency
//! histogram) are kept per worker and summed when scraped: a counter or
//! lock that every worker writes on every request bounces its cache line
//! between cores, which cost more than the rest of the bookkeeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// Empty when no tenant owns the host.
    pub tenant: Arc<str>,
    pub status: u16,
}

/// Upper bounds of the latency buckets in seconds: 250 us doubling to ~8 s.
const LATENCY_BUCKETS: usize = 16;

fn bucket_bound(i: usize) -> f64 {
    0.00025 * f64::from(1u32 << i)
}

/// Tenant -> (status, count).
type RequestCounts = HashMap<Arc<str>, Vec<(u16, u64)>>;

/// One worker's request figures. Only its worker writes them (plain loads
/// and stores, no read-modify-write); the scrape reads them.
#[derive(Debug, Default)]
pub(crate) struct RequestShard {
    /// The lock is only ever contended by a scrape.
    requests: Mutex<RequestCounts>,
    /// Per bucket (not cumulative), the last one +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    count: AtomicU64,
    /// f64 bits.
    sum: AtomicU64,
}

impl RequestShard {
    /// Counts one answered request that took `seconds` to its response head.
    pub(crate) fn record(&self, tenant: &Arc<str>, status: u16, seconds: f64) {
        {
            let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let by_status = match requests.get_mut(&**tenant) {
                Some(v) => v,
                None => requests.entry(tenant.clone()).or_default(),
            };
            match by_status.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => by_status.push((status, 1)),
            }
        }
        let bucket = (0..LATENCY_BUCKETS)
            .find(|&i| seconds <= bucket_bound(i))
            .unwrap_or(LATENCY_BUCKETS);
        bump(&self.buckets[bucket]);
        bump(&self.count);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + seconds;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

/// `+= 1` by the shard's only writer.
fn bump(a: &AtomicU64) {
    a.store(a.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Sums the shards at scrape time.
#[derive(Debug, Default)]
struct RequestCollector {
    shards: Mutex<Vec<Arc<RequestShard>>>,
}

impl Collector for RequestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut requests: HashMap<RequestLabels, u64> = HashMap::new();
        let mut buckets = [0u64; LATENCY_BUCKETS + 1];
        let (mut count, mut sum) = (0u64, 0f64);
        for shard in &shards {
            for (tenant, by_status) in shard
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                for &(status, n) in by_status {
                    let labels = RequestLabels {
                        tenant: tenant.clone(),
                        status,
                    };
                    *requests.entry(labels).or_default() += n;
                }
            }
            for (total, b) in buckets.iter_mut().zip(&shard.buckets) {
                *total += b.load(Ordering::Relaxed);
            }
            count += shard.count.load(Ordering::Relaxed);
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
        }
        let mut family = encoder.encode_descriptor(
            "requests",
            "Requests answered, by tenant and status",
            None,
            MetricType::Counter,
        )?;
        let mut sorted: Vec<_> = requests.into_iter().collect();
        sorted.sort_by(|a, b| (&a.0.tenant, a.0.status).cmp(&(&b.0.tenant, b.0.status)));
        for (labels, n) in &sorted {
            family
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut histogram = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from request head to response head",
            None,
            MetricType::Histogram,
        )?;
        let bounds: Vec<(f64, u64)> = buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let bound = if i < LATENCY_BUCKETS {
                    bucket_bound(i)
                } else {
                    f64::INFINITY
                };
                (bound, n)
            })
            .collect();
        histogram.encode_histogram::<NoLabelSet>(sum, count, &bounds, None)
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Arc<RequestCollector>,
    pub open_connections: Gauge,
    pub parked_connections: Gauge,
    pub refused_connections: Counter,
    pub tls_handshakes: Counter,
    pub tls_handshake_failures: Counter,
    pub reloads: Counter,
    pub routes: Gauge,
}

impl Metrics {
    #[cfg(test)]
    pub(crate) fn new() -> Arc<Metrics> {
        Metrics::with_collectors(Vec::new())
    }

    /// With more figures, computed at scrape time by `extra`.
    pub(crate) fn with_collectors(extra: Vec<Box<dyn Collector>>) -> Arc<Metrics> {
        let requests = Arc::new(RequestCollector::default());
        let open_connections = Gauge::default();
        let parked_connections = Gauge::default();
        let refused_connections = Counter::default();
        let tls_handshakes = Counter::default();
        let tls_handshake_failures = Counter::default();
        let reloads = Counter::default();
        let routes = Gauge::default();
        let mut registry = Registry::with_prefix("sotolito_proxy");
        registry.register_collector(Box::new(requests.clone()));
        for c in extra {
            registry.register_collector(c);
        }
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "parked_connections",
            "Idle keep-alive client connections parked (counted in open_connections too)",
            parked_connections.clone(),
        );
        registry.register(
            "refused_connections",
            "Client connections closed at once by the connection limits",
            refused_connections.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes",
            tls_handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed or timed out TLS handshakes",
            tls_handshake_failures.clone(),
        );
        registry.register("reloads", "Route table reloads", reloads.clone());
        registry.register("routes", "Host names in the route table", routes.clone());
        Arc::new(Metrics {
            registry,
            requests,
            open_connections,
            parked_connections,
            refused_connections,
            tls_handshakes,
            tls_handshake_failures,
            reloads,
            routes,
        })
    }

    /// A new worker's request figures, summed into every scrape from now on.
    pub(crate) fn request_shard(&self) -> Arc<RequestShard> {
        let shard = Arc::new(RequestShard::default());
        self.requests
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shard.clone());
        shard
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_sums_every_workers_figures() {
        let m = Metrics::new();
        let (a, b) = (m.request_shard(), m.request_shard());
        let t: Arc<str> = Arc::from("t1");
        a.record(&t, 200, 0.0001);
        b.record(&t, 200, 0.003);
        b.record(&Arc::from("t1"), 502, 100.0);
        a.record(&Arc::from(""), 404, 0.0002);
        let text = m.encode();
        for line in [
            "sotolito_proxy_requests_total{tenant=\"t1\",status=\"200\"} 2",
            "sotolito_proxy_requests_total{tenant=\"t1\",status=\"502\"} 1",
            "sotolito_proxy_requests_total{tenant=\"\",status=\"404\"} 1",
            "sotolito_proxy_request_duration_seconds_count 4",
            // Buckets are cumulative: 0.00025 holds the two fast ones.
            "sotolito_proxy_request_duration_seconds_bucket{le=\"0.00025\"} 2",
            "sotolito_proxy_request_duration_seconds_bucket{le=\"0.004\"} 3",
            "sotolito_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 4",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.contains("# TYPE sotolito_proxy_requests counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sotolito_proxy_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
