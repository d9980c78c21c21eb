//! The Kafka consumer: polls batches, decodes them, and appends events, dead letters and the
//! partitions' next offsets in one write batch.
//!
//! Offsets live in RocksDB; on (re)assignment each partition is assigned at its stored offset,
//! so a message replayed after a crash is either already in the log with its offset (and not
//! read again) or not in the log at all. Offsets are committed to Kafka too, as a hint for lag
//! tools only. Rebalance callbacks touch nothing but the assignment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::api::ingest::duration_micros;
use crate::auth::DEFAULT_TENANT;
use crate::engine::Engine;
use crate::event::{self, DecodeContext, EventSource, Rejection};
use crate::health::Health;
use crate::log::DeadLetter;
use crate::log::append::{Candidate, Outcome, SourceOffset};
use crate::log::store::Store;

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Most messages in one append batch.
    pub batch_max: usize,
    /// Longest a batch waits to fill once it has its first message.
    pub batch_linger: Duration,
}

/// Assigns partitions at the offsets stored in RocksDB, and records broker errors as health.
struct TallyContext {
    store: Store,
    topic: String,
    health: Arc<Health>,
}

impl ClientContext for TallyContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        // Losing every broker is an outage; other errors are transient and logged.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_failing(true);
        }
    }
}

impl ConsumerContext for TallyContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = match self.store.source_offsets(&self.topic) {
                    Ok(stored) => stored,
                    Err(error) => {
                        // Without our offsets we cannot assign safely; leave unassigned and let
                        // the group retry.
                        tracing::error!(%error, "cannot read stored offsets; not assigning");
                        return;
                    }
                };
                let assigned: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                for partition in assigned {
                    let offset = stored
                        .get(&partition)
                        .map_or(Offset::Beginning, |&o| Offset::Offset(o));
                    tracing::info!(topic = %self.topic, partition, ?offset, "assigned");
                    if let Err(error) =
                        partitions.set_partition_offset(&self.topic, partition, offset)
                    {
                        tracing::error!(%error, partition, "cannot set the assignment offset");
                    }
                }
                if let Err(error) = consumer.assign(partitions) {
                    tracing::error!(%error, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!("partitions revoked");
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassign failed");
                }
            }
            other => {
                tracing::error!(?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// A running consumer thread; stop it with [`KafkaConsumer::stop`].
pub struct KafkaConsumer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaConsumer {
    pub fn start(
        engine: Arc<Engine>,
        settings: KafkaSettings,
    ) -> Result<KafkaConsumer, KafkaError> {
        let health = engine.kafka_health.clone();
        let context = TallyContext {
            store: engine.store.clone(),
            topic: settings.topic.clone(),
            health,
        };
        let consumer: BaseConsumer<TallyContext> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("enable.partition.eof", "false")
            .create_with_context(context)?;
        consumer.subscribe(&[&settings.topic])?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tally-kafka".into())
            .spawn(move || run(&engine, &consumer, &settings, &thread_stop))
            .map_err(|e| {
                KafkaError::ClientCreation(format!("cannot start the consumer thread: {e}"))
            })?;
        Ok(KafkaConsumer {
            stop,
            thread: Some(thread),
        })
    }

    /// Finishes the batch in hand and stops; nothing polled is lost (what was not appended is
    /// read again from the stored offsets next time).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One polled message, reduced to what the batch needs.
struct Polled {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

fn run(
    engine: &Engine,
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    stop: &AtomicBool,
) {
    let mut last_lag_check = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let batch = poll_batch(consumer, settings, stop, &engine.kafka_health);
        if !batch.is_empty() {
            if let Err(()) = append_batch(engine, settings, &batch) {
                // Nothing was written: rewind every partition of the batch to where the store
                // says it stands, wait, and read the same messages again.
                rewind(consumer, engine, settings, &batch);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            commit_hint(consumer, settings, &batch);
        }
        if last_lag_check.elapsed() > Duration::from_secs(2) {
            record_lag(consumer, engine, settings);
            last_lag_check = Instant::now();
        }
    }
}

fn poll_batch(
    consumer: &BaseConsumer<TallyContext>,
    settings: &KafkaSettings,
    stop: &AtomicBool,
    health: &Health,
) -> Vec<Polled> {
    let mut batch = Vec::new();
    let mut deadline: Option<Instant> = None;
    while batch.len() < settings.batch_max && !stop.load(Ordering::SeqCst) {
        let wait = match deadline {
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) => left,
                None => break,
            },
            None => Duration::from_millis(200),
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                health.set_failing(false);
                batch.push(Polled {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                });
                deadline.get_or_insert_with(|| Instant::now() + settings.batch_linger);
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "kafka poll error");
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

/// Decodes a batch and appends it with its offsets; `Err` when the log could not be written.
fn append_batch(engine: &Engine, settings: &KafkaSettings, batch: &[Polled]) -> Result<(), ()> {
    let now = engine.now();
    let mut candidates = Vec::with_capacity(batch.len());
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for message in batch {
        let source = EventSource::Kafka {
            topic: settings.topic.clone(),
            partition: message.partition,
            offset: message.offset,
        };
        next_offsets.insert(message.partition, message.offset + 1);
        candidates.push(decode_message(engine, now, source, message));
    }
    let offsets = next_offsets
        .into_iter()
        .map(|(partition, next_offset)| SourceOffset {
            topic: settings.topic.clone(),
            partition,
            next_offset,
        })
        .collect();
    let metrics = &engine.metrics;
    match engine.appender.append_blocking(candidates, offsets) {
        Ok(outcomes) => {
            let mut counts = [0u64; 4];
            for outcome in &outcomes {
                let slot = match outcome {
                    Outcome::Recorded { .. } => 0,
                    Outcome::Duplicate { .. } => 1,
                    Outcome::Conflict(_) => 2,
                    Outcome::Rejected(_) => 3,
                };
                counts[slot] += 1;
            }
            for (outcome, n) in ["recorded", "duplicate", "conflict", "rejected"]
                .into_iter()
                .zip(counts)
            {
                metrics.count_events(outcome, "kafka", n);
            }
            metrics.kafka_batch_size.observe(batch.len() as f64);
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "kafka batch not appended; will read it again");
            Err(())
        }
    }
}

/// The message key is the tenant; a message without a key is the event's own tenant or the
/// default one. An event naming another tenant than its key is refused.
fn decode_message(engine: &Engine, now: i64, source: EventSource, message: &Polled) -> Candidate {
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
    let context = DecodeContext {
        catalog: &engine.config.catalog,
        now,
        late_window: duration_micros(engine.config.late_window),
        future_skew: duration_micros(engine.config.future_skew),
        tenant: key_tenant.as_deref().unwrap_or(DEFAULT_TENANT),
        may_name_any_tenant: key_tenant.is_none(),
    };
    match event::decode(&message.payload, &context) {
        Ok(event) => Candidate::Event { event, source },
        Err(rejection) => Candidate::Rejected(DeadLetter::new(
            now,
            source,
            context.tenant,
            rejection,
            &message.payload,
        )),
    }
}

fn rewind(
    consumer: &BaseConsumer<TallyContext>,
    engine: &Engine,
    settings: &KafkaSettings,
    batch: &[Polled],
) {
    let stored = engine
        .store
        .source_offsets(&settings.topic)
        .unwrap_or_default();
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for message in batch {
        first.entry(message.partition).or_insert(message.offset);
    }
    for (partition, first_offset) in first {
        let offset = stored.get(&partition).copied().unwrap_or(first_offset);
        if let Err(error) = consumer.seek(
            &settings.topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            tracing::error!(%error, partition, "cannot rewind after a failed append");
        }
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

fn record_lag(consumer: &BaseConsumer<TallyContext>, engine: &Engine, settings: &KafkaSettings) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let stored = engine
        .store
        .source_offsets(&settings.topic)
        .unwrap_or_default();
    for element in assignment.elements() {
        let partition = element.partition();
        match consumer.fetch_watermarks(&settings.topic, partition, Duration::from_secs(1)) {
            Ok((low, high)) => {
                engine.kafka_health.set_failing(false);
                let position = stored.get(&partition).copied().unwrap_or(low);
                engine
                    .metrics
                    .set_kafka_lag(partition, high.saturating_sub(position));
            }
            Err(error) => {
                tracing::warn!(%error, partition, "cannot fetch watermarks");
                engine.kafka_health.set_failing(true);
            }
        }
    }
}
