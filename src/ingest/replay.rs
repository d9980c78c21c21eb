//! Re-ingestion: a range of a Kafka topic read again into the log (`tally replay kafka`), and
//! dead letters re-validated against the current catalog (`tally replay dead-letters`).
//! Dedup makes both safe to overlap with what is already recorded; neither moves the
//! consumer's stored offsets nor writes new dead letters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use super::kafka::partitions_of;
use super::path::{KafkaMessage, OutcomeTally, decode_message};
use crate::engine::IngestHandle;
use crate::event::{self, EventSource};
use crate::kafka::bare_consumer;
use crate::log::append::{AppendError, Candidate, Outcome};
use crate::log::store::StoreError;

/// Where a Kafka replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStart {
    /// Partition → first offset to read.
    Offsets(BTreeMap<i32, i64>),
    /// Every partition from the first message at or after this time (micros).
    Time(i64),
}

/// What a replay did, per outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReplayCounts {
    pub read: u64,
    pub new: u64,
    pub duplicate: u64,
    pub conflict: u64,
    pub rejected: u64,
}

impl ReplayCounts {
    fn add(&mut self, outcomes: &[Outcome]) {
        let tally = OutcomeTally::of(outcomes);
        self.new += tally.recorded;
        self.duplicate += tally.duplicate;
        self.conflict += tally.conflict;
        self.rejected += tally.rejected;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayIngestError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--from-offset: partition {0} is not a partition of the topic")]
    NoSuchPartition(i32),
}

/// How long a replay waits for a message before it calls the range read.
const IDLE: Duration = Duration::from_secs(10);

/// Reads `topic` from `start` up to the end each partition has when reached, and appends the
/// events that are not in the log yet. Malformed messages are counted, not stored again.
pub fn replay_kafka(
    sink: &IngestHandle,
    brokers: &str,
    topic: &str,
    start: &ReplayStart,
) -> Result<ReplayCounts, ReplayIngestError> {
    let consumer = bare_consumer(brokers, "tally-replay")?;
    let partitions = partitions_of(&consumer, topic, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    match start {
        ReplayStart::Offsets(offsets) => {
            for (&partition, &offset) in offsets {
                if !partitions.contains(&partition) {
                    return Err(ReplayIngestError::NoSuchPartition(partition));
                }
                assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
            }
        }
        ReplayStart::Time(micros) => {
            let mut by_time = TopicPartitionList::new();
            for &partition in &partitions {
                by_time.add_partition_offset(topic, partition, Offset::Offset(micros / 1_000))?;
            }
            let found = consumer.offsets_for_times(by_time, Duration::from_secs(10))?;
            for element in found.elements() {
                let offset = match element.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End,
                };
                assignment.add_partition_offset(topic, element.partition(), offset)?;
            }
        }
    }
    consumer.assign(&assignment)?;
    let assigned: Vec<i32> = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut counts = ReplayCounts::default();
    let mut batch: Vec<Candidate> = Vec::new();
    let mut last_message = Instant::now();
    let flush =
        |batch: &mut Vec<Candidate>, counts: &mut ReplayCounts| -> Result<(), ReplayIngestError> {
            if batch.is_empty() {
                return Ok(());
            }
            let outcomes = sink
                .appender
                .append_blocking(std::mem::take(batch), Vec::new())?;
            counts.add(&outcomes);
            Ok(())
        };
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_message = Instant::now();
                counts.read += 1;
                next.insert(message.partition(), message.offset() + 1);
                let source = EventSource::Kafka {
                    topic: topic.to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                };
                let judged = KafkaMessage {
                    partition: message.partition(),
                    key: message.key(),
                    payload: message.payload().unwrap_or_default(),
                };
                match decode_message(sink, sink.now(), source, judged) {
                    Candidate::Rejected(_) => counts.rejected += 1,
                    candidate if forgotten(sink, &candidate) => counts.rejected += 1,
                    candidate => batch.push(candidate),
                }
                if batch.len() >= 1_000 {
                    flush(&mut batch, &mut counts)?;
                }
            }
            Some(Err(error)) => return Err(error.into()),
            None if last_message.elapsed() > IDLE => break,
            None => {}
        }
        let watermarks = &consumer.context().0;
        let done = assigned.iter().all(|partition| {
            watermarks
                .high(topic, *partition)
                .is_some_and(|high| next.get(partition).is_some_and(|n| *n >= high) || high == 0)
        });
        if done {
            break;
        }
    }
    flush(&mut batch, &mut counts)?;
    Ok(counts)
}

/// Whether the log writer would refuse `candidate` as older than the stored forgetting
/// horizon; replays count it as refused here instead of having it stored as a dead letter.
fn forgotten(sink: &IngestHandle, candidate: &Candidate) -> bool {
    matches!(candidate, Candidate::Event { event, .. }
        if event.timestamp < sink.store.horizon().ids_forgotten_before())
}

/// Re-validates dead letters (those whose reason contains `reason`, when given) against the
/// current catalog and appends the events that now pass.
pub fn repair_dead_letters(
    sink: &IngestHandle,
    reason: Option<&str>,
) -> Result<ReplayCounts, ReplayIngestError> {
    let mut counts = ReplayCounts::default();
    // Only the letters there are now: a conflict found here becomes a new dead letter, which
    // this run must not read again.
    let end = sink
        .store
        .last_seq(crate::log::store::CF_DEAD_LETTER)?
        .map_or(0, |last| last + 1);
    let mut from = 0;
    while from < end {
        let letters: Vec<_> = sink
            .store
            .dead_letters(from, 1_000)?
            .into_iter()
            .filter(|(n, _)| *n < end)
            .collect();
        let Some(&(last, _)) = letters.last() else {
            break;
        };
        from = last + 1;
        let now = sink.now();
        let mut candidates = Vec::new();
        for (_, letter) in letters {
            if reason.is_some_and(|r| {
                !letter.rejection.reason.contains(r) && !letter.rejection.field.contains(r)
            }) {
                continue;
            }
            counts.read += 1;
            if letter.raw_truncated {
                counts.rejected += 1;
                continue;
            }
            let context = sink.decode_context(now, &letter.tenant, false);
            match event::decode(&letter.raw, &context) {
                Ok(event) if event.timestamp < sink.store.horizon().ids_forgotten_before() => {
                    counts.rejected += 1
                }
                Ok(event) => candidates.push(Candidate::Event {
                    event,
                    source: letter.source.clone(),
                }),
                Err(_) => counts.rejected += 1,
            }
        }
        if !candidates.is_empty() {
            let outcomes = sink.appender.append_blocking(candidates, Vec::new())?;
            counts.add(&outcomes);
        }
    }
    Ok(counts)
}
