//! The cluster's changelog: what an engine records for a partition it owns is published to
//! `<topic>.tally-changelog` (same partition), and an engine that is assigned a partition
//! first restores from there what it lacks, then reads the source topic from where the
//! restored entries end. The Kafka Streams design, with the log entries as the changes.
//!
//! - **Publishing.** The log writer notes each request's recorded entries in an outbox row in
//!   the same batch ([`MetaKey::ChangelogOutbox`]); the [`Publisher`] sends them, in log order, with an
//!   idempotent producer and `acks=all`, then deletes the row. So an entry is published once
//!   it is durable here, and a crash between the two publishes it again, never not at all. A
//!   command is answered only once its entries are published ([`Engine::append_facts`]).
//! - **Restoring.** [`restore`] reads the partition's changelog from where this engine stands
//!   in it, and appends what other engines recorded as [`Candidate::Restored`]: an entry seen
//!   again (published twice, or already here by its event id) is taken once. The source offset
//!   moves past the last restored event, so the source topic's history is not read again.
//!
//! [`Engine::append_facts`]: crate::engine::Engine::append_facts

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::Ownership;
use crate::event::EventSource;
use crate::log::LogEntry;
use crate::log::append::{
    AppendError, Appender, Candidate, LogHead, Outcome, RowWrite, SourceOffset,
};
use crate::log::codec;
use crate::log::format;
use crate::log::keys::{self, MetaKey};
use crate::log::store::{CF_LOG, CF_META, CF_OFFSETS, Store, StoreError};
use crate::log::values;
use crate::stop::{SignalledThread, StopSignal};

/// Why the changelog could not be published or restored.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("changelog record at offset {offset} of partition {partition}: {reason}")]
    Record {
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("log entry {0} cannot be read to publish it")]
    Unreadable(u64),
    #[error("the changelog of partition {partition} stopped at offset {at}, short of {end}")]
    Stalled { partition: i32, at: i64, end: i64 },
    #[error("the engine is stopping")]
    Stopping,
}

/// The changelog topic of a source topic.
pub fn changelog_topic(topic: &str) -> String {
    format!("{topic}.tally-changelog")
}

/// Version of a changelog record's layout.
const RECORD_VERSION: u8 = 1;

/// A record's bytes are kept under this (a Kafka message's default limit is 1 MB).
const MAX_RECORD_BYTES: usize = 512 * 1024;

/// One changelog message: entries one engine (`origin`) recorded, with their seqs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    pub origin: u64,
    pub entries: Vec<(u64, LogEntry)>,
}

/// `version u8 · origin u64 BE · count u32 BE · (seq u64 BE · length u32 BE · entry)*`, each
/// entry in the log's own versioned format.
fn encode_record(origin: u64, entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(_, bytes)| 12 + bytes.len()).sum();
    let mut out = Vec::with_capacity(13 + size);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (seq, bytes) in entries {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Reads a record written by [`encode_record`]; every malformed part is named.
pub fn decode_record(bytes: &[u8]) -> Result<ChangelogRecord, String> {
    let mut rest = bytes;
    let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(format!("cut short in its {what}"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let version = take(1, "version")?;
    if version != [RECORD_VERSION] {
        return Err(format!("unknown record version {version:?}"));
    }
    let origin = u64::from_be_bytes(codec::field(take(8, "origin")?, 0));
    let count = u32::from_be_bytes(codec::field(take(4, "entry count")?, 0));
    let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(65_536));
    for _ in 0..count {
        let seq = u64::from_be_bytes(codec::field(take(8, "entry seq")?, 0));
        let length = u32::from_be_bytes(codec::field(take(4, "entry length")?, 0));
        let body = take(usize::try_from(length).unwrap_or(usize::MAX), "entry")?;
        let entry = values::decode_entry(body).map_err(|e| format!("entry {seq}: {e}"))?;
        entries.push((seq, entry));
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after its last entry", rest.len()));
    }
    Ok(ChangelogRecord { origin, entries })
}

/// Per origin, the last seq a restore took of one partition: an entry published twice (a
/// crash between publishing and forgetting its outbox row) is then taken once.
fn encode_applied(applied: &BTreeMap<u64, u64>) -> Vec<u8> {
    let mut out = vec![1u8];
    for (origin, seq) in applied {
        out.extend_from_slice(&origin.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
    }
    out
}

fn decode_applied(bytes: &[u8]) -> Result<BTreeMap<u64, u64>, String> {
    let Some((&1, pairs)) = bytes.split_first() else {
        return Err("unknown version of the restored-origins row".into());
    };
    if pairs.len() % 16 != 0 {
        return Err("the restored-origins row is cut short".into());
    }
    Ok(pairs
        .chunks_exact(16)
        .map(|pair| {
            (
                u64::from_be_bytes(codec::field(pair, 0)),
                u64::from_be_bytes(codec::field(pair, 8)),
            )
        })
        .collect())
}

/// This store's origin id in the changelog: drawn once, kept in the store, so entries it
/// published before a restart are known as its own after it.
pub fn origin(store: &Store) -> Result<u64, StoreError> {
    if let Some(bytes) = store.get(CF_META, &MetaKey::ChangelogOrigin.encode())? {
        return codec::decode_u64(&bytes, "changelog origin").map_err(|source| {
            StoreError::Corrupt {
                cf: CF_META,
                source,
            }
        });
    }
    let origin = rand::random::<u64>();
    let mut batch = store.batch();
    batch.put(
        CF_META,
        MetaKey::ChangelogOrigin.encode(),
        codec::encode_u64(origin),
    );
    store.commit(batch, true)?;
    Ok(origin)
}

/// How far the changelog holds this engine's entries: every entry below the position it
/// holds was published (or was not this engine's to publish). Commands wait on it.
#[derive(Clone)]
pub struct Published {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            tx: Arc::new(watch::channel(0).0),
        }
    }
}

impl Published {
    pub fn get(&self) -> u64 {
        *self.tx.borrow()
    }

    fn set(&self, position: u64) {
        self.tx.send_if_modified(|at| {
            let moved = position > *at;
            *at = (*at).max(position);
            moved
        });
    }

    /// Waits until every entry below `position` is published; `false` after `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let mut rx = self.tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|at| *at >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// As [`Published::wait_for`], from a plain thread.
    pub fn wait_blocking(&self, position: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.get() < position {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// What the publisher works with.
pub struct PublisherSettings {
    pub brokers: String,
    pub source_topic: String,
    pub origin: u64,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The thread that publishes the outbox; stop it with [`Publisher::stop`].
pub struct Publisher {
    thread: SignalledThread,
}

impl Publisher {
    pub fn start(
        store: Store,
        head: Arc<LogHead>,
        ownership: Arc<Ownership>,
        published: Published,
        settings: PublisherSettings,
        stop: StopSignal,
    ) -> Result<Publisher, ChangelogError> {
        let producer: FutureProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()?;
        let topic = changelog_topic(&settings.source_topic);
        let thread = SignalledThread::spawn("tally-changelog", stop, move |stop| {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "cannot start the changelog publisher");
                    return;
                }
            };
            let mut failures = 0u32;
            while !stop.is_stopped() {
                // Until the group has said what this engine owns, an entry recorded before a
                // restart cannot be told from one of a partition that moved away.
                if !ownership.known() {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let seen = head.get();
                match publish_outbox(
                    &store, &ownership, &producer, &topic, &settings, seen, &runtime,
                ) {
                    Ok(true) => {
                        failures = 0;
                        published.set(seen);
                        head.wait_beyond(seen, Duration::from_millis(200));
                    }
                    Ok(false) => failures = 0,
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(%error, failures, "cannot publish the changelog; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
            let _ = producer.flush(Duration::from_secs(5));
        })
        .map_err(|e| {
            ChangelogError::Kafka(rdkafka::error::KafkaError::ClientCreation(format!(
                "cannot start the changelog thread: {e}"
            )))
        })?;
        Ok(Publisher { thread })
    }

    pub fn stop(self) {
        self.thread.stop();
    }
}

/// An outbox row as (first seq, end seq); `None` when it cannot be read.
fn outbox_row(key: &[u8], value: &[u8]) -> Option<(u64, u64)> {
    let Some(MetaKey::ChangelogOutbox { first_seq: first }) = MetaKey::decode(key) else {
        return None;
    };
    let end = codec::decode_u64(value, "outbox end").ok()?;
    Some((first, end))
}

/// Outbox rows read and published in one round, at most.
const OUTBOX_ROWS_PER_ROUND: usize = 256;

/// Publishes outbox rows below `head` (a round's worth) and forgets them; `true` when none
/// below `head` is left.
fn publish_outbox(
    store: &Store,
    ownership: &Ownership,
    producer: &FutureProducer,
    topic: &str,
    settings: &PublisherSettings,
    head: u64,
    runtime: &tokio::runtime::Runtime,
) -> Result<bool, ChangelogError> {
    let mut rows: Vec<(Vec<u8>, u64, u64)> = Vec::new();
    store.scan_prefix(CF_META, keys::OUTBOX_PREFIX, |key, value| {
        if let Some((first, end)) = outbox_row(key, value)
            && first < head
        {
            rows.push((key.to_vec(), first, end));
        }
        rows.len() < OUTBOX_ROWS_PER_ROUND
    })?;
    if rows.is_empty() {
        return Ok(true);
    }
    let done = rows.len() < OUTBOX_ROWS_PER_ROUND;
    // Per partition, the entries in log order, encoded.
    let mut per_partition: BTreeMap<i32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut skipped = 0usize;
    for (_, first, end) in &rows {
        // The stored bytes are published as they are; only the header is read, for the tenant.
        let mut unreadable = None;
        store.scan(
            CF_LOG,
            &keys::seq_key(*first),
            Some(&keys::seq_key(*end)),
            |key, value| {
                let (Some(seq), Ok(envelope)) =
                    (keys::decode_seq_key(key), format::read_envelope(value))
                else {
                    unreadable = keys::decode_seq_key(key);
                    return false;
                };
                match ownership.partition_of(&envelope.tenant) {
                    Some(partition) if ownership.owns(partition) => per_partition
                        .entry(partition)
                        .or_default()
                        .push((seq, value.to_vec())),
                    _ => skipped += 1,
                }
                true
            },
        )?;
        if let Some(seq) = unreadable {
            return Err(ChangelogError::Unreadable(seq));
        }
    }
    if skipped > 0 {
        // A tenant whose partition this engine does not own (it moved before its entries
        // were published): its owner restored from the source topic what these hold.
        tracing::warn!(
            skipped,
            "entries of partitions owned elsewhere were not published"
        );
    }
    let mut deliveries = Vec::new();
    for (&partition, entries) in &per_partition {
        let mut chunk_start = 0;
        while chunk_start < entries.len() {
            let mut size = 13;
            let mut chunk_end = chunk_start;
            while chunk_end < entries.len() {
                let next = entries.get(chunk_end).map_or(0, |(_, b)| b.len() + 12);
                if chunk_end > chunk_start && size + next > MAX_RECORD_BYTES {
                    break;
                }
                size += next;
                chunk_end += 1;
            }
            let payload = encode_record(
                settings.origin,
                entries.get(chunk_start..chunk_end).unwrap_or(&[]),
            );
            let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(topic)
                .partition(partition)
                .payload(&payload);
            let delivery = producer
                .send_result(record)
                .map_err(|(error, _)| ChangelogError::Kafka(error))?;
            deliveries.push((partition, delivery));
            chunk_start = chunk_end;
        }
    }
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, delivery) in deliveries {
        let delivered = runtime
            .block_on(delivery)
            .map_err(|_| ChangelogError::Kafka(rdkafka::error::KafkaError::Canceled))?
            .map_err(|(error, _)| ChangelogError::Kafka(error))?;
        let next = next_offsets.entry(partition).or_insert(0);
        *next = (*next).max(delivered.offset + 1);
    }
    let mut batch = store.batch();
    for (key, _, _) in &rows {
        batch.delete(CF_META, key);
    }
    for (partition, next) in next_offsets {
        batch.put(
            CF_OFFSETS,
            keys::OffsetKey { topic, partition }.encode(),
            codec::encode_i64(next),
        );
    }
    store.commit(batch, true)?;
    let published: usize = per_partition.values().map(Vec::len).sum();
    settings.metrics.published_entries.inc_by(published as u64);
    Ok(done)
}

/// What a restore works with.
pub struct RestoreContext {
    pub brokers: String,
    pub source_topic: String,
    pub store: Store,
    pub appender: Appender,
    pub origin: u64,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Told how far each partition's restore has come, for `/readyz`.
    pub ownership: Arc<Ownership>,
}

/// What one partition's restore took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    pub entries: u64,
    /// Entries already here (this engine's own, published twice, or known by their event id).
    pub skipped: u64,
}

/// Entries appended per restore batch.
const RESTORE_BATCH: usize = 20_000;

/// How long a restore waits for the changelog to hand it anything before it gives up.
const RESTORE_STALL: Duration = Duration::from_secs(30);

/// Restores `partitions` from the changelog: appends what other engines recorded since this
/// one last stood in it, and moves the stored source offset past the last restored event.
/// Returns what each partition took. A stop ends it early (what it appended stays, with the
/// offsets it stands at).
pub fn restore(
    context: &RestoreContext,
    partitions: &[i32],
    stop: &StopSignal,
) -> Result<BTreeMap<i32, Restored>, ChangelogError> {
    if partitions.is_empty() {
        // Nothing to restore (every partition was revoked before its turn): no consumer.
        return Ok(BTreeMap::new());
    }
    let topic = changelog_topic(&context.source_topic);
    let consumer = crate::kafka::bare_consumer(
        &context.brokers,
        &format!("tally-restore-{:016x}", context.origin),
    )?;
    let standing = context.store.source_offsets(&topic)?;
    let source_standing = context.store.source_offsets(&context.source_topic)?;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut positions: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        let (_, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
        let at = standing.get(&partition).copied().unwrap_or(0);
        if at >= high {
            continue;
        }
        ends.insert(partition, high);
        positions.insert(partition, at);
        // A little before where this engine stands: see `REWIND_ON_ASSIGN` of the consumer.
        let start = if at > 0 {
            Offset::Offset((at - 1_000).max(0))
        } else {
            Offset::Beginning
        };
        assignment.add_partition_offset(&topic, partition, start)?;
    }
    if ends.is_empty() {
        return Ok(partitions
            .iter()
            .map(|&p| (p, Restored::default()))
            .collect());
    }
    consumer.assign(&assignment)?;
    let mut applied: HashMap<i32, BTreeMap<u64, u64>> = HashMap::new();
    for &partition in ends.keys() {
        let origins = match context
            .store
            .get(CF_META, &MetaKey::ChangelogApplied { partition }.encode())?
        {
            Some(bytes) => decode_applied(&bytes).map_err(|reason| ChangelogError::Record {
                partition,
                offset: -1,
                reason,
            })?,
            None => BTreeMap::new(),
        };
        applied.insert(partition, origins);
    }
    let mut restoring = Restoring {
        topic,
        pending: Vec::new(),
        positions,
        applied,
        source_next: source_standing,
        touched: BTreeSet::new(),
        summary: partitions
            .iter()
            .map(|&p| (p, Restored::default()))
            .collect(),
    };
    let mut last_progress = Instant::now();
    while let Some((&partition, &end)) =
        ends.iter().find(|(p, end)| restoring.position(**p) < **end)
    {
        if stop.is_stopped() {
            restoring.flush(context)?;
            return Err(ChangelogError::Stopping);
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            if last_progress.elapsed() > RESTORE_STALL {
                return Err(ChangelogError::Stalled {
                    partition,
                    at: restoring.position(partition),
                    end,
                });
            }
            continue;
        };
        let message = polled?;
        let (partition, offset) = (message.partition(), message.offset());
        if offset < restoring.position(partition) || !ends.contains_key(&partition) {
            continue;
        }
        last_progress = Instant::now();
        let record = decode_record(message.payload().unwrap_or(&[])).map_err(|reason| {
            ChangelogError::Record {
                partition,
                offset,
                reason,
            }
        })?;
        restoring.take(context, partition, offset, record);
        if restoring.pending.len() >= RESTORE_BATCH {
            restoring.flush(context)?;
        }
    }
    restoring.flush(context)?;
    Ok(restoring.summary)
}

/// A restore in progress: what it took and where it stands.
struct Restoring {
    /// The changelog topic.
    topic: String,
    /// Entries taken and not yet appended, with their partitions.
    pending: Vec<(i32, Candidate)>,
    /// Per partition, the next changelog offset to take.
    positions: HashMap<i32, i64>,
    /// Per partition and origin, the last seq taken.
    applied: HashMap<i32, BTreeMap<u64, u64>>,
    /// Per partition, the source offset after the last event taken (or stored before).
    source_next: BTreeMap<i32, i64>,
    /// Partitions whose standing changed since the last append.
    touched: BTreeSet<i32>,
    summary: BTreeMap<i32, Restored>,
}

impl Restoring {
    fn position(&self, partition: i32) -> i64 {
        self.positions.get(&partition).copied().unwrap_or(0)
    }

    /// Takes the entries of one record that are not here yet.
    fn take(
        &mut self,
        context: &RestoreContext,
        partition: i32,
        offset: i64,
        record: ChangelogRecord,
    ) {
        self.positions.insert(partition, offset + 1);
        self.touched.insert(partition);
        let taken = self.summary.entry(partition).or_default();
        taken.records += 1;
        let origins = self.applied.entry(partition).or_default();
        for (seq, entry) in record.entries {
            let last = origins.get(&record.origin).copied();
            // This engine's own entries are in its log already: it published them from there.
            if record.origin == context.origin || last.is_some_and(|last| seq <= last) {
                taken.skipped += 1;
                continue;
            }
            origins.insert(record.origin, seq);
            if let LogEntry::UsageRecorded {
                source:
                    EventSource::Kafka {
                        topic,
                        partition: event_partition,
                        offset: event_offset,
                    },
                ..
            } = &entry
                && *topic == context.source_topic
                && *event_partition == partition
            {
                let next = self.source_next.entry(partition).or_insert(0);
                *next = (*next).max(event_offset + 1);
            }
            self.pending.push((partition, Candidate::Restored(entry)));
        }
    }

    /// Appends the entries in hand, with where each partition now stands in the changelog
    /// and in the source topic, in one batch.
    fn flush(&mut self, context: &RestoreContext) -> Result<(), ChangelogError> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let mut offsets = Vec::new();
        let mut rows = Vec::new();
        for &partition in &self.touched {
            offsets.push(SourceOffset {
                topic: self.topic.clone(),
                partition,
                next_offset: self.position(partition),
            });
            if let Some(&next_offset) = self.source_next.get(&partition) {
                offsets.push(SourceOffset {
                    topic: context.source_topic.clone(),
                    partition,
                    next_offset,
                });
            }
            if let Some(origins) = self.applied.get(&partition) {
                rows.push(RowWrite::Put {
                    cf: CF_META,
                    key: MetaKey::ChangelogApplied { partition }.encode(),
                    value: encode_applied(origins),
                });
            }
        }
        let (partitions, candidates): (Vec<i32>, Vec<Candidate>) =
            std::mem::take(&mut self.pending).into_iter().unzip();
        let outcomes = context
            .appender
            .append_restored_blocking(candidates, offsets, rows)?;
        for (partition, outcome) in partitions.iter().zip(&outcomes) {
            let taken = self.summary.entry(*partition).or_default();
            match outcome {
                Outcome::Recorded { .. } => {
                    taken.entries += 1;
                    context
                        .metrics
                        .restored_entries
                        .get_or_create(&crate::metrics::PartitionLabels {
                            partition: *partition,
                        })
                        .inc();
                }
                _ => taken.skipped += 1,
            }
        }
        for &partition in &self.touched {
            let entries = self.summary.get(&partition).map_or(0, |t| t.entries);
            context.ownership.restored(partition, entries);
        }
        self.touched.clear();
        Ok(())
    }
}

/// What a data directory holds of a cluster's partitions (`tally inspect partitions`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// Per topic (the source topic, its changelog), the next offset to read of each partition:
    /// everything below it is in this store.
    pub topics: BTreeMap<String, BTreeMap<i32, i64>>,
    /// This store's origin id in the changelog, once it served in a cluster.
    pub changelog_origin: Option<String>,
    /// Log entries recorded here and not yet known to be in the changelog.
    pub unpublished_entries: u64,
}

pub fn held(store: &Store) -> Result<Held, StoreError> {
    let mut topics: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    store.scan_prefix(CF_OFFSETS, b"", |key, value| {
        if let Some(keys::OffsetKey { topic, partition }) = keys::OffsetKey::decode(key)
            && let Ok(next) = codec::decode_i64(value, "offset")
        {
            topics
                .entry(topic.to_owned())
                .or_default()
                .insert(partition, next);
        }
        true
    })?;
    let changelog_origin = match store.get(CF_META, &MetaKey::ChangelogOrigin.encode())? {
        Some(bytes) => codec::decode_u64(&bytes, "changelog origin")
            .ok()
            .map(|origin| format!("{origin:016x}")),
        None => None,
    };
    let mut unpublished_entries = 0u64;
    store.scan_prefix(CF_META, keys::OUTBOX_PREFIX, |key, value| {
        if let Some((first, end)) = outbox_row(key, value) {
            unpublished_entries += end.saturating_sub(first);
        }
        true
    })?;
    Ok(Held {
        topics,
        changelog_origin,
        unpublished_entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_every_malformed_part_is_named() {
        let entries = crate::log::format::examples();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .enumerate()
            .map(|(i, (_, entry))| (i as u64 + 7, values::encode_entry(entry)))
            .collect();
        let bytes = encode_record(42, &encoded);
        let record = decode_record(&bytes).unwrap();
        assert_eq!(record.origin, 42);
        assert_eq!(record.entries.len(), entries.len());
        for ((seq, entry), (i, (_, expected))) in
            record.entries.iter().zip(entries.iter().enumerate())
        {
            assert_eq!(*seq, i as u64 + 7);
            assert_eq!(entry, expected);
        }
        assert!(
            decode_record(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .contains("cut short in its entry")
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(
            decode_record(&trailing)
                .unwrap_err()
                .contains("1 bytes after")
        );
        let mut version = bytes.clone();
        version[0] = 9;
        assert!(
            decode_record(&version)
                .unwrap_err()
                .contains("unknown record version")
        );
        assert!(decode_record(&[]).unwrap_err().contains("version"));
        assert!(decode_record(&[1, 0, 0]).unwrap_err().contains("origin"));
    }

    #[test]
    fn restored_origins_read_back() {
        let applied: BTreeMap<u64, u64> = [(1, 10), (u64::MAX, 0)].into();
        assert_eq!(decode_applied(&encode_applied(&applied)).unwrap(), applied);
        assert!(decode_applied(&[1, 0]).is_err());
        assert!(decode_applied(&[2]).is_err());
    }
}
