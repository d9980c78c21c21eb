//! Kafka client pieces that the consumer, the tools and the cluster share: the partition a
//! tenant's messages go to, bare consumers, and high watermarks as the broker reports them in
//! fetch responses, learnt from librdkafka's statistics: the end of each partition, for lag
//! and for knowing when a drain is done.
//!
//! The rdkafka crate exposes watermarks only through ListOffsets, which Tansu 0.6 answers for
//! `latest` with the base offset of the newest record batch plus one (too low by up to a
//! batch). Fetch responses carry the true high watermark, and the statistics report it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::Statistics;

/// The partition a message keyed by `tenant` goes to on a topic of `partitions`, as this
/// producer sends it: librdkafka's `consistent_random` partitioner, CRC-32 (zlib's) of the key
/// modulo the partition count. `None` for an empty key (sent to a random partition) or no
/// partitions. Java clients partition by murmur2 instead; a topic must have one partitioner.
pub fn partition_of_tenant(tenant: &str, partitions: i32) -> Option<i32> {
    let partitions = u32::try_from(partitions).ok().filter(|&n| n > 0)?;
    if tenant.is_empty() {
        return None;
    }
    i32::try_from(crc32fast::hash(tenant.as_bytes()) % partitions).ok()
}

/// How often librdkafka emits statistics (the `statistics.interval.ms` to configure).
pub const STATISTICS_INTERVAL_MS: &str = "1000";

/// The newest high watermark seen per (topic, partition); cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct FetchedWatermarks {
    high: Arc<Mutex<BTreeMap<(String, i32), i64>>>,
}

impl FetchedWatermarks {
    /// Takes the high watermarks out of one statistics report (unknown ones are -1).
    pub fn record(&self, statistics: &Statistics) {
        let Ok(mut high) = self.high.lock() else {
            return;
        };
        for (topic, stats) in &statistics.topics {
            for (&partition, partition_stats) in &stats.partitions {
                if partition >= 0 && partition_stats.hi_offset >= 0 {
                    high.insert((topic.clone(), partition), partition_stats.hi_offset);
                }
            }
        }
    }

    /// Forgets what was seen of a partition (it was just assigned: only a fetch from now on
    /// says where its end is).
    pub fn forget(&self, topic: &str, partition: i32) {
        if let Ok(mut high) = self.high.lock() {
            high.remove(&(topic.to_owned(), partition));
        }
    }

    /// The high watermark of the latest fetch response of a partition, when there was one.
    pub fn high(&self, topic: &str, partition: i32) -> Option<i64> {
        let high = self.high.lock().ok()?;
        high.get(&(topic.to_owned(), partition)).copied()
    }
}

/// A consumer context that only learns high watermarks (bare consumers: drain, replay).
pub struct WatermarkContext(pub FetchedWatermarks);

impl ClientContext for WatermarkContext {
    fn stats(&self, statistics: Statistics) {
        self.0.record(&statistics);
    }
}

impl ConsumerContext for WatermarkContext {}

/// A consumer that reads what it is assigned and nothing else: no commits, statistics often
/// (so the end of a partition is seen soon after it is reached).
pub fn bare_consumer(
    brokers: &str,
    group: &str,
) -> Result<rdkafka::consumer::BaseConsumer<WatermarkContext>, rdkafka::error::KafkaError> {
    fetch_tuned()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "100")
        .create_with_context(WatermarkContext(FetchedWatermarks::default()))
}

/// Consumer settings for reading a backlog at the broker's speed, shared by the engine's
/// consumer and the bare ones it is measured against. With librdkafka's defaults the consumer
/// stops prefetching at 100,000 queued messages and a fetch of a partition that has nothing
/// new is held for 500 ms: on a 4-partition topic the engine then sat idle for half a second
/// several times a second. A deeper prefetch, larger partition fetches and a shorter hold keep
/// the queue filled, within librdkafka's 64 MiB per partition: about 250 MB of a backlog on a
/// 4-partition topic. A 16 MiB cap took 170 MB off the peak but cost a third of the ingest
/// rate and nine tenths of a bare drain's on Tansu, whose fetches are slow to come back.
pub fn fetch_tuned() -> rdkafka::config::ClientConfig {
    let mut config = rdkafka::config::ClientConfig::new();
    config
        .set("queued.min.messages", "1000000")
        .set("max.partition.fetch.bytes", "10485760")
        .set("fetch.wait.max.ms", "50");
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_partition_is_the_crc32_of_its_key_modulo_the_partitions() {
        // zlib's CRC-32 check value, and two tenants, worked out with Python's `zlib.crc32`.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(partition_of_tenant("123456789", 12), Some(2));
        assert_eq!(partition_of_tenant("default", 12), Some(7));
        assert_eq!(partition_of_tenant("default", 4), Some(3));
        assert_eq!(partition_of_tenant("tenant-7", 12), Some(10));
        assert_eq!(partition_of_tenant("acme", 1), Some(0));
        assert_eq!(
            partition_of_tenant("", 12),
            None,
            "an empty key goes anywhere"
        );
        assert_eq!(partition_of_tenant("acme", 0), None);
        assert_eq!(partition_of_tenant("acme", -3), None);
    }
}
