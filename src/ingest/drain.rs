//! `tally drain`: read a topic from the beginning with a bare consumer and report the rate: the
//! ceiling any consumer of this broker and machine can reach, to compare ingest figures with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::kafka::partitions_of;
use crate::kafka::bare_consumer;

/// How long a drain waits for a message before it calls the topic drained.
const IDLE: Duration = Duration::from_secs(10);

/// What a drain read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainSummary {
    pub messages: u64,
    pub bytes: u64,
    /// From the first message to the last.
    pub elapsed: Duration,
}

/// Reads every partition of `topic` from its start until each has reached the high watermark
/// its fetch responses report (or nothing arrived for [`IDLE`]). The end is taken from fetch
/// responses rather than asked for up front, which Tansu 0.6 answers too low (see
/// [`kafka`](crate::kafka)).
pub fn drain(brokers: &str, topic: &str) -> Result<DrainSummary, KafkaError> {
    let consumer = bare_consumer(brokers, "tally-drain")?;
    let partitions = partitions_of(&consumer, topic, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    // The next offset to read of each partition; the low watermark until a message arrives.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for &partition in &partitions {
        let (low, _) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        next.insert(partition, low);
    }
    consumer.assign(&assignment)?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut last_message = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                (last, last_message) = (now, now);
                messages += 1;
                bytes += message.payload_len() as u64;
                next.insert(message.partition(), message.offset() + 1);
            }
            Some(Err(error)) => return Err(error),
            None if last_message.elapsed() > IDLE => break,
            None => {}
        }
        let watermarks = &consumer.context().0;
        let at_end = next.iter().all(|(&partition, &position)| {
            watermarks
                .high(topic, partition)
                .is_some_and(|high| position >= high)
        });
        if at_end {
            break;
        }
    }
    Ok(DrainSummary {
        messages,
        bytes,
        elapsed: first.map_or(Duration::ZERO, |f| last - f),
    })
}
