//! Where the consumer reads: polling a batch, dropping what is already recorded or held back,
//! cutting a batch at the gaps a broker left, and every seek (back to a gap, a restored
//! partition to its stored offset, everything back after a failed write).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::Offset;

use super::partition::Partitions;
use super::stall::StallDetector;
use super::{KafkaSettings, TallyContext};
use crate::engine::IngestHandle;
use crate::health::Health;
use crate::log::store::{Store, StoreError};
use crate::stop::StopSignal;

/// Messages re-read before a stored offset on assignment. A broker asked to fetch from inside
/// a record batch must return that whole batch; one that skips to the next batch instead
/// (seen with Tansu 0.6) would silently lose the batch's tail. Starting a little earlier and
/// dropping what lies below the stored offset makes that impossible.
const REWIND_ON_ASSIGN: i64 = 10_000;

/// One polled message, reduced to what the batch needs.
pub(crate) struct Polled {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
}

impl Polled {
    pub(crate) fn of<M: Message>(message: &M) -> Polled {
        Polled {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }
}

/// The partitions the brokers report for `topic`, in order (none when it does not exist).
pub(crate) fn partitions_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect::<BTreeSet<i32>>()
        .into_iter()
        .collect())
}

/// Each of `partitions` with its next unrecorded offset, as the store holds it (0 when none).
pub(super) fn stored_offsets(
    store: &Store,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<Vec<(i32, i64)>, StoreError> {
    let stored = store.source_offsets(topic)?;
    Ok(partitions
        .into_iter()
        .map(|partition| (partition, stored.get(&partition).copied().unwrap_or(0)))
        .collect())
}

/// Where reading starts for a partition whose next unrecorded offset is `stored_offset`.
pub(super) fn rewound(stored_offset: i64) -> Offset {
    if stored_offset > REWIND_ON_ASSIGN {
        Offset::Offset(stored_offset - REWIND_ON_ASSIGN)
    } else {
        Offset::Beginning
    }
}

/// Seeks `partition` of the consumer's topic to a little before `next_offset` (see
/// [`rewound`]): messages below `next_offset` are dropped again by the poll loop.
fn seek_before(
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    partition: i32,
    next_offset: i64,
) -> Result<(), KafkaError> {
    consumer.seek(
        &settings.topic,
        partition,
        rewound(next_offset),
        Duration::from_secs(5),
    )
}

/// Polls up to a batch: waits for a first message, then lingers a little for more.
pub(super) fn poll_batch(
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    stop: &StopSignal,
    health: &Health,
    stalls: &Mutex<StallDetector>,
) -> Vec<Polled> {
    let mut batch = Vec::new();
    let mut deadline: Option<Instant> = None;
    while batch.len() < settings.batch_max && !stop.is_stopped() {
        let wait = match deadline {
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) => left,
                None => break,
            },
            None => Duration::from_millis(200),
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                health.recover();
                batch.push(Polled::of(&message));
                deadline.get_or_insert_with(|| Instant::now() + settings.batch_linger);
            }
            Some(Err(error)) => {
                // librdkafka names no partition here (an undecodable batch, a fetch error):
                // the stall detector tells which partition stands still and shows this as why.
                tracing::warn!(%error, "kafka poll error");
                if let Ok(mut stalls) = stalls.lock() {
                    stalls.consumer_error(error.to_string());
                }
                break;
            }
            None => {
                if deadline.is_none() {
                    break;
                }
            }
        }
    }
    batch
}

/// Keeps of `batch` what is to be taken: nothing below a partition's next offset (read again
/// after a rewind) or of a partition held back while it is restored, and nothing from a gap
/// on (each gap is sought back to, see [`cut_at_gaps`]). Then seeks each restored partition
/// to its stored offset: after the batch was filtered, so nothing fetched before the seek is
/// taken. Returns `false` when a gap could not be sought back to: everything must be read
/// again from the stored offsets.
pub(super) fn keep_taken(
    consumer: &BaseConsumer<TallyContext>,
    sink: &IngestHandle,
    settings: &KafkaSettings,
    batch: &mut Vec<Polled>,
    partitions: &mut Partitions,
    retried_gaps: &mut BTreeSet<(i32, i64)>,
) -> bool {
    batch.retain(|m| m.offset >= partitions.takes_from(m.partition));
    let mut sought_all_gaps = true;
    for (partition, expected) in cut_at_gaps(batch, partitions, retried_gaps) {
        // Read again from a little before the gap: see `cut_at_gaps`.
        tracing::warn!(
            partition,
            expected,
            "messages skipped by the broker; reading them again"
        );
        if let Err(error) = seek_before(consumer, settings, partition, expected) {
            tracing::error!(%error, partition, "cannot seek back to a gap; reading again from the stored offsets");
            sought_all_gaps = false;
        }
    }
    seek_restored(consumer, sink, settings, partitions);
    for message in batch.iter() {
        partitions.took(message.partition, message.offset);
    }
    sought_all_gaps
}

/// Seeks each restored partition a little before its stored offset; from then on its messages
/// are taken. The ones that cannot be sought yet are tried next round.
fn seek_restored(
    consumer: &BaseConsumer<TallyContext>,
    sink: &IngestHandle,
    settings: &KafkaSettings,
    partitions: &mut Partitions,
) {
    for (partition, stored) in partitions.awaiting_seek() {
        if let Err(error) = seek_before(consumer, settings, partition, stored) {
            tracing::warn!(%error, partition, "cannot seek a restored partition to its stored offset yet; retrying");
            continue;
        }
        partitions.sought(partition);
        consumer
            .context()
            .watermarks
            .forget(&settings.topic, partition);
        sink.ownership.changelog_restored(partition);
        tracing::info!(partition, stored, "restored; reading the source topic");
    }
}

/// After a batch that was not written (nothing of it was): read again from the offsets the
/// store holds, after a moment. A single engine forgets its assignment, so the next round
/// assigns again; an engine of a cluster keeps the group's and seeks back. `false` when the
/// seek failed (it is tried again before anything is polled).
pub(super) fn read_again(
    consumer: &BaseConsumer<TallyContext>,
    sink: &IngestHandle,
    settings: &KafkaSettings,
    partitions: &mut Partitions,
    last_assignment_check: &mut Option<Instant>,
) -> bool {
    std::thread::sleep(Duration::from_secs(1));
    if consumer.context().member.is_none() {
        partitions.forget_all();
        *last_assignment_check = None;
        return true;
    }
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::error!(%error, "cannot read the assignment to seek back; retrying");
            return false;
        }
    };
    let assigned = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect::<Vec<_>>();
    let stored = match stored_offsets(&sink.store, &settings.topic, assigned) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, "cannot read the stored offsets to seek back; retrying");
            return false;
        }
    };
    let mut all_sought = true;
    for (partition, stored_offset) in stored {
        if partitions.is_held_back(partition) {
            // Still being restored: sought once it is.
            continue;
        }
        match seek_before(consumer, settings, partition, stored_offset) {
            Ok(()) => {
                partitions.sought_back(partition, stored_offset);
            }
            Err(error) => {
                tracing::error!(%error, partition, "cannot seek back after a failed write; retrying");
                all_sought = false;
            }
        }
    }
    all_sought
}

/// Finds, per partition, a message past the next expected offset (`partitions`): a gap.
/// Kafka offsets are contiguous in a topic without transactions or compaction, and Tansu 0.6
/// was seen to answer a fetch from inside a record batch with the next batch, silently
/// skipping the rest of it, when librdkafka fetched again from where the application stood
/// (after a rebalance). The messages of such a partition from the gap on are cut from
/// `batch`, and the partition and its first missing offset returned, to be read again. A gap
/// already retried once (in `retried`) is taken as it is.
fn cut_at_gaps(
    batch: &mut Vec<Polled>,
    partitions: &Partitions,
    retried: &mut BTreeSet<(i32, i64)>,
) -> Vec<(i32, i64)> {
    let mut expected: BTreeMap<i32, i64> = BTreeMap::new();
    let mut gaps: BTreeMap<i32, i64> = BTreeMap::new();
    batch.retain(|message| {
        if gaps.contains_key(&message.partition) {
            return false;
        }
        let next = expected
            .entry(message.partition)
            .or_insert_with(|| partitions.takes_from(message.partition));
        if message.offset > *next {
            if retried.insert((message.partition, *next)) {
                gaps.insert(message.partition, *next);
                return false;
            }
            // Operators see it: a broker that skipped the same range twice would lose it.
            tracing::warn!(
                partition = message.partition,
                from = *next,
                to = message.offset,
                "offsets missing again after reading them again; taken as the topic's own"
            );
        }
        *next = message.offset + 1;
        true
    });
    gaps.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_in_a_partition_is_cut_and_read_again_once() {
        let polled = |partition, offset| Polled {
            partition,
            offset,
            key: None,
            payload: Vec::new(),
        };
        let reading = |next: &[(i32, i64)]| {
            let mut partitions = Partitions::default();
            partitions.assign_all(&next.iter().copied().collect());
            partitions
        };
        let resume = reading(&[(0, 10), (1, 5)]);
        let mut retried = BTreeSet::new();
        // Partition 0 goes on from 10; partition 1 jumps from 6 to 9.
        let mut batch = vec![
            polled(0, 10),
            polled(1, 5),
            polled(0, 11),
            polled(1, 6),
            polled(1, 9),
            polled(0, 12),
            polled(1, 10),
        ];
        assert_eq!(cut_at_gaps(&mut batch, &resume, &mut retried), [(1, 7)]);
        let kept: Vec<(i32, i64)> = batch.iter().map(|m| (m.partition, m.offset)).collect();
        assert_eq!(kept, [(0, 10), (1, 5), (0, 11), (1, 6), (0, 12)]);
        // Read again and the gap is still there: the topic's own, taken.
        let resume = reading(&[(1, 7)]);
        let mut batch = vec![polled(1, 9), polled(1, 10)];
        assert!(cut_at_gaps(&mut batch, &resume, &mut retried).is_empty());
        assert_eq!(batch.len(), 2);
    }
}
