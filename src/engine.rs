//! The engine: the store, the log writer and the projector, started and stopped together.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::auth::{OperatorTokenError, Tokens};
use crate::billing::BillingChange;
use crate::cluster::Ownership;
use crate::cluster::changelog::{self, Published};
use crate::cluster::control::Control;
use crate::config::Config;
use crate::event::DecodeContext;
use crate::health::{Health, PartitionStalls};
use crate::log::LogEntry;
use crate::log::append::{
    AppendError, Appender, Candidate, FactIdentity, LogHead, Outcome, PERIOD_CLOSE, RowWrite,
};
use crate::log::keys::MetaKey;
use crate::log::store::{CF_META, Store, StoreError, StoreOptions};
use crate::metrics::Metrics;
use crate::projection::runner;
use crate::time::{Clock, UnixMicros};
use crate::turns::WriteSide;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open the store in {dir}: {source}")]
    Open { dir: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    OperatorToken(#[from] OperatorTokenError),
    #[error(transparent)]
    WriterStart(#[from] crate::log::append::StartError),
    #[error("cannot create {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("a background task failed: {0}")]
    Background(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(
        "the catalog changed the definition of meters {0}: the projections were folded under the old one; run `tally replay rebuild --data-dir …` with the new catalog first"
    )]
    CatalogChanged(String),
}

fn stored_meters(store: &Store) -> Result<Option<BTreeMap<String, String>>, StoreError> {
    Ok(store
        .get(CF_META, &MetaKey::MeterDefinitions.encode())?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Meters whose definition differs (added meters change nothing already folded).
fn changed_meters(
    stored: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<String> {
    stored
        .iter()
        .filter(|(label, definition)| current.get(*label) != Some(definition))
        .map(|(label, _)| label.clone())
        .collect()
}

/// Meters whose definition in `catalog` differs from the one the projections in `store` were
/// folded with (none when nothing is recorded yet).
pub fn catalog_changes(
    store: &Store,
    catalog: &crate::catalog::Catalog,
) -> Result<Vec<String>, StoreError> {
    Ok(stored_meters(store)?
        .map(|stored| changed_meters(&stored, &catalog.meter_definitions()))
        .unwrap_or_default())
}

/// How long a command of a cluster waits for the changelog to hold its facts.
pub const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an answer waits for the projections to include what came before it.
pub const PROJECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How far the log and the projector are and which part is failing: what health answers,
/// metrics and the serve loop read. Cheap to clone.
#[derive(Clone)]
pub struct Status {
    pub head: Arc<LogHead>,
    /// Entries the log held when this engine opened: until the projector has folded them
    /// all, answers may be older than the log and `/readyz` says so.
    pub log_entries_at_start: u64,
    /// Every log entry below this is in the projections.
    pub projected: watch::Receiver<u64>,
    pub projector: Arc<Health>,
    /// Set while the log cannot be written (appends answer 503).
    pub writer: Arc<Health>,
    /// Set while the Kafka brokers cannot be reached (only with a consumer).
    pub kafka: Arc<Health>,
    /// Kafka partitions that stopped advancing (only with a consumer).
    pub kafka_stalls: Arc<PartitionStalls>,
}

/// What an event source (the Kafka consumer, a Kafka replay) is given of the engine: the
/// log writer, the store for its offsets and dedup horizon, event validation, the clock,
/// metrics and the consumer's health. Cheap to clone.
#[derive(Clone)]
pub struct IngestHandle {
    pub store: Store,
    pub appender: Appender,
    pub metrics: Arc<Metrics>,
    pub kafka_health: Arc<Health>,
    pub kafka_stalls: Arc<PartitionStalls>,
    /// The partitions this engine owns (all of them without `--cluster`).
    pub ownership: Arc<Ownership>,
    /// The log position just past its last entry: a partition read to its end is ready once
    /// the projections reach it.
    pub log_head: Arc<LogHead>,
    /// In a cluster: this store's origin in the changelog, and how far it holds its entries.
    pub changelog: Option<ChangelogHandle>,
    catalog: Arc<crate::catalog::Catalog>,
    late_window: std::time::Duration,
    future_skew: std::time::Duration,
    clock: Clock,
}

/// An engine's place in the cluster's changelog (see [`crate::cluster::changelog`]).
#[derive(Clone)]
pub struct ChangelogHandle {
    pub origin: u64,
    pub published: Published,
}

impl IngestHandle {
    pub fn now(&self) -> UnixMicros {
        (self.clock)()
    }

    /// How events arriving now for `tenant` are validated (HTTP and Kafka alike).
    pub fn decode_context<'a>(
        &'a self,
        now: UnixMicros,
        tenant: &'a str,
        may_name_any_tenant: bool,
    ) -> DecodeContext<'a> {
        let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        DecodeContext {
            catalog: &self.catalog,
            now,
            late_window: micros(self.late_window),
            future_skew: micros(self.future_skew),
            tenant,
            may_name_any_tenant,
        }
    }
}

/// What the alert webhook is given of the engine: the store it reads alerts and keeps its
/// cursor in, the clock and metrics. Cheap to clone.
#[derive(Clone)]
pub struct WebhookHandle {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    clock: Clock,
}

impl WebhookHandle {
    pub fn now(&self) -> UnixMicros {
        (self.clock)()
    }
}

/// A running engine: the store, the log writer and the projector, started and stopped
/// together. Cheap to share behind an `Arc`. Its parts are reached through narrow handles:
/// [`Engine::status`], [`Engine::ingest_handle`], [`Engine::webhook_handle`], and accessors
/// for the configuration, the store's reads, the writer, tokens, metrics and the write side.
pub struct Engine {
    config: Config,
    store: Store,
    appender: Appender,
    status: Status,
    tokens: Tokens,
    /// Held by the projector for each batch; a live rebuild holds it to swap projections.
    projector_gate: Arc<Mutex<()>>,
    metrics: Arc<Metrics>,
    ingest: IngestHandle,
    clock: Clock,
    /// The operator token when this start generated it (shown once, then forgotten).
    generated_admin_token: Mutex<Option<String>>,
    /// Per tenant, the log position just past the last fact (a command's entries, a period
    /// close) this engine appended for it: a read of that tenant answers once the projections
    /// reach it, whatever other tenants appended since.
    tenant_positions: Mutex<std::collections::HashMap<String, u64>>,
    /// What each tenant's quota and billing commands are decided against, per tenant.
    commands: WriteSide,
    /// In a cluster, once serving: the control topic (addresses and tokens).
    control: std::sync::OnceLock<Arc<Control>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    pub fn open(config: Config, clock: Clock) -> Result<Engine, EngineError> {
        let dir = config.data_dir.display().to_string();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| EngineError::DataDir {
            dir: dir.clone(),
            source,
        })?;
        let store = Store::open(
            &config.data_dir,
            &StoreOptions {
                dedup_horizon: config.dedup_horizon,
                min_free_disk: config.min_free_disk,
            },
        )
        .map_err(|source| EngineError::Open { dir, source })?;
        let current_meters = config.catalog.meter_definitions();
        match stored_meters(&store)? {
            Some(stored) if !changed_meters(&stored, &current_meters).is_empty() => {
                if !config.accept_catalog_change {
                    return Err(EngineError::CatalogChanged(
                        changed_meters(&stored, &current_meters).join(", "),
                    ));
                }
            }
            _ => record_meters(&store, &current_meters)?,
        }
        let tokens = Tokens::load(store.clone())?;
        let generated =
            tokens.ensure_operator(config.admin_token.as_deref(), &config.data_dir, clock())?;

        let head = LogHead::new(0);
        let writer_health = Arc::new(Health::default());
        let in_cluster = config.kafka.as_ref().is_some_and(|k| k.cluster.is_some());
        let (appender, writer_thread) = Appender::start(
            store.clone(),
            head.clone(),
            clock.clone(),
            writer_health.clone(),
            in_cluster,
        )?;
        let log_entries_at_start = head.get();
        let (projected_tx, projected) = watch::channel(0);
        let projector_health = Arc::new(Health::default());
        let projector_gate = Arc::new(Mutex::new(()));
        let projector_thread = runner::start(
            store.clone(),
            fold_context(&config),
            head.clone(),
            projected_tx,
            projector_health.clone(),
            projector_gate.clone(),
        )?;
        let metrics = Arc::new(Metrics::new());
        let (kafka, kafka_stalls) = (Arc::<Health>::default(), Arc::<PartitionStalls>::default());
        let ownership = Arc::new(if in_cluster {
            Ownership::cluster()
        } else {
            Ownership::everything()
        });
        let ingest = IngestHandle {
            store: store.clone(),
            appender: appender.clone(),
            metrics: metrics.clone(),
            kafka_health: kafka.clone(),
            kafka_stalls: kafka_stalls.clone(),
            ownership,
            log_head: head.clone(),
            changelog: match in_cluster {
                true => Some(ChangelogHandle {
                    origin: changelog::origin(&store)?,
                    published: Published::default(),
                }),
                false => None,
            },
            catalog: config.catalog.clone(),
            late_window: config.late_window,
            future_skew: config.future_skew,
            clock: clock.clone(),
        };
        Ok(Engine {
            config,
            store,
            appender,
            status: Status {
                head,
                log_entries_at_start,
                projected,
                projector: projector_health,
                writer: writer_health,
                kafka,
                kafka_stalls,
            },
            tokens,
            projector_gate,
            metrics,
            ingest,
            clock,
            generated_admin_token: Mutex::new(generated),
            tenant_positions: Mutex::default(),
            commands: WriteSide::default(),
            control: std::sync::OnceLock::new(),
            threads: Mutex::new(vec![writer_thread, projector_thread]),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store, for reads (writes go through the log writer or a projection batch).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The log's single writer.
    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The log position just past its last entry.
    pub fn head(&self) -> u64 {
        self.status.head.get()
    }

    /// Every log entry below this is in the projections.
    pub fn projected(&self) -> u64 {
        *self.status.projected.borrow()
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What each tenant's quota and billing commands are decided against.
    pub fn commands(&self) -> &WriteSide {
        &self.commands
    }

    /// The gate the projector holds for each batch (a live rebuild holds it to swap).
    pub fn projector_gate(&self) -> Arc<Mutex<()>> {
        self.projector_gate.clone()
    }

    /// The operator token this start generated, once (then forgotten).
    pub fn take_generated_admin_token(&self) -> Option<String> {
        self.generated_admin_token
            .lock()
            .ok()
            .and_then(|mut token| token.take())
    }

    /// What an event source is given: see [`IngestHandle`]. HTTP ingest uses the same one
    /// ([`Engine::ingest`]), so events are validated alike whichever way they come.
    pub fn ingest_handle(&self) -> IngestHandle {
        self.ingest.clone()
    }

    pub fn ingest(&self) -> &IngestHandle {
        &self.ingest
    }

    /// In a cluster, the control topic: where the owners of other partitions answer, and
    /// where token changes go.
    pub fn control(&self) -> Option<&Arc<Control>> {
        self.control.get()
    }

    /// Installs the control topic's handle (once, when serving starts).
    pub fn set_control(&self, control: Arc<Control>) {
        let _ = self.control.set(control);
    }

    /// The partitions this engine owns: see [`crate::cluster`].
    pub fn ownership(&self) -> &Ownership {
        &self.ingest.ownership
    }

    /// What the alert webhook is given: see [`WebhookHandle`].
    pub fn webhook_handle(&self) -> WebhookHandle {
        WebhookHandle {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Records the catalog's meter definitions as the ones the projections follow (after a
    /// rebuild with a changed catalog).
    pub fn record_catalog(&self) -> Result<(), StoreError> {
        record_meters(&self.store, &self.config.catalog.meter_definitions())
    }

    /// What folding needs (the projector's, or a rebuild's).
    pub fn fold_context(&self) -> runner::FoldContext {
        fold_context(&self.config)
    }

    /// Appends a command's facts (quota changes, billing changes, audit records); answers once
    /// they are durable. Reads of the tenant wait for them ([`Engine::wait_tenant_current`]).
    pub async fn append_facts(&self, entries: Vec<LogEntry>) -> Result<Vec<Outcome>, AppendError> {
        self.append_facts_with_rows(entries, Vec::new()).await
    }

    /// As [`append_facts`](Self::append_facts), writing `rows` (token changes) in the same
    /// durable batch; records where each tenant's facts now end.
    pub async fn append_facts_with_rows(
        &self,
        entries: Vec<LogEntry>,
        rows: Vec<RowWrite>,
    ) -> Result<Vec<Outcome>, AppendError> {
        let tenants: Vec<String> = entries.iter().map(|e| e.tenant().to_owned()).collect();
        let candidates = entries
            .into_iter()
            .map(|entry| Candidate::Fact {
                entry,
                identity: None,
            })
            .collect();
        let outcomes = self.appender.append_with_rows(candidates, rows).await?;
        self.note_positions(tenants.iter().map(String::as_str).zip(&outcomes));
        self.wait_published(&outcomes).await?;
        Ok(outcomes)
    }

    /// In a cluster, waits until the changelog holds what `outcomes` recorded: a command is
    /// answered once it would survive the loss of this engine and its disk.
    pub async fn wait_published(&self, outcomes: &[Outcome]) -> Result<(), AppendError> {
        let Some(changelog) = &self.ingest.changelog else {
            return Ok(());
        };
        let through = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Recorded { seq } => Some(seq.saturating_add(1)),
                _ => None,
            })
            .max();
        match through {
            Some(position) if !changelog.published.wait_for(position, PUBLISH_WAIT).await => {
                Err(AppendError::NotPublished)
            }
            _ => Ok(()),
        }
    }

    /// Records where each tenant's recorded facts ended.
    fn note_positions<'a>(&self, facts: impl Iterator<Item = (&'a str, &'a Outcome)>) {
        let Ok(mut positions) = self.tenant_positions.lock() else {
            return;
        };
        for (tenant, outcome) in facts {
            if let Outcome::Recorded { seq } = outcome {
                let next = seq.saturating_add(1);
                let position = positions.entry(tenant.to_owned()).or_insert(next);
                *position = (*position).max(next);
            }
        }
    }

    /// The log position the projections must reach before a read of `tenant` shows its every
    /// fact: past its last fact this engine appended, or, for a tenant with none since the
    /// start, everything the log held at the start.
    pub fn tenant_position(&self, tenant: &str) -> u64 {
        self.tenant_positions
            .lock()
            .ok()
            .and_then(|positions| positions.get(tenant).copied())
            .unwrap_or(self.status.log_entries_at_start)
            .max(self.status.log_entries_at_start)
    }

    /// Waits, up to [`PROJECTION_WAIT`], until the projections hold every fact of `tenant`
    /// (see [`Engine::tenant_position`]); other tenants' backlog is not waited for.
    pub async fn wait_tenant_current(&self, tenant: &str) -> bool {
        self.wait_projected(self.tenant_position(tenant), PROJECTION_WAIT)
            .await
    }

    /// Closes every billing period whose end the clock has passed: one `PeriodClosed` per
    /// period, appended once (its identity is the period), which issues its invoice. Returns
    /// how many were appended. The billing clock calls it every second; tests call it after
    /// moving the clock.
    pub async fn close_due_periods(&self) -> Result<usize, EngineError> {
        let store = self.store.clone();
        let tenants =
            tokio::task::spawn_blocking(move || crate::projection::billing::all_headers(&store))
                .await??;
        let now = self.now();
        let mut candidates = Vec::new();
        let mut closing = Vec::new();
        let projected = self.projected();
        for state in tenants {
            // In a cluster a tenant's periods are closed by the owner of its partition.
            if self.ownership().check(&state.tenant, projected).is_err() {
                continue;
            }
            let open = state.open_period();
            if open.end <= now {
                closing.push(state.tenant.clone());
                candidates.push(Candidate::Fact {
                    identity: Some(FactIdentity::new(PERIOD_CLOSE, &state.tenant, &open.uid)),
                    entry: LogEntry::Billing {
                        tenant: state.tenant.clone(),
                        at: open.end,
                        change: BillingChange::PeriodClosed {
                            period_uid: open.uid.clone(),
                        },
                    },
                });
            }
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let outcomes = self.appender.append(candidates).await?;
        self.note_positions(closing.iter().map(String::as_str).zip(&outcomes));
        // A closed period issues an invoice the write side does not compute: the tenant's
        // next billing command reads the projection once it holds the close.
        for (tenant, outcome) in closing.iter().zip(&outcomes) {
            if let Outcome::Recorded { seq } = outcome {
                self.commands
                    .billing
                    .invalidate(tenant, seq.saturating_add(1));
            }
        }
        if let Some(next) = recorded_next(&outcomes) {
            self.wait_projected(next, PROJECTION_WAIT).await;
        }
        Ok(outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Recorded { .. }))
            .count())
    }

    pub fn now(&self) -> UnixMicros {
        (self.clock)()
    }

    /// Waits until every log entry below `next_seq` is in the projections, up to `timeout`.
    /// Returns whether it got there.
    pub async fn wait_projected(&self, next_seq: u64, timeout: std::time::Duration) -> bool {
        let mut projected = self.status.projected.clone();
        tokio::time::timeout(timeout, projected.wait_for(|&p| p >= next_seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops writing, lets the projector fold everything written, and flushes the store.
    /// Callers stop their own producers (HTTP, Kafka) first.
    pub async fn shutdown(&self) {
        self.appender.close().await;
        let threads: Vec<JoinHandle<()>> = self
            .threads
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        let store = self.store.clone();
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
            store.flush()
        })
        .await;
        match joined {
            Ok(Ok(())) => tracing::info!("engine stopped cleanly"),
            Ok(Err(error)) => {
                tracing::error!(%error, "flush at shutdown failed; the WAL still holds every write")
            }
            Err(error) => tracing::error!(%error, "shutdown task failed"),
        }
    }
}

impl Drop for Engine {
    /// An engine dropped without [`Engine::shutdown`] (tests, embedders) still stops its
    /// writer and projector and waits for them, so that the store closes before the engine
    /// is gone: a RocksDB closed by a thread that outlives the process's exit aborts it
    /// ("pthread lock: Invalid argument"). It never waits where it could deadlock: not when
    /// the writer's queue is full, and not for a projector whose gate is held (perhaps by the
    /// thread dropping the engine).
    fn drop(&mut self) {
        let threads: Vec<JoinHandle<()>> = match self.threads.get_mut() {
            Ok(threads) => std::mem::take(threads),
            Err(_) => return,
        };
        if threads.is_empty() || !self.appender.try_close() {
            return;
        }
        let gate_free = self.projector_gate.try_lock().is_ok();
        let mut threads = threads.into_iter();
        // The writer first: it closes the log, which lets the projector finish.
        if let Some(writer) = threads.next() {
            let _ = writer.join();
        }
        if gate_free {
            for thread in threads {
                let _ = thread.join();
            }
        }
    }
}

/// The log position just past the last entry `outcomes` recorded, if any.
pub fn recorded_next(outcomes: &[Outcome]) -> Option<u64> {
    outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Recorded { seq } => Some(seq.saturating_add(1)),
            _ => None,
        })
        .max()
}

/// What the folds need of a configuration.
pub fn fold_context(config: &Config) -> runner::FoldContext {
    runner::FoldContext {
        catalog: config.catalog.clone(),
        invoice_due_after: i64::try_from(config.invoice_due.as_micros()).unwrap_or(i64::MAX),
    }
}

fn record_meters(store: &Store, meters: &BTreeMap<String, String>) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.put(
        CF_META,
        MetaKey::MeterDefinitions.encode(),
        serde_json::to_vec(meters).unwrap_or_default(),
    );
    store.commit(batch, true)
}
