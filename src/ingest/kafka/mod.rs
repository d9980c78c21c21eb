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
//!
//! One concern a module:
//! - [`partition`]: a partition's phases on this consumer and every transition between them.
//! - [`membership`]: which partitions are read (all, or the group's share), the rebalance
//!   callback and the assignment changes it hands to the poll loop.
//! - [`restore`]: the thread restoring assigned partitions from the changelog.
//! - [`fetch`]: polling, dropping what is recorded or held back, gaps, and every seek.
//! - [`batch`]: a polled batch on its way into the log (decoded on [`crate::ingest::path`]).
//! - [`stall`]: lag and stalled partitions.
//!
//! This module starts and stops the consumer and runs its poll loop.

mod batch;
mod fetch;
mod membership;
mod partition;
mod restore;
mod stall;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::engine::IngestHandle;
use crate::health::Health;
use crate::kafka::{self, FetchedWatermarks, STATISTICS_INTERVAL_MS};
use crate::stop::{SignalledThread, StopSignal};
use batch::InFlight;
use membership::GroupMember;
use partition::{AssignmentChange, Partitions};
use stall::StallDetector;

pub(crate) use fetch::partitions_of;

pub use crate::config::KafkaSettings;

/// How long the group waits for a silent engine of a cluster before moving its partitions,
/// and for a member to rejoin during a rebalance.
const CLUSTER_SESSION_TIMEOUT_MS: &str = "30000";

/// How often the topic's partitions are looked up again (new partitions get assigned).
const ASSIGNMENT_REFRESH: Duration = Duration::from_secs(10);

/// Assigns partitions at the offsets stored in RocksDB, and records broker errors as health.
struct TallyContext {
    health: Arc<Health>,
    watermarks: FetchedWatermarks,
    /// In a cluster: what the group assigns is taken at the offsets stored here (see
    /// [`membership`]).
    member: Option<GroupMember>,
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
        let changes: Arc<Mutex<Vec<AssignmentChange>>> = Arc::default();
        let (restores, restore_jobs) = mpsc::channel();
        let restorer = restore::start_restorer(&sink, &settings, restore_jobs, &changes, &stop)?;
        let context = TallyContext {
            health: sink.kafka_health.clone(),
            watermarks: FetchedWatermarks::default(),
            member: match (&settings.cluster, &sink.changelog) {
                (Some(_), Some(changelog)) => Some(GroupMember {
                    store: sink.store.clone(),
                    topic: settings.topic.clone(),
                    ownership: sink.ownership.clone(),
                    restores,
                    published: changelog.published.clone(),
                    log_head: sink.log_head.clone(),
                    assignments: Default::default(),
                    changes,
                }),
                _ => None,
            },
        };
        let mut config = kafka::fetch_tuned();
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
        let lag = stall::start_lag_thread(&sink, &consumer, &settings, &stalls, &stop)?;
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

/// The poll loop: each round polls a batch (running the group's rebalances, in a cluster),
/// applies what changed to the partitions' phases, keeps what is to be taken, and queues it
/// for the log writer once the previous batch is durable.
fn run(
    sink: &IngestHandle,
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    stop: &StopSignal,
    stalls: &Mutex<StallDetector>,
) {
    let member = consumer.context().member.as_ref();
    let mut partitions = Partitions::default();
    // Gaps already read again once (partition, first missing offset): seen again, they are
    // taken as the topic's own (a transaction marker, a compacted range).
    let mut retried_gaps: BTreeSet<(i32, i64)> = BTreeSet::new();
    let mut last_assignment_check: Option<Instant> = None;
    let mut in_flight: Option<InFlight> = None;
    // Set when a failed write could not yet be followed by a seek back: nothing is polled
    // until it is (a later batch's offsets would skip the failed one's messages).
    let mut must_read_again = false;
    while !stop.is_stopped() {
        if must_read_again {
            must_read_again = !fetch::read_again(
                consumer,
                sink,
                settings,
                &mut partitions,
                &mut last_assignment_check,
            );
            continue;
        }
        if last_assignment_check.is_none_or(|at| at.elapsed() > ASSIGNMENT_REFRESH) {
            last_assignment_check = Some(Instant::now());
            membership::refresh_partitions(consumer, sink, settings, &mut partitions);
        }
        if member.is_none() && partitions.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            last_assignment_check = None;
            continue;
        }
        // In a cluster this poll also runs the group's rebalances.
        let mut batch = fetch::poll_batch(consumer, settings, stop, &sink.kafka_health, stalls);
        membership::apply_changes(member, &mut partitions);
        if !fetch::keep_taken(
            consumer,
            sink,
            settings,
            &mut batch,
            &mut partitions,
            &mut retried_gaps,
        ) {
            must_read_again = true;
        }
        // The batch before this one was being written while this one was polled and decoded;
        // this one is queued only once that one is durable, so a failed write is never
        // followed by a later batch (whose offsets would skip the failed one's messages).
        let prepared = (!batch.is_empty()).then(|| batch::prepare(sink, settings, &batch));
        if let Some(written) = in_flight.take()
            && batch::finish(consumer, settings, written).is_err()
        {
            // This batch's messages are read again too.
            must_read_again = true;
            continue;
        }
        if let Some(prepared) = prepared {
            match batch::submit(sink, prepared) {
                Ok(pending) => in_flight = Some(pending),
                Err(error) => {
                    tracing::error!(%error, "kafka batch not appended; will read it again");
                    must_read_again = true;
                }
            }
        }
    }
    // The batch in hand is finished before the consumer stops.
    if let Some(written) = in_flight.take() {
        let _ = batch::finish(consumer, settings, written);
    }
}
