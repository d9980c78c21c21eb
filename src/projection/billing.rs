//! The billing projection in RocksDB: per-tenant billing state, per-period usage rows, and the
//! fold that keeps them (usage attributed to its billing period; a closing period issues its
//! invoice, with adjustments for late usage of invoiced periods).

use std::collections::{BTreeMap, BTreeSet};

use super::Aggregate;
use crate::billing::{self, IssueInput, TenantBilling};
use crate::catalog::Catalog;
use crate::event::UsageEvent;
use crate::log::LogEntry;
use crate::log::codec;
use crate::log::keys::push_str;
use crate::log::store::{Batch, CF_BILLING, Store, StoreError};
use crate::time::UnixMicros;

const ROW_TENANT: u8 = b't';
const ROW_USAGE: u8 = b'u';
const ROW_TRANSITION: u8 = b'x';

fn corrupt(source: codec::CodecError) -> StoreError {
    StoreError::Corrupt {
        cf: CF_BILLING,
        source,
    }
}

fn tenant_key(tenant: &str) -> Vec<u8> {
    let mut key = vec![ROW_TENANT];
    push_str(&mut key, tenant);
    key
}

fn period_prefix(tenant: &str, period_uid: &str) -> Vec<u8> {
    let mut key = vec![ROW_USAGE];
    push_str(&mut key, tenant);
    push_str(&mut key, period_uid);
    key
}

fn usage_key(tenant: &str, period_uid: &str, event: &UsageEvent) -> Vec<u8> {
    let mut key = period_prefix(tenant, period_uid);
    for part in [
        &event.namespace,
        &event.metric_label,
        &event.object_name,
        &event.deployment,
        &event.container,
    ] {
        push_str(&mut key, part);
    }
    key
}

fn transition_key(id: &str) -> Vec<u8> {
    let mut key = vec![ROW_TRANSITION];
    key.extend_from_slice(id.as_bytes());
    key
}

pub fn load_tenant(store: &Store, tenant: &str) -> Result<Option<TenantBilling>, StoreError> {
    store
        .get(CF_BILLING, &tenant_key(tenant))?
        .map(|bytes| codec::decode_billing(&bytes).map_err(corrupt))
        .transpose()
}

/// Every tenant's billing state (the billing clock's round).
pub fn all_tenants(store: &Store) -> Result<Vec<TenantBilling>, StoreError> {
    let mut tenants = Vec::new();
    store.scan_prefix_decoding(CF_BILLING, &[ROW_TENANT], |_, value| {
        tenants.push(codec::decode_billing(value)?);
        Ok(true)
    })?;
    Ok(tenants)
}

/// The tenant a plan transition belongs to.
pub fn transition_tenant(store: &Store, id: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .get(CF_BILLING, &transition_key(id))?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Each meter's value over a period (summed over series), micro-units: stored rows merged
/// with `pending` deltas not yet written.
pub fn period_values(
    store: &Store,
    catalog: &Catalog,
    tenant: &str,
    period_uid: &str,
    pending: &BTreeMap<Vec<u8>, Aggregate>,
) -> Result<BTreeMap<String, i128>, StoreError> {
    let prefix = period_prefix(tenant, period_uid);
    values_under(store, catalog, prefix.len(), &prefix, pending)
}

/// Each meter's value over a period in one namespace (`None`: every namespace), micro-units:
/// the rows the period's invoice bills, so `current_usage` of a billing period and its
/// invoice agree to the unit.
pub fn period_usage(
    store: &Store,
    catalog: &Catalog,
    tenant: &str,
    period_uid: &str,
    namespace: Option<&str>,
) -> Result<BTreeMap<String, i128>, StoreError> {
    let period = period_prefix(tenant, period_uid);
    let mut prefix = period.clone();
    if let Some(namespace) = namespace {
        push_str(&mut prefix, namespace);
    }
    values_under(store, catalog, period.len(), &prefix, &BTreeMap::new())
}

/// Per-meter values of the usage rows under `prefix` (which starts with a period prefix of
/// `period_len` bytes) and of the `pending` deltas under it.
fn values_under(
    store: &Store,
    catalog: &Catalog,
    period_len: usize,
    prefix: &[u8],
    pending: &BTreeMap<Vec<u8>, Aggregate>,
) -> Result<BTreeMap<String, i128>, StoreError> {
    let mut rows: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    store.scan_prefix_decoding(CF_BILLING, prefix, |key, value| {
        rows.insert(key.to_vec(), Aggregate::decode(value)?);
        Ok(true)
    })?;
    for (key, delta) in pending.range(prefix.to_vec()..) {
        if !key.starts_with(prefix) {
            break;
        }
        rows.entry(key.clone()).or_default().merge(delta);
    }
    let mut values = BTreeMap::new();
    for (key, aggregate) in rows {
        // namespace \0 metric \0 …: the metric is the second part after the period prefix.
        let Some(metric) = key
            .get(period_len..)
            .unwrap_or_default()
            .split(|&b| b == 0)
            .nth(1)
            .map(|m| String::from_utf8_lossy(m).into_owned())
        else {
            continue;
        };
        let Some(meter) = catalog.meter(&metric) else {
            continue;
        };
        *values.entry(metric).or_insert(0) += aggregate.value(meter.aggregation);
    }
    Ok(values)
}

/// A plan change the quota fold must hear of.
pub struct PlanChange {
    pub tenant: String,
    pub plan: String,
    pub seq: u64,
    pub at: UnixMicros,
}

/// Folds a batch of log entries into billing state.
pub struct BillingFold<'a> {
    store: &'a Store,
    catalog: &'a Catalog,
    due_after: i64,
    tenants: BTreeMap<String, TenantBilling>,
    /// Tenants whose stored state was read (found or not), so none is read twice.
    fetched: BTreeSet<String>,
    /// Tenants whose state differs from the stored one: only these are written back (most
    /// batches only read a tenant's periods to file its usage).
    changed: BTreeSet<String>,
    deltas: BTreeMap<Vec<u8>, Aggregate>,
    transitions: BTreeMap<String, String>,
}

impl<'a> BillingFold<'a> {
    pub fn new(store: &'a Store, catalog: &'a Catalog, due_after: i64) -> Self {
        BillingFold {
            store,
            catalog,
            due_after,
            tenants: BTreeMap::new(),
            fetched: BTreeSet::new(),
            changed: BTreeSet::new(),
            deltas: BTreeMap::new(),
            transitions: BTreeMap::new(),
        }
    }

    /// Reads the stored state of every tenant in `tenants` with one multi-get, before the
    /// fold: a batch reads each tenant's state once, whatever its number of entries.
    pub fn prefetch<'t>(
        &mut self,
        tenants: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), StoreError> {
        let wanted: Vec<String> = tenants
            .into_iter()
            .filter(|tenant| !self.fetched.contains(*tenant))
            .map(str::to_owned)
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        let keys: Vec<Vec<u8>> = wanted.iter().map(|tenant| tenant_key(tenant)).collect();
        for (tenant, stored) in wanted
            .into_iter()
            .zip(self.store.multi_get(CF_BILLING, &keys)?)
        {
            if let Some(bytes) = stored {
                let state = codec::decode_billing(&bytes).map_err(corrupt)?;
                self.tenants.insert(tenant.clone(), state);
            }
            self.fetched.insert(tenant);
        }
        Ok(())
    }

    /// Each prefetched tenant's plan as stored before this batch (`None`: never seen): what
    /// the quota fold checks against until a plan change in the batch says otherwise.
    pub fn stored_plans(&self) -> BTreeMap<String, Option<String>> {
        self.fetched
            .iter()
            .map(|tenant| {
                let plan = self.tenants.get(tenant).map(|state| state.plan.clone());
                (tenant.clone(), plan)
            })
            .collect()
    }

    fn tenant(&mut self, tenant: &str, at: UnixMicros) -> Result<&mut TenantBilling, StoreError> {
        if !self.tenants.contains_key(tenant) {
            let stored = if self.fetched.contains(tenant) {
                None
            } else {
                load_tenant(self.store, tenant)?
            };
            let state = match stored {
                Some(state) => state,
                None => {
                    self.changed.insert(tenant.to_owned());
                    TenantBilling::new(tenant, self.catalog, at)
                }
            };
            self.tenants.insert(tenant.to_owned(), state);
        }
        self.tenants.get_mut(tenant).ok_or(StoreError::Closed)
    }

    /// Folds one entry; a plan change is returned for the quota fold.
    pub fn fold(&mut self, seq: u64, entry: &LogEntry) -> Result<Option<PlanChange>, StoreError> {
        match entry {
            LogEntry::UsageRecorded { event, .. } => {
                let catalog = self.catalog;
                let state = self.tenant(&event.tenant, event.timestamp)?;
                let (period_uid, invoiced) = state.period_for(event.timestamp, catalog);
                if invoiced && state.late_periods.insert(period_uid.clone()) {
                    self.changed.insert(event.tenant.clone());
                }
                let key = usage_key(&event.tenant, &period_uid, event);
                self.deltas
                    .entry(key)
                    .or_default()
                    .merge(&Aggregate::of(event));
                Ok(None)
            }
            LogEntry::Billing { tenant, at, change } => {
                if let billing::BillingChange::TransitionRequested { id, .. } = change {
                    self.transitions.insert(id.clone(), tenant.clone());
                }
                let catalog = self.catalog;
                let state = self.tenant(tenant, *at)?;
                let applied = billing::apply(state, change, *at, catalog);
                self.changed.insert(tenant.clone());
                if let Some(period) = applied.closed_period {
                    self.issue(tenant, &period, *at)?;
                }
                Ok(applied.plan_changed.then(|| PlanChange {
                    tenant: tenant.clone(),
                    plan: self
                        .tenants
                        .get(tenant)
                        .map(|s| s.plan.clone())
                        .unwrap_or_default(),
                    seq,
                    at: *at,
                }))
            }
            _ => Ok(None),
        }
    }

    fn issue(
        &mut self,
        tenant: &str,
        period: &billing::Period,
        at: UnixMicros,
    ) -> Result<(), StoreError> {
        let values = period_values(self.store, self.catalog, tenant, &period.uid, &self.deltas)?;
        let late: Vec<String> = self
            .tenants
            .get(tenant)
            .map(|s| s.late_periods.iter().cloned().collect())
            .unwrap_or_default();
        let mut late_values = BTreeMap::new();
        for uid in late.into_iter().filter(|uid| *uid != period.uid) {
            let values = period_values(self.store, self.catalog, tenant, &uid, &self.deltas)?;
            late_values.insert(uid, values);
        }
        let catalog = self.catalog;
        let due_after = self.due_after;
        let state = self.tenant(tenant, at)?;
        billing::issue_invoice(
            state,
            IssueInput {
                period,
                values,
                late_values,
                issued_at: at,
                due_after,
            },
            catalog,
        );
        Ok(())
    }

    /// Adds the fold's rows to `batch`.
    pub fn write(self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = self.deltas.keys().cloned().collect();
        let stored = self.store.multi_get(CF_BILLING, &keys)?;
        for ((key, delta), stored) in self.deltas.iter().zip(stored) {
            let mut row = match stored {
                Some(bytes) => Aggregate::decode(&bytes).map_err(corrupt)?,
                None => Aggregate::default(),
            };
            row.merge(delta);
            batch.put(CF_BILLING, key, row.encode());
        }
        for (tenant, state) in self
            .tenants
            .iter()
            .filter(|(tenant, _)| self.changed.contains(*tenant))
        {
            batch.put(CF_BILLING, tenant_key(tenant), codec::encode_billing(state));
        }
        for (id, tenant) in &self.transitions {
            batch.put(CF_BILLING, transition_key(id), tenant.as_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventSource;
    use crate::log::store::StoreOptions;
    use crate::units::Micros;

    fn usage(id: &str, namespace: &str, at: UnixMicros, quantity: i64) -> LogEntry {
        LogEntry::UsageRecorded {
            event: UsageEvent {
                tenant: "t".into(),
                id: id.into(),
                namespace: namespace.into(),
                metric_label: "http_lb_requests".into(),
                quantity: Micros(quantity),
                timestamp: at,
                object_name: String::new(),
                deployment: String::new(),
                container: String::new(),
                labels: BTreeMap::new(),
            },
            source: EventSource::Http { received_at: 0 },
            recorded_at: 0,
        }
    }

    #[test]
    fn period_usage_reads_one_namespace_or_all_of_the_invoiced_rows() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            dedup_horizon: std::time::Duration::from_secs(86_400),
            min_free_disk: 0,
        };
        let store = Store::open(dir.path(), &options).unwrap();
        let catalog = Catalog::builtin().unwrap();
        let at = crate::time::parse_rfc3339("2026-03-10T10:15:00Z").unwrap();
        let mut fold = BillingFold::new(&store, &catalog, 0);
        for (seq, entry) in [
            usage("a", "shop", at, 3_000_000),
            usage("b", "blog", at + 1, 4_000_000),
            usage("c", "shop", at + 2, 5_000_000),
        ]
        .iter()
        .enumerate()
        {
            fold.fold(seq as u64, entry).unwrap();
        }
        let mut batch = store.batch();
        fold.write(&mut batch).unwrap();
        store.commit(batch, false).unwrap();
        let period = load_tenant(&store, "t")
            .unwrap()
            .unwrap()
            .open_period()
            .uid
            .clone();
        let read = |namespace| period_usage(&store, &catalog, "t", &period, namespace).unwrap();
        assert_eq!(read(Some("shop"))["http_lb_requests"], 8_000_000);
        assert_eq!(read(Some("blog"))["http_lb_requests"], 4_000_000);
        assert_eq!(read(None)["http_lb_requests"], 12_000_000);
        // `sho` is not a prefix of `shop`'s rows: namespaces end at their terminator.
        assert!(read(Some("sho")).is_empty());
        assert_eq!(
            read(None),
            period_values(&store, &catalog, "t", &period, &BTreeMap::new()).unwrap()
        );
    }
}
