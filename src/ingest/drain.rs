//! `tally drain`: read a topic from the beginning with a bare consumer and report the rate: the
//! ceiling any consumer of this broker and machine can reach, to compare ingest figures with.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// What a drain read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainSummary {
    pub messages: u64,
    pub bytes: u64,
    /// From the first message to the last.
    pub elapsed: Duration,
}

/// Reads every partition of `topic` from its start to the high watermark seen at the start.
pub fn drain(brokers: &str, topic: &str) -> Result<DrainSummary, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tally-drain")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0u64;
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        remaining += u64::try_from(high - low).unwrap_or(0);
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
    }
    consumer.assign(&assignment)?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut started: Option<Instant> = None;
    while messages < remaining {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(message)) => {
                started.get_or_insert_with(Instant::now);
                messages += 1;
                bytes += message.payload_len() as u64;
            }
            Some(Err(error)) => return Err(error),
            None => break,
        }
    }
    Ok(DrainSummary {
        messages,
        bytes,
        elapsed: started.map_or(Duration::ZERO, |s| s.elapsed()),
    })
}
