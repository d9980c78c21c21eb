//! Projections: pure folds of log entries into hourly, monthly and current-period rows.
//!
//! A row's [`Aggregate`] is a commutative monoid (sum, count, max and the newest value by a
//! content-only order), so folding any permutation of the same events gives the same bytes,
//! and a batch of deltas can be merged into stored rows in any grouping.

pub mod billing_rows;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::collections::HashMap;

use crate::catalog::{Aggregation, Catalog};
use crate::event::UsageEvent;
use crate::log::LogEntry;
use crate::log::codec::{self, CodecError};
use crate::log::keys::{self, SeriesRef};
use crate::time::{self, UnixMicros};

/// Names of the projections, used for checkpoints.
pub const USAGE_PROJECTION: &str = "usage";

/// What a projection row keeps of the events of one series in one bucket (micro-units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregate {
    pub sum: i128,
    pub count: u64,
    pub max: i64,
    /// Quantity of the newest event, ordered by (event time, id hash, quantity): content only,
    /// so arrival order never matters.
    pub last: i64,
    pub last_at: UnixMicros,
    pub last_tiebreak: u64,
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate {
            sum: 0,
            count: 0,
            max: 0,
            last: 0,
            last_at: i64::MIN,
            last_tiebreak: 0,
        }
    }
}

const AGGREGATE_LEN: usize = 1 + 16 + 8 + 8 + 8 + 8 + 8;

impl Aggregate {
    pub fn of(event: &UsageEvent) -> Self {
        let quantity = event.quantity.0;
        Aggregate {
            sum: i128::from(quantity),
            count: 1,
            max: quantity,
            last: quantity,
            last_at: event.timestamp,
            last_tiebreak: xxhash_rust::xxh3::xxh3_64(event.id.as_bytes()),
        }
    }

    pub fn merge(&mut self, other: &Aggregate) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        // Saturating: a merge also runs inside RocksDB on stored operands, where a panic
        // would abort the process; no real series comes near either bound.
        self.sum = self.sum.saturating_add(other.sum);
        self.count = self.count.saturating_add(other.count);
        self.max = self.max.max(other.max);
        if (other.last_at, other.last_tiebreak, other.last)
            > (self.last_at, self.last_tiebreak, self.last)
        {
            self.last = other.last;
            self.last_at = other.last_at;
            self.last_tiebreak = other.last_tiebreak;
        }
    }

    /// The series' value under a meter's aggregation, in micro-units (a COUNT of n events is
    /// n whole units, so every value goes through the same billable arithmetic).
    pub fn value(&self, aggregation: Aggregation) -> i128 {
        if self.count == 0 {
            return 0;
        }
        match aggregation {
            Aggregation::Sum => self.sum,
            Aggregation::Max => i128::from(self.max),
            Aggregation::Latest => i128::from(self.last),
            Aggregation::Count => {
                i128::from(self.count) * i128::from(crate::units::MICROS_PER_UNIT)
            }
        }
    }

    pub fn encode(&self) -> [u8; AGGREGATE_LEN] {
        let mut out = [0u8; AGGREGATE_LEN];
        out[0] = codec::VALUE_VERSION;
        out[1..17].copy_from_slice(&self.sum.to_be_bytes());
        out[17..25].copy_from_slice(&self.count.to_be_bytes());
        out[25..33].copy_from_slice(&self.max.to_be_bytes());
        out[33..41].copy_from_slice(&self.last.to_be_bytes());
        out[41..49].copy_from_slice(&self.last_at.to_be_bytes());
        out[49..57].copy_from_slice(&self.last_tiebreak.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let body: [u8; AGGREGATE_LEN - 1] = codec::fixed_body(bytes, "aggregate")?;
        let eight = |at| codec::field::<8>(&body, at);
        Ok(Aggregate {
            sum: i128::from_be_bytes(codec::field(&body, 0)),
            count: u64::from_be_bytes(eight(16)),
            max: i64::from_be_bytes(eight(24)),
            last: i64::from_be_bytes(eight(32)),
            last_at: i64::from_be_bytes(eight(40)),
            last_tiebreak: u64::from_be_bytes(eight(48)),
        })
    }
}

/// The stored row after `operands` (encoded deltas, oldest first) are merged into `existing`:
/// what RocksDB's merge operator on the aggregate rows computes, on reads, flushes and
/// compactions. `None` when a value does not decode (RocksDB then reports corruption for
/// that key instead of answering a wrong number).
pub fn merge_encoded<'a>(
    existing: Option<&[u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let mut row = match existing {
        Some(bytes) => Aggregate::decode(bytes).ok()?,
        None => Aggregate::default(),
    };
    for operand in operands {
        row.merge(&Aggregate::decode(operand).ok()?);
    }
    Some(row.encode().to_vec())
}

/// Row deltas from a run of log entries.
///
/// Only the finest rows are held: one series of one namespace in one hour. The tenant-wide
/// copy of a row aggregates exactly the same events (its series names the namespace too),
/// and a monthly row is the merge of its hours, so both are rolled up when the rows are
/// written: an event costs one hash lookup, not four ordered-map searches on long keys.
#[derive(Debug, Default, Clone)]
pub struct UsageDeltas {
    /// By `hour u32 BE, month u32 BE, tenant\0, series` (as [`keys::push_series`]); the
    /// month is the event's own, so no calendar arithmetic runs on hours.
    finest: HashMap<Box<[u8]>, FinestRow, foldhash::fast::RandomState>,
    /// The key being looked up: built in place, copied only when the row is new.
    scratch: Vec<u8>,
}

/// A finest row's aggregate, and where its key's parts end (the key is built by
/// [`UsageDeltas::fold`], so the offsets are known and nothing is parsed back).
#[derive(Debug, Clone, Copy)]
struct FinestRow {
    aggregate: Aggregate,
    /// End of `tenant\0`.
    tenant_end: usize,
    /// End of `namespace\0` (the first part of the series).
    namespace_end: usize,
}

/// Bytes before the tenant in a finest key: hour and month.
const FINEST_BUCKETS: usize = 8;

impl UsageDeltas {
    /// Folds one entry; entries for meters the catalog no longer has are kept in the log but
    /// not projected (they reappear if the meter returns and the projection is rebuilt).
    pub fn fold(&mut self, entry: &LogEntry, catalog: &Catalog) {
        let LogEntry::UsageRecorded { event, .. } = entry else {
            return;
        };
        if catalog.meter(&event.metric_label).is_none() {
            return;
        }
        let delta = Aggregate::of(event);
        let key = &mut self.scratch;
        key.clear();
        key.extend_from_slice(&time::hour_index(event.timestamp).to_be_bytes());
        key.extend_from_slice(&time::month_index(event.timestamp).to_be_bytes());
        keys::push_str(key, &event.tenant);
        let tenant_end = key.len();
        keys::push_series(key, &SeriesRef::of(event));
        if let Some(row) = self.finest.get_mut(key.as_slice()) {
            row.aggregate.merge(&delta);
        } else {
            self.finest.insert(
                key.as_slice().into(),
                FinestRow {
                    aggregate: delta,
                    tenant_end,
                    namespace_end: tenant_end + event.namespace.len() + 1,
                },
            );
        }
    }

    /// Finest rows held; each stands for at most two hourly and two monthly rows.
    pub fn len(&self) -> usize {
        self.finest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.finest.is_empty()
    }

    /// The hourly rows, both scopes, sorted by key.
    pub fn hourly_rows(&self) -> Vec<(Vec<u8>, Aggregate)> {
        sorted_rows(self.finest.iter().flat_map(|(key, row)| {
            [RollUp::Namespace, RollUp::Tenant]
                .into_iter()
                .filter_map(move |scope| row_key(key, row, scope, 0))
                .map(move |key| (key, row.aggregate))
        }))
    }

    /// The monthly rows, both scopes, sorted by key: each the merge of its hours.
    pub fn monthly_rows(&self) -> Vec<(Vec<u8>, Aggregate)> {
        let mut months: HashMap<Vec<u8>, Aggregate, foldhash::fast::RandomState> =
            HashMap::default();
        for (key, row) in &self.finest {
            for scope in [RollUp::Namespace, RollUp::Tenant] {
                if let Some(key) = row_key(key, row, scope, 4) {
                    months.entry(key).or_default().merge(&row.aggregate);
                }
            }
        }
        sorted_rows(months)
    }

    /// Every row, as a fold from nothing writes them.
    pub fn rows(&self) -> RowUpdates {
        RowUpdates {
            hourly: self.hourly_rows(),
            monthly: self.monthly_rows(),
        }
    }
}

/// `rows` (from a hash map: keys distinct) in key order, as table files and memtable
/// inserts want them.
pub fn sorted_rows<K: Ord, V>(rows: impl IntoIterator<Item = (K, V)>) -> Vec<(K, V)> {
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// Which copy of a finest row a stored key is for.
#[derive(Clone, Copy)]
enum RollUp {
    Namespace,
    Tenant,
}

/// The stored key `tenant\0 scope\0 bucket series` of a finest row, with the bucket at
/// `bucket_at` in the finest key (0: the hour, 4: the month). Always `Some`: the fold built
/// the key with these offsets.
fn row_key(finest: &[u8], row: &FinestRow, scope: RollUp, bucket_at: usize) -> Option<Vec<u8>> {
    let tenant = finest.get(FINEST_BUCKETS..row.tenant_end)?;
    let series = finest.get(row.tenant_end..)?;
    let scope = match scope {
        RollUp::Namespace => finest.get(row.tenant_end..row.namespace_end.checked_sub(1)?)?,
        RollUp::Tenant => keys::TENANT_SCOPE.as_bytes(),
    };
    let bucket = finest.get(bucket_at..bucket_at + 4)?;
    let mut key = Vec::with_capacity(tenant.len() + scope.len() + 5 + series.len());
    key.extend_from_slice(tenant);
    key.extend_from_slice(scope);
    key.push(0);
    key.extend_from_slice(bucket);
    key.extend_from_slice(series);
    Some(key)
}

/// Rows with their values: what a fold of some entries adds, sorted by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RowUpdates {
    pub hourly: Vec<(Vec<u8>, Aggregate)>,
    pub monthly: Vec<(Vec<u8>, Aggregate)>,
}

/// Folds entries into rows from nothing: what a rebuild computes, and what tests compare with.
pub fn fold_from_scratch<'a>(
    entries: impl IntoIterator<Item = &'a LogEntry>,
    catalog: &Catalog,
) -> RowUpdates {
    let mut deltas = UsageDeltas::default();
    for entry in entries {
        deltas.fold(entry, catalog);
    }
    deltas.rows()
}

#[cfg(test)]
mod tests;
