//! The single writer of the log: decides new / duplicate / conflict per event and appends
//! events, dedup records and dead letters in one durable write batch.
//!
//! One thread owns the sequence counter, so dedup checks and appends never race. Requests that
//! queue up while a batch is being fsync'd are written together in the next one (group commit).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::codec;
use super::keys;
use super::store::{
    Batch, CF_DEAD_LETTER, CF_DEDUP, CF_LOG, CF_META, CF_OFFSETS, Store, StoreError,
};
use super::values;
use super::{DeadLetter, DedupRecord, LogEntry};
use crate::event::{EventSource, Rejection, UsageEvent};
use crate::health::Health;
use crate::time::{self, Clock, UnixMicros};

/// Most events written in one batch; bounds memory and the time one fsync covers.
const MAX_GROUP_EVENTS: usize = 50_000;

/// One input to append: an event that passed validation, or input already refused.
#[derive(Debug)]
pub enum Candidate {
    Event {
        event: UsageEvent,
        source: EventSource,
    },
    Rejected(DeadLetter),
    /// Any other fact (a quota change, an alert); with an identity it is appended once.
    Fact {
        entry: LogEntry,
        identity: Option<FactIdentity>,
    },
    /// An entry another engine of a cluster recorded for a partition this one restores: it was
    /// judged there, so it is appended as it stands, once (a usage event whose id is already
    /// here, or a period close already here, is skipped).
    Restored(LogEntry),
}

impl Candidate {
    fn dedup_key(&self) -> Option<[u8; 16]> {
        match self {
            Candidate::Event { event, .. } => Some(keys::dedup_key(&event.tenant, &event.id)),
            Candidate::Fact {
                identity: Some(identity),
                ..
            } => Some(identity.key),
            Candidate::Restored(entry) => restored_identity(entry).map(|(key, _)| key),
            _ => None,
        }
    }
}

/// The dedup key and fingerprint a restored entry is appended once by: a usage event's, or a
/// period close's (the identity the billing clock gave it).
fn restored_identity(entry: &LogEntry) -> Option<([u8; 16], u64)> {
    match entry {
        LogEntry::UsageRecorded { event, .. } => Some((
            keys::dedup_key(&event.tenant, &event.id),
            event.fingerprint(),
        )),
        LogEntry::Billing {
            tenant,
            change: crate::billing::BillingChange::PeriodClosed { period_uid },
            ..
        } => {
            let identity = FactIdentity::new(PERIOD_CLOSE, tenant, period_uid);
            Some((identity.key, identity.fingerprint))
        }
        _ => None,
    }
}

/// The identity kind of a period close (see [`FactIdentity`]).
pub const PERIOD_CLOSE: &str = "period-close";

/// What makes a fact the same fact again: its id, hashed into the dedup index apart from
/// usage ids (`kind\0tenant\0id`). Its dedup record is never pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactIdentity {
    pub id: String,
    pub key: [u8; 16],
    pub fingerprint: u64,
}

impl FactIdentity {
    pub fn new(kind: &str, tenant: &str, id: &str) -> FactIdentity {
        let text = format!("{kind}\0{tenant}\0{id}");
        FactIdentity {
            id: id.to_owned(),
            key: xxhash_rust::xxh3::xxh3_128(text.as_bytes()).to_be_bytes(),
            fingerprint: xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
        }
    }
}

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Appended to the log at `seq`.
    Recorded { seq: u64 },
    /// The same event (same id and body) is already in the log at `seq`; counted once.
    Duplicate { seq: u64 },
    /// The id is already in the log with a different body; stored as a dead letter.
    Conflict(Rejection),
    /// Refused input, stored as a dead letter.
    Rejected(Rejection),
}

/// How the dedup index judges an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    New,
    /// Same id, same body: already recorded at this seq.
    Duplicate(u64),
    /// Same id, different body: the id was recorded at this seq.
    Conflict(u64),
}

/// Pure: the writer feeds it what the dedup index holds for the event's identity.
pub fn classify(fingerprint: u64, existing: Option<&DedupRecord>) -> Verdict {
    match existing {
        None => Verdict::New,
        Some(record) if record.fingerprint == fingerprint => Verdict::Duplicate(record.seq),
        Some(record) => Verdict::Conflict(record.seq),
    }
}

/// The answer to reusing an id with another body.
pub fn conflict_rejection(id: &str, recorded_seq: u64) -> Rejection {
    Rejection::new(
        Some(id),
        "id",
        format!(
            "was already recorded (seq {recorded_seq}) with a different body; an id names one event"
        ),
    )
}

/// Puts `letter` into `batch` at the next dead-letter seq, and advances it.
fn put_dead_letter(batch: &mut Batch<'_>, next_dead_letter: &mut u64, letter: &DeadLetter) {
    batch.put(
        CF_DEAD_LETTER,
        keys::seq_key(*next_dead_letter),
        values::encode_dead_letter(letter),
    );
    *next_dead_letter += 1;
}

/// The answer to an event older than the stored forgetting horizon: its id may already be
/// forgotten, so a resend could not be told from the original.
pub fn forgotten_rejection(
    id: &str,
    timestamp: UnixMicros,
    forgotten_before: UnixMicros,
) -> Rejection {
    Rejection::new(
        Some(id),
        "timestamp",
        format!(
            "{} is older than {}, before which event ids may already be forgotten (the dedup horizon this store pruned with); it could not be told from an event already counted",
            time::format_rfc3339(timestamp),
            time::format_rfc3339(forgotten_before)
        ),
    )
}

/// Why an append failed. Nothing of the request was written; the caller may retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("the log could not be written: {0}")]
    Store(Arc<StoreError>),
    #[error("the log writer has stopped")]
    Closed,
    /// In a cluster: written here, but Kafka did not confirm it in time.
    #[error(
        "recorded on this engine, but the cluster's changelog did not confirm it in time; it is published once Kafka is reachable"
    )]
    NotPublished,
}

/// The next offset to read of one source partition, stored with the events read before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOffset {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// A row of a column family beside the log (a token), put or deleted in the same batch as
/// the entries it goes with: a change and its audit record are then one write, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWrite {
    Put {
        cf: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: &'static str,
        key: Vec<u8>,
    },
}

struct AppendRequest {
    candidates: Vec<Candidate>,
    /// Written in the same batch as the candidates: a replayed message is then recognised.
    offsets: Vec<SourceOffset>,
    /// Written in the same batch as the candidates.
    rows: Vec<RowWrite>,
    /// Whether what this request records goes to the cluster's changelog (decided here; see
    /// [`Appender::start`]). Restored entries do not: they came from it.
    publish: bool,
    /// Hears the outcomes once they are durable and before the log head moves past them, so
    /// what it counts is never behind what readers of the head see.
    on_written: Option<OnWritten>,
    reply: oneshot::Sender<Result<Vec<Outcome>, AppendError>>,
}

/// See [`Appender::submit_blocking`].
pub type OnWritten = Box<dyn FnOnce(&[Outcome]) + Send>;

enum Message {
    Append(AppendRequest),
    /// Write what is queued before this, then stop.
    Close,
}

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The number of entries in the log (= the next seq), shared with those who wait for it.
#[derive(Default)]
pub struct LogHead {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl LogHead {
    pub fn new(next_seq: u64) -> Arc<Self> {
        Arc::new(LogHead {
            state: Mutex::new((next_seq, false)),
            changed: Condvar::new(),
        })
    }

    pub fn get(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.0)
    }

    fn publish(&self, next_seq: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = next_seq;
            self.changed.notify_all();
        }
    }

    /// Marks the log closed: waiters return at once from now on.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
            self.changed.notify_all();
        }
    }

    /// Waits until the head passes `seen` or `timeout` elapses; returns (head, closed).
    pub fn wait_beyond(&self, seen: u64, timeout: Duration) -> (u64, bool) {
        let Ok(state) = self.state.lock() else {
            return (seen, true);
        };
        match self
            .changed
            .wait_timeout_while(state, timeout, |s| s.0 <= seen && !s.1)
        {
            Ok((state, _)) => (state.0, state.1),
            Err(_) => (seen, true),
        }
    }
}

/// A cloneable handle to the writer thread. The thread ends when every handle is dropped and
/// the queue is drained.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Message>,
}

impl Appender {
    /// Starts the writer over `store`; `head` is published after every durable batch.
    pub fn start(
        store: Store,
        head: Arc<LogHead>,
        clock: Clock,
        health: Arc<Health>,
        outbox: bool,
    ) -> Result<(Appender, JoinHandle<()>), StartError> {
        let next_seq = store.last_seq(CF_LOG)?.map_or(0, |s| s + 1);
        let next_dead_letter = store.last_seq(CF_DEAD_LETTER)?.map_or(0, |s| s + 1);
        head.publish(next_seq);
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            store,
            head,
            clock,
            health,
            next_seq,
            next_dead_letter,
            outbox,
        };
        let thread = std::thread::Builder::new()
            .name("tally-log-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok((Appender { tx }, thread))
    }

    /// Appends durably (fsync'd) and answers one outcome per candidate, in order.
    pub async fn append(&self, candidates: Vec<Candidate>) -> Result<Vec<Outcome>, AppendError> {
        self.append_with_rows(candidates, Vec::new()).await
    }

    /// As [`append`](Self::append), writing `rows` in the same batch (subject to the same
    /// free-space reserve): all of it is written, or nothing.
    pub async fn append_with_rows(
        &self,
        candidates: Vec<Candidate>,
        rows: Vec<RowWrite>,
    ) -> Result<Vec<Outcome>, AppendError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            candidates,
            offsets: Vec::new(),
            rows,
            publish: true,
            on_written: None,
            reply,
        };
        self.tx
            .send(Message::Append(request))
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// As [`append`](Self::append), for callers on plain threads; `offsets` (where a consumer
    /// stands after these candidates) are written in the same batch.
    pub fn append_blocking(
        &self,
        candidates: Vec<Candidate>,
        offsets: Vec<SourceOffset>,
    ) -> Result<Vec<Outcome>, AppendError> {
        self.submit_blocking(candidates, offsets, None)?.wait()
    }

    /// Queues an append for a plain thread and returns at once; [`PendingAppend::wait`] gives
    /// its outcomes. Appends are written in the order they are queued, so a consumer can
    /// decode its next batch while this one is written. `on_written` runs on the writer
    /// thread once the append is durable, before the log head shows it (counting outcomes).
    pub fn submit_blocking(
        &self,
        candidates: Vec<Candidate>,
        offsets: Vec<SourceOffset>,
        on_written: Option<OnWritten>,
    ) -> Result<PendingAppend, AppendError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            candidates,
            offsets,
            rows: Vec::new(),
            publish: true,
            on_written,
            reply,
        };
        self.tx
            .blocking_send(Message::Append(request))
            .map_err(|_| AppendError::Closed)?;
        Ok(PendingAppend { answer })
    }

    /// Appends entries restored from the cluster's changelog ([`Candidate::Restored`]) with
    /// `offsets` and `rows` (where the restore stands) in the same batch, from a plain thread.
    /// They are not published again.
    pub fn append_restored_blocking(
        &self,
        candidates: Vec<Candidate>,
        offsets: Vec<SourceOffset>,
        rows: Vec<RowWrite>,
    ) -> Result<Vec<Outcome>, AppendError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            candidates,
            offsets,
            rows,
            publish: false,
            on_written: None,
            reply,
        };
        self.tx
            .blocking_send(Message::Append(request))
            .map_err(|_| AppendError::Closed)?;
        PendingAppend { answer }.wait()
    }

    /// Asks the writer to finish what is queued and stop; later appends fail with `Closed`.
    pub async fn close(&self) {
        let _ = self.tx.send(Message::Close).await;
    }

    /// [`Appender::close`] without waiting for room in the queue: whether the writer was
    /// asked to stop (or had stopped already). `false`: the queue was full.
    pub fn try_close(&self) -> bool {
        !matches!(
            self.tx.try_send(Message::Close),
            Err(mpsc::error::TrySendError::Full(_))
        )
    }
}

/// An append queued by [`Appender::submit_blocking`].
pub struct PendingAppend {
    answer: oneshot::Receiver<Result<Vec<Outcome>, AppendError>>,
}

impl PendingAppend {
    /// Waits until the append is durable (or failed, in which case nothing of it was written).
    pub fn wait(self) -> Result<Vec<Outcome>, AppendError> {
        self.answer
            .blocking_recv()
            .map_err(|_| AppendError::Closed)?
    }
}

struct Writer {
    store: Store,
    head: Arc<LogHead>,
    clock: Clock,
    health: Arc<Health>,
    next_seq: u64,
    next_dead_letter: u64,
    /// In a cluster: each request's recorded entries are noted in the changelog outbox, in
    /// the same batch, for the publisher ([`crate::cluster::changelog`]).
    outbox: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut closing = false;
        while !closing {
            let first = match rx.blocking_recv() {
                Some(Message::Append(request)) => request,
                Some(Message::Close) | None => break,
            };
            let mut group_size = first.candidates.len();
            let mut group = vec![first];
            while group_size < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(Message::Append(request)) => {
                        group_size += request.candidates.len();
                        group.push(request);
                    }
                    Ok(Message::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            match self.write_group(&group) {
                Ok(outcomes) => {
                    self.health.recover();
                    for (request, outcome) in group.iter_mut().zip(&outcomes) {
                        if let Some(on_written) = request.on_written.take() {
                            on_written(outcome);
                        }
                    }
                    self.head.publish(self.next_seq);
                    for (request, outcome) in group.into_iter().zip(outcomes) {
                        let _ = request.reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "log append failed; nothing of the batch was written");
                    if error.needs_reopen() {
                        self.health.fail_until_reopened(&error);
                    } else {
                        self.health.fail(&error);
                    }
                    let error = AppendError::Store(Arc::new(error));
                    for request in group {
                        let _ = request.reply.send(Err(error.clone()));
                    }
                }
            }
        }
        self.head.close();
    }

    /// Writes one group in one batch. Counters advance only when the write succeeded.
    fn write_group(&mut self, group: &[AppendRequest]) -> Result<Vec<Vec<Outcome>>, StoreError> {
        self.store.ensure_room()?;
        let dedup_keys: Vec<[u8; 16]> = group
            .iter()
            .flat_map(|r| &r.candidates)
            .filter_map(Candidate::dedup_key)
            .collect();
        let stored = self.store.dedup_lookup(&dedup_keys)?;

        let now = (self.clock)();
        // The forgetting horizon moves with this batch, before any compaction may use it;
        // events older than it are refused whatever late window admitted them.
        let forget_cutoff = self.store.horizon().forget_cutoff(now);
        let refuse_before = forget_cutoff
            .unwrap_or(i64::MIN)
            .max(self.store.horizon().ids_forgotten_before());
        let mut next_seq = self.next_seq;
        let mut next_dead_letter = self.next_dead_letter;
        let mut in_batch: HashMap<[u8; 16], DedupRecord> = HashMap::new();
        let mut batch = self.store.batch();
        let mut lookups = dedup_keys.iter().zip(stored);
        let mut all_outcomes = Vec::with_capacity(group.len());
        for request in group {
            let first_seq = next_seq;
            let mut outcomes = Vec::with_capacity(request.candidates.len());
            for candidate in &request.candidates {
                let outcome = match candidate {
                    Candidate::Rejected(letter) => {
                        put_dead_letter(&mut batch, &mut next_dead_letter, letter);
                        Outcome::Rejected(letter.rejection.clone())
                    }
                    Candidate::Event { event, source } => {
                        let Some((key, from_store)) = lookups.next() else {
                            unreachable!("one dedup lookup per event")
                        };
                        let existing = in_batch.get(key).or(from_store.as_ref());
                        // An id still remembered is judged by its record (a resend is a
                        // duplicate); only an id that may be forgotten is refused by its age.
                        if existing.is_none() && event.timestamp < refuse_before {
                            let rejection =
                                forgotten_rejection(&event.id, event.timestamp, refuse_before);
                            let letter = event_letter(now, source, event, rejection.clone());
                            put_dead_letter(&mut batch, &mut next_dead_letter, &letter);
                            outcomes.push(Outcome::Rejected(rejection));
                            continue;
                        }
                        let fingerprint = event.fingerprint();
                        match classify(fingerprint, existing) {
                            Verdict::New => {
                                let seq = next_seq;
                                next_seq += 1;
                                let entry = LogEntry::UsageRecorded {
                                    event: event.clone(),
                                    source: source.clone(),
                                    recorded_at: now,
                                };
                                batch.put(CF_LOG, keys::seq_key(seq), values::encode_entry(&entry));
                                let record = DedupRecord {
                                    seq,
                                    event_time: event.timestamp,
                                    fingerprint,
                                };
                                in_batch.insert(*key, record);
                                Outcome::Recorded { seq }
                            }
                            Verdict::Conflict(seq) => {
                                let rejection = conflict_rejection(&event.id, seq);
                                let letter = event_letter(now, source, event, rejection.clone());
                                put_dead_letter(&mut batch, &mut next_dead_letter, &letter);
                                Outcome::Conflict(rejection)
                            }
                            Verdict::Duplicate(seq) => Outcome::Duplicate { seq },
                        }
                    }
                    Candidate::Fact { entry, identity } => {
                        let verdict = match identity {
                            None => Verdict::New,
                            Some(identity) => {
                                let Some((key, from_store)) = lookups.next() else {
                                    unreachable!("one dedup lookup per identified fact")
                                };
                                let existing = in_batch.get(key).or(from_store.as_ref());
                                classify(identity.fingerprint, existing)
                            }
                        };
                        match verdict {
                            Verdict::New => {
                                let seq = next_seq;
                                next_seq += 1;
                                batch.put(CF_LOG, keys::seq_key(seq), values::encode_entry(entry));
                                if let Some(identity) = identity {
                                    // Facts are not subject to the late window: keep the
                                    // record for good (the compaction filter prunes by time).
                                    let record = DedupRecord {
                                        seq,
                                        event_time: i64::MAX,
                                        fingerprint: identity.fingerprint,
                                    };
                                    in_batch.insert(identity.key, record);
                                }
                                Outcome::Recorded { seq }
                            }
                            Verdict::Duplicate(seq) => Outcome::Duplicate { seq },
                            Verdict::Conflict(seq) => Outcome::Conflict(conflict_rejection(
                                identity.as_ref().map_or("", |i| i.id.as_str()),
                                seq,
                            )),
                        }
                    }
                    Candidate::Restored(entry) => {
                        let known = match restored_identity(entry) {
                            None => None,
                            Some((_, fingerprint)) => {
                                let Some((key, from_store)) = lookups.next() else {
                                    unreachable!("one dedup lookup per identified entry")
                                };
                                let existing = in_batch.get(key).or(from_store.as_ref());
                                Some((*key, fingerprint, existing.map(|r| r.seq)))
                            }
                        };
                        match known {
                            Some((_, _, Some(seq))) => Outcome::Duplicate { seq },
                            _ => {
                                let seq = next_seq;
                                next_seq += 1;
                                batch.put(CF_LOG, keys::seq_key(seq), values::encode_entry(entry));
                                if let Some((key, fingerprint, None)) = known {
                                    let event_time = match entry {
                                        LogEntry::UsageRecorded { event, .. } => event.timestamp,
                                        _ => i64::MAX,
                                    };
                                    in_batch.insert(
                                        key,
                                        DedupRecord {
                                            seq,
                                            event_time,
                                            fingerprint,
                                        },
                                    );
                                }
                                Outcome::Recorded { seq }
                            }
                        }
                    }
                };
                outcomes.push(outcome);
            }
            if self.outbox && request.publish && next_seq > first_seq {
                batch.put(
                    CF_META,
                    keys::MetaKey::ChangelogOutbox { first_seq }.encode(),
                    codec::encode_u64(next_seq),
                );
            }
            all_outcomes.push(outcomes);
        }
        // The batch's new dedup records, in key order: RocksDB inserts a batch's keys one after
        // another, and each search starts where the previous insert ended, so sorted random
        // ids cost about half the comparisons of the same ids in arrival order.
        let mut records: Vec<([u8; 16], DedupRecord)> = in_batch.into_iter().collect();
        records.sort_unstable_by_key(|(key, _)| *key);
        for (key, record) in &records {
            batch.put(CF_DEDUP, key, values::encode_dedup(record));
        }
        for offset in group.iter().flat_map(|r| &r.offsets) {
            batch.put(
                CF_OFFSETS,
                keys::OffsetKey {
                    topic: &offset.topic,
                    partition: offset.partition,
                }
                .encode(),
                codec::encode_i64(offset.next_offset),
            );
        }
        for row in group.iter().flat_map(|r| &r.rows) {
            match row {
                RowWrite::Put { cf, key, value } => batch.put(cf, key, value),
                RowWrite::Delete { cf, key } => batch.delete(cf, key),
            }
        }
        if let Some(cutoff) = forget_cutoff {
            for (key, value) in self.store.horizon().forgotten_before_rows(cutoff) {
                batch.put(CF_META, key, value);
            }
        }
        if !batch.is_empty() {
            self.store.commit(batch, true)?;
        }
        if let Some(cutoff) = forget_cutoff {
            self.store.horizon().forgotten_before_written(cutoff);
        }
        self.next_seq = next_seq;
        self.next_dead_letter = next_dead_letter;
        Ok(all_outcomes)
    }
}

/// A refused event kept as a dead letter, in Tally's JSON form.
fn event_letter(
    now: UnixMicros,
    source: &EventSource,
    event: &UsageEvent,
    rejection: Rejection,
) -> DeadLetter {
    let raw = serde_json::to_vec(event).unwrap_or_default();
    DeadLetter::new(now, source.clone(), &event.tenant, rejection, &raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::log::store::StoreOptions;
    use crate::units::Micros;

    fn event(id: &str, quantity: i64) -> UsageEvent {
        UsageEvent {
            tenant: "acme".into(),
            id: id.into(),
            namespace: "shop".into(),
            metric_label: "http_lb_requests".into(),
            quantity: Micros(quantity),
            timestamp: 1_000,
            object_name: String::new(),
            deployment: String::new(),
            container: String::new(),
            labels: BTreeMap::new(),
        }
    }

    /// The outbox rows of `store`: (first seq, end seq).
    fn outbox(store: &Store) -> Vec<(u64, u64)> {
        let mut rows = Vec::new();
        store
            .scan_prefix(CF_META, keys::OUTBOX_PREFIX, |key, value| {
                let Some(keys::MetaKey::ChangelogOutbox { first_seq: first }) =
                    keys::MetaKey::decode(key)
                else {
                    panic!("not an outbox row: {key:?}");
                };
                rows.push((first, codec::decode_u64(value, "end").unwrap()));
                true
            })
            .unwrap();
        rows
    }

    #[test]
    fn a_cluster_notes_what_it_records_for_the_changelog_and_takes_restored_entries_once() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            dedup_horizon: Duration::from_secs(86_400),
            min_free_disk: 0,
        };
        let store = Store::open(dir.path(), &options).unwrap();
        // Far past the events' time: an event this old is refused when it arrives, not when
        // another engine already judged it.
        let clock: Clock = std::sync::Arc::new(|| 10 * 86_400_000_000);
        let (appender, thread) = Appender::start(
            store.clone(),
            LogHead::new(0),
            clock,
            Default::default(),
            true,
        )
        .unwrap();
        let source = EventSource::Http { received_at: 0 };
        let arrived = vec![
            Candidate::Event {
                event: event("old", 1),
                source: source.clone(),
            },
            Candidate::Fact {
                entry: LogEntry::QuotaObjectDeleted {
                    tenant: "acme".into(),
                    namespace: "shop".into(),
                    name: "q".into(),
                    at: 1,
                },
                identity: None,
            },
        ];
        let outcomes = appender.append_blocking(arrived, Vec::new()).unwrap();
        assert!(matches!(outcomes[0], Outcome::Rejected(_)), "{outcomes:?}");
        assert_eq!(outcomes[1], Outcome::Recorded { seq: 0 });
        assert_eq!(outbox(&store), [(0, 1)], "the fact goes to the changelog");

        let recorded = |id: &str| LogEntry::UsageRecorded {
            event: event(id, 5),
            source: source.clone(),
            recorded_at: 3,
        };
        let close = LogEntry::Billing {
            tenant: "acme".into(),
            at: 2,
            change: crate::billing::BillingChange::PeriodClosed {
                period_uid: "p-1".into(),
            },
        };
        let restored = vec![
            Candidate::Restored(recorded("old")),
            Candidate::Restored(recorded("old")),
            Candidate::Restored(close.clone()),
            Candidate::Restored(close.clone()),
        ];
        let at = vec![SourceOffset {
            topic: "usage.tally-changelog".into(),
            partition: 1,
            next_offset: 4,
        }];
        let outcomes = appender
            .append_restored_blocking(restored, at, Vec::new())
            .unwrap();
        assert_eq!(
            outcomes,
            [
                Outcome::Recorded { seq: 1 },
                Outcome::Duplicate { seq: 1 },
                Outcome::Recorded { seq: 2 },
                Outcome::Duplicate { seq: 2 },
            ]
        );
        assert_eq!(
            store.read_log(1, 1).unwrap()[0].1,
            recorded("old"),
            "as it stood"
        );
        assert_eq!(
            outbox(&store),
            [(0, 1)],
            "restored entries are not published again"
        );
        assert_eq!(
            store.source_offsets("usage.tally-changelog").unwrap(),
            BTreeMap::from([(1, 4)])
        );
        // The restored event is known by its id from now on, and so is the close.
        let again = vec![
            Candidate::Event {
                event: event("old", 5),
                source: source.clone(),
            },
            Candidate::Fact {
                identity: Some(FactIdentity::new(PERIOD_CLOSE, "acme", "p-1")),
                entry: close,
            },
        ];
        let outcomes = appender.append_blocking(again, Vec::new()).unwrap();
        assert_eq!(
            outcomes,
            [Outcome::Duplicate { seq: 1 }, Outcome::Duplicate { seq: 2 }]
        );
        drop(appender);
        thread.join().unwrap();
    }

    #[test]
    fn offsets_move_with_their_events_and_dedup_spans_sources() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            dedup_horizon: Duration::from_secs(86_400),
            min_free_disk: 0,
        };
        let store = Store::open(dir.path(), &options).unwrap();
        let clock: Clock = std::sync::Arc::new(|| 5);
        let (appender, thread) = Appender::start(
            store.clone(),
            LogHead::new(0),
            clock,
            Default::default(),
            false,
        )
        .unwrap();
        let kafka = |offset| EventSource::Kafka {
            topic: "usage".into(),
            partition: 2,
            offset,
        };
        let candidates = vec![
            Candidate::Event {
                event: event("a", 1),
                source: kafka(7),
            },
            Candidate::Event {
                event: event("b", 2),
                source: kafka(8),
            },
        ];
        let at = |next_offset| {
            vec![SourceOffset {
                topic: "usage".into(),
                partition: 2,
                next_offset,
            }]
        };
        let outcomes = appender.append_blocking(candidates, at(9)).unwrap();
        assert_eq!(
            outcomes,
            vec![Outcome::Recorded { seq: 0 }, Outcome::Recorded { seq: 1 }]
        );
        assert_eq!(
            store.source_offsets("usage").unwrap(),
            BTreeMap::from([(2, 9)])
        );

        // The same event arriving over HTTP is a duplicate; a replayed message too, and the
        // offset still advances with it.
        let http = vec![Candidate::Event {
            event: event("a", 1),
            source: EventSource::Http { received_at: 0 },
        }];
        assert_eq!(
            appender.append_blocking(http, Vec::new()).unwrap(),
            vec![Outcome::Duplicate { seq: 0 }]
        );
        let replay = vec![Candidate::Event {
            event: event("b", 2),
            source: kafka(8),
        }];
        assert_eq!(
            appender.append_blocking(replay, at(10)).unwrap(),
            vec![Outcome::Duplicate { seq: 1 }]
        );
        assert_eq!(
            store.source_offsets("usage").unwrap(),
            BTreeMap::from([(2, 10)])
        );
        assert_eq!(store.source_offsets("other").unwrap(), BTreeMap::new());

        let entries = store.read_log(0, 10).unwrap();
        assert_eq!(entries.len(), 2);
        let LogEntry::UsageRecorded { source, .. } = &entries[1].1 else {
            panic!("not usage")
        };
        assert_eq!(source, &kafka(8));
        drop(appender);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn rows_are_written_with_their_entries_or_not_at_all() {
        use crate::log::store::CF_TOKENS;
        let entry = || Candidate::Fact {
            entry: LogEntry::Audit(crate::audit::AuditRecord {
                at: 5,
                actor: "operator".into(),
                actor_tenant: "acme".into(),
                tenant: "acme".into(),
                action: "token.create".into(),
                target: "new".into(),
            }),
            identity: None,
        };
        let rows = || {
            vec![
                RowWrite::Put {
                    cf: CF_TOKENS,
                    key: b"new".to_vec(),
                    value: b"v".to_vec(),
                },
                RowWrite::Delete {
                    cf: CF_TOKENS,
                    key: b"old".to_vec(),
                },
            ]
        };
        for (reserve, written) in [(0, true), (u64::MAX, false)] {
            let dir = tempfile::tempdir().unwrap();
            let options = StoreOptions {
                dedup_horizon: Duration::from_secs(86_400),
                min_free_disk: reserve,
            };
            let store = Store::open(dir.path(), &options).unwrap();
            let mut batch = store.batch();
            batch.put(CF_TOKENS, b"old", b"v");
            store.commit(batch, true).unwrap();
            let clock: Clock = std::sync::Arc::new(|| 5);
            let (appender, thread) = Appender::start(
                store.clone(),
                LogHead::new(0),
                clock,
                Default::default(),
                false,
            )
            .unwrap();
            let result = appender.append_with_rows(vec![entry()], rows()).await;
            assert_eq!(result.is_ok(), written, "reserve {reserve}: {result:?}");
            assert_eq!(store.read_log(0, 10).unwrap().len(), usize::from(written));
            assert_eq!(store.get(CF_TOKENS, b"new").unwrap().is_some(), written);
            assert_eq!(store.get(CF_TOKENS, b"old").unwrap().is_none(), written);
            drop(appender);
            thread.join().unwrap();
        }
    }

    #[test]
    fn events_older_than_the_stored_horizon_are_refused_whatever_a_later_run_asks() {
        use std::sync::atomic::{AtomicI64, Ordering};

        let dir = tempfile::tempdir().unwrap();
        let day = 86_400 * 1_000_000i64;
        let now = Arc::new(AtomicI64::new(100 * day));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::SeqCst))
        };
        let at = |timestamp: i64, id: &str| Candidate::Event {
            event: UsageEvent {
                timestamp,
                ..event(id, 1)
            },
            source: EventSource::Http { received_at: 0 },
        };
        let run = |horizon_days: u64| {
            let options = StoreOptions {
                dedup_horizon: Duration::from_secs(horizon_days * 86_400),
                min_free_disk: 0,
            };
            let store = Store::open(dir.path(), &options).unwrap();
            let (appender, thread) = Appender::start(
                store.clone(),
                LogHead::new(0),
                clock.clone(),
                Default::default(),
                false,
            )
            .unwrap();
            (store, appender, thread)
        };

        // A run remembering ids for a day records `old`, then a day later moves the horizon
        // past it.
        let (store, appender, thread) = run(1);
        let old_time = 100 * day - day / 2;
        let outcomes = appender.append_blocking(vec![at(old_time, "old")], Vec::new());
        assert_eq!(outcomes.unwrap(), vec![Outcome::Recorded { seq: 0 }]);
        assert_eq!(store.horizon().ids_forgotten_before(), 99 * day);
        now.store(101 * day, Ordering::SeqCst);
        let outcomes = appender.append_blocking(vec![at(101 * day, "fresh")], Vec::new());
        assert_eq!(outcomes.unwrap(), vec![Outcome::Recorded { seq: 1 }]);
        assert_eq!(store.horizon().ids_forgotten_before(), 100 * day);
        drop((appender, store));
        thread.join().unwrap();

        // A run remembering ids for 35 days keeps the stored horizon: a new event older than
        // it is refused, and `old` again is a duplicate while its record is still there (it
        // was counted; once compaction prunes the record, it is refused like the new one).
        let (store, appender, thread) = run(35);
        assert_eq!(store.horizon().ids_forgotten_before(), 100 * day);
        let outcomes = appender
            .append_blocking(
                vec![
                    at(old_time, "old"),
                    at(100 * day - 1, "never-seen"),
                    at(100 * day, "at-the-horizon"),
                ],
                Vec::new(),
            )
            .unwrap();
        let horizon_text = time::format_rfc3339(100 * day);
        assert_eq!(outcomes[0], Outcome::Duplicate { seq: 0 });
        for outcome in &outcomes[1..2] {
            let Outcome::Rejected(rejection) = outcome else {
                panic!("accepted: {outcomes:?}")
            };
            assert_eq!(rejection.field, "timestamp");
            assert!(
                rejection.reason.contains(&horizon_text) && rejection.reason.contains("forgotten"),
                "{}",
                rejection.reason
            );
        }
        assert_eq!(outcomes[2], Outcome::Recorded { seq: 2 });
        assert_eq!(store.dead_letters(0, 10).unwrap().len(), 1);
        assert_eq!(store.read_log(0, 10).unwrap().len(), 3);
        assert_eq!(store.horizon().ids_forgotten_before(), 100 * day);
        drop(appender);
        thread.join().unwrap();
    }

    #[test]
    fn classify_tells_duplicates_from_conflicts() {
        let record = DedupRecord {
            seq: 7,
            event_time: 0,
            fingerprint: 42,
        };
        assert_eq!(classify(42, None), Verdict::New);
        assert_eq!(classify(42, Some(&record)), Verdict::Duplicate(7));
        assert_eq!(classify(41, Some(&record)), Verdict::Conflict(7));
    }
}
