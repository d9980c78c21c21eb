//! The quota projection's fold: quota objects, levels and threshold bands, applied entry by
//! entry in log order. Reads go through [`QuotaReads`] (the store, in the runner; maps, in
//! tests); the result is the rows to write and the alerts to append.
//!
//! Levels: a bound meter's series (namespace, object, deployment, container) holds its newest
//! value (LATEST, by event time, then log order) or its largest (MAX); a namespace's level is the
//! sum of its series, the tenant's the sum of its namespaces. Limits are tenant-wide, so bands
//! and alerts follow the tenant level.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Aggregation, Catalog, QuotaKind, QuotaSpec};
use crate::event::UsageEvent;
use crate::log::LogEntry;
use crate::log::codec::CodecError;
use crate::log::keys::{TENANT_SCOPE, push_str};
use crate::quota::{
    Alert, BandChange, LimitKey, Limits, QuotaObject, band, crossings, effective_limits, kind_name,
};
use crate::time::UnixMicros;

/// Row kinds of the `quota` CF (first key byte).
pub const ROW_OBJECT: u8 = b'o';
pub const ROW_SERIES: u8 = b's';
pub const ROW_TOTAL: u8 = b't';
pub const ROW_BAND: u8 = b'b';
/// A tenant's alerts, newest first (the `alerts` CF holds every tenant's in log order).
pub const ROW_ALERT: u8 = b'a';

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

/// `o tenant\0` — every quota object of a tenant.
pub fn objects_prefix(tenant: &str) -> Vec<u8> {
    let mut key = vec![ROW_OBJECT];
    push_str(&mut key, tenant);
    key
}

/// `o tenant\0 namespace\0 name\0`
pub fn object_key(tenant: &str, namespace: &str, name: &str) -> Vec<u8> {
    let mut key = objects_prefix(tenant);
    push_str(&mut key, namespace);
    push_str(&mut key, name);
    key
}

fn limit_key_parts(key: &mut Vec<u8>, limit: &LimitKey) {
    push_str(key, kind_name(limit.kind));
    push_str(key, &limit.name);
}

/// `s tenant\0 kind\0 name\0 namespace\0 object\0 deployment\0 container\0`
pub fn series_key(tenant: &str, limit: &LimitKey, event: &UsageEvent) -> Vec<u8> {
    let mut key = vec![ROW_SERIES];
    push_str(&mut key, tenant);
    limit_key_parts(&mut key, limit);
    push_str(&mut key, &event.namespace);
    push_str(&mut key, &event.object_name);
    push_str(&mut key, &event.deployment);
    push_str(&mut key, &event.container);
    key
}

/// `t tenant\0 scope\0 kind\0 name\0` — the level of a namespace, or of the tenant (`*`).
pub fn total_key(tenant: &str, scope: &str, limit: &LimitKey) -> Vec<u8> {
    let mut key = vec![ROW_TOTAL];
    push_str(&mut key, tenant);
    push_str(&mut key, scope);
    limit_key_parts(&mut key, limit);
    key
}

/// `b tenant\0 kind\0 name\0`
pub fn band_key(tenant: &str, limit: &LimitKey) -> Vec<u8> {
    let mut key = vec![ROW_BAND];
    push_str(&mut key, tenant);
    limit_key_parts(&mut key, limit);
    key
}

/// `a tenant\0` — every alert of a tenant.
pub fn tenant_alerts_prefix(tenant: &str) -> Vec<u8> {
    let mut key = vec![ROW_ALERT];
    push_str(&mut key, tenant);
    key
}

/// `a tenant\0 !seq` — the seq inverted, so the newest alert comes first in key order.
pub fn tenant_alert_key(tenant: &str, seq: u64) -> Vec<u8> {
    let mut key = tenant_alerts_prefix(tenant);
    key.extend_from_slice(&(!seq).to_be_bytes());
    key
}

/// The seq of a [`tenant_alert_key`].
pub fn decode_tenant_alert_seq(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(!u64::from_be_bytes(tail))
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
#[derive(Debug, Default)]
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
    objects: BTreeMap<String, BTreeMap<(String, String), QuotaObject>>,
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
                let key = (object.namespace.clone(), object.name.clone());
                self.tenant_objects(&object.tenant)?
                    .insert(key, object.clone());
                self.limits.remove(&object.tenant);
                self.writes.objects.insert(
                    object_key(&object.tenant, &object.namespace, &object.name),
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
                self.tenant_objects(tenant)?
                    .remove(&(namespace.clone(), name.clone()));
                self.limits.remove(tenant);
                self.writes
                    .objects
                    .insert(object_key(tenant, namespace, name), None);
                self.recheck(tenant, before, seq, *at)
            }
            // Appended by releases before log format v2: the fold finds the same crossings
            // again from their triggering entries, so these add nothing.
            LogEntry::QuotaAlert { .. } => Ok(()),
            // Plan changes reach the fold through `set_plan`.
            LogEntry::Billing { .. } | LogEntry::Audit(_) => Ok(()),
        }
    }

    fn tenant_objects(
        &mut self,
        tenant: &str,
    ) -> Result<&mut BTreeMap<(String, String), QuotaObject>, R::Error> {
        if !self.objects.contains_key(tenant) {
            let loaded = self
                .reads
                .objects(tenant)?
                .into_iter()
                .map(|o| ((o.namespace.clone(), o.name.clone()), o))
                .collect();
            self.objects.insert(tenant.to_owned(), loaded);
        }
        Ok(self.objects.entry(tenant.to_owned()).or_default())
    }

    fn limits(&mut self, tenant: &str) -> Result<&Limits, R::Error> {
        if !self.limits.contains_key(tenant) {
            let plan = self.plan_default(tenant)?;
            let objects = self.tenant_objects(tenant)?;
            let limits = effective_limits(plan, objects.values());
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
        let Some(binding) = &meter.quota else {
            return Ok(());
        };
        if binding.kind == QuotaKind::Api {
            // API rates are read from the hourly projection; they have no level.
            return Ok(());
        }
        let limit_key = LimitKey {
            kind: binding.kind,
            name: binding.name.clone(),
        };
        let key = series_key(&event.tenant, &limit_key, event);
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
        for scope in [event.namespace.as_str(), TENANT_SCOPE] {
            let key = total_key(&event.tenant, scope, &limit_key);
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
        let level = self.total(&total_key(tenant, TENANT_SCOPE, key))?;
        let new_band = band(level, limit);
        let band_row = band_key(tenant, key);
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
