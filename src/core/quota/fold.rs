//! The quota projection's fold: quota objects, levels and threshold bands, applied entry by
//! entry in log order. Reads go through [`QuotaReads`]: in the runner a [`Snapshot`] of the
//! rows [`tenants_to_read`] and [`RowsToRead`] list, read before the fold; maps, in tests. The
//! result is the rows to write and the alert rows.
//!
//! Levels: a bound meter's series (namespace, object, deployment, container) holds its newest
//! value (LATEST, by event time, then log order) or its largest (MAX); a namespace's level is the
//! sum of its series, the tenant's the sum of its namespaces. Limits are tenant-wide, so bands
//! and alerts follow the tenant level.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Aggregation, Catalog, Meter, QuotaKind, QuotaSpec};
use crate::event::UsageEvent;
use crate::log::LogEntry;
use crate::log::codec::CodecError;
use crate::log::keys::QuotaKey;
use crate::log::keys::Scope;
use crate::quota::decide::TenantQuotas;
use crate::quota::{
    Alert, BandChange, LimitKey, Limits, QuotaObject, band, crossings, effective_limits,
};
use crate::time::UnixMicros;

/// One series' level: its value and the (event time, log seq) that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeriesLevel {
    pub value: i64,
    pub at: UnixMicros,
    /// The log seq of the event: of two gauges with the same event time, the one recorded
    /// later wins (the log's order is fixed, so a refold decides the same way).
    pub seq: u64,
}

impl SeriesLevel {
    pub fn encode(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[0] = crate::log::codec::VALUE_VERSION;
        out[1..9].copy_from_slice(&self.value.to_be_bytes());
        out[9..17].copy_from_slice(&self.at.to_be_bytes());
        out[17..25].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SeriesLevel, CodecError> {
        let body: [u8; 24] = crate::log::codec::fixed_body(bytes, "series level")?;
        let eight = |at| crate::log::codec::field::<8>(&body, at);
        Ok(SeriesLevel {
            value: i64::from_be_bytes(eight(0)),
            at: i64::from_be_bytes(eight(8)),
            seq: u64::from_be_bytes(eight(16)),
        })
    }
}

/// The tenants whose quota objects and plans a fold of `entries` reads: those with an event
/// of a meter bound to an object or resource quota, a quota object change, or a billing
/// change (which may move their plan).
pub fn tenants_to_read<'e>(
    entries: impl IntoIterator<Item = &'e LogEntry>,
    catalog: &Catalog,
) -> BTreeSet<String> {
    // Distinct first, then owned: a batch names each tenant thousands of times.
    entries
        .into_iter()
        .filter_map(|entry| match entry {
            LogEntry::UsageRecorded { event, .. } => {
                bound_key_of(catalog, &event.metric_label).map(|_| event.tenant.as_str())
            }
            LogEntry::QuotaObjectPut { object, .. } => Some(object.tenant.as_str()),
            LogEntry::QuotaObjectDeleted { tenant, .. } | LogEntry::Billing { tenant, .. } => {
                Some(tenant.as_str())
            }
            LogEntry::QuotaAlert { .. } | LogEntry::Audit(_) => None,
        })
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The level key a meter's events move: its quota binding, unless it has none or binds an
/// API rate (read from the hourly projection: it has no level).
fn bound_key(meter: &Meter) -> Option<LimitKey> {
    let binding = meter.quota.as_ref()?;
    (binding.kind != QuotaKind::Api).then(|| LimitKey {
        kind: binding.kind,
        name: binding.name.clone(),
    })
}

/// The level key the events of `metric_label` move, if any ([`bound_key`]).
fn bound_key_of(catalog: &Catalog, metric_label: &str) -> Option<LimitKey> {
    catalog.meter(metric_label).and_then(bound_key)
}

/// The level rows a fold of `entries` may read, given the stored objects of the tenants
/// [`tenants_to_read`] named: a superset of every series, total and band key the fold can ask
/// for, so they are read with one multi-get each before it runs.
#[derive(Debug, Default, PartialEq)]
pub struct RowsToRead {
    pub series: BTreeSet<Vec<u8>>,
    pub totals: BTreeSet<Vec<u8>>,
    pub bands: BTreeSet<Vec<u8>>,
}

impl RowsToRead {
    pub fn of<'e>(
        entries: impl IntoIterator<Item = &'e LogEntry>,
        catalog: &Catalog,
        stored_objects: &BTreeMap<String, Vec<QuotaObject>>,
    ) -> RowsToRead {
        let mut rows = RowsToRead::default();
        // Tenants whose limits may change in the batch: every key that any plan or any of their
        // objects (stored, or put now) limits may be rechecked.
        let mut rechecked: BTreeMap<String, BTreeSet<LimitKey>> = BTreeMap::new();
        let plan_keys: BTreeSet<LimitKey> = catalog
            .plans()
            .iter()
            .flat_map(|plan| Limits::from_plan(&plan.default_quota).level_keys())
            .collect();
        let stored_keys = |tenant: &str| {
            let mut keys = plan_keys.clone();
            for object in stored_objects.get(tenant).into_iter().flatten() {
                keys.extend(object.spec.level_keys());
            }
            keys
        };
        // The limit key follows from the meter, so a (tenant, meter, namespace) seen before
        // names the same total and band rows, and the same series adds the same series row:
        // keys are built once per distinct one, not once per event.
        type Seen<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
        let mut seen_series: Seen<[&str; 6]> = Seen::default();
        let mut seen_scopes: Seen<[&str; 3]> = Seen::default();
        for entry in entries {
            match entry {
                LogEntry::UsageRecorded { event, .. } => {
                    let series = [
                        event.tenant.as_str(),
                        event.metric_label.as_str(),
                        event.namespace.as_str(),
                        event.object_name.as_str(),
                        event.deployment.as_str(),
                        event.container.as_str(),
                    ];
                    if !seen_series.insert(series) {
                        continue;
                    }
                    let Some(key) = bound_key_of(catalog, &event.metric_label) else {
                        continue;
                    };
                    rows.series
                        .insert(QuotaKey::series_level(&event.tenant, &key, event).encode());
                    if !seen_scopes.insert([series[0], series[1], series[2]]) {
                        continue;
                    }
                    rows.totals.insert(
                        QuotaKey::total(&event.tenant, Scope::Namespace(&event.namespace), &key)
                            .encode(),
                    );
                    rows.totals
                        .insert(QuotaKey::total(&event.tenant, Scope::Tenant, &key).encode());
                    rows.bands
                        .insert(QuotaKey::band(&event.tenant, &key).encode());
                }
                LogEntry::QuotaObjectPut { object, .. } => {
                    rechecked
                        .entry(object.tenant.clone())
                        .or_insert_with(|| stored_keys(&object.tenant))
                        .extend(object.spec.level_keys());
                }
                LogEntry::QuotaObjectDeleted { tenant, .. } | LogEntry::Billing { tenant, .. } => {
                    rechecked
                        .entry(tenant.clone())
                        .or_insert_with(|| stored_keys(tenant));
                }
                LogEntry::QuotaAlert { .. } | LogEntry::Audit(_) => {}
            }
        }
        for (tenant, keys) in &rechecked {
            for key in keys {
                rows.totals
                    .insert(QuotaKey::total(tenant, Scope::Tenant, key).encode());
                rows.bands.insert(QuotaKey::band(tenant, key).encode());
            }
        }
        rows
    }
}

/// What a batch's quota fold reads, read before it runs ([`tenants_to_read`],
/// [`RowsToRead`]): the fold then reads nothing else. A key it holds no answer for goes to
/// `fallback` and is counted, so a gap in the key lists costs a read, never a wrong level.
pub struct Snapshot<'a, R: QuotaReads> {
    pub objects: BTreeMap<String, Vec<QuotaObject>>,
    pub plans: BTreeMap<String, Option<String>>,
    pub series: BTreeMap<Vec<u8>, Option<SeriesLevel>>,
    pub totals: BTreeMap<Vec<u8>, i128>,
    pub bands: BTreeMap<Vec<u8>, u8>,
    pub fallback: &'a R,
    misses: std::cell::Cell<u64>,
}

impl<'a, R: QuotaReads> Snapshot<'a, R> {
    pub fn new(fallback: &'a R) -> Self {
        Snapshot {
            objects: BTreeMap::new(),
            plans: BTreeMap::new(),
            series: BTreeMap::new(),
            totals: BTreeMap::new(),
            bands: BTreeMap::new(),
            fallback,
            misses: std::cell::Cell::new(0),
        }
    }

    /// How many reads the snapshot could not answer (0 when the key lists were complete).
    pub fn misses(&self) -> u64 {
        self.misses.get()
    }

    fn miss(&self) {
        self.misses.set(self.misses.get().saturating_add(1));
    }
}

impl<R: QuotaReads> Snapshot<'_, R> {
    /// The snapshot's answer for `key`, else (counted as a miss) what `read` gets.
    fn answer<Q, K, V>(
        &self,
        map: &BTreeMap<K, V>,
        key: &Q,
        read: impl FnOnce() -> Result<V, R::Error>,
    ) -> Result<V, R::Error>
    where
        Q: Ord + ?Sized,
        K: std::borrow::Borrow<Q> + Ord,
        V: Clone,
    {
        match map.get(key) {
            Some(value) => Ok(value.clone()),
            None => {
                self.miss();
                read()
            }
        }
    }
}

impl<R: QuotaReads> QuotaReads for Snapshot<'_, R> {
    type Error = R::Error;

    fn objects(&self, tenant: &str) -> Result<Vec<QuotaObject>, R::Error> {
        self.answer(&self.objects, tenant, || self.fallback.objects(tenant))
    }

    fn series(&self, key: &[u8]) -> Result<Option<SeriesLevel>, R::Error> {
        self.answer(&self.series, key, || self.fallback.series(key))
    }

    fn total(&self, key: &[u8]) -> Result<i128, R::Error> {
        self.answer(&self.totals, key, || self.fallback.total(key))
    }

    fn band(&self, key: &[u8]) -> Result<u8, R::Error> {
        self.answer(&self.bands, key, || self.fallback.band(key))
    }

    fn plan(&self, tenant: &str) -> Result<Option<String>, R::Error> {
        self.answer(&self.plans, tenant, || self.fallback.plan(tenant))
    }
}

/// What the fold reads of stored state.
pub trait QuotaReads {
    type Error;
    fn objects(&self, tenant: &str) -> Result<Vec<QuotaObject>, Self::Error>;
    fn series(&self, key: &[u8]) -> Result<Option<SeriesLevel>, Self::Error>;
    fn total(&self, key: &[u8]) -> Result<i128, Self::Error>;
    fn band(&self, key: &[u8]) -> Result<u8, Self::Error>;
    /// The tenant's plan as billing last recorded it (`None`: never seen, the default plan).
    fn plan(&self, tenant: &str) -> Result<Option<String>, Self::Error>;
}

/// Rows to write to the `quota` CF (`None` deletes) and alerts.
#[derive(Debug, Default, PartialEq)]
pub struct QuotaWrites {
    pub objects: BTreeMap<Vec<u8>, Option<QuotaObject>>,
    pub series: BTreeMap<Vec<u8>, SeriesLevel>,
    pub totals: BTreeMap<Vec<u8>, i128>,
    pub bands: BTreeMap<Vec<u8>, u8>,
    /// Crossings found by this fold, by their position ([`crate::quota::alert_position`]):
    /// rows of the `alerts` CF, written with the batch's other rows (never to the log).
    pub alert_rows: Vec<(u64, Alert)>,
}

/// Folds entries of the log into quota state, reading through `reads` and its own writes.
pub struct QuotaFold<'a, R: QuotaReads> {
    reads: &'a R,
    catalog: &'a Catalog,
    plans: BTreeMap<String, String>,
    /// Each tenant's objects, changed by the same [`TenantQuotas::apply`] the write side uses.
    objects: BTreeMap<String, TenantQuotas>,
    /// Effective limits per tenant, computed once and dropped when its plan or objects change
    /// (a bound meter's every event is checked against them).
    limits: BTreeMap<String, Limits>,
    /// The entry whose alerts are being numbered, and how many it has had.
    alert_trigger: Option<(u64, u16)>,
    pub writes: QuotaWrites,
}

impl<'a, R: QuotaReads> QuotaFold<'a, R> {
    pub fn new(reads: &'a R, catalog: &'a Catalog) -> Self {
        QuotaFold {
            reads,
            catalog,
            plans: BTreeMap::new(),
            objects: BTreeMap::new(),
            limits: BTreeMap::new(),
            alert_trigger: None,
            writes: QuotaWrites::default(),
        }
    }

    /// Files the alerts of one crossing under their positions: the triggering entry's seq and
    /// their order among that entry's alerts, the same on every fold of the same log.
    fn file_alerts(&mut self, alerts: Vec<Alert>) {
        for alert in alerts {
            let ordinal = match self.alert_trigger {
                Some((seq, count)) if seq == alert.trigger_seq => count,
                _ => 0,
            };
            self.alert_trigger = Some((alert.trigger_seq, ordinal.saturating_add(1)));
            let position = crate::quota::alert_position(alert.trigger_seq, ordinal);
            self.writes.alert_rows.push((position, alert));
        }
    }

    /// The tenant moved to `plan` at log entry `seq`: its default quota now applies.
    pub fn set_plan(
        &mut self,
        tenant: &str,
        plan: &str,
        seq: u64,
        at: UnixMicros,
    ) -> Result<(), R::Error> {
        let before = self.limit_keys(tenant)?;
        self.plans.insert(tenant.to_owned(), plan.to_owned());
        self.limits.remove(tenant);
        self.recheck(tenant, before, seq, at)
    }

    fn plan_default(&mut self, tenant: &str) -> Result<&'a QuotaSpec, R::Error> {
        if !self.plans.contains_key(tenant) {
            let plan = self
                .reads
                .plan(tenant)?
                .unwrap_or_else(|| self.catalog.default_plan().name.clone());
            self.plans.insert(tenant.to_owned(), plan);
        }
        let catalog = self.catalog;
        let plan = self
            .plans
            .get(tenant)
            .and_then(|name| catalog.plan(name))
            .unwrap_or_else(|| catalog.default_plan());
        Ok(&plan.default_quota)
    }

    pub fn fold(&mut self, seq: u64, entry: &LogEntry) -> Result<(), R::Error> {
        match entry {
            LogEntry::UsageRecorded { event, .. } => self.fold_usage(seq, event),
            LogEntry::QuotaObjectPut { object, at } => {
                let before = self.limit_keys(&object.tenant)?;
                self.tenant_objects(&object.tenant)?.apply(entry);
                self.limits.remove(&object.tenant);
                self.writes.objects.insert(
                    QuotaKey::Object {
                        tenant: &object.tenant,
                        namespace: &object.namespace,
                        name: &object.name,
                    }
                    .encode(),
                    Some(object.clone()),
                );
                self.recheck(&object.tenant, before, seq, *at)
            }
            LogEntry::QuotaObjectDeleted {
                tenant,
                namespace,
                name,
                at,
            } => {
                let before = self.limit_keys(tenant)?;
                self.tenant_objects(tenant)?.apply(entry);
                self.limits.remove(tenant);
                self.writes.objects.insert(
                    QuotaKey::Object {
                        tenant,
                        namespace,
                        name,
                    }
                    .encode(),
                    None,
                );
                self.recheck(tenant, before, seq, *at)
            }
            // Appended by releases before log format v2: the fold finds the same crossings
            // again from their triggering entries, so these add nothing.
            LogEntry::QuotaAlert { .. } => Ok(()),
            // Plan changes reach the fold through `set_plan`.
            LogEntry::Billing { .. } | LogEntry::Audit(_) => Ok(()),
        }
    }

    fn tenant_objects(&mut self, tenant: &str) -> Result<&mut TenantQuotas, R::Error> {
        if !self.objects.contains_key(tenant) {
            let loaded = TenantQuotas::from_objects(self.reads.objects(tenant)?);
            self.objects.insert(tenant.to_owned(), loaded);
        }
        Ok(self.objects.entry(tenant.to_owned()).or_default())
    }

    fn limits(&mut self, tenant: &str) -> Result<&Limits, R::Error> {
        if !self.limits.contains_key(tenant) {
            let plan = self.plan_default(tenant)?;
            let objects = self.tenant_objects(tenant)?;
            let limits = effective_limits(plan, objects.objects.values());
            self.limits.insert(tenant.to_owned(), limits);
        }
        Ok(self.limits.entry(tenant.to_owned()).or_default())
    }

    fn limit_keys(&mut self, tenant: &str) -> Result<BTreeSet<LimitKey>, R::Error> {
        Ok(self.limits(tenant)?.level_keys())
    }

    fn fold_usage(&mut self, seq: u64, event: &UsageEvent) -> Result<(), R::Error> {
        let Some(meter) = self.catalog.meter(&event.metric_label) else {
            return Ok(());
        };
        let Some(limit_key) = bound_key(meter) else {
            return Ok(());
        };
        let key = QuotaKey::series_level(&event.tenant, &limit_key, event).encode();
        let old = match self.writes.series.get(&key) {
            Some(level) => Some(*level),
            None => self.reads.series(&key)?,
        };
        let candidate = SeriesLevel {
            value: event.quantity.0,
            at: event.timestamp,
            seq,
        };
        let new = match (old, meter.aggregation) {
            (None, _) => candidate,
            (Some(old), Aggregation::Max) => {
                if candidate.value > old.value {
                    candidate
                } else {
                    old
                }
            }
            (Some(old), _) => {
                if (candidate.at, candidate.seq) > (old.at, old.seq) {
                    candidate
                } else {
                    old
                }
            }
        };
        let delta = i128::from(new.value) - i128::from(old.map_or(0, |o| o.value));
        self.writes.series.insert(key, new);
        if delta == 0 && old.is_some() {
            return Ok(());
        }
        for scope in [Scope::Namespace(&event.namespace), Scope::Tenant] {
            let key = QuotaKey::total(&event.tenant, scope, &limit_key).encode();
            let total = self.total(&key)? + delta;
            self.writes.totals.insert(key, total);
        }
        self.check(&event.tenant, &limit_key, seq, event.timestamp)
    }

    fn total(&self, key: &[u8]) -> Result<i128, R::Error> {
        match self.writes.totals.get(key) {
            Some(total) => Ok(*total),
            None => self.reads.total(key),
        }
    }

    /// Rechecks every key whose limit may have changed.
    fn recheck(
        &mut self,
        tenant: &str,
        before: BTreeSet<LimitKey>,
        seq: u64,
        at: UnixMicros,
    ) -> Result<(), R::Error> {
        let after = self.limit_keys(tenant)?;
        for key in before.union(&after) {
            self.check(tenant, key, seq, at)?;
        }
        Ok(())
    }

    /// Compares a key's tenant level with its limit; a band change records alerts.
    fn check(
        &mut self,
        tenant: &str,
        key: &LimitKey,
        seq: u64,
        at: UnixMicros,
    ) -> Result<(), R::Error> {
        let limit = self.limits(tenant)?.level_limit(key);
        let level = self.total(&QuotaKey::total(tenant, Scope::Tenant, key).encode())?;
        let new_band = band(level, limit);
        let band_row = QuotaKey::band(tenant, key).encode();
        let old_band = match self.writes.bands.get(&band_row) {
            Some(b) => *b,
            None => self.reads.band(&band_row)?,
        };
        if new_band != old_band {
            let change = BandChange {
                from: old_band,
                to: new_band,
                level,
                limit: limit.unwrap_or(-1),
            };
            self.file_alerts(crossings(tenant, key, change, seq, at));
            self.writes.bands.insert(band_row, new_band);
        }
        Ok(())
    }
}
