//! Prometheus metrics: ingest outcomes, HTTP requests, log and projector positions.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `recorded`, `duplicate`, `rejected` or `conflict`.
    pub outcome: &'static str,
    /// `http` or `kafka`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: i32,
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric Tally exports, registered once.
pub struct Metrics {
    registry: Registry,
    pub events: Family<OutcomeLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub log_entries: Gauge,
    pub projected_entries: Gauge,
    pub projector_lag: Gauge,
    pub kafka_lag: Family<PartitionLabels, Gauge>,
    pub kafka_stalled: Family<PartitionLabels, Gauge>,
    pub kafka_batch_size: Histogram,
    pub disk_available: Gauge,
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    /// In a cluster: 1 for each partition owned here, and whether it is restored.
    pub partition_owned: Family<PartitionLabels, Gauge>,
    pub partition_ready: Family<PartitionLabels, Gauge>,
    /// Entries restored from the changelog, and the last restore's duration, per partition.
    pub restored_entries: Family<PartitionLabels, Counter>,
    pub restore_milliseconds: Family<PartitionLabels, Gauge>,
    /// Entries this engine published to the changelog.
    pub published_entries: Counter,
    /// Log entries the changelog does not hold yet (a command waits for them).
    pub publish_lag: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tally");
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "events",
            "Usage events by outcome and source",
            events.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            request_seconds.clone(),
        );
        let log_entries = Gauge::default();
        registry.register(
            "log_entries",
            "Entries in the append-only log",
            log_entries.clone(),
        );
        let projected_entries = Gauge::default();
        registry.register(
            "projected_entries",
            "Log entries folded into the projections",
            projected_entries.clone(),
        );
        let projector_lag = Gauge::default();
        registry.register(
            "projector_lag_entries",
            "Log entries not yet folded",
            projector_lag.clone(),
        );
        let kafka_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "kafka_consumer_lag_messages",
            "Messages between the stored offset and the high watermark, per partition",
            kafka_lag.clone(),
        );
        let kafka_stalled = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "kafka_partition_stalled",
            "1 while a partition is behind and has not advanced for --kafka-stall-time",
            kafka_stalled.clone(),
        );
        let kafka_batch_size = batch_histogram();
        registry.register(
            "kafka_batch_size_messages",
            "Messages per appended Kafka batch",
            kafka_batch_size.clone(),
        );
        let partition_owned = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "cluster_partition_owned",
            "1 for each partition of the source topic this engine owns (--cluster)",
            partition_owned.clone(),
        );
        let partition_ready = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "cluster_partition_ready",
            "1 for each owned partition that is restored and read to its end",
            partition_ready.clone(),
        );
        let restored_entries = Family::<PartitionLabels, Counter>::default();
        registry.register(
            "changelog_restored_entries",
            "Log entries restored from the changelog, per partition",
            restored_entries.clone(),
        );
        let restore_milliseconds = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "changelog_last_restore_milliseconds",
            "How long the last restore of a partition from the changelog took",
            restore_milliseconds.clone(),
        );
        let published_entries = Counter::default();
        registry.register(
            "changelog_published_entries",
            "Log entries this engine published to the changelog",
            published_entries.clone(),
        );
        let publish_lag = Gauge::default();
        registry.register(
            "changelog_publish_lag_entries",
            "Log entries not yet known to be in the changelog",
            publish_lag.clone(),
        );
        let disk_available = Gauge::default();
        registry.register(
            "disk_available_bytes",
            "Free space on the data directory's file system (appends pause below --min-free-disk)",
            disk_available.clone(),
        );
        let webhook_deliveries = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Alert webhook delivery attempts by outcome (delivered, failed)",
            webhook_deliveries.clone(),
        );
        Metrics {
            webhook_deliveries,
            disk_available,
            registry,
            events,
            requests,
            request_seconds,
            log_entries,
            projected_entries,
            projector_lag,
            kafka_lag,
            kafka_stalled,
            kafka_batch_size,
            partition_owned,
            partition_ready,
            restored_entries,
            restore_milliseconds,
            published_entries,
            publish_lag,
        }
    }

    /// Sets the ownership gauges of every partition of the source topic (`partitions` of
    /// them), from the partitions owned here, each with whether it is ready.
    pub fn set_partitions(&self, partitions: i32, owned: &[(i32, bool)]) {
        for partition in 0..partitions {
            let labels = PartitionLabels { partition };
            let ready = owned.iter().find(|(p, _)| *p == partition).map(|(_, r)| *r);
            self.partition_owned
                .get_or_create(&labels)
                .set(i64::from(ready.is_some()));
            self.partition_ready
                .get_or_create(&labels)
                .set(i64::from(ready.unwrap_or(false)));
        }
    }

    pub fn count_events(&self, outcome: &'static str, source: &'static str, n: u64) {
        if n > 0 {
            self.events
                .get_or_create(&OutcomeLabels { outcome, source })
                .inc_by(n);
        }
    }

    pub fn count_webhook(&self, outcome: &'static str) {
        self.webhook_deliveries
            .get_or_create(&WebhookLabels { outcome })
            .inc();
    }

    pub fn set_kafka_lag(&self, partition: i32, lag: i64) {
        self.kafka_lag
            .get_or_create(&PartitionLabels { partition })
            .set(lag.max(0));
    }

    pub fn set_kafka_stalled(&self, partition: i32, stalled: bool) {
        self.kafka_stalled
            .get_or_create(&PartitionLabels { partition })
            .set(i64::from(stalled));
    }

    /// The text exposition, after setting the position and disk gauges.
    pub fn render(&self, log_entries: u64, projected: u64, disk_available: Option<u64>) -> String {
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(bytes) = disk_available {
            self.disk_available.set(as_gauge(bytes));
        }
        self.log_entries.set(as_gauge(log_entries));
        self.projected_entries.set(as_gauge(projected));
        self.projector_lag
            .set(as_gauge(log_entries.saturating_sub(projected)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
