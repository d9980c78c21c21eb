//! The quota projection in RocksDB: [`QuotaReads`] over the store for the fold, the rows it
//! writes, and the reads the quota endpoints answer from.

use std::collections::BTreeMap;

use crate::catalog::Catalog;
use crate::log::LogEntry;
use crate::log::codec;
use crate::log::keys::{self, MetaKey, QuotaKey, Scope};
use crate::log::store::{Batch, CF_ALERTS, CF_META, CF_QUOTA, Store, StoreError};
use crate::log::values;
use crate::quota::fold::{
    QuotaReads, QuotaWrites, RowsToRead, SeriesLevel, Snapshot, tenants_to_read,
};
use crate::quota::{Alert, LimitKey, QuotaObject};

fn corrupt(cf: &'static str) -> impl Fn(codec::CodecError) -> StoreError {
    move |source| StoreError::Corrupt { cf, source }
}

/// Reads of the fold, straight from the store (what a prefetched [`Snapshot`] falls back to).
pub struct StoreQuotaReads<'a> {
    store: &'a Store,
}

impl<'a> StoreQuotaReads<'a> {
    pub fn new(store: &'a Store) -> Self {
        StoreQuotaReads { store }
    }
}

impl QuotaReads for StoreQuotaReads<'_> {
    type Error = StoreError;

    fn objects(&self, tenant: &str) -> Result<Vec<QuotaObject>, StoreError> {
        list_objects(self.store, tenant, None)
    }

    fn series(&self, key: &[u8]) -> Result<Option<SeriesLevel>, StoreError> {
        decode_series(self.store.get(CF_QUOTA, key)?)
    }

    fn total(&self, key: &[u8]) -> Result<i128, StoreError> {
        decode_total(self.store.get(CF_QUOTA, key)?)
    }

    fn plan(&self, tenant: &str) -> Result<Option<String>, StoreError> {
        Ok(super::billing::load_header(self.store, tenant)?.map(|state| state.plan))
    }

    fn band(&self, key: &[u8]) -> Result<u8, StoreError> {
        Ok(decode_band(self.store.get(CF_QUOTA, key)?))
    }
}

fn decode_series(stored: Option<Vec<u8>>) -> Result<Option<SeriesLevel>, StoreError> {
    stored
        .map(|bytes| SeriesLevel::decode(&bytes).map_err(corrupt(CF_QUOTA)))
        .transpose()
}

fn decode_total(stored: Option<Vec<u8>>) -> Result<i128, StoreError> {
    match stored {
        Some(bytes) => codec::decode_i128(&bytes, "quota level").map_err(corrupt(CF_QUOTA)),
        None => Ok(0),
    }
}

/// A band row: its level band, 0 (below every threshold) when absent.
fn decode_band(stored: Option<Vec<u8>>) -> u8 {
    stored
        .and_then(|bytes| codec::versioned_body(&bytes, "band").ok()?.first().copied())
        .unwrap_or(0)
}

/// Reads what a fold of `entries` needs of the quota projection before it runs: each tenant's
/// objects (a prefix scan per tenant) and every level row it may read (one multi-get per row
/// kind); `plans` are the tenants' plans as the billing fold read them, so no batch decodes a
/// tenant's billing state twice. The fold then reads from the snapshot alone; `reads` answers
/// only what the key lists missed.
pub fn prefetch<'a>(
    reads: &'a StoreQuotaReads<'a>,
    entries: &[(u64, LogEntry)],
    catalog: &Catalog,
    plans: BTreeMap<String, Option<String>>,
) -> Result<Snapshot<'a, StoreQuotaReads<'a>>, StoreError> {
    let store = reads.store;
    let mut snapshot = Snapshot::new(reads);
    snapshot.plans = plans;
    for tenant in tenants_to_read(entries.iter().map(|(_, entry)| entry), catalog) {
        let objects = list_objects(store, &tenant, None)?;
        snapshot.objects.insert(tenant, objects);
    }
    let rows = RowsToRead::of(
        entries.iter().map(|(_, entry)| entry),
        catalog,
        &snapshot.objects,
    );
    let read = |keys: std::collections::BTreeSet<Vec<u8>>| {
        let keys: Vec<Vec<u8>> = keys.into_iter().collect();
        let values = store.multi_get(CF_QUOTA, &keys)?;
        Ok::<_, StoreError>(keys.into_iter().zip(values))
    };
    for (key, stored) in read(rows.series)? {
        snapshot.series.insert(key, decode_series(stored)?);
    }
    for (key, stored) in read(rows.totals)? {
        snapshot.totals.insert(key, decode_total(stored)?);
    }
    for (key, stored) in read(rows.bands)? {
        snapshot.bands.insert(key, decode_band(stored));
    }
    Ok(snapshot)
}

/// Adds the fold's rows to `batch`.
pub fn put_writes(batch: &mut Batch<'_>, writes: &QuotaWrites) {
    for (key, object) in &writes.objects {
        match object {
            Some(object) => batch.put(CF_QUOTA, key, values::encode_quota_object(object)),
            None => batch.delete(CF_QUOTA, key),
        }
    }
    for (key, level) in &writes.series {
        batch.put(CF_QUOTA, key, level.encode());
    }
    for (key, total) in &writes.totals {
        batch.put(CF_QUOTA, key, codec::encode_i128(*total));
    }
    for (key, band) in &writes.bands {
        batch.put(CF_QUOTA, key, [codec::VALUE_VERSION, *band]);
    }
    for (seq, alert) in &writes.alert_rows {
        let value = values::encode_alert(alert);
        batch.put(CF_ALERTS, keys::seq_key(*seq), &value);
        batch.put(
            CF_QUOTA,
            QuotaKey::TenantAlert {
                tenant: &alert.tenant,
                seq: *seq,
            }
            .encode(),
            &value,
        );
    }
}

/// Indexes per tenant the alerts of a store written before that index existed (once: until
/// [`MetaKey::AlertsIndexedPerTenant`] is stored). The mark is written with the index rows, so
/// an indexing that failed is tried again at the next start, even after new alerts were
/// folded. Returns how many it indexed.
pub fn index_stored_alerts(store: &Store) -> Result<usize, StoreError> {
    if store
        .get(CF_META, &MetaKey::AlertsIndexedPerTenant.encode())?
        .is_some()
    {
        return Ok(0);
    }
    let mut batch = store.batch();
    let mut count = 0;
    store.scan_decoding(CF_ALERTS, &[], None, |key, value| {
        let alert = values::decode_alert(value)?;
        if let Some(seq) = keys::decode_seq_key(key) {
            batch.put(
                CF_QUOTA,
                QuotaKey::TenantAlert {
                    tenant: &alert.tenant,
                    seq,
                }
                .encode(),
                value,
            );
            count += 1;
        }
        Ok(true)
    })?;
    batch.put(CF_META, MetaKey::AlertsIndexedPerTenant.encode(), [1]);
    store.commit(batch, true)?;
    Ok(count)
}

/// A tenant's quota objects, of one namespace or all, in (namespace, name) order.
pub fn list_objects(
    store: &Store,
    tenant: &str,
    namespace: Option<&str>,
) -> Result<Vec<QuotaObject>, StoreError> {
    Ok(find_objects(store, tenant, namespace, usize::MAX, |_| true)?.0)
}

/// The first `limit` of a tenant's quota objects that `keep` accepts (one namespace or all,
/// in (namespace, name) order), and whether more were left.
pub fn find_objects(
    store: &Store,
    tenant: &str,
    namespace: Option<&str>,
    limit: usize,
    keep: impl Fn(&QuotaObject) -> bool,
) -> Result<(Vec<QuotaObject>, bool), StoreError> {
    let prefix = match namespace {
        Some(namespace) => QuotaKey::namespace_objects_prefix(tenant, namespace),
        None => QuotaKey::objects_prefix(tenant),
    };
    let mut objects = Vec::new();
    let mut more = false;
    store.scan_prefix_decoding(CF_QUOTA, &prefix, |_, value| {
        let object = values::decode_quota_object(value)?;
        if keep(&object) {
            if objects.len() < limit {
                objects.push(object);
            } else {
                more = true;
            }
        }
        Ok(!more)
    })?;
    Ok((objects, more))
}

pub fn get_object(
    store: &Store,
    tenant: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<QuotaObject>, StoreError> {
    store
        .get(
            CF_QUOTA,
            &QuotaKey::Object {
                tenant,
                namespace,
                name,
            }
            .encode(),
        )?
        .map(|bytes| values::decode_quota_object(&bytes).map_err(corrupt(CF_QUOTA)))
        .transpose()
}

/// The level of `key` in a namespace, or tenant-wide for `None` (micro-units).
pub fn level(
    store: &Store,
    tenant: &str,
    namespace: Option<&str>,
    key: &LimitKey,
) -> Result<i128, StoreError> {
    let scope = namespace.map_or(Scope::Tenant, Scope::Namespace);
    StoreQuotaReads::new(store).total(&QuotaKey::total(tenant, scope, key).encode())
}

/// The stored threshold band of `key` (0–3).
pub fn stored_band(store: &Store, tenant: &str, key: &LimitKey) -> Result<u8, StoreError> {
    StoreQuotaReads::new(store).band(&QuotaKey::band(tenant, key).encode())
}

/// One page of a tenant's alerts.
#[derive(Debug, Default)]
pub struct AlertPage {
    /// (seq, alert), newest first.
    pub alerts: Vec<(u64, Alert)>,
    /// The seq the next page starts at, when more are left.
    pub next: Option<u64>,
}

/// A tenant's alerts newest first, from seq `from_seq` down (`None`: the newest), at most
/// `limit`. Reads only this tenant's index rows.
pub fn list_alerts(
    store: &Store,
    tenant: &str,
    from_seq: Option<u64>,
    limit: usize,
) -> Result<AlertPage, StoreError> {
    let prefix = QuotaKey::tenant_alerts_prefix(tenant);
    let start = from_seq.map_or_else(
        || prefix.clone(),
        |seq| QuotaKey::TenantAlert { tenant, seq }.encode(),
    );
    let end = keys::prefix_successor(&prefix);
    let mut alerts = Vec::new();
    let mut next = None;
    store.scan_decoding(CF_QUOTA, &start, end.as_deref(), |key, value| {
        let Some(QuotaKey::TenantAlert { seq, .. }) = QuotaKey::decode(key) else {
            return Ok(true);
        };
        if alerts.len() == limit {
            next = Some(seq);
            return Ok(false);
        }
        alerts.push((seq, values::decode_alert(value)?));
        Ok(true)
    })?;
    Ok(AlertPage { alerts, next })
}

/// Every alert from `from_seq` on, oldest first, at most `limit` (the webhook deliverer's
/// feed).
pub fn alerts_from(
    store: &Store,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, Alert)>, StoreError> {
    let mut alerts = Vec::new();
    store.scan_decoding(CF_ALERTS, &keys::seq_key(from_seq), None, |key, value| {
        let alert = values::decode_alert(value)?;
        alerts.push((keys::decode_seq_key(key).unwrap_or(0), alert));
        Ok(alerts.len() < limit)
    })?;
    Ok(alerts)
}

/// Levels of every key of a tenant in one scope (namespace, or `*`), micro-units.
pub fn levels(
    store: &Store,
    tenant: &str,
    namespace: Option<&str>,
) -> Result<BTreeMap<(String, String), i128>, StoreError> {
    let prefix = QuotaKey::totals_prefix(tenant, namespace.map_or(Scope::Tenant, Scope::Namespace));
    let mut levels = BTreeMap::new();
    store.scan_prefix_decoding(CF_QUOTA, &prefix, |key, value| {
        let level = codec::decode_i128(value, "quota level")?;
        let rest = key.get(prefix.len()..).unwrap_or_default();
        let mut parts = rest.split(|&b| b == 0);
        let kind = parts
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let name = parts
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if let (Some(kind), Some(name)) = (kind, name) {
            levels.insert((kind, name), level);
        }
        Ok(true)
    })?;
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::QuotaKind;
    use crate::log::store::StoreOptions;
    use crate::quota::Direction;

    fn store(dir: &tempfile::TempDir) -> Store {
        let options = StoreOptions {
            dedup_horizon: std::time::Duration::from_secs(86_400),
            min_free_disk: 0,
        };
        Store::open(dir.path(), &options).unwrap()
    }

    fn alert(tenant: &str, seq: u64) -> Alert {
        Alert {
            id: format!("object:lb:80:raised:{seq}"),
            tenant: tenant.to_owned(),
            key: LimitKey {
                kind: QuotaKind::Object,
                name: "lb".into(),
            },
            threshold_percent: 80,
            direction: Direction::Raised,
            level: 4,
            limit: 5,
            trigger_seq: seq,
            at: 0,
        }
    }

    fn seqs(alerts: &[(u64, Alert)]) -> Vec<u64> {
        alerts.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn alert_lists_page_newest_first_through_one_tenants_rows_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        // Tenant `b`'s alerts interleave with `a`'s; `ab` shares `a`'s first letter.
        let mut writes = QuotaWrites::default();
        for seq in 1..=7 {
            let tenant = ["a", "b", "ab"][(seq % 3) as usize];
            writes.alert_rows.push((seq, alert(tenant, seq)));
        }
        let mut batch = store.batch();
        put_writes(&mut batch, &writes);
        store.commit(batch, false).unwrap();

        let page = list_alerts(&store, "b", None, 2).unwrap();
        assert_eq!((seqs(&page.alerts), page.next), (vec![7, 4], Some(1)));
        assert!(page.alerts.iter().all(|(_, a)| a.tenant == "b"));
        let page = list_alerts(&store, "b", page.next, 2).unwrap();
        assert_eq!((seqs(&page.alerts), page.next), (vec![1], None));
        let page = list_alerts(&store, "a", None, 10).unwrap();
        assert_eq!((seqs(&page.alerts), page.next), (vec![6, 3], None));
        assert_eq!(
            list_alerts(&store, "nobody", None, 10)
                .unwrap()
                .alerts
                .len(),
            0
        );
        // The webhook feed still reads every tenant's alerts in log order.
        assert_eq!(seqs(&alerts_from(&store, 3, 10).unwrap()), [3, 4, 5, 6, 7]);
    }

    #[test]
    fn alerts_stored_before_the_tenant_index_are_indexed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        // What an older build wrote: only the seq-keyed rows.
        let mut batch = store.batch();
        for seq in [3, 9] {
            batch.put(
                CF_ALERTS,
                keys::seq_key(seq),
                values::encode_alert(&alert("a", seq)),
            );
        }
        store.commit(batch, false).unwrap();
        assert_eq!(list_alerts(&store, "a", None, 10).unwrap().alerts.len(), 0);
        assert_eq!(index_stored_alerts(&store).unwrap(), 2);
        assert_eq!(
            seqs(&list_alerts(&store, "a", None, 10).unwrap().alerts),
            [9, 3]
        );
        assert_eq!(index_stored_alerts(&store).unwrap(), 0, "once");
    }

    #[test]
    fn an_indexing_that_failed_is_tried_again_even_after_new_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let mut batch = store.batch();
        batch.put(
            CF_ALERTS,
            keys::seq_key(3),
            values::encode_alert(&alert("a", 3)),
        );
        batch.put(CF_ALERTS, keys::seq_key(4), b"not an alert");
        store.commit(batch, false).unwrap();
        assert!(index_stored_alerts(&store).is_err());
        // A new alert is folded (with its index row) before the next start.
        let mut writes = QuotaWrites::default();
        writes.alert_rows.push((9, alert("a", 9)));
        let mut batch = store.batch();
        put_writes(&mut batch, &writes);
        store.commit(batch, false).unwrap();
        // The damaged row is repaired (say, by a rebuild): the next start indexes the old one.
        let mut batch = store.batch();
        batch.delete(CF_ALERTS, keys::seq_key(4));
        store.commit(batch, false).unwrap();
        assert_eq!(index_stored_alerts(&store).unwrap(), 2);
        assert_eq!(
            seqs(&list_alerts(&store, "a", None, 10).unwrap().alerts),
            [9, 3]
        );
    }

    #[test]
    fn object_lists_stop_at_their_limit_and_counts_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let mut writes = QuotaWrites::default();
        for name in ["q1", "q2", "q3", "q4"] {
            let object = QuotaObject {
                name: name.into(),
                namespace: "system".into(),
                labels: [("keep".to_owned(), (name != "q2").to_string())].into(),
                annotations: BTreeMap::new(),
                description: String::new(),
                disable: false,
                spec: crate::quota::Limits::default(),
                uid: name.into(),
                tenant: "t".into(),
                creation_timestamp: 0,
                modification_timestamp: 0,
                creator_id: String::new(),
            };
            writes.objects.insert(
                QuotaKey::Object {
                    tenant: "t",
                    namespace: "system",
                    name,
                }
                .encode(),
                Some(object),
            );
        }
        let mut batch = store.batch();
        put_writes(&mut batch, &writes);
        store.commit(batch, false).unwrap();
        let keep = |o: &QuotaObject| o.labels.get("keep").is_some_and(|v| v == "true");
        let (objects, more) = find_objects(&store, "t", Some("system"), 2, keep).unwrap();
        let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!((names, more), (vec!["q1", "q3"], true));
        let (objects, more) = find_objects(&store, "t", Some("system"), 3, keep).unwrap();
        assert_eq!((objects.len(), more), (3, false));
        assert_eq!(list_objects(&store, "t", None).unwrap().len(), 4);
        assert!(list_objects(&store, "u", None).unwrap().is_empty());
    }
}
