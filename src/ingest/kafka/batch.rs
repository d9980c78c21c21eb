//! A polled batch on its way into the log: its messages judged on the ingest path into
//! candidates with the partitions' next offsets, queued for the log writer (its outcomes
//! counted once written), and its offsets committed to Kafka as a hint once durable.

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::fetch::Polled;
use super::{KafkaSettings, TallyContext};
use crate::engine::IngestHandle;
use crate::event::EventSource;
use crate::ingest::path::{self, OutcomeTally};
use crate::log::append::{AppendError, Candidate, OnWritten, PendingAppend, SourceOffset};

/// A batch queued for the log writer, with each partition's next offset past it (what is
/// committed to Kafka once it is durable).
pub(super) struct InFlight {
    pending: PendingAppend,
    next_offsets: Vec<(i32, i64)>,
}

/// Decodes a batch into the log writer's candidates and the partitions' next offsets.
pub(super) fn prepare(
    sink: &IngestHandle,
    settings: &KafkaSettings,
    batch: &[Polled],
) -> (Vec<Candidate>, Vec<SourceOffset>) {
    let now = sink.now();
    let mut candidates = Vec::with_capacity(batch.len());
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for message in batch {
        let source = EventSource::Kafka {
            topic: settings.topic.clone(),
            partition: message.partition,
            offset: message.offset,
        };
        next_offsets.insert(message.partition, message.offset + 1);
        candidates.push(path::decode_message(
            sink,
            now,
            source,
            path::KafkaMessage {
                partition: message.partition,
                key: message.key.as_deref(),
                payload: &message.payload,
            },
        ));
    }
    let offsets = next_offsets
        .into_iter()
        .map(|(partition, next_offset)| SourceOffset {
            topic: settings.topic.clone(),
            partition,
            next_offset,
        })
        .collect();
    (candidates, offsets)
}

/// Queues a prepared batch for the log writer, which counts its outcomes once it is written.
pub(super) fn submit(
    sink: &IngestHandle,
    (candidates, offsets): (Vec<Candidate>, Vec<SourceOffset>),
) -> Result<InFlight, AppendError> {
    let metrics = sink.metrics.clone();
    // One candidate per polled message.
    let batch_len = candidates.len();
    let next_offsets = offsets
        .iter()
        .map(|offset| (offset.partition, offset.next_offset))
        .collect();
    let count: OnWritten = Box::new(move |outcomes| {
        OutcomeTally::of(outcomes).count(&metrics, "kafka");
        metrics.kafka_batch_size.observe(batch_len as f64);
    });
    let pending = sink
        .appender
        .submit_blocking(candidates, offsets, Some(count))?;
    Ok(InFlight {
        pending,
        next_offsets,
    })
}

/// Waits for a queued batch (the writer counted its outcomes) and commits its offsets to Kafka
/// as a hint; `Err` when the log could not be written (logged here; the batch is read again
/// from the stored offsets).
pub(super) fn finish(
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    written: InFlight,
) -> Result<(), AppendError> {
    match written.pending.wait() {
        Ok(_) => {
            commit_hint(consumer, settings, &written.next_offsets);
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "kafka batch not appended; will read it again");
            Err(error)
        }
    }
}

/// Commits the batch's next offsets to Kafka: only a hint for lag tools; RocksDB is the truth.
fn commit_hint(
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    next_offsets: &[(i32, i64)],
) {
    let mut list = TopicPartitionList::new();
    for &(partition, offset) in next_offsets {
        let _ = list.add_partition_offset(&settings.topic, partition, Offset::Offset(offset));
    }
    if let Err(error) = consumer.commit(&list, CommitMode::Async) {
        tracing::debug!(%error, "offset commit hint failed");
    }
}
