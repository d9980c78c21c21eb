//! The Kafka consumer: polls batches, decodes them, and appends events, dead letters and the
//! partitions' next offsets in one write batch. It polls and decodes the next batch while the
//! log writer makes the previous one durable.
//!
//! Offsets live in RocksDB. Every partition of the topic is assigned explicitly at its stored
//! offset (no group rebalancing: immediate, and no dead member can hold a partition after a
//! crash), so a message replayed after a crash is either already in the log with its offset
//! (and not read again) or not in the log at all. The topic's partitions are looked up again
//! every few seconds and new ones assigned. Offsets are committed to Kafka under the group id
//! too, as a hint for lag tools only.
//!
//! With `--cluster` the engine instead joins the consumer group (cooperative-sticky, static
//! membership with `--instance-id`) and consumes only the partitions it is assigned. A thread
//! of its own restores an assigned partition from the changelog (the rebalance returns at
//! once; what the partition hands over meanwhile is dropped), then it is sought to the
//! offset stored in its own RocksDB;
//! [`crate::cluster::Ownership`] learns of every assignment, restore and revocation, and
//! which partitions have been read to their end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::auth::DEFAULT_TENANT;
use crate::cluster::Ownership;
use crate::cluster::changelog::{self, ChangelogError, Published, RestoreContext};
use crate::engine::IngestHandle;
use crate::event::{self, EventSource, Rejection};
use crate::health::Health;
use crate::ingest::watermarks::{self, FetchedWatermarks, STATISTICS_INTERVAL_MS};
use crate::log::DeadLetter;
use crate::log::append::{AppendError, Candidate, OnWritten, Outcome, PendingAppend, SourceOffset};
use crate::log::store::{Store, StoreError};
use crate::stop::{SignalledThread, StopSignal};

pub use crate::config::KafkaSettings;

/// Assigns partitions at the offsets stored in RocksDB, and records broker errors as health.
struct TallyContext {
    health: Arc<Health>,
    watermarks: FetchedWatermarks,
    /// In a cluster: what the group assigns is taken at the offsets stored here.
    member: Option<GroupMember>,
}

/// The consumer's side of a cluster: applies the group's assignments, has each assigned
/// partition restored from the changelog (none of its messages taken meanwhile), and tells [`Ownership`] and the
/// poll loop about them.
struct GroupMember {
    store: Store,
    topic: String,
    ownership: Arc<Ownership>,
    /// Where assigned partitions go to be restored from the changelog: off the rebalance,
    /// which must return well within the group's poll interval.
    restores: mpsc::Sender<RestoreJob>,
    /// How far the changelog holds this engine's entries: a revoked partition is let go once
    /// everything recorded for it is published.
    published: Published,
    log_head: Arc<crate::log::append::LogHead>,
    /// Numbers each assignment of a partition, so a restore finished for an earlier one is
    /// told from the current one's.
    assignments: AtomicU64,
    /// Changes since the poll loop last looked (rebalances run inside its `poll`; restores
    /// finish on their own thread).
    changes: Arc<Mutex<Vec<AssignmentChange>>>,
}

enum AssignmentChange {
    /// Assigned; none of its messages is taken while it is restored from the changelog.
    Assigned {
        partition: i32,
        assignment: u64,
    },
    /// Restored from the changelog for that assignment, with the offset then stored for it:
    /// messages below it are recorded, reading resumes there.
    Restored {
        partition: i32,
        assignment: u64,
        stored: i64,
    },
    Revoked {
        partition: i32,
    },
}

/// Partitions to restore from the changelog, each with the number of its assignment.
struct RestoreJob {
    partitions: Vec<(i32, u64)>,
}

impl GroupMember {
    fn push(&self, changes: impl IntoIterator<Item = AssignmentChange>) {
        push_changes(&self.changes, changes);
    }

    fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn push_changes(
    changes: &Mutex<Vec<AssignmentChange>>,
    new: impl IntoIterator<Item = AssignmentChange>,
) {
    changes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(new);
}

/// Each of `partitions` restored for its assignment, at the offsets the store holds now; at
/// 0 when they cannot be read (what is read again is caught as duplicates, nothing skipped).
fn restored_at_stored(
    store: &Store,
    topic: &str,
    partitions: &[(i32, u64)],
) -> Vec<AssignmentChange> {
    let stored = stored_offsets(store, topic, partitions.iter().map(|&(p, _)| p))
        .unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read the stored offsets; reading the restored partitions from their start");
            Vec::new()
        })
        .into_iter()
        .collect::<BTreeMap<i32, i64>>();
    partitions
        .iter()
        .map(|&(partition, assignment)| AssignmentChange::Restored {
            partition,
            assignment,
            stored: stored.get(&partition).copied().unwrap_or(0),
        })
        .collect()
}

/// The restore thread: restores each job's partitions from the changelog, one job at a time
/// (a partition assigned again meanwhile is restored again after, from where it then stands),
/// and hands them back to the poll loop at their stored offsets.
fn run_restores(
    context: &RestoreContext,
    jobs: &mpsc::Receiver<RestoreJob>,
    changes: &Mutex<Vec<AssignmentChange>>,
    stop: &StopSignal,
) {
    while !stop.is_stopped() {
        let job = match jobs.recv_timeout(Duration::from_millis(200)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Partitions revoked before their turn are not restored.
        let partitions: Vec<(i32, u64)> = job
            .partitions
            .into_iter()
            .filter(|&(p, _)| context.ownership.is_from_changelog(p))
            .collect();
        let numbers: Vec<i32> = partitions.iter().map(|&(p, _)| p).collect();
        let started = Instant::now();
        match changelog::restore(context, &numbers, stop) {
            Ok(restored) => {
                let elapsed = started.elapsed();
                // Each flush of the restore told `Ownership` its progress already.
                for &partition in restored.keys() {
                    context
                        .metrics
                        .restore_milliseconds
                        .get_or_create(&crate::metrics::PartitionLabels { partition })
                        .set(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
                }
                let entries: u64 = restored.values().map(|r| r.entries).sum();
                let skipped: u64 = restored.values().map(|r| r.skipped).sum();
                if !numbers.is_empty() {
                    tracing::info!(
                        partitions = ?numbers,
                        entries,
                        skipped,
                        ?elapsed,
                        "restored from the changelog"
                    );
                }
            }
            Err(ChangelogError::Stopping) => return,
            Err(error) => {
                // Its source offsets are then where this engine last stood (the topic's
                // start when it never owned them): read again, never skipped.
                tracing::error!(%error, partitions = ?numbers, "cannot restore from the changelog; reading the source topic from the stored offsets");
            }
        }
        push_changes(
            changes,
            restored_at_stored(&context.store, &context.source_topic, &partitions),
        );
    }
}

/// Each of `partitions` with its next unrecorded offset, as the store holds it (0 when none).
fn stored_offsets(
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
fn rewound(stored_offset: i64) -> Offset {
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

impl ClientContext for TallyContext {
    fn stats(&self, statistics: Statistics) {
        self.watermarks.record(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        // Losing every broker is an outage; other errors are transient and logged.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.health.fail(&error);
        }
    }
}

impl ConsumerContext for TallyContext {
    /// Only called in a cluster (a single engine assigns itself): takes what the group
    /// assigns at the offsets stored in RocksDB, not at Kafka's committed ones.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        let Some(member) = &self.member else {
            return;
        };
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                member.ownership.assigned(&partitions);
                let numbered: Vec<(i32, u64)> = partitions
                    .iter()
                    .map(|&p| (p, member.assignments.fetch_add(1, Ordering::Relaxed)))
                    .collect();
                for &partition in &partitions {
                    self.watermarks.forget(&member.topic, partition);
                }
                // Nothing of them is taken until they are restored from the changelog.
                member.push(numbered.iter().map(|&(partition, assignment)| {
                    AssignmentChange::Assigned {
                        partition,
                        assignment,
                    }
                }));
                // They start at their end and are not paused: librdkafka has known position
                // bugs around pause and resume (its issues 2190 and 3471), and a cluster test
                // that paused them lost messages once. What arrives before they are restored
                // is dropped; they are sought to their stored offsets once they are.
                for &partition in &partitions {
                    if let Err(error) =
                        list.set_partition_offset(&member.topic, partition, Offset::End)
                    {
                        tracing::warn!(%error, partition, "cannot start a partition at its end while it is restored");
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(list)
                } else {
                    consumer.assign(list)
                };
                match result {
                    Ok(()) => {
                        tracing::info!(topic = %member.topic, ?partitions, "assigned by the group")
                    }
                    Err(error) => {
                        tracing::error!(%error, ?partitions, "cannot take the assigned partitions")
                    }
                }
                if numbered.is_empty() {
                    // A rebalance that assigns nothing new (most of them, cooperative).
                } else if let Err(mpsc::SendError(job)) = member.restores.send(RestoreJob {
                    partitions: numbered,
                }) {
                    tracing::error!(
                        ?partitions,
                        "the restore thread is gone; reading the source topic from the stored offsets"
                    );
                    member.push(restored_at_stored(
                        &member.store,
                        &member.topic,
                        &job.partitions,
                    ));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                // The next owner restores from the changelog: it must hold what was recorded.
                if !member
                    .published
                    .wait_blocking(member.log_head.get(), REVOKE_FLUSH_WAIT)
                {
                    tracing::warn!(
                        ?partitions,
                        "revoked before the changelog held everything recorded for them; the next owner reads the rest from the source topic"
                    );
                }
                member.ownership.revoked(&partitions);
                member.push(
                    partitions
                        .iter()
                        .map(|&partition| AssignmentChange::Revoked { partition }),
                );
                let result = if cooperative {
                    consumer.incremental_unassign(list)
                } else {
                    consumer.unassign()
                };
                match result {
                    Ok(()) => {
                        tracing::info!(topic = %member.topic, ?partitions, "revoked by the group")
                    }
                    Err(error) => {
                        tracing::error!(%error, ?partitions, "cannot give up the revoked partitions")
                    }
                }
            }
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "rebalance failed");
            }
        }
    }
}

/// Assigns every partition of the topic at the offset stored in RocksDB (its start when none).
/// Returns the partitions assigned; an error leaves the previous assignment in place.
/// Messages re-read before a stored offset on assignment. A broker asked to fetch from inside
/// a record batch must return that whole batch; one that skips to the next batch instead
/// (seen with Tansu 0.6) would silently lose the batch's tail. Starting a little earlier and
/// dropping what lies below the stored offset makes that impossible.
const REWIND_ON_ASSIGN: i64 = 10_000;

/// Assigns every partition of the topic a little before the offset stored in RocksDB (its
/// start when none). Returns the stored offsets: messages below them are already recorded.
fn assign_all(
    consumer: &BaseConsumer<TallyContext>,
    store: &Store,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, String> {
    let stored =
        stored_offsets(store, topic, partitions.iter().copied()).map_err(|e| e.to_string())?;
    let mut assignment = TopicPartitionList::new();
    let mut resume = BTreeMap::new();
    for (partition, stored_offset) in stored {
        let start = rewound(stored_offset);
        assignment
            .add_partition_offset(topic, partition, start)
            .map_err(|e| e.to_string())?;
        resume.insert(partition, stored_offset);
        tracing::info!(%topic, partition, stored_offset, ?start, "assigned");
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    Ok(resume)
}

/// A running consumer thread; stop it with [`KafkaConsumer::stop`].
pub struct KafkaConsumer {
    thread: SignalledThread,
    lag: SignalledThread,
    /// In a cluster: restores assigned partitions from the changelog.
    restorer: Option<SignalledThread>,
}

impl KafkaConsumer {
    /// Starts consuming; it stops when `stop` is signalled (see [`KafkaConsumer::stop`]).
    pub fn start(
        sink: IngestHandle,
        settings: KafkaSettings,
        stop: StopSignal,
    ) -> Result<KafkaConsumer, KafkaError> {
        let health = sink.kafka_health.clone();
        let changes: Arc<Mutex<Vec<AssignmentChange>>> = Arc::default();
        let (restores, restore_jobs) = mpsc::channel();
        let restorer = match (&settings.cluster, &sink.changelog) {
            (Some(_), Some(changelog)) => {
                let context = RestoreContext {
                    brokers: settings.brokers.clone(),
                    source_topic: settings.topic.clone(),
                    store: sink.store.clone(),
                    appender: sink.appender.clone(),
                    origin: changelog.origin,
                    metrics: sink.metrics.clone(),
                    ownership: sink.ownership.clone(),
                };
                let changes = changes.clone();
                let thread = SignalledThread::spawn("tally-restore", stop.clone(), move |stop| {
                    run_restores(&context, &restore_jobs, &changes, &stop)
                })
                .map_err(|e| {
                    KafkaError::ClientCreation(format!("cannot start the restore thread: {e}"))
                })?;
                Some(thread)
            }
            _ => None,
        };
        let context = TallyContext {
            health,
            watermarks: FetchedWatermarks::default(),
            member: match (&settings.cluster, &sink.changelog) {
                (Some(_), Some(changelog)) => Some(GroupMember {
                    store: sink.store.clone(),
                    topic: settings.topic.clone(),
                    ownership: sink.ownership.clone(),
                    restores,
                    published: changelog.published.clone(),
                    log_head: sink.log_head.clone(),
                    assignments: AtomicU64::new(0),
                    changes,
                }),
                _ => None,
            },
        };
        let mut config = watermarks::fetch_tuned();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        if let Some(cluster) = &settings.cluster {
            // Cooperative: a rebalance moves only the partitions that must move, the others
            // keep being consumed. A longer session than a single engine's: librdkafka does
            // not heartbeat while it joins, and Tansu expires a member it has not heard from
            // even then, so a short session lost every partition of a live engine. The poll
            // interval bounds how long a rebalance waits for a member that does not rejoin
            // (a dead one: by default five minutes with no partition moving).
            config
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", CLUSTER_SESSION_TIMEOUT_MS)
                .set("max.poll.interval.ms", CLUSTER_SESSION_TIMEOUT_MS)
                .set("heartbeat.interval.ms", "1000");
            if let Some(instance) = &cluster.instance_id {
                config.set("group.instance.id", instance);
            }
        }
        let consumer: BaseConsumer<TallyContext> = config.create_with_context(context)?;
        if settings.cluster.is_some() {
            consumer.subscribe(&[&settings.topic])?;
        }
        let consumer = Arc::new(consumer);
        let stalls = Arc::new(Mutex::new(StallDetector::new(settings.stall_after)));
        // Lag is measured on a thread of its own: a watermark request can wait behind the
        // broker's long-polled fetches for up to a second, which the poll loop must not.
        let lag = {
            let (sink, consumer, settings, stalls) = (
                sink.clone(),
                consumer.clone(),
                settings.clone(),
                stalls.clone(),
            );
            SignalledThread::spawn("tally-kafka-lag", stop.clone(), move |stop| {
                while !stop.is_stopped() {
                    record_lag(&consumer, &sink, &settings, &stalls);
                    let next = Instant::now() + LAG_CHECK_INTERVAL;
                    while !stop.is_stopped() && Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        }
        .map_err(|e| KafkaError::ClientCreation(format!("cannot start the lag thread: {e}")))?;
        let thread = SignalledThread::spawn("tally-kafka", stop, move |stop| {
            run(&sink, &consumer, &settings, &stop, &stalls)
        })
        .map_err(|e| {
            KafkaError::ClientCreation(format!("cannot start the consumer thread: {e}"))
        })?;
        Ok(KafkaConsumer {
            thread,
            lag,
            restorer,
        })
    }

    /// Finishes the batch in hand and stops; nothing polled is lost (what was not appended is
    /// read again from the stored offsets next time).
    pub fn stop(self) {
        self.thread.stop();
        self.lag.stop();
        if let Some(restorer) = self.restorer {
            restorer.stop();
        }
    }
}

/// One polled message, reduced to what the batch needs.
pub(crate) struct Polled {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
}

fn run(
    sink: &IngestHandle,
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    stop: &StopSignal,
    stalls: &Mutex<StallDetector>,
) {
    let member = consumer.context().member.as_ref();
    let mut assigned: Vec<i32> = Vec::new();
    // Per partition, the first offset not yet recorded; messages below it are skipped.
    let mut resume: BTreeMap<i32, i64> = BTreeMap::new();
    // Gaps already read again once (partition, first missing offset): seen again, they are
    // taken as the topic's own (a transaction marker, a compacted range).
    let mut retried_gaps: BTreeSet<(i32, i64)> = BTreeSet::new();
    // In a cluster: partitions being restored from the changelog, with their assignment's
    // number, and those restored and not yet sought to their stored offsets.
    let mut restoring: BTreeMap<i32, u64> = BTreeMap::new();
    let mut to_resume: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_assignment_check: Option<Instant> = None;
    let mut in_flight: Option<InFlight> = None;
    // Set when a failed write could not yet be followed by a seek back: nothing is polled
    // until it is (a later batch's offsets would skip the failed one's messages).
    let mut must_read_again = false;
    while !stop.is_stopped() {
        if must_read_again {
            must_read_again = !read_again(
                consumer,
                sink,
                settings,
                &mut assigned,
                &mut resume,
                &mut last_assignment_check,
            );
            continue;
        }
        // (Re)assign when partitions appear: between batches, so the stored offsets are exactly
        // where reading stands. In a cluster the group assigns; the count still says which
        // partition holds which tenant.
        if last_assignment_check.is_none_or(|at| at.elapsed() > ASSIGNMENT_REFRESH) {
            last_assignment_check = Some(Instant::now());
            match partitions_of(consumer, &settings.topic, Duration::from_secs(5)) {
                Ok(partitions) if partitions.is_empty() => {
                    tracing::warn!(topic = %settings.topic, "topic has no partitions (does it exist?); retrying");
                }
                Ok(partitions) => {
                    if let Ok(count) = i32::try_from(partitions.len()) {
                        sink.ownership.set_partition_count(count);
                    }
                    if member.is_none() && partitions != assigned {
                        match assign_all(consumer, &sink.store, &settings.topic, &partitions) {
                            Ok(stored) => {
                                assigned = stored.keys().copied().collect();
                                resume = stored;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "cannot assign partitions; retrying")
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read topic metadata; retrying"),
            }
        }
        if member.is_none() && assigned.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            last_assignment_check = None;
            continue;
        }
        // In a cluster this poll also runs the group's rebalances.
        let mut batch = poll_batch(consumer, settings, stop, &sink.kafka_health, stalls);
        let mut restored_now = Vec::new();
        for change in member.map(GroupMember::take_changes).unwrap_or_default() {
            match change {
                AssignmentChange::Assigned {
                    partition,
                    assignment,
                } => {
                    // Nothing is taken from it until it is restored.
                    resume.insert(partition, i64::MAX);
                    restoring.insert(partition, assignment);
                    to_resume.remove(&partition);
                }
                AssignmentChange::Restored {
                    partition,
                    assignment,
                    stored,
                } => {
                    if restoring.get(&partition) == Some(&assignment) {
                        restored_now.push((partition, stored));
                    }
                }
                AssignmentChange::Revoked { partition } => {
                    resume.remove(&partition);
                    restoring.remove(&partition);
                    to_resume.remove(&partition);
                }
            }
        }
        batch.retain(|m| m.offset >= resume.get(&m.partition).copied().unwrap_or(0));
        for (partition, expected) in cut_at_gaps(&mut batch, &resume, &mut retried_gaps) {
            // Read again from a little before the gap: see `cut_at_gaps`.
            tracing::warn!(
                partition,
                expected,
                "messages skipped by the broker; reading them again"
            );
            if let Err(error) = seek_before(consumer, settings, partition, expected) {
                tracing::error!(%error, partition, "cannot seek back to a gap; reading again from the stored offsets");
                must_read_again = true;
            }
        }
        // Restored partitions are read from their stored offsets on: sought after this batch
        // was filtered, so nothing fetched before the seek is taken.
        to_resume.extend(restored_now);
        if !to_resume.is_empty() {
            resume_restored(sink, consumer, settings, &mut to_resume, &mut resume);
            restoring.retain(|partition, _| resume.get(partition) == Some(&i64::MAX));
        }
        for message in &batch {
            resume.insert(message.partition, message.offset + 1);
        }
        // The batch before this one was being written while this one was polled and decoded;
        // this one is queued only once that one is durable, so a failed write is never
        // followed by a later batch (whose offsets would skip the failed one's messages).
        let prepared = (!batch.is_empty()).then(|| prepare_batch(sink, settings, &batch));
        if let Some(written) = in_flight.take()
            && finish_batch(consumer, settings, written).is_err()
        {
            // This batch's messages are read again too.
            must_read_again = true;
            continue;
        }
        if let Some((candidates, offsets)) = prepared {
            let counted = sink.clone();
            let batch_len = batch.len();
            let count: OnWritten =
                Box::new(move |outcomes| count_outcomes(&counted, outcomes, batch_len));
            match sink
                .appender
                .submit_blocking(candidates, offsets, Some(count))
            {
                Ok(pending) => in_flight = Some(InFlight { pending, batch }),
                Err(error) => {
                    tracing::error!(%error, "kafka batch not appended; will read it again");
                    must_read_again = true;
                }
            }
        }
    }
    // The batch in hand is finished before the consumer stops.
    if let Some(written) = in_flight.take() {
        let _ = finish_batch(consumer, settings, written);
    }
}

/// Seeks each restored partition of `to_resume` a little before its stored offset; from then
/// on its messages are taken. The ones that cannot be sought yet are tried next round.
fn resume_restored(
    sink: &IngestHandle,
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    to_resume: &mut BTreeMap<i32, i64>,
    resume: &mut BTreeMap<i32, i64>,
) {
    to_resume.retain(|&partition, &mut stored| {
        if let Err(error) = seek_before(consumer, settings, partition, stored) {
            tracing::warn!(%error, partition, "cannot seek a restored partition to its stored offset yet; retrying");
            return true;
        }
        resume.insert(partition, stored);
        consumer.context().watermarks.forget(&settings.topic, partition);
        sink.ownership.changelog_restored(partition);
        tracing::info!(partition, stored, "restored; reading the source topic");
        false
    });
}

/// After a batch that was not written (nothing of it was): read again from the offsets the
/// store holds, after a moment. A single engine forgets its assignment, so the next round
/// assigns again; an engine of a cluster keeps the group's and seeks back. `false` when the
/// seek failed (it is tried again before anything is polled).
fn read_again(
    consumer: &BaseConsumer<TallyContext>,
    sink: &IngestHandle,
    settings: &KafkaSettings,
    assigned: &mut Vec<i32>,
    resume: &mut BTreeMap<i32, i64>,
    last_assignment_check: &mut Option<Instant>,
) -> bool {
    std::thread::sleep(Duration::from_secs(1));
    if consumer.context().member.is_none() {
        assigned.clear();
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
    let partitions = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect::<Vec<_>>();
    let stored = match stored_offsets(&sink.store, &settings.topic, partitions) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, "cannot read the stored offsets to seek back; retrying");
            return false;
        }
    };
    let mut all_sought = true;
    for (partition, stored_offset) in stored {
        if resume.get(&partition) == Some(&i64::MAX) {
            // Still being restored: sought once it is.
            continue;
        }
        match seek_before(consumer, settings, partition, stored_offset) {
            Ok(()) => {
                resume.insert(partition, stored_offset);
            }
            Err(error) => {
                tracing::error!(%error, partition, "cannot seek back after a failed write; retrying");
                all_sought = false;
            }
        }
    }
    all_sought
}

/// Finds, per partition, a message past the next expected offset (`resume`): a gap. Kafka
/// offsets are contiguous in a topic without transactions or compaction, and Tansu 0.6 was
/// seen to answer a fetch from inside a record batch with the next batch, silently skipping
/// the rest of it, when librdkafka fetched again from where the application stood (after a
/// rebalance). The messages of such a partition from the gap on are cut from `batch`, and the
/// partition and its first missing offset returned, to be read again. A gap already retried
/// once (in `retried`) is taken as it is.
fn cut_at_gaps(
    batch: &mut Vec<Polled>,
    resume: &BTreeMap<i32, i64>,
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
            .or_insert_with(|| resume.get(&message.partition).copied().unwrap_or(0));
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

/// A batch queued for the log writer, with the messages it came from.
struct InFlight {
    pending: PendingAppend,
    batch: Vec<Polled>,
}

/// Waits for a queued batch (the writer counted its outcomes) and commits its offsets to Kafka
/// as a hint; `Err` when the log could not be written (logged here; the batch is read again
/// from the stored offsets).
fn finish_batch(
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    written: InFlight,
) -> Result<(), AppendError> {
    match written.pending.wait() {
        Ok(_) => {
            commit_hint(consumer, settings, &written.batch);
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "kafka batch not appended; will read it again");
            Err(error)
        }
    }
}

/// How long a revoked partition waits for the changelog to hold what was recorded for it.
const REVOKE_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// How long the group waits for a silent engine of a cluster before moving its partitions,
/// and for a member to rejoin during a rebalance.
const CLUSTER_SESSION_TIMEOUT_MS: &str = "30000";

/// How often lag and stalls are measured.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How often the topic's partitions are looked up again (new partitions get assigned).
const ASSIGNMENT_REFRESH: Duration = Duration::from_secs(10);

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

fn poll_batch(
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
                batch.push(Polled {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                });
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

/// Decodes a batch into the log writer's candidates and the partitions' next offsets.
fn prepare_batch(
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
        candidates.push(decode_message(sink, now, source, message));
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

/// Counts a written batch's outcomes in the metrics.
fn count_outcomes(sink: &IngestHandle, outcomes: &[Outcome], batch_len: usize) {
    let metrics = &sink.metrics;
    let mut counts = [0u64; 4];
    for outcome in outcomes {
        let [recorded, duplicate, conflict, rejected] = &mut counts;
        let slot = match outcome {
            Outcome::Recorded { .. } => recorded,
            Outcome::Duplicate { .. } => duplicate,
            Outcome::Conflict(_) => conflict,
            Outcome::Rejected(_) => rejected,
        };
        *slot += 1;
    }
    for (outcome, n) in ["recorded", "duplicate", "conflict", "rejected"]
        .into_iter()
        .zip(counts)
    {
        metrics.count_events(outcome, "kafka", n);
    }
    metrics.kafka_batch_size.observe(batch_len as f64);
}

/// The message key is the tenant; a message without a key is the event's own tenant or the
/// default one. An event naming another tenant than its key is refused.
pub(crate) fn decode_message(
    sink: &IngestHandle,
    now: i64,
    source: EventSource,
    message: &Polled,
) -> Candidate {
    let key_tenant = match message.key.as_deref().map(std::str::from_utf8) {
        None => None,
        Some(Ok(tenant)) if event::is_tenant_name(tenant) => Some(tenant.to_owned()),
        Some(_) => {
            let rejection = Rejection::new(
                None,
                "key",
                "the message key must be a tenant name (a-z, A-Z, 0-9, `-`, `_`, `.`, at most 64)",
            );
            return Candidate::Rejected(DeadLetter::new(
                now,
                source,
                DEFAULT_TENANT,
                rejection,
                &message.payload,
            ));
        }
    };
    let tenant = key_tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    let context = sink.decode_context(now, tenant, key_tenant.is_none());
    match event::decode(&message.payload, &context) {
        // In a cluster a tenant's events are folded by the owner of its partition alone, so
        // an event in another partition would be counted where nobody reads it.
        Ok(event) => match sink.ownership.partition_of(&event.tenant) {
            Some(expected) if expected != message.partition => {
                let rejection = Rejection::new(
                    Some(&event.id),
                    "key",
                    format!(
                        "in a cluster a message must be keyed by its tenant: tenant `{}` belongs in partition {expected}, not {}",
                        event.tenant, message.partition
                    ),
                );
                Candidate::Rejected(DeadLetter::new(
                    now,
                    source,
                    &event.tenant,
                    rejection,
                    &message.payload,
                ))
            }
            _ => Candidate::Event { event, source },
        },
        Err(rejection) => Candidate::Rejected(DeadLetter::new(
            now,
            source,
            context.tenant,
            rejection,
            &message.payload,
        )),
    }
}

/// Commits the batch's next offsets to Kafka: only a hint for lag tools; RocksDB is the truth.
fn commit_hint(consumer: &BaseConsumer<TallyContext>, settings: &KafkaSettings, batch: &[Polled]) {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for message in batch {
        next.insert(message.partition, message.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in next {
        let _ = list.add_partition_offset(&settings.topic, partition, Offset::Offset(offset));
    }
    if let Err(error) = consumer.commit(&list, CommitMode::Async) {
        tracing::debug!(%error, "offset commit hint failed");
    }
}

/// Measures each assigned partition's lag, and reports the partitions that stand still while
/// behind (or while their high watermark cannot be read) for longer than the stall time.
fn record_lag(
    consumer: &BaseConsumer<TallyContext>,
    sink: &IngestHandle,
    settings: &KafkaSettings,
    stalls: &Mutex<StallDetector>,
) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let now = Instant::now();
    let stored = sink
        .store
        .source_offsets(&settings.topic)
        .unwrap_or_default();
    for element in assignment.elements() {
        let partition = element.partition();
        match consumer.fetch_watermarks(&settings.topic, partition, Duration::from_secs(1)) {
            Ok((low, listed_high)) => {
                sink.kafka_health.recover();
                // ListOffsets can answer too low (see `watermarks`); fetch responses do not.
                let fetched = consumer
                    .context()
                    .watermarks
                    .high(&settings.topic, partition);
                let high = listed_high.max(fetched.unwrap_or(-1));
                let position = stored.get(&partition).copied().unwrap_or(low);
                let lag = high.saturating_sub(position).max(0);
                sink.metrics.set_kafka_lag(partition, lag);
                sink.ownership.lag(partition, lag);
                // Read to the end: everything the partition held is in the log below the head
                // now (the stored offset moves in the same write as the events). Only a fetch
                // since the assignment tells the end: the listed one can be a batch short.
                if lag == 0 && fetched.is_some() && sink.ownership.is_restoring(partition) {
                    sink.ownership.caught_up(partition, sink.log_head.get());
                    tracing::info!(partition, "partition read to its end");
                }
                // Not read while it is restored from the changelog: standing still is expected.
                let held_back = sink.ownership.is_from_changelog(partition);
                let verdict = stalls.lock().ok().and_then(|mut stalls| {
                    if held_back {
                        stalls.held_back(partition, position, now);
                        None
                    } else {
                        stalls.observe(partition, position, Ok(lag), now)
                    }
                });
                report_stall(sink, partition, verdict);
            }
            Err(error) => {
                tracing::warn!(%error, partition, "cannot fetch watermarks");
                sink.kafka_health.fail(&error);
                let position = stored.get(&partition).copied().unwrap_or(0);
                let verdict = stalls.lock().ok().and_then(|mut stalls| {
                    stalls.observe(partition, position, Err(error.to_string()), now)
                });
                report_stall(sink, partition, verdict);
            }
        }
    }
}

fn report_stall(sink: &IngestHandle, partition: i32, verdict: Option<String>) {
    let was_stalled = sink.kafka_stalls.stalled().contains_key(&partition);
    match verdict {
        Some(reason) => {
            if !was_stalled {
                tracing::error!(partition, %reason, "kafka partition stalled");
            }
            sink.metrics.set_kafka_stalled(partition, true);
            sink.kafka_stalls.set(partition, reason);
        }
        None => {
            if was_stalled {
                tracing::info!(partition, "kafka partition advances again");
            }
            sink.metrics.set_kafka_stalled(partition, false);
            sink.kafka_stalls.clear(partition);
        }
    }
}

/// Tells a partition that is slow from one that stands still. Pure: fed positions, lags and
/// instants, so the rules are tested without a broker.
pub(crate) struct StallDetector {
    stall_after: Duration,
    partitions: BTreeMap<i32, Progress>,
    /// The newest consumer error (librdkafka does not say which partition it came from).
    last_error: Option<String>,
}

struct Progress {
    position: i64,
    /// When the position last moved, or the partition was last seen caught up.
    since: Instant,
}

impl StallDetector {
    pub(crate) fn new(stall_after: Duration) -> StallDetector {
        StallDetector {
            stall_after,
            partitions: BTreeMap::new(),
            last_error: None,
        }
    }

    pub(crate) fn consumer_error(&mut self, error: String) {
        self.last_error = Some(error);
    }

    /// `partition` stands at `position` on purpose (not read while it is restored): its stall
    /// time starts afresh.
    pub(crate) fn held_back(&mut self, partition: i32, position: i64, now: Instant) {
        self.partitions.insert(
            partition,
            Progress {
                position,
                since: now,
            },
        );
    }

    /// Records where `partition` stands (`lag`, or why it cannot be measured) and says why it
    /// is stalled, or `None` when it is caught up or advanced within the stall time.
    pub(crate) fn observe(
        &mut self,
        partition: i32,
        position: i64,
        lag: Result<i64, String>,
        now: Instant,
    ) -> Option<String> {
        let progress = self.partitions.entry(partition).or_insert(Progress {
            position,
            since: now,
        });
        if progress.position != position || lag == Ok(0) {
            progress.position = position;
            progress.since = now;
            if lag == Ok(0) {
                self.last_error = None;
            }
            return None;
        }
        let still = now.saturating_duration_since(progress.since);
        if still < self.stall_after {
            return None;
        }
        let mut reason = match lag {
            Ok(lag) => format!(
                "no progress for {} s at offset {position} with {lag} messages behind",
                still.as_secs()
            ),
            Err(error) => format!(
                "no progress for {} s at offset {position}; the high watermark cannot be read: {error}",
                still.as_secs()
            ),
        };
        if let Some(error) = &self.last_error {
            reason.push_str(&format!("; last consumer error: {error}"));
        }
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_gap_in_a_partition_is_cut_and_read_again_once() {
        use super::{Polled, cut_at_gaps};
        use std::collections::{BTreeMap, BTreeSet};
        let polled = |partition, offset| Polled {
            partition,
            offset,
            key: None,
            payload: Vec::new(),
        };
        let resume = BTreeMap::from([(0, 10), (1, 5)]);
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
        let resume = BTreeMap::from([(1, 7)]);
        let mut batch = vec![polled(1, 9), polled(1, 10)];
        assert!(cut_at_gaps(&mut batch, &resume, &mut retried).is_empty());
        assert_eq!(batch.len(), 2);
    }

    use super::*;

    #[test]
    fn a_partition_behind_that_stands_still_is_stalled_until_it_moves() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut stalls = StallDetector::new(Duration::from_secs(60));
        assert_eq!(stalls.observe(0, 100, Ok(50), at(0)), None);
        assert_eq!(stalls.observe(0, 100, Ok(50), at(59)), None);
        stalls.consumer_error("Decompression (codec 0x4) Not implemented".into());
        let reason = stalls.observe(0, 100, Ok(50), at(61)).expect("stalled");
        assert_eq!(
            reason,
            "no progress for 61 s at offset 100 with 50 messages behind; last consumer error: Decompression (codec 0x4) Not implemented"
        );
        // Moving clears it at once; standing still again starts the clock anew.
        assert_eq!(stalls.observe(0, 101, Ok(49), at(62)), None);
        assert_eq!(stalls.observe(0, 101, Ok(49), at(100)), None);
        assert!(stalls.observe(0, 101, Ok(49), at(123)).is_some());
        // Held back while it is restored: the clock starts anew once it is read again.
        stalls.held_back(0, 101, at(200));
        assert_eq!(stalls.observe(0, 101, Ok(49), at(250)), None);
        assert!(stalls.observe(0, 101, Ok(49), at(261)).is_some());
    }

    #[test]
    fn an_idle_caught_up_partition_is_never_stalled_and_unreadable_ones_are() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut stalls = StallDetector::new(Duration::from_secs(5));
        for s in 0..100 {
            assert_eq!(stalls.observe(1, 7, Ok(0), at(s)), None);
        }
        assert_eq!(stalls.observe(2, 0, Err("broker down".into()), at(0)), None);
        let reason = stalls
            .observe(2, 0, Err("broker down".into()), at(6))
            .expect("stalled");
        assert!(
            reason.contains("high watermark cannot be read: broker down"),
            "{reason}"
        );
        // Partition 1 is unaffected.
        assert_eq!(stalls.observe(1, 7, Ok(0), at(101)), None);
    }
}
