//! The projector thread: tails the log, folds batches, writes rows and checkpoint atomically.
//!
//! A batch is prefetch → fold → output: the state its entries touch is read first (billing
//! states with one multi-get, the periods an invoice may bill, quota objects and every level
//! row with one multi-get per kind), the folds then work on that snapshot, and their rows go
//! out in one write batch. Usage rows are never read: their deltas go out as merge operands,
//! which RocksDB's aggregate merge operator adds to the stored rows.
//!
//! A crash between batches loses nothing: rows and checkpoint move together, so the next start
//! resumes at the checkpoint and folds the same entries into the same rows.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::{USAGE_PROJECTION, UsageDeltas};
use crate::catalog::Catalog;
use crate::health::Health;
use crate::log::LogEntry;
use crate::log::append::LogHead;
use crate::log::codec;
use crate::log::keys::AuditKey;
use crate::log::store::{
    CF_AUDIT, CF_BILLING, CF_CHECKPOINTS, CF_HOURLY, CF_MONTHLY, Store, StoreError,
};
use crate::log::values;
use crate::projection::billing::{BillingFold, PendingRows};
use crate::projection::quota::StoreQuotaReads;
use crate::quota::fold::QuotaFold;

/// Most entries folded per batch. A batch folds what the log holds beyond the checkpoint, so
/// under a light load batches stay small (read-your-writes waits little); a backlog is folded
/// in large batches, where a series' events merge into one row write per batch. 32,768
/// entries keep a batch's memory near 16 MB and its fold under 200 ms.
pub const FOLD_BATCH: usize = 32_768;

/// What the folds need besides the log.
pub struct FoldContext {
    pub catalog: Arc<Catalog>,
    /// How long after issue an invoice falls due (micros).
    pub invoice_due_after: i64,
}

/// Starts the projector over `store`. `projected` carries the next seq to fold (everything
/// below it is in the projections). The thread ends once the log is closed and folded.
pub fn start(
    store: Store,
    context: FoldContext,
    head: Arc<LogHead>,
    projected: watch::Sender<u64>,
    health: Arc<Health>,
    gate: Arc<Mutex<()>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tally-projector".into())
        .spawn(move || {
            // Stores written before alerts were indexed per tenant get the index once (under
            // the gate, like a batch); a failure only leaves their old alerts out of the list
            // until the next start.
            let indexed = match gate.lock() {
                Ok(_held) => super::quota::index_stored_alerts(&store),
                Err(_) => Err(StoreError::Closed),
            };
            match indexed {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "indexed stored alerts per tenant"),
                Err(error) => tracing::error!(%error, "cannot index stored alerts per tenant"),
            }
            let mut next = loop {
                match store.checkpoint(USAGE_PROJECTION) {
                    Ok(checkpoint) => break checkpoint.unwrap_or(0),
                    Err(error) => {
                        tracing::error!(%error, "cannot read the projector checkpoint; retrying");
                        health.fail(&error);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            };
            projected.send_replace(next);
            // One batch's room, reused: a batch of entries is megabytes.
            let mut entries = Vec::new();
            loop {
                let (log_head, closed) = head.wait_beyond(next, Duration::from_millis(500));
                if log_head > next {
                    // A rebuild holds the gate while it swaps the projections under us.
                    let folded = match gate.lock() {
                        Ok(_held) => fold_batch_reusing(&store, &context, next, &mut entries),
                        Err(_) => Err(StoreError::Closed),
                    };
                    match folded {
                        Ok(after) => {
                            next = after;
                            health.recover();
                            projected.send_replace(next);
                        }
                        Err(error) if closed => {
                            // Shutting down: the next start refolds from the checkpoint.
                            tracing::warn!(%error, next, "projector batch failed at shutdown");
                            break;
                        }
                        Err(error) => {
                            tracing::error!(%error, next, "projector batch failed; retrying");
                            if error.needs_reopen() {
                                health.fail_until_reopened(&error);
                            } else {
                                health.fail(&error);
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                } else if closed {
                    break;
                }
            }
            tracing::info!(next, "projector stopped");
        })
}

/// Folds one batch starting at `from`; returns the next seq to fold.
pub fn fold_batch(store: &Store, context: &FoldContext, from: u64) -> Result<u64, StoreError> {
    fold_batch_into(store, store, context, from, u64::MAX)
}

/// As [`fold_batch`], reading the batch into `entries` (its room reused).
fn fold_batch_reusing(
    store: &Store,
    context: &FoldContext,
    from: u64,
    entries: &mut Vec<(u64, LogEntry)>,
) -> Result<u64, StoreError> {
    fold_batch_in(store, store, context, from, u64::MAX, entries)
}

/// Folds one batch of `log`'s entries in `[from, until)` into the projections of `store` (the
/// same store, or a rebuild's shadow); returns the next seq to fold.
pub fn fold_batch_into(
    log: &Store,
    store: &Store,
    context: &FoldContext,
    from: u64,
    until: u64,
) -> Result<u64, StoreError> {
    fold_batch_in(log, store, context, from, until, &mut Vec::new())
}

/// Reads one batch of `log` in `[from, until)` into `entries` and folds it into `store`;
/// returns the next seq to fold.
fn fold_batch_in(
    log: &Store,
    store: &Store,
    context: &FoldContext,
    from: u64,
    until: u64,
    entries: &mut Vec<(u64, LogEntry)>,
) -> Result<u64, StoreError> {
    read_batch_into(log, from, until, FOLD_BATCH as u64, entries)?;
    fold_entries(store, context, entries, None)?;
    Ok(entries.last().map_or(from, |&(seq, _)| seq + 1))
}

/// The log's entries in `[from, until)`, at most `most` of them, into `entries` (emptied
/// first, its room reused).
fn read_batch_into(
    log: &Store,
    from: u64,
    until: u64,
    most: u64,
    entries: &mut Vec<(u64, LogEntry)>,
) -> Result<(), StoreError> {
    entries.clear();
    let limit = until.saturating_sub(from).min(most);
    log.read_log_into(from, usize::try_from(limit).unwrap_or(FOLD_BATCH), entries)
}

/// Folds `entries` (one batch, in log order) into the projections of `store`, with the
/// hourly and monthly deltas folded into `collected` instead of written with the batch when
/// it is given: a rebuild gathers them over many batches and writes them as sorted table
/// files ([`write_collected`]). Billing and quota rows are written as always, since the next
/// batches read them; billing usage rows gathered are pending for them.
fn fold_entries(
    store: &Store,
    context: &FoldContext,
    entries: &[(u64, LogEntry)],
    collected: Option<&mut Gathered>,
) -> Result<(), StoreError> {
    let catalog = context.catalog.as_ref();
    let Some(&(last_seq, _)) = entries.last() else {
        return Ok(());
    };
    // Folded straight into the gathered deltas when there are any (no second merge).
    let gathering = collected.is_some();
    let mut own = Gathered::default();
    let collected = collected.unwrap_or(&mut own);
    let deltas = &mut collected.usage;
    // Every tenant's billing state is read once, before the fold, with one multi-get.
    let mut billing = BillingFold::new(store, catalog, context.invoice_due_after)
        .with_pending(std::mem::take(&mut collected.billing));
    billing.prefetch(entries.iter().filter_map(|(_, entry)| match entry {
        LogEntry::Audit(_) => None,
        other => Some(other.tenant()),
    }))?;
    billing.prefetch_history(entries)?;
    // Quota rows too: the fold reads its snapshot, not the store.
    let reads = StoreQuotaReads::new(store);
    let snapshot = super::quota::prefetch(&reads, entries, catalog, billing.stored_plans())?;
    let mut quota = QuotaFold::new(&snapshot, catalog);
    for (seq, entry) in entries {
        deltas.fold(entry, catalog);
        // Billing first: a finished plan transition changes the limits quotas check against.
        if let Some(change) = billing.fold(*seq, entry)? {
            quota.set_plan(&change.tenant, &change.plan, change.seq, change.at)?;
        }
        quota.fold(*seq, entry)?;
    }
    let quota_writes = quota.writes;
    let misses = snapshot.misses() + billing.misses();
    if misses > 0 {
        tracing::debug!(misses, "the folds read rows their prefetch did not list");
    }
    let next = last_seq + 1;
    let mut batch = store.batch();
    {
        // Deltas, merged into the stored rows by RocksDB: the fold never reads a usage row.
        if !gathering {
            for (key, delta) in deltas.hourly_rows() {
                batch.merge(CF_HOURLY, key, delta.encode());
            }
            for (key, delta) in deltas.monthly_rows() {
                batch.merge(CF_MONTHLY, key, delta.encode());
            }
        }
        batch.put(
            CF_CHECKPOINTS,
            USAGE_PROJECTION.as_bytes(),
            codec::encode_u64(next),
        );
    }
    super::quota::put_writes(&mut batch, &quota_writes);
    for (seq, entry) in entries {
        if let LogEntry::Audit(record) = entry {
            batch.put(
                CF_AUDIT,
                AuditKey {
                    tenant: &record.tenant,
                    seq: *seq,
                }
                .encode(),
                values::encode_audit(record),
            );
        }
    }
    if gathering {
        collected.billing = billing.take_pending();
    }
    billing.write(&mut batch)?;
    // Not fsync'd: the log is. A lost projection batch is refolded from the checkpoint.
    store.commit(batch, false)?;
    Ok(())
}

/// Folds `log`'s entries from `next` up to `until` into `store`, gathering the hourly and
/// monthly deltas (and the billing usage rows) of many batches in memory (up to
/// `limits.rows` rows) and writing them as sorted table files, never through the memtable;
/// billing state and quota rows go through batches, since the next batches read them. For a
/// store whose usage rows nobody reads meanwhile (a rebuild's shadow): they are complete only
/// when this returns.
pub fn fold_range_gathering(
    log: &Store,
    store: &Store,
    context: &FoldContext,
    next: &mut u64,
    until: u64,
    limits: GatherLimits,
    progress: &dyn Fn(u64, u64),
) -> Result<(), StoreError> {
    let batch_entries = limits.batch_entries.max(1);
    let start = *next;
    // The log is read and decoded on a thread of its own, a batch ahead of the fold; the
    // folded batches go back to it, to be freed there and their room reused.
    let (batches, read) = std::sync::mpsc::sync_channel::<Result<_, StoreError>>(1);
    let (done, folded) = std::sync::mpsc::channel::<Vec<(u64, LogEntry)>>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut from = start;
            while from < until {
                let mut entries = folded.try_recv().unwrap_or_default();
                let batch = read_batch_into(log, from, until, batch_entries, &mut entries)
                    .map(|()| entries);
                // After an error or an empty read there is nothing more to read.
                let last = match &batch {
                    Ok(entries) => entries.last().map(|&(seq, _)| seq),
                    Err(_) => None,
                };
                if batches.send(batch).is_err() {
                    return;
                }
                match last {
                    Some(seq) => from = seq + 1,
                    None => return,
                }
            }
        });
        let mut collected = Gathered::default();
        for batch in read {
            let entries = batch?;
            let Some(&(last, _)) = entries.last() else {
                break;
            };
            // An invoice scans the pending billing rows for its period: write the gathered
            // ones first, so it scans one batch's rows, not a whole gathering's.
            let may_invoice = entries
                .iter()
                .any(|(_, entry)| matches!(entry, LogEntry::Billing { .. }));
            if may_invoice && !collected.billing.is_empty() {
                write_collected(store, &mut collected)?;
            }
            fold_entries(store, context, &entries, Some(&mut collected))?;
            *next = last + 1;
            let _ = done.send(entries);
            if collected.len() >= limits.rows {
                write_collected(store, &mut collected)?;
            }
            progress(*next, until);
        }
        write_collected(store, &mut collected)
    })
}

/// How much [`fold_range_gathering`] holds: rows gathered before they are written, and
/// entries per fold batch.
#[derive(Debug, Clone, Copy)]
pub struct GatherLimits {
    pub rows: usize,
    pub batch_entries: u64,
}

/// Deltas a rebuild gathers over many batches before writing them as table files.
#[derive(Default)]
struct Gathered {
    usage: UsageDeltas,
    /// Billing usage (`u`) rows: the fold of later batches hears of them as pending, so an
    /// invoice bills them before they are written.
    billing: PendingRows,
}

impl Gathered {
    fn len(&self) -> usize {
        self.usage.len() + self.billing.len()
    }
}

/// Writes the deltas gathered by [`fold_entries`] into `store` as merge operands, one
/// sorted table file per family, and empties them.
fn write_collected(store: &Store, collected: &mut Gathered) -> Result<(), StoreError> {
    let Gathered { usage, billing } = std::mem::take(collected);
    // One family at a time, so only one family's rolled-up rows are in memory at once.
    let encoded = |rows: Vec<(Vec<u8>, super::Aggregate)>| {
        rows.into_iter().map(|(key, delta)| (key, delta.encode()))
    };
    store.ingest_merge_operands(CF_HOURLY, encoded(usage.hourly_rows()))?;
    store.ingest_merge_operands(CF_MONTHLY, encoded(usage.monthly_rows()))?;
    drop(usage);
    store.ingest_merge_operands(
        CF_BILLING,
        super::sorted_rows(billing)
            .into_iter()
            .map(|(key, delta)| (key, delta.encode())),
    )
}

#[cfg(test)]
mod tests {
    //! The fold with merge operands against a plain fold: same rows for any batching, any
    //! restart between batches, and any flush or compaction of the operands.

    use proptest::prelude::*;

    use super::*;
    use crate::log::keys;
    use crate::log::store::{CF_BILLING, CF_LOG, StoreOptions};
    use crate::projection::{Aggregate, fold_from_scratch};

    /// One usage event (late November 2026, across the month boundary) from the fold tests'
    /// generator, with one object per series.
    fn entry(
        i: usize,
        (tenant, ns, metric, quantity, quarter): (u8, u8, usize, i64, i64),
    ) -> LogEntry {
        tally_core::projection::testing::entry(i, tenant, ns, metric, quantity, quarter, 0)
    }

    /// `entries` with, at `at` (when given), the close of each test tenant's November period:
    /// an invoice bills the usage folded before it, and later November events are late.
    fn with_closes(mut entries: Vec<LogEntry>, at: Option<usize>) -> Vec<LogEntry> {
        let Some(at) = at else {
            return entries;
        };
        let november = crate::time::parse_rfc3339("2026-11-15T00:00:00Z").expect("time");
        let (start, end) =
            crate::billing::renewal_window(crate::catalog::PeriodUnit::PERIOD_MONTH, november);
        let closes = (0..3).map(|t| {
            let tenant = format!("t{t}");
            LogEntry::Billing {
                change: crate::billing::BillingChange::PeriodClosed {
                    period_uid: crate::billing::period_uid(&tenant, start),
                },
                tenant,
                at: end,
            }
        });
        let at = at.min(entries.len());
        entries.splice(at..at, closes);
        entries
    }

    /// The closed periods (`p` rows, with what their invoices billed) of a store.
    fn closed_periods(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        rows(store, CF_BILLING)
            .into_iter()
            .filter(|(key, _)| key.first() == Some(&b'p'))
            .collect()
    }

    /// What to do after each fold batch.
    #[derive(Debug, Clone, Copy)]
    enum Between {
        Nothing,
        /// Close the store without flushing and open it again: the projector restarts at the
        /// checkpoint from what the WAL holds.
        Restart,
        /// Flush memtables: operands meet the merge operator in a flush.
        Flush,
        /// Compact everything: operands are merged into the base rows.
        Compact,
    }

    fn between() -> impl Strategy<Value = Between> {
        prop_oneof![
            4 => Just(Between::Nothing),
            1 => Just(Between::Restart),
            1 => Just(Between::Flush),
            1 => Just(Between::Compact),
        ]
    }

    fn options() -> StoreOptions {
        StoreOptions {
            dedup_horizon: std::time::Duration::from_secs(3_600),
            min_free_disk: 0,
        }
    }

    /// Writes `entries` as the log of a new store at `dir`.
    fn store_with_log(dir: &std::path::Path, entries: &[LogEntry]) -> Store {
        let store = Store::open(dir, &options()).expect("store");
        let mut batch = store.batch();
        for (seq, entry) in entries.iter().enumerate() {
            batch.put(
                CF_LOG,
                keys::seq_key(seq as u64),
                values::encode_entry(entry),
            );
        }
        store.commit(batch, true).expect("log");
        store
    }

    fn context() -> FoldContext {
        FoldContext {
            catalog: Arc::new(Catalog::builtin().expect("catalog")),
            invoice_due_after: 0,
        }
    }

    /// `entries` folded in one batch into a new store of their own.
    fn folded_at_once(entries: &[LogEntry], context: &FoldContext) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_log(dir.path(), entries);
        let total = entries.len() as u64;
        assert_eq!(
            fold_batch_into(&store, &store, context, 0, total).expect("fold"),
            total
        );
        (dir, store)
    }

    /// The hourly and monthly rows a plain fold of `entries` gives, encoded as stored.
    fn plain_rows(entries: &[LogEntry], catalog: &Catalog) -> [Vec<(Vec<u8>, Vec<u8>)>; 2] {
        let plain = fold_from_scratch(entries, catalog);
        let encoded = |rows: &[(Vec<u8>, Aggregate)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            rows.iter()
                .map(|(k, a)| (k.clone(), a.encode().to_vec()))
                .collect()
        };
        [encoded(&plain.hourly), encoded(&plain.monthly)]
    }

    fn rows(store: &Store, cf: &'static str) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .rows(cf)
            .map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn merged_folds_in_any_batches_with_restarts_equal_a_plain_fold(
            specs in proptest::collection::vec((0u8..3, 0u8..3, 0usize..3, 0i64..5_000_000, 0i64..24), 1..120),
            plan in proptest::collection::vec((1u64..40, between()), 1..12),
            close_at in proptest::option::of(0usize..120),
        ) {
            let entries: Vec<LogEntry> = specs.into_iter().enumerate().map(|(i, s)| entry(i, s)).collect();
            let entries = with_closes(entries, close_at);
            let total = entries.len() as u64;
            let context = context();

            // The reference: one batch of everything into a fresh store.
            let (_once_dir, once) = folded_at_once(&entries, &context);

            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = store_with_log(dir.path(), &entries);
            let mut step = 0;
            loop {
                let from = store.checkpoint(USAGE_PROJECTION).expect("checkpoint").unwrap_or(0);
                if from >= total {
                    break;
                }
                let (size, then) = plan[step % plan.len()];
                step += 1;
                fold_batch_into(&store, &store, &context, from, from + size).expect("fold");
                match then {
                    Between::Nothing => {}
                    Between::Restart => {
                        drop(store);
                        store = Store::open(dir.path(), &options()).expect("reopen");
                    }
                    Between::Flush => store.flush().expect("flush"),
                    Between::Compact => store.compact_all().expect("compact"),
                }
            }

            // Hourly and monthly rows are exactly the plain fold's, byte for byte.
            let [hourly, monthly] = plain_rows(&entries, &context.catalog);
            prop_assert_eq!(rows(&store, CF_HOURLY), hourly);
            prop_assert_eq!(rows(&store, CF_MONTHLY), monthly);
            // Billing (periods and their usage rows) and quota state equal the one-batch fold's.
            for cf in [CF_BILLING, crate::log::store::CF_QUOTA, CF_CHECKPOINTS] {
                prop_assert_eq!(rows(&store, cf), rows(&once, cf), "{}", cf);
            }
        }

        #[test]
        fn a_gathering_fold_into_table_files_equals_a_plain_fold(
            specs in proptest::collection::vec((0u8..3, 0u8..3, 0usize..3, 0i64..5_000_000, 0i64..24), 1..150),
            gather_rows in 1usize..40,
            batch_entries in 1u64..20,
            compact_first in any::<bool>(),
            close_at in proptest::option::of(0usize..150),
        ) {
            let entries: Vec<LogEntry> = specs.into_iter().enumerate().map(|(i, s)| entry(i, s)).collect();
            let entries = with_closes(entries, close_at);
            let total = entries.len() as u64;
            let context = context();
            let (_live_dir, live) = folded_at_once(&entries, &context);

            // Small gatherings: many overlapping table files of merge operands, ingested one
            // after another (with a compaction between some of them).
            let dir = tempfile::tempdir().expect("tempdir");
            let shadow = store_with_log(dir.path(), &entries);
            let mut next = 0;
            let half = total / 2;
            let limits = GatherLimits { rows: gather_rows, batch_entries };
            fold_range_gathering(&live, &shadow, &context, &mut next, half, limits, &|_, _| {}).expect("first half");
            if compact_first {
                shadow.compact_all().expect("compact");
            }
            fold_range_gathering(&live, &shadow, &context, &mut next, total, limits, &|_, _| {}).expect("second half");
            prop_assert_eq!(next, total);

            let [hourly, monthly] = plain_rows(&entries, &context.catalog);
            prop_assert_eq!(rows(&shadow, CF_HOURLY), hourly);
            prop_assert_eq!(rows(&shadow, CF_MONTHLY), monthly);
            for cf in [CF_HOURLY, CF_MONTHLY, CF_BILLING, crate::log::store::CF_QUOTA] {
                prop_assert_eq!(rows(&shadow, cf), rows(&live, cf), "{}", cf);
            }
        }
    }

    #[test]
    fn an_invoice_in_a_gathering_fold_bills_the_usage_not_yet_written() {
        // Tenant t0's November usage, then its period's close, in small gatherings: most of
        // the usage is in table files (the gathering is written before a batch that may
        // invoice), the rest pending in the close's own batch, when the period's invoice
        // records what it billed.
        let entries: Vec<LogEntry> = (0..40)
            .map(|i| entry(i, (0, (i % 3) as u8, i % 3, 1_000_000 + i as i64, 0)))
            .collect();
        // The closes at 38: their batch (36..40) also holds usage not yet written anywhere.
        let entries = with_closes(entries, Some(38));
        let context = context();
        let (_live_dir, live) = folded_at_once(&entries, &context);
        let dir = tempfile::tempdir().expect("tempdir");
        let shadow = store_with_log(dir.path(), &entries);
        let mut next = 0;
        let total = entries.len() as u64;
        // Batches of 4 entries; rows written once 12 are gathered.
        let limits = GatherLimits {
            rows: 12,
            batch_entries: 4,
        };
        fold_range_gathering(
            &live,
            &shadow,
            &context,
            &mut next,
            total,
            limits,
            &|_, _| {},
        )
        .expect("fold");
        let closed = closed_periods(&live);
        assert_eq!(closed.len(), 1, "t0's November, billed");
        assert_eq!(closed_periods(&shadow), closed);
        assert_eq!(rows(&shadow, CF_BILLING), rows(&live, CF_BILLING));
    }
}
