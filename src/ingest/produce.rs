//! `tally produce`: NDJSON from stdin, or synthetic load, to a Kafka topic keyed by tenant.
//!
//! The synthetic generator is pure and deterministic for a seed: a few hot tenants and
//! namespaces and a long cold tail, as real usage is.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use serde_json::json;

use crate::auth::DEFAULT_TENANT;
use crate::time::{self, UnixMicros};

/// The shape of synthetic load.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub events: u64,
    pub tenants: u32,
    pub namespaces: u32,
    /// Metric labels to draw from (the catalog's first `--meters`).
    pub metric_labels: Vec<String>,
    pub seed: u64,
    /// Event times fall in `[now - spread, now]`.
    pub spread: Duration,
    pub now: UnixMicros,
    /// `Some(n)`: events spread evenly over `n` fixed series (the realistic workload, where
    /// each series receives many events an hour); `None`: skewed tenants and namespaces with a
    /// long cold tail, nearly every event in a row of its own.
    pub series: Option<u32>,
}

/// Deterministic synthetic events: (tenant, JSON payload).
pub struct Synthetic {
    spec: SyntheticSpec,
    state: u64,
    produced: u64,
}

impl Synthetic {
    pub fn new(spec: SyntheticSpec) -> Synthetic {
        let state = spec.seed;
        Synthetic {
            spec,
            state,
            produced: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A skewed pick in `[0, n)`: u³ puts most of the mass on the first few indices.
    fn skewed(&mut self, n: u32) -> u32 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * f64::from(n)) as u32 % n.max(1)
    }
}

impl Iterator for Synthetic {
    type Item = (String, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.produced >= self.spec.events || self.spec.metric_labels.is_empty() {
            return None;
        }
        let n = self.produced;
        self.produced += 1;
        let meters = self.spec.metric_labels.len() as u64;
        let (tenant, namespace, pick, object) = match self.spec.series {
            // Series s: namespace s mod N (of tenant namespace mod T), then meter, then object.
            Some(series) => {
                let s = self.next_u64() % u64::from(series.max(1));
                let namespaces = u64::from(self.spec.namespaces.max(1));
                let namespace = s % namespaces;
                let tenant = namespace % u64::from(self.spec.tenants.max(1));
                let pick = ((s / namespaces) % meters) as usize;
                (tenant, namespace, pick, s / (namespaces * meters))
            }
            None => {
                let tenant = u64::from(self.skewed(self.spec.tenants));
                let namespace = u64::from(self.skewed(self.spec.namespaces));
                let pick = (self.next_u64() % meters) as usize;
                (tenant, namespace, pick, self.next_u64() % 8)
            }
        };
        let tenant = format!("tenant-{tenant}");
        let namespace = format!("ns-{namespace}");
        let metric = self
            .spec
            .metric_labels
            .get(pick)
            .cloned()
            .unwrap_or_default();
        let quantity = self.next_u64() % 10_000;
        let spread = i64::try_from(self.spec.spread.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let at = self.spec.now - (self.next_u64() % spread as u64) as i64;
        let payload = json!({
            "id": format!("syn-{:x}-{n}", self.spec.seed),
            "tenant": tenant,
            "namespace": namespace,
            "metric_label": metric,
            "quantity": quantity,
            "timestamp": time::format_rfc3339(at),
            "object_name": format!("obj-{object}"),
        });
        Some((tenant, payload.to_string().into_bytes()))
    }
}

/// The key a stdin line is produced with: its `tenant`, or the default tenant (a line that is
/// not JSON is sent as is; the engine dead-letters it with its offset).
pub fn key_of_line(line: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct TenantOnly {
        tenant: Option<String>,
    }
    serde_json::from_slice::<TenantOnly>(line)
        .ok()
        .and_then(|t| t.tenant)
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned())
}

/// Counts deliveries as the broker acknowledges them.
#[derive(Default)]
struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct CountingContext(Arc<DeliveryCounter>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((error, _)) => {
                tracing::warn!(%error, "delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What a produce run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProduceSummary {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// How the producer batches and compresses: what a well-configured Kafka producer does, so a
/// topic written by `tally produce` is read as fast as one written by a tuned client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSettings {
    /// `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// `linger.ms`: how long a batch waits to fill.
    pub linger_ms: u32,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            compression: "lz4".into(),
            linger_ms: 20,
        }
    }
}

/// The compression codecs librdkafka is built with here.
pub const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

/// An idempotent producer keyed by tenant.
pub struct TenantProducer {
    producer: ThreadedProducer<CountingContext>,
    counter: Arc<DeliveryCounter>,
    topic: String,
    sent: u64,
    started: Instant,
}

impl TenantProducer {
    /// A producer with the default [`ProducerSettings`] (lz4, 20 ms linger).
    pub fn new(brokers: &str, topic: &str) -> Result<TenantProducer, KafkaError> {
        Self::with_settings(brokers, topic, &ProducerSettings::default())
    }

    pub fn with_settings(
        brokers: &str,
        topic: &str,
        settings: &ProducerSettings,
    ) -> Result<TenantProducer, KafkaError> {
        let counter = Arc::new(DeliveryCounter::default());
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            // Named, not left to the default: which partition holds a tenant is part of the
            // contract (`partition_of_tenant`), for every producer of the topic.
            .set("partitioner", "consistent_random")
            .set("compression.type", &settings.compression)
            .set("linger.ms", settings.linger_ms.to_string())
            // Large batches: up to 10,000 messages or 1 MiB per partition request.
            .set("batch.num.messages", "10000")
            .set("batch.size", "1048576")
            .set("message.timeout.ms", "120000")
            .create_with_context(CountingContext(counter.clone()))?;
        Ok(TenantProducer {
            producer,
            counter,
            topic: topic.to_owned(),
            sent: 0,
            started: Instant::now(),
        })
    }

    /// Queues one message, waiting while the local queue is full. It goes to the partition
    /// [`partition_of_tenant`](crate::kafka::partition_of_tenant) names.
    pub fn send(&mut self, tenant: &str, payload: &[u8]) -> Result<(), KafkaError> {
        let mut record = BaseRecord::to(&self.topic).key(tenant).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits for every queued message to be acknowledged.
    pub fn finish(self) -> Result<ProduceSummary, KafkaError> {
        self.producer.flush(Duration::from_secs(120))?;
        Ok(ProduceSummary {
            sent: self.sent,
            delivered: self.counter.delivered.load(Ordering::Relaxed),
            failed: self.counter.failed.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        })
    }
}

/// Produces every non-blank NDJSON line of `input`; calls `progress` now and then.
pub fn produce_lines(
    producer: &mut TenantProducer,
    input: impl BufRead,
    mut progress: impl FnMut(u64),
) -> Result<(), ProduceError> {
    for line in input.split(b'\n') {
        let line = line.map_err(ProduceError::Input)?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        producer.send(&key_of_line(line), line)?;
        if producer.sent().is_multiple_of(1_000) {
            progress(producer.sent());
        }
    }
    Ok(())
}

/// Produces synthetic events, at most `rate` per second when given.
pub fn produce_synthetic(
    producer: &mut TenantProducer,
    events: Synthetic,
    rate: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<(), ProduceError> {
    let started = Instant::now();
    for (tenant, payload) in events {
        producer.send(&tenant, &payload)?;
        let sent = producer.sent();
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if sent.is_multiple_of(1_000) {
            progress(sent);
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot read input: {0}")]
    Input(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(events: u64) -> SyntheticSpec {
        SyntheticSpec {
            events,
            tenants: 50,
            namespaces: 200,
            metric_labels: vec!["http_lb_requests".into(), "data_transfer_bytes".into()],
            seed: 7,
            spread: Duration::from_secs(3_600),
            now: 1_800_000_000_000_000,
            series: None,
        }
    }

    #[test]
    fn a_series_workload_spreads_events_evenly_over_that_many_series() {
        let events: Vec<_> = Synthetic::new(SyntheticSpec {
            series: Some(400),
            ..spec(40_000)
        })
        .collect();
        let mut per_series: std::collections::HashMap<(String, String, String, String), u64> =
            Default::default();
        for (tenant, payload) in &events {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(v["tenant"], tenant.as_str());
            let part = |f: &str| v[f].as_str().unwrap().to_owned();
            *per_series
                .entry((
                    part("tenant"),
                    part("namespace"),
                    part("metric_label"),
                    part("object_name"),
                ))
                .or_default() += 1;
        }
        assert_eq!(per_series.len(), 400);
        // 100 on average; uniform draws keep every series well above half of it.
        assert!(per_series.values().all(|&n| n >= 50), "{per_series:?}");
    }

    #[test]
    fn synthetic_load_is_deterministic_unique_and_skewed() {
        let a: Vec<_> = Synthetic::new(spec(20_000)).collect();
        let b: Vec<_> = Synthetic::new(spec(20_000)).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 20_000);
        let ids: std::collections::HashSet<_> = a
            .iter()
            .map(|(_, p)| {
                serde_json::from_slice::<serde_json::Value>(p).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 20_000);
        let hottest = a.iter().filter(|(t, _)| t == "tenant-0").count();
        let coldest = a.iter().filter(|(t, _)| t == "tenant-49").count();
        assert!(
            hottest > 10 * coldest.max(1),
            "hot {hottest} vs cold {coldest}"
        );
        // Every payload is a valid event keyed by its own tenant.
        let (tenant, payload) = &a[0];
        assert_eq!(&key_of_line(payload), tenant);
    }

    #[test]
    fn lines_are_keyed_by_their_tenant() {
        assert_eq!(key_of_line(br#"{"tenant":"acme","id":"x"}"#), "acme");
        assert_eq!(key_of_line(br#"{"id":"x"}"#), "default");
        assert_eq!(key_of_line(b"not json"), "default");
    }
}
