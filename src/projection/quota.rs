//! The quota projection in RocksDB: [`QuotaReads`] over the store for the fold, the rows it
//! writes, and the reads the quota endpoints answer from.

use std::collections::BTreeMap;

use rocksdb::WriteBatch;

use crate::log::codec;
use crate::log::keys::{self, TENANT_SCOPE};
use crate::log::store::{CF_ALERTS, CF_QUOTA, Store, StoreError};
use crate::quota::fold::{
    QuotaReads, QuotaWrites, SeriesLevel, band_key, object_key, objects_prefix, total_key,
};
use crate::quota::{Alert, LimitKey, QuotaObject};

fn corrupt(cf: &'static str) -> impl Fn(codec::CodecError) -> StoreError {
    move |source| StoreError::Corrupt { cf, source }
}

/// Reads of the fold, straight from the store.
pub struct StoreQuotaReads<'a>(pub &'a Store);

impl QuotaReads for StoreQuotaReads<'_> {
    type Error = StoreError;

    fn objects(&self, tenant: &str) -> Result<Vec<QuotaObject>, StoreError> {
        list_objects(self.0, tenant, None)
    }

    fn series(&self, key: &[u8]) -> Result<Option<SeriesLevel>, StoreError> {
        self.0
            .get(CF_QUOTA, key)?
            .map(|bytes| SeriesLevel::decode(&bytes).map_err(corrupt(CF_QUOTA)))
            .transpose()
    }

    fn total(&self, key: &[u8]) -> Result<i128, StoreError> {
        match self.0.get(CF_QUOTA, key)? {
            Some(bytes) => codec::decode_i128(&bytes, "quota level").map_err(corrupt(CF_QUOTA)),
            None => Ok(0),
        }
    }

    fn plan(&self, tenant: &str) -> Result<Option<String>, StoreError> {
        Ok(super::billing::load_tenant(self.0, tenant)?.map(|state| state.plan))
    }

    fn band(&self, key: &[u8]) -> Result<u8, StoreError> {
        Ok(self
            .0
            .get(CF_QUOTA, key)?
            .and_then(|bytes| codec::versioned_body(&bytes, "band").ok()?.first().copied())
            .unwrap_or(0))
    }
}

/// Adds the fold's rows to `batch`.
pub fn put_writes(store: &Store, batch: &mut WriteBatch, writes: &QuotaWrites) {
    let quota = store.cf(CF_QUOTA);
    let alerts = store.cf(CF_ALERTS);
    for (key, object) in &writes.objects {
        match object {
            Some(object) => batch.put_cf(&quota, key, codec::encode_quota_object(object)),
            None => batch.delete_cf(&quota, key),
        }
    }
    for (key, level) in &writes.series {
        batch.put_cf(&quota, key, level.encode());
    }
    for (key, total) in &writes.totals {
        batch.put_cf(&quota, key, codec::encode_i128(*total));
    }
    for (key, band) in &writes.bands {
        batch.put_cf(&quota, key, [codec::VALUE_VERSION, *band]);
    }
    for (seq, alert) in &writes.alert_rows {
        batch.put_cf(&alerts, keys::seq_key(*seq), codec::encode_alert(alert));
    }
}

/// A tenant's quota objects, of one namespace or all, in (namespace, name) order.
pub fn list_objects(
    store: &Store,
    tenant: &str,
    namespace: Option<&str>,
) -> Result<Vec<QuotaObject>, StoreError> {
    let mut prefix = objects_prefix(tenant);
    if let Some(namespace) = namespace {
        keys::push_str(&mut prefix, namespace);
    }
    let mut objects = Vec::new();
    let mut failure = None;
    store.scan_prefix(CF_QUOTA, &prefix, |_, value| {
        match codec::decode_quota_object(value) {
            Ok(object) => objects.push(object),
            Err(error) => failure = Some(error),
        }
        failure.is_none()
    })?;
    match failure {
        Some(error) => Err(corrupt(CF_QUOTA)(error)),
        None => Ok(objects),
    }
}

pub fn get_object(
    store: &Store,
    tenant: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<QuotaObject>, StoreError> {
    store
        .get(CF_QUOTA, &object_key(tenant, namespace, name))?
        .map(|bytes| codec::decode_quota_object(&bytes).map_err(corrupt(CF_QUOTA)))
        .transpose()
}

/// The level of `key` in a namespace, or tenant-wide for `None` (micro-units).
pub fn level(
    store: &Store,
    tenant: &str,
    namespace: Option<&str>,
    key: &LimitKey,
) -> Result<i128, StoreError> {
    let scope = namespace.unwrap_or(TENANT_SCOPE);
    StoreQuotaReads(store).total(&total_key(tenant, scope, key))
}

/// The stored threshold band of `key` (0–3).
pub fn stored_band(store: &Store, tenant: &str, key: &LimitKey) -> Result<u8, StoreError> {
    StoreQuotaReads(store).band(&band_key(tenant, key))
}

/// Alerts from `from_seq` on that `keep` accepts, oldest first, at most `limit`.
fn scan_alerts(
    store: &Store,
    from_seq: u64,
    limit: usize,
    keep: impl Fn(&Alert) -> bool,
) -> Result<Vec<(u64, Alert)>, StoreError> {
    let mut alerts = Vec::new();
    let mut failure = None;
    store.scan(CF_ALERTS, &keys::seq_key(from_seq), None, |key, value| {
        match codec::decode_alert(value) {
            Ok(alert) if keep(&alert) => {
                alerts.push((keys::decode_seq_key(key).unwrap_or(0), alert));
            }
            Ok(_) => {}
            Err(error) => failure = Some(error),
        }
        failure.is_none() && alerts.len() < limit
    })?;
    match failure {
        Some(error) => Err(corrupt(CF_ALERTS)(error)),
        None => Ok(alerts),
    }
}

/// A tenant's alerts, oldest first, at most `limit`.
pub fn list_alerts(
    store: &Store,
    tenant: &str,
    limit: usize,
) -> Result<Vec<(u64, Alert)>, StoreError> {
    scan_alerts(store, 0, limit, |alert| alert.tenant == tenant)
}

/// Every alert from `from_seq` on, at most `limit` (the webhook deliverer's feed).
pub fn alerts_from(
    store: &Store,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, Alert)>, StoreError> {
    scan_alerts(store, from_seq, limit, |_| true)
}

/// Levels of every key of a tenant in one scope (namespace, or `*`), micro-units.
pub fn levels(
    store: &Store,
    tenant: &str,
    namespace: Option<&str>,
) -> Result<BTreeMap<(String, String), i128>, StoreError> {
    let mut prefix = vec![crate::quota::fold::ROW_TOTAL];
    keys::push_str(&mut prefix, tenant);
    keys::push_str(&mut prefix, namespace.unwrap_or(TENANT_SCOPE));
    let mut levels = BTreeMap::new();
    let mut failure = None;
    store.scan_prefix(CF_QUOTA, &prefix, |key, value| {
        let rest = &key[prefix.len()..];
        let mut parts = rest.split(|&b| b == 0);
        let kind = parts
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let name = parts
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        match (kind, name, codec::decode_i128(value, "quota level")) {
            (Some(kind), Some(name), Ok(level)) => {
                levels.insert((kind, name), level);
            }
            (_, _, Err(error)) => failure = Some(error),
            _ => {}
        }
        failure.is_none()
    })?;
    match failure {
        Some(error) => Err(corrupt(CF_QUOTA)(error)),
        None => Ok(levels),
    }
}
