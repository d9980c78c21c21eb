//! Reads of projection rows for the API (blocking; callers use `spawn_blocking`).

use super::Aggregate;
use crate::log::codec;
use crate::log::keys::{self, Scope, SeriesRow};
use crate::log::store::{Store, StoreError};

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
    let start = keys::bucket_prefix(tenant, scope, from_bucket);
    let end = keys::bucket_prefix(tenant, scope, to_bucket);
    let mut failure = None;
    store.scan(cf, &start, Some(&end), |key, value| {
        match (keys::decode_series_key(key), Aggregate::decode(value)) {
            (Some(row), Ok(aggregate)) => visit(row, aggregate),
            (None, _) => {
                failure = Some(StoreError::Corrupt {
                    cf,
                    source: codec::CodecError {
                        what: "series key",
                        reason: format!("{} bytes", key.len()),
                    },
                })
            }
            (_, Err(source)) => failure = Some(StoreError::Corrupt { cf, source }),
        }
        failure.is_none()
    })?;
    failure.map_or(Ok(()), Err)
}
