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
    let rows = rows_under(store, prefix)?;
    Ok(values_of(rows, catalog, period_len, prefix, pending))
}

/// The stored usage rows under `prefix`.
fn rows_under(store: &Store, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Aggregate>, StoreError> {
    let mut rows: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    store.scan_prefix_decoding(CF_BILLING, prefix, |key, value| {
        rows.insert(key.to_vec(), Aggregate::decode(value)?);
        Ok(true)
    })?;
    Ok(rows)
}

/// Per-meter values of `rows` (stored usage rows under `prefix`) merged with the `pending`
/// deltas under it.
fn values_of(
    mut rows: BTreeMap<Vec<u8>, Aggregate>,
    catalog: &Catalog,
    period_len: usize,
    prefix: &[u8],
    pending: &BTreeMap<Vec<u8>, Aggregate>,
) -> BTreeMap<String, i128> {
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
    values
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
    /// The fetched tenants that had a stored state.
    stored: BTreeSet<String>,
    /// Stored usage rows of the periods an invoice of this batch may bill, by (tenant, period
    /// uid), read before the fold ([`BillingFold::prefetch_periods`]).
    period_rows: BTreeMap<(String, String), BTreeMap<Vec<u8>, Aggregate>>,
    /// Period rows the fold needed and the prefetch had not read (read then; 0 when the
    /// prefetch foresaw every invoice).
    misses: u64,
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
            stored: BTreeSet::new(),
            period_rows: BTreeMap::new(),
            misses: 0,
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
                self.stored.insert(tenant.clone());
            }
            self.fetched.insert(tenant);
        }
        Ok(())
    }

    /// Reads, before the fold, the stored usage rows of every period an invoice issued by
    /// `entries` may bill: for each tenant whose period may close (a period close, a plan
    /// transition), its open period, the one after it, its late periods, the period a close
    /// names, and the invoiced periods this batch's usage falls in. Call after
    /// [`BillingFold::prefetch`].
    pub fn prefetch_periods(&mut self, entries: &[(u64, LogEntry)]) -> Result<(), StoreError> {
        let closing: BTreeSet<&str> = entries
            .iter()
            .filter_map(|(_, entry)| match entry {
                LogEntry::Billing {
                    tenant,
                    change:
                        billing::BillingChange::PeriodClosed { .. }
                        | billing::BillingChange::TransitionRequested { .. }
                        | billing::BillingChange::TransitionApproved { .. },
                    ..
                } => Some(tenant.as_str()),
                _ => None,
            })
            .collect();
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        for (_, entry) in entries {
            match entry {
                LogEntry::Billing {
                    tenant,
                    change: billing::BillingChange::PeriodClosed { period_uid },
                    ..
                } => {
                    wanted.insert((tenant.clone(), period_uid.clone()));
                }
                LogEntry::UsageRecorded { event, .. }
                    if closing.contains(event.tenant.as_str()) =>
                {
                    if let Some(state) = self.tenants.get(&event.tenant) {
                        let (uid, invoiced) = state.period_for(event.timestamp, self.catalog);
                        if invoiced {
                            wanted.insert((event.tenant.clone(), uid));
                        }
                    }
                }
                _ => {}
            }
        }
        for tenant in &closing {
            // A tenant without a stored state has no stored usage rows either (both are
            // written by the batch that first sees it): nothing to read.
            let Some(state) = self.tenants.get(*tenant) else {
                continue;
            };
            let open = state.open_period();
            wanted.insert((state.tenant.clone(), open.uid.clone()));
            wanted.insert((
                state.tenant.clone(),
                billing::period_uid(&state.tenant, open.end),
            ));
            for uid in &state.late_periods {
                wanted.insert((state.tenant.clone(), uid.clone()));
            }
        }
        for (tenant, uid) in wanted {
            let rows = rows_under(self.store, &period_prefix(&tenant, &uid))?;
            self.period_rows.insert((tenant, uid), rows);
        }
        Ok(())
    }

    /// Period rows the fold read that [`BillingFold::prefetch_periods`] had not.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Each meter's value over a period: its prefetched rows (none for a tenant first seen
    /// in this batch) with the batch's deltas so far; read from the store only if the
    /// prefetch did not foresee it.
    fn period_values(
        &mut self,
        tenant: &str,
        uid: &str,
    ) -> Result<BTreeMap<String, i128>, StoreError> {
        let prefix = period_prefix(tenant, uid);
        let rows = match self.period_rows.get(&(tenant.to_owned(), uid.to_owned())) {
            Some(rows) => rows.clone(),
            None if self.fetched.contains(tenant) && !self.stored.contains(tenant) => {
                BTreeMap::new()
            }
            None => {
                self.misses = self.misses.saturating_add(1);
                rows_under(self.store, &prefix)?
            }
        };
        Ok(values_of(
            rows,
            self.catalog,
            prefix.len(),
            &prefix,
            &self.deltas,
        ))
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
        let values = self.period_values(tenant, &period.uid)?;
        let late: Vec<String> = self
            .tenants
            .get(tenant)
            .map(|s| s.late_periods.iter().cloned().collect())
            .unwrap_or_default();
        let mut late_values = BTreeMap::new();
        for uid in late.into_iter().filter(|uid| *uid != period.uid) {
            let values = self.period_values(tenant, &uid)?;
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

    /// A store in a temporary directory (kept alive by the returned guard).
    fn test_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            dedup_horizon: std::time::Duration::from_secs(86_400),
            min_free_disk: 0,
        };
        let store = Store::open(dir.path(), &options).unwrap();
        (dir, store)
    }

    fn change(at: UnixMicros, change: billing::BillingChange) -> LogEntry {
        LogEntry::Billing {
            tenant: "t".into(),
            at,
            change,
        }
    }

    fn transition(id: &str, to_plan: &str) -> billing::BillingChange {
        billing::BillingChange::TransitionRequested {
            id: id.into(),
            to_plan: to_plan.into(),
            requires_approval: false,
            addons: Vec::new(),
            domain: String::new(),
        }
    }

    /// Folds `batches` one after another into a new store, prefetching each batch's period
    /// rows or not; the tenant's final state and each batch's reads the prefetch missed.
    fn fold_batches(prefetch: bool, batches: &[Vec<LogEntry>]) -> (TenantBilling, Vec<u64>) {
        let (_dir, store) = test_store();
        let catalog = Catalog::builtin().unwrap();
        let mut seq = 0;
        let mut misses = Vec::new();
        for entries in batches {
            let numbered: Vec<(u64, LogEntry)> = entries
                .iter()
                .map(|entry| {
                    seq += 1;
                    (seq, entry.clone())
                })
                .collect();
            let mut fold = BillingFold::new(&store, &catalog, 0);
            fold.prefetch(numbered.iter().map(|(_, entry)| entry.tenant()))
                .unwrap();
            if prefetch {
                fold.prefetch_periods(&numbered).unwrap();
            }
            for (seq, entry) in &numbered {
                fold.fold(*seq, entry).unwrap();
            }
            misses.push(fold.misses());
            let mut batch = store.batch();
            fold.write(&mut batch).unwrap();
            store.commit(batch, false).unwrap();
        }
        (load_tenant(&store, "t").unwrap().unwrap(), misses)
    }

    #[test]
    fn invoices_of_a_batch_bill_only_prefetched_rows_and_bill_the_same() {
        let at = |text: &str| crate::time::parse_rfc3339(text).unwrap();
        let upgrade = at("2026-03-12T00:00:00Z");
        let batches = vec![
            vec![
                usage("a", "shop", at("2026-03-10T10:00:00Z"), 3_000_000),
                change(upgrade, transition("x1", "individual-plan")),
                usage("b", "shop", at("2026-03-13T10:00:00Z"), 4_000_000),
            ],
            vec![
                // Late for the period the upgrade closed and invoiced.
                usage("c", "blog", at("2026-03-11T10:00:00Z"), 5_000_000),
                usage("d", "shop", at("2026-03-20T10:00:00Z"), 6_000_000),
                change(
                    at("2026-04-01T00:00:00Z"),
                    billing::BillingChange::PeriodClosed {
                        period_uid: billing::period_uid("t", upgrade),
                    },
                ),
                usage("e", "shop", at("2026-04-02T10:00:00Z"), 7_000_000),
            ],
            vec![
                // Late for the invoiced rest of March.
                usage(
                    "f",
                    "shop",
                    at("2026-03-25T10:00:00Z"),
                    3_000_000_000_000_000,
                ),
                usage("g", "shop", at("2026-04-02T11:00:00Z"), 9_000_000),
                change(at("2026-04-03T00:00:00Z"), transition("x2", "free-plan")),
            ],
        ];
        let (prefetched, misses) = fold_batches(true, &batches);
        assert_eq!(misses, [0, 0, 0], "every invoice billed prefetched rows");
        let (read_as_needed, _) = fold_batches(false, &batches);
        assert_eq!(prefetched, read_as_needed);
        // Periods: free to the upgrade, the rest of March, April to the downgrade, free again.
        // The free stretch bills nothing; April's invoice adjusts March for the late usage.
        assert_eq!(prefetched.periods.len(), 4, "{:?}", prefetched.periods);
        let kinds: Vec<Vec<billing::LineKind>> = prefetched
            .invoices
            .iter()
            .map(|invoice| invoice.lines.iter().map(|line| line.kind).collect())
            .collect();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert!(
            kinds[1].contains(&billing::LineKind::Adjustment),
            "{kinds:?}"
        );
    }

    #[test]
    fn period_usage_reads_one_namespace_or_all_of_the_invoiced_rows() {
        let (_dir, store) = test_store();
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
