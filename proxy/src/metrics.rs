//! Prometheus metrics, shared by every worker and served on the admin address.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// Empty when no tenant owns the host.
    pub tenant: Arc<str>,
    pub status: u16,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Histogram,
    pub open_connections: Gauge,
    pub refused_connections: Counter,
    pub tls_handshakes: Counter,
    pub tls_handshake_failures: Counter,
    pub reloads: Counter,
    pub routes: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Arc<Metrics> {
        let requests = Family::<RequestLabels, Counter>::default();
        // 250 us .. ~8 s
        let latency = Histogram::new(exponential_buckets(0.00025, 2.0, 16));
        let open_connections = Gauge::default();
        let refused_connections = Counter::default();
        let tls_handshakes = Counter::default();
        let tls_handshake_failures = Counter::default();
        let reloads = Counter::default();
        let routes = Gauge::default();
        let mut registry = Registry::with_prefix("sotolito_proxy");
        registry.register(
            "requests",
            "Requests answered, by tenant and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            latency.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
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
            latency,
            open_connections,
            refused_connections,
            tls_handshakes,
            tls_handshake_failures,
            reloads,
            routes,
        })
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
