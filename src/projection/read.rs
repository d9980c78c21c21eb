//! Reads of projection rows for the API (blocking; callers use `spawn_blocking`).

use super::Aggregate;
use crate::audit::AuditRecord;
use crate::log::codec;
use crate::log::keys::{self, AuditKey, Scope, SeriesKey, SeriesRow};
use crate::log::store::{CF_AUDIT, CF_HOURLY, Store, StoreError};
use crate::log::values;

/// Rows of `cf` (`hourly` or `monthly`) for one tenant and scope with buckets in `[from, to)`.
pub fn series_rows(
    store: &Store,
    cf: &'static str,
    tenant: &str,
    scope: Scope<'_>,
    from_bucket: u32,
    to_bucket: u32,
) -> Result<Vec<(SeriesRow, Aggregate)>, StoreError> {
    let mut rows = Vec::new();
    visit_series_rows(
        store,
        cf,
        tenant,
        scope,
        from_bucket,
        to_bucket,
        |row, aggregate| {
            rows.push((row, aggregate));
        },
    )?;
    Ok(rows)
}

/// Calls `visit` with each row [`series_rows`] would return, in key order, without holding
/// them: a long range over many series is folded as it is read.
pub fn visit_series_rows(
    store: &Store,
    cf: &'static str,
    tenant: &str,
    scope: Scope<'_>,
    from_bucket: u32,
    to_bucket: u32,
    mut visit: impl FnMut(SeriesRow, Aggregate),
) -> Result<(), StoreError> {
    let start = SeriesKey::bucket_prefix(tenant, scope, from_bucket);
    let end = SeriesKey::bucket_prefix(tenant, scope, to_bucket);
    store.scan_decoding(cf, &start, Some(&end), |key, value| {
        let aggregate = Aggregate::decode(value)?;
        let row = keys::decode_series_key(key).ok_or_else(|| codec::CodecError {
            what: "series key",
            reason: format!("{} bytes", key.len()),
        })?;
        visit(row, aggregate);
        Ok(true)
    })
}

/// [`visit_series_rows`] of the hourly rows: hours in `[from_hour, to_hour)`.
pub fn visit_hourly_rows(
    store: &Store,
    tenant: &str,
    scope: Scope<'_>,
    from_hour: u32,
    to_hour: u32,
    visit: impl FnMut(SeriesRow, Aggregate),
) -> Result<(), StoreError> {
    visit_series_rows(store, CF_HOURLY, tenant, scope, from_hour, to_hour, visit)
}

/// [`series_rows`] of the hourly rows.
pub fn hourly_rows(
    store: &Store,
    tenant: &str,
    scope: Scope<'_>,
    from_hour: u32,
    to_hour: u32,
) -> Result<Vec<(SeriesRow, Aggregate)>, StoreError> {
    series_rows(store, CF_HOURLY, tenant, scope, from_hour, to_hour)
}

/// Up to `limit` of `tenant`'s audit records older than the one at `before_seq`, newest
/// first, that `keep` accepts, with the seq of the last one returned. Reads only as far as
/// the page needs: a tenant's trail is unbounded.
pub fn audit_page(
    store: &Store,
    tenant: &str,
    before_seq: u64,
    limit: usize,
    mut keep: impl FnMut(&AuditRecord) -> bool,
) -> Result<(Vec<AuditRecord>, Option<u64>), StoreError> {
    let start = AuditKey::tenant_prefix(tenant);
    let end = AuditKey {
        tenant,
        seq: before_seq,
    }
    .encode();
    let mut records = Vec::new();
    let mut last_seq = None;
    store.scan_reverse_decoding(CF_AUDIT, &start, &end, |key, value| {
        let record = values::decode_audit(value)?;
        if keep(&record) {
            last_seq = AuditKey::decode(key).map(|key| key.seq);
            records.push(record);
        }
        Ok(records.len() < limit)
    })?;
    Ok((records, last_seq))
}
