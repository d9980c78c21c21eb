//! The billing fold: usage attributed to its billing period; a closing period issues its
//! invoice, with adjustments for late usage of invoiced periods. It reads a tenant's header and
//! only the history rows its batch needs, all before the fold: no batch decodes a tenant's
//! whole history.

use std::collections::{BTreeMap, BTreeSet};

use super::read::rows_under;
use super::{corrupt, decode_header, decode_invoice, decode_period_row};
use crate::billing::{self, IssueInput, TenantBilling};
use crate::catalog::Catalog;
use crate::log::LogEntry;
use crate::log::keys::{BillingKey, SeriesRef};
use crate::log::store::{Batch, CF_BILLING, Store, StoreError};
use crate::projection::Aggregate;
use crate::projection::billing_rows::{PendingRows, rows_of, values_of};
use crate::time::UnixMicros;

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
    /// Each tenant's header and the history rows read for this batch, folded.
    tenants: BTreeMap<String, TenantBilling>,
    /// Tenants whose stored header was read (found or not), so none is read twice.
    fetched: BTreeSet<String>,
    /// The fetched tenants that had a stored header.
    stored: BTreeSet<String>,
    /// The history rows read, as stored: a tenant's rows are written back only where they
    /// changed.
    read_rows: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Stored usage rows of the periods an invoice of this batch may bill, by (tenant, period
    /// uid), read before the fold ([`BillingFold::prefetch_history`]).
    period_rows: BTreeMap<(String, String), BTreeMap<Vec<u8>, Aggregate>>,
    /// Rows the fold needed and the prefetch had not read (read then; 0 when the prefetch
    /// foresaw every one).
    misses: u64,
    /// Tenants whose state differs from the stored one: only these are written back (most
    /// batches only read a tenant's periods to file its usage).
    changed: BTreeSet<String>,
    /// Usage deltas not yet in the store: this batch's, and in a rebuild those gathered
    /// over earlier batches too ([`BillingFold::with_pending`]); an invoice adds them to the
    /// stored rows it reads.
    deltas: PendingRows,
    /// The usage key being looked up: built in place, copied only for a new row.
    scratch: Vec<u8>,
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
            read_rows: BTreeMap::new(),
            period_rows: BTreeMap::new(),
            misses: 0,
            changed: BTreeSet::new(),
            deltas: PendingRows::default(),
            scratch: Vec::new(),
            transitions: BTreeMap::new(),
        }
    }

    /// Starts from `pending`: usage deltas of earlier batches not yet written (a rebuild
    /// writes them later as table files), so invoices see them.
    pub fn with_pending(mut self, pending: PendingRows) -> Self {
        self.deltas = pending;
        self
    }

    /// Takes the usage deltas (the pending ones and this batch's) out, for the caller to
    /// write: [`BillingFold::write`] then writes none.
    pub fn take_pending(&mut self) -> PendingRows {
        std::mem::take(&mut self.deltas)
    }

    /// Reads the stored header of every tenant in `tenants` with one multi-get, before the
    /// fold: a batch reads each tenant's header once, whatever its number of entries.
    pub fn prefetch<'t>(
        &mut self,
        tenants: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), StoreError> {
        // Distinct first, then owned: a batch names each tenant thousands of times.
        let wanted: Vec<String> = tenants
            .into_iter()
            .filter(|tenant| !self.fetched.contains(*tenant))
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let keys: Vec<Vec<u8>> = wanted
            .iter()
            .map(|tenant| BillingKey::Header { tenant }.encode())
            .collect();
        for (tenant, stored) in wanted
            .into_iter()
            .zip(self.store.multi_get(CF_BILLING, &keys)?)
        {
            if let Some(bytes) = stored {
                let state = decode_header(&bytes).map_err(corrupt)?;
                self.tenants.insert(tenant.clone(), state);
                self.stored.insert(tenant.clone());
            }
            self.fetched.insert(tenant);
        }
        Ok(())
    }

    /// Reads, before the fold, the history and usage rows `entries` need, after
    /// [`BillingFold::prefetch`]:
    /// - the closed period holding each late usage event (one lookup per period, not per
    ///   event), the late periods an invoice adjusts, and each invoice marked paid;
    /// - the stored usage rows of every period an invoice issued by `entries` may bill: for
    ///   each tenant whose period may close (a period close, a plan transition), its open
    ///   period, the one after it, its late periods, the period a close names, and the
    ///   invoiced periods this batch's usage falls in.
    pub fn prefetch_history(&mut self, entries: &[(u64, LogEntry)]) -> Result<(), StoreError> {
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
        let mut history_keys: BTreeSet<(String, Vec<u8>)> = BTreeSet::new();
        for (_, entry) in entries {
            match entry {
                LogEntry::UsageRecorded { event, .. } => {
                    let unloaded = self
                        .tenants
                        .get(&event.tenant)
                        .and_then(|state| state.unloaded_period_at(event.timestamp));
                    if let Some(start) = unloaded {
                        self.read_period_at(&event.tenant, start)?;
                    }
                }
                LogEntry::Billing {
                    tenant,
                    change: billing::BillingChange::InvoicePaid { invoice, .. },
                    ..
                } if self.stored.contains(tenant) => {
                    if let Some(number) = billing::invoice_number(invoice) {
                        history_keys.insert((
                            tenant.clone(),
                            BillingKey::Invoice { tenant, number }.encode(),
                        ));
                    }
                }
                _ => {}
            }
        }
        for tenant in &closing {
            if let Some(state) = self.tenants.get(*tenant) {
                for start in state.late_periods.values() {
                    history_keys.insert((
                        tenant.to_string(),
                        BillingKey::Period {
                            tenant,
                            start: *start,
                        }
                        .encode(),
                    ));
                }
            }
        }
        self.read_history_rows(history_keys.into_iter().collect())?;

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
                        let period = state.period_for(event.timestamp, self.catalog);
                        if period.invoiced {
                            wanted.insert((event.tenant.clone(), period.uid.into_owned()));
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
            for uid in state.late_periods.keys() {
                wanted.insert((state.tenant.clone(), uid.clone()));
            }
        }
        for (tenant, uid) in wanted {
            let rows = rows_under(self.store, &BillingKey::usage_of_period(&tenant, &uid))?;
            self.period_rows.insert((tenant, uid), rows);
        }
        Ok(())
    }

    /// Rows the fold read that [`BillingFold::prefetch_history`] had not.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Reads the last closed period of `tenant` starting at or before `at` into its state.
    fn read_period_at(&mut self, tenant: &str, at: UnixMicros) -> Result<(), StoreError> {
        let prefix = BillingKey::periods(tenant);
        let end = BillingKey::Period {
            tenant,
            start: at.saturating_add(1),
        }
        .encode();
        let mut found = None;
        self.store
            .scan_reverse_decoding(CF_BILLING, &prefix, &end, |key, value| {
                found = Some((key.to_vec(), value.to_vec()));
                Ok(false)
            })?;
        match found {
            Some((key, value)) => self.load_row(tenant, key, value),
            None => Ok(()),
        }
    }

    /// Reads history rows (closed periods, invoices) into their tenants' states, with one
    /// multi-get: (tenant, key) pairs.
    fn read_history_rows(&mut self, wanted: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        let wanted: Vec<(String, Vec<u8>)> = wanted
            .into_iter()
            .filter(|(_, key)| !self.read_rows.contains_key(key))
            .collect();
        let keys: Vec<Vec<u8>> = wanted.iter().map(|(_, key)| key.clone()).collect();
        let found = self.store.multi_get(CF_BILLING, &keys)?;
        for ((tenant, key), value) in wanted.into_iter().zip(found) {
            if let Some(value) = value {
                self.load_row(&tenant, key, value)?;
            }
        }
        Ok(())
    }

    /// Adds one stored history row of `tenant` to its state and remembers it as read.
    fn load_row(&mut self, tenant: &str, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        let Some(state) = self.tenants.get_mut(tenant) else {
            return Ok(());
        };
        if key.starts_with(&BillingKey::periods(tenant)) {
            let (period, billed) = decode_period_row(&value).map_err(corrupt)?;
            state.load_closed_period(period, billed);
        } else {
            state.load_invoice(decode_invoice(&value).map_err(corrupt)?);
        }
        self.read_rows.insert(key, value);
        Ok(())
    }

    /// Makes sure the closed period holding usage at `at` is loaded (read now, counted as a
    /// miss, if the prefetch did not foresee it).
    fn ensure_period_at(&mut self, tenant: &str, at: UnixMicros) -> Result<(), StoreError> {
        if !self.stored.contains(tenant) {
            return Ok(());
        }
        let unloaded = self
            .tenants
            .get(tenant)
            .and_then(|state| state.unloaded_period_at(at));
        if let Some(start) = unloaded {
            self.misses = self.misses.saturating_add(1);
            self.read_period_at(tenant, start)?;
        }
        Ok(())
    }

    /// Makes sure the history rows `keys` of a stored tenant are loaded (read now, counted
    /// as misses, if the prefetch did not foresee them).
    fn ensure_rows(&mut self, tenant: &str, keys: Vec<Vec<u8>>) -> Result<(), StoreError> {
        if !self.stored.contains(tenant) {
            return Ok(());
        }
        let unread: Vec<(String, Vec<u8>)> = keys
            .into_iter()
            .filter(|key| !self.read_rows.contains_key(key))
            .map(|key| (tenant.to_owned(), key))
            .collect();
        if unread.is_empty() {
            return Ok(());
        }
        self.misses = self.misses.saturating_add(unread.len() as u64);
        self.read_history_rows(unread)
    }

    /// Each meter's value over a period: its prefetched rows (none for a tenant first seen
    /// in this batch) with the batch's deltas so far; read from the store only if the
    /// prefetch did not foresee it.
    fn period_values(
        &mut self,
        tenant: &str,
        uid: &str,
    ) -> Result<BTreeMap<String, i128>, StoreError> {
        let prefix = BillingKey::usage_of_period(tenant, uid);
        let rows = match self.period_rows.get(&(tenant.to_owned(), uid.to_owned())) {
            Some(rows) => rows.clone(),
            None if !self.stored.contains(tenant) && self.fetched.contains(tenant) => {
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
        if !self.fetched.contains(tenant) {
            self.prefetch([tenant])?;
        }
        if !self.tenants.contains_key(tenant) {
            self.changed.insert(tenant.to_owned());
            self.tenants.insert(
                tenant.to_owned(),
                TenantBilling::new(tenant, self.catalog, at),
            );
        }
        self.tenants.get_mut(tenant).ok_or(StoreError::Closed)
    }

    /// Folds one entry; a plan change is returned for the quota fold.
    pub fn fold(&mut self, seq: u64, entry: &LogEntry) -> Result<Option<PlanChange>, StoreError> {
        match entry {
            LogEntry::UsageRecorded { event, .. } => {
                // A tenant in the map was fetched already (or is new): no second look.
                if !self.tenants.contains_key(event.tenant.as_str()) {
                    self.tenant(&event.tenant, event.timestamp)?;
                }
                self.ensure_period_at(&event.tenant, event.timestamp)?;
                let state = self
                    .tenants
                    .get_mut(event.tenant.as_str())
                    .ok_or(StoreError::Closed)?;
                let period = state.period_for(event.timestamp, self.catalog);
                let key = &mut self.scratch;
                BillingKey::usage_into(key, &event.tenant, &period.uid, &SeriesRef::of(event));
                // Late usage of an invoiced period: the next invoice adjusts it.
                let late = (period.invoiced
                    && !state.late_periods.contains_key(period.uid.as_ref()))
                .then(|| (period.uid.into_owned(), period.start));
                if let Some((uid, start)) = late {
                    state.late_periods.insert(uid, start);
                    self.changed.insert(event.tenant.clone());
                }
                let delta = Aggregate::of(event);
                if let Some(row) = self.deltas.get_mut(key.as_slice()) {
                    row.merge(&delta);
                } else {
                    self.deltas.insert(key.as_slice().into(), delta);
                }
                Ok(None)
            }
            LogEntry::Billing { tenant, at, change } => {
                match change {
                    billing::BillingChange::TransitionRequested { id, .. } => {
                        self.transitions.insert(id.clone(), tenant.clone());
                    }
                    billing::BillingChange::InvoicePaid { invoice, .. } => {
                        let row = billing::invoice_number(invoice)
                            .map(|number| BillingKey::Invoice { tenant, number }.encode());
                        self.tenant(tenant, *at)?;
                        self.ensure_rows(tenant, row.into_iter().collect())?;
                    }
                    _ => {}
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
        let late: Vec<(String, UnixMicros)> = self
            .tenants
            .get(tenant)
            .map(|s| s.late_periods.clone().into_iter().collect())
            .unwrap_or_default();
        // Late periods the state holds (read before, or closed in this batch) need no read.
        let held: BTreeSet<UnixMicros> = self
            .tenants
            .get(tenant)
            .map(|s| s.periods.iter().map(|p| p.start).collect())
            .unwrap_or_default();
        let late_rows = late
            .iter()
            .filter(|(_, start)| !held.contains(start))
            .map(|(_, start)| {
                BillingKey::Period {
                    tenant,
                    start: *start,
                }
                .encode()
            })
            .collect();
        self.ensure_rows(tenant, late_rows)?;
        let mut late_values = BTreeMap::new();
        for (uid, _) in late.into_iter().filter(|(uid, _)| *uid != period.uid) {
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

    /// Adds the fold's rows to `batch`: usage deltas as merge operands, and of each
    /// changed tenant its header and the history rows that differ from those read.
    pub fn write(self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        // Deltas, merged into the stored rows by RocksDB (no read of a usage row); in key
        // order, so each memtable insert starts its search where the previous one ended.
        for (key, delta) in crate::projection::sorted_rows(&self.deltas) {
            batch.merge(CF_BILLING, key, delta.encode());
        }
        for (tenant, state) in &self.tenants {
            if !self.changed.contains(tenant) {
                continue;
            }
            for (key, value) in rows_of(state) {
                if self.read_rows.get(&key) != Some(&value) {
                    batch.put(CF_BILLING, key, value);
                }
            }
        }
        for (id, tenant) in &self.transitions {
            batch.put(
                CF_BILLING,
                BillingKey::TransitionOwner { id }.encode(),
                tenant.as_bytes(),
            );
        }
        Ok(())
    }

    /// The state the fold holds of `tenant` (its header and the history rows it read).
    #[cfg(test)]
    fn held(&self, tenant: &str) -> Option<&TenantBilling> {
        self.tenants.get(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventSource, UsageEvent};
    use crate::log::store::StoreOptions;
    use crate::projection::billing::{load_header, load_tenant, period_usage, period_values};
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

    /// Folds `entries` into `store` as one batch (numbered after `seq`), prefetching its
    /// history or not; the state the fold held of tenant `t` and the rows it read unforeseen.
    fn fold_batch(
        store: &Store,
        catalog: &Catalog,
        seq: &mut u64,
        entries: &[LogEntry],
        prefetch: bool,
    ) -> (Option<TenantBilling>, u64) {
        let numbered: Vec<(u64, LogEntry)> = entries
            .iter()
            .map(|entry| {
                *seq += 1;
                (*seq, entry.clone())
            })
            .collect();
        let mut fold = BillingFold::new(store, catalog, 0);
        fold.prefetch(numbered.iter().map(|(_, entry)| entry.tenant()))
            .unwrap();
        if prefetch {
            fold.prefetch_history(&numbered).unwrap();
        }
        for (seq, entry) in &numbered {
            fold.fold(*seq, entry).unwrap();
        }
        let (held, misses) = (fold.held("t").cloned(), fold.misses());
        let mut batch = store.batch();
        fold.write(&mut batch).unwrap();
        store.commit(batch, false).unwrap();
        (held, misses)
    }

    /// Folds `batches` one after another into a new store, prefetching each batch's history
    /// or not; the tenant's final state and each batch's reads the prefetch missed.
    fn fold_batches(prefetch: bool, batches: &[Vec<LogEntry>]) -> (TenantBilling, Vec<u64>) {
        let (_dir, store) = test_store();
        let catalog = Catalog::builtin().unwrap();
        let mut seq = 0;
        let misses = batches
            .iter()
            .map(|entries| fold_batch(&store, &catalog, &mut seq, entries, prefetch).1)
            .collect();
        (load_tenant(&store, "t").unwrap().unwrap(), misses)
    }

    fn at(text: &str) -> UnixMicros {
        crate::time::parse_rfc3339(text).unwrap()
    }

    /// A year on the individual plan: usage each month, each period closed at its end.
    fn a_year_of_invoices() -> Vec<Vec<LogEntry>> {
        let upgrade = at("2026-01-02T00:00:00Z");
        let mut batches = vec![vec![
            usage("u0", "shop", at("2026-01-01T10:00:00Z"), 1_000_000),
            change(upgrade, transition("x1", "individual-plan")),
        ]];
        let mut open_start = upgrade;
        for month in 1..=12 {
            let next = if month == 12 {
                at("2027-01-01T00:00:00Z")
            } else {
                at(&format!("2026-{:02}-01T00:00:00Z", month + 1))
            };
            batches.push(vec![
                usage(
                    &format!("u{month}"),
                    "shop",
                    open_start + 3_600_000_000,
                    2_000_000,
                ),
                change(
                    next,
                    billing::BillingChange::PeriodClosed {
                        period_uid: billing::period_uid("t", open_start),
                    },
                ),
            ]);
            open_start = next;
        }
        batches
    }

    #[test]
    fn a_batch_holds_the_header_and_only_the_history_rows_it_needs() {
        let (_dir, store) = test_store();
        let catalog = Catalog::builtin().unwrap();
        let mut seq = 0;
        let header_len = || {
            store
                .get(CF_BILLING, &BillingKey::Header { tenant: "t" }.encode())
                .unwrap()
                .unwrap()
                .len()
        };
        let mut header_lens = Vec::new();
        for entries in a_year_of_invoices() {
            let (_, misses) = fold_batch(&store, &catalog, &mut seq, &entries, true);
            assert_eq!(misses, 0);
            header_lens.push(header_len());
        }
        let full = load_tenant(&store, "t").unwrap().unwrap();
        assert_eq!((full.periods.len(), full.invoices.len()), (14, 12));
        assert_eq!(full.invoices_issued, 12);
        // The header stays the same size however long the history grows.
        assert!(
            header_lens[1..].iter().all(|&len| len == header_lens[1]),
            "{header_lens:?}"
        );

        // Usage of the open period: the fold holds the header alone.
        let (held, misses) = fold_batch(
            &store,
            &catalog,
            &mut seq,
            &[usage("now", "shop", at("2027-01-05T00:00:00Z"), 1)],
            true,
        );
        let held = held.unwrap();
        assert_eq!((held.periods.len(), held.invoices.len(), misses), (1, 0, 0));
        assert_eq!(
            held.transitions.len(),
            0,
            "decided transitions are history rows"
        );

        // Late usage of March, then January's close: the fold reads March's row alone, and
        // January's invoice adjusts March.
        let march = at("2026-03-01T00:00:00Z");
        let (held, misses) = fold_batch(
            &store,
            &catalog,
            &mut seq,
            &[
                // March's 2 requests billed 1 unit (below 1 bills as 1); with 5 million
                // more they bill 5, so January's invoice adjusts March by 4.
                usage(
                    "late",
                    "shop",
                    at("2026-03-20T00:00:00Z"),
                    5_000_000_000_000,
                ),
                change(
                    at("2027-02-01T00:00:00Z"),
                    billing::BillingChange::PeriodClosed {
                        period_uid: billing::period_uid("t", at("2027-01-01T00:00:00Z")),
                    },
                ),
            ],
            true,
        );
        let held = held.unwrap();
        let starts: Vec<UnixMicros> = held.periods.iter().map(|p| p.start).collect();
        assert_eq!(
            starts,
            [
                march,
                at("2027-01-01T00:00:00Z"),
                at("2027-02-01T00:00:00Z")
            ]
        );
        assert_eq!((held.invoices.len(), misses), (1, 0));
        let adjusted: Vec<i128> = held.invoices[0]
            .lines
            .iter()
            .filter(|line| line.kind == billing::LineKind::Adjustment)
            .map(|line| line.quantity)
            .collect();
        assert_eq!(adjusted, [4], "{:?}", held.invoices[0].lines);
        assert_eq!(held.invoices[0].name, "inv-202701-0013");
    }

    #[test]
    fn a_history_folded_batch_by_batch_is_the_history_folded_at_once() {
        let batches = a_year_of_invoices();
        let (by_batch, misses) = fold_batches(true, &batches);
        assert!(misses.iter().all(|&m| m == 0), "{misses:?}");
        let (at_once, _) = fold_batches(true, &[batches.concat()]);
        assert_eq!(by_batch, at_once);
        let (unforeseen, _) = fold_batches(false, &batches);
        assert_eq!(by_batch, unforeseen);
    }

    #[test]
    fn invoices_of_a_batch_bill_only_prefetched_rows_and_bill_the_same() {
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
        let period = load_header(&store, "t")
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
            period_values(&store, &catalog, "t", &period, &PendingRows::default()).unwrap()
        );
    }
}
