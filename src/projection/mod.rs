//! Projections: pure folds of log entries into hourly, monthly and current-period rows.
//!
//! A row's [`Aggregate`] is a commutative monoid (sum, count, max and the newest value by a
//! content-only order), so folding any permutation of the same events gives the same bytes,
//! and a batch of deltas can be merged into stored rows in any grouping.

pub mod billing;
pub mod quota;
pub mod read;
pub mod runner;

use std::collections::BTreeMap;

use crate::catalog::{Aggregation, Catalog};
use crate::event::UsageEvent;
use crate::log::LogEntry;
use crate::log::codec::{self, CodecError};
use crate::log::keys::{self, Scope, SeriesRef};
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

/// Row deltas from a run of log entries, keyed by encoded row key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UsageDeltas {
    pub hourly: BTreeMap<Vec<u8>, Aggregate>,
    pub monthly: BTreeMap<Vec<u8>, Aggregate>,
}

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
        let series = SeriesRef::of(event);
        let hour = time::hour_index(event.timestamp);
        let month = time::month_index(event.timestamp);
        for scope in [Scope::Namespace(&event.namespace), Scope::Tenant] {
            self.hourly
                .entry(keys::series_key(&event.tenant, scope, hour, &series))
                .or_default()
                .merge(&delta);
            self.monthly
                .entry(keys::series_key(&event.tenant, scope, month, &series))
                .or_default()
                .merge(&delta);
        }
    }

    /// Rows held (hourly and monthly).
    pub fn len(&self) -> usize {
        self.hourly.len() + self.monthly.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// New row values after merging deltas into what is stored. Pure: the runner does the I/O.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RowUpdates {
    pub hourly: Vec<(Vec<u8>, Aggregate)>,
    pub monthly: Vec<(Vec<u8>, Aggregate)>,
}

/// Merges `deltas` into stored rows. `stored_*` hold the current values of the delta keys in
/// the same order (`None` = no row yet).
pub fn merge_rows(
    deltas: &UsageDeltas,
    stored_hourly: &[Option<Aggregate>],
    stored_monthly: &[Option<Aggregate>],
) -> RowUpdates {
    let merge = |rows: &BTreeMap<Vec<u8>, Aggregate>, stored: &[Option<Aggregate>]| {
        rows.iter()
            .zip(stored)
            .map(|((key, delta), old)| {
                let mut new = old.unwrap_or_default();
                new.merge(delta);
                (key.clone(), new)
            })
            .collect()
    };
    RowUpdates {
        hourly: merge(&deltas.hourly, stored_hourly),
        monthly: merge(&deltas.monthly, stored_monthly),
    }
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
    let none_hourly = vec![None; deltas.hourly.len()];
    let none_monthly = vec![None; deltas.monthly.len()];
    merge_rows(&deltas, &none_hourly, &none_monthly)
}

#[cfg(test)]
mod tests;
