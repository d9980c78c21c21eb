//! The projector thread: tails the log, folds batches, writes rows and checkpoint atomically.
//!
//! A batch is prefetch → fold → output: the state its entries touch is read first (billing
//! states with one multi-get, the periods an invoice may bill, quota objects and every level
//! row with one multi-get per kind), the folds then work on that snapshot, and their rows go
//! out in one write batch.
//!
//! A crash between batches loses nothing: rows and checkpoint move together, so the next start
//! resumes at the checkpoint and folds the same entries into the same rows.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::{Aggregate, USAGE_PROJECTION, UsageDeltas, merge_rows};
use crate::catalog::Catalog;
use crate::health::Health;
use crate::log::LogEntry;
use crate::log::append::LogHead;
use crate::log::codec;
use crate::log::store::{CF_AUDIT, CF_CHECKPOINTS, CF_HOURLY, CF_MONTHLY, Store, StoreError};
use crate::projection::billing::BillingFold;
use crate::projection::quota::StoreQuotaReads;
use crate::quota::fold::QuotaFold;

/// Entries folded per batch: large enough to amortise the row reads, small enough to keep a
/// batch's memory and latency modest.
pub const FOLD_BATCH: usize = 8_192;

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
            loop {
                let (log_head, closed) = head.wait_beyond(next, Duration::from_millis(500));
                if log_head > next {
                    // A rebuild holds the gate while it swaps the projections under us.
                    let folded = match gate.lock() {
                        Ok(_held) => fold_batch(&store, &context, next),
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

/// Folds one batch of `log`'s entries in `[from, until)` into the projections of `store` (the
/// same store, or a rebuild's shadow); returns the next seq to fold.
pub fn fold_batch_into(
    log: &Store,
    store: &Store,
    context: &FoldContext,
    from: u64,
    until: u64,
) -> Result<u64, StoreError> {
    let catalog = context.catalog.as_ref();
    let limit =
        usize::try_from(until.saturating_sub(from)).map_or(FOLD_BATCH, |n| n.min(FOLD_BATCH));
    let entries = log.read_log(from, limit)?;
    let Some(&(last_seq, _)) = entries.last() else {
        return Ok(from);
    };
    let mut deltas = UsageDeltas::default();
    // Every tenant's billing state is read once, before the fold, with one multi-get.
    let mut billing = BillingFold::new(store, catalog, context.invoice_due_after);
    billing.prefetch(entries.iter().filter_map(|(_, entry)| match entry {
        LogEntry::Audit(_) => None,
        other => Some(other.tenant()),
    }))?;
    billing.prefetch_history(&entries)?;
    // Quota rows too: the fold reads its snapshot, not the store.
    let reads = StoreQuotaReads::new(store);
    let snapshot = super::quota::prefetch(&reads, &entries, catalog, billing.stored_plans())?;
    let mut quota = QuotaFold::new(&snapshot, catalog);
    for (seq, entry) in &entries {
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
    let stored_hourly = read_aggregates(store, CF_HOURLY, deltas.hourly.keys())?;
    let stored_monthly = read_aggregates(store, CF_MONTHLY, deltas.monthly.keys())?;
    let updates = merge_rows(&deltas, &stored_hourly, &stored_monthly);

    let next = last_seq + 1;
    let mut batch = store.batch();
    {
        for (key, aggregate) in &updates.hourly {
            batch.put(CF_HOURLY, key, aggregate.encode());
        }
        for (key, aggregate) in &updates.monthly {
            batch.put(CF_MONTHLY, key, aggregate.encode());
        }
        batch.put(
            CF_CHECKPOINTS,
            USAGE_PROJECTION.as_bytes(),
            codec::encode_u64(next),
        );
    }
    super::quota::put_writes(&mut batch, &quota_writes);
    for (seq, entry) in &entries {
        if let LogEntry::Audit(record) = entry {
            batch.put(
                CF_AUDIT,
                audit_key(&record.tenant, *seq),
                codec::encode_audit(record),
            );
        }
    }
    billing.write(&mut batch)?;
    // Not fsync'd: the log is. A lost projection batch is refolded from the checkpoint.
    store.commit(batch, false)?;
    Ok(next)
}

fn read_aggregates<'a>(
    store: &Store,
    cf: &'static str,
    keys: impl Iterator<Item = &'a Vec<u8>>,
) -> Result<Vec<Option<Aggregate>>, StoreError> {
    let keys: Vec<Vec<u8>> = keys.cloned().collect();
    store
        .multi_get(cf, &keys)?
        .into_iter()
        .map(|value| match value {
            Some(bytes) => Aggregate::decode(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { cf, source }),
            None => Ok(None),
        })
        .collect()
}

/// `tenant\0 seq`: one tenant's audit records in log order.
pub fn audit_key(tenant: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 9);
    crate::log::keys::push_str(&mut key, tenant);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}
