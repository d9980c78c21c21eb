//! Tests of quotas: validation, effective limits, levels and the alerts the fold raises.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::fold::{QuotaFold, QuotaReads, RowsToRead, SeriesLevel, Snapshot};
use super::*;
use crate::catalog::{Catalog, LimitType};
use crate::event::{EventSource, UsageEvent};
use crate::log::LogEntry;
use crate::units::Micros;

fn input(json: serde_json::Value) -> QuotaInput {
    serde_json::from_value(json).expect("input shape")
}

#[test]
fn validation_names_the_field_at_fault() {
    let cases = [
        (
            serde_json::json!({"metadata": {"name": "Bad_Name"}}),
            "metadata.name",
        ),
        (
            serde_json::json!({"metadata": {"name": "q", "namespace": "other"}}),
            "metadata.namespace",
        ),
        (
            serde_json::json!({"metadata": {"name": "q"}, "spec": {"object_limits": {"9lives": {"maximum": 1}}}}),
            "spec.object_limits.9lives",
        ),
        (
            serde_json::json!({"metadata": {"name": "q"}, "spec": {"object_limits": {"lb": {"maximum": -5}}}}),
            "spec.object_limits.lb.maximum",
        ),
        (
            serde_json::json!({"metadata": {"name": "q"}, "spec": {"resource_limits": {"vcpu": {"maximum": 0.0000001}}}}),
            "spec.resource_limits.vcpu.maximum",
        ),
        (
            serde_json::json!({"metadata": {"name": "q"}, "spec": {"api_limits": {"ves.io.List": {"unit": "fortnight", "rate": 1}}}}),
            "spec.api_limits.ves.io.List.unit",
        ),
        (
            serde_json::json!({"metadata": {"name": "q", "description": "x".repeat(1201)}}),
            "metadata.description",
        ),
    ];
    for (body, field) in cases {
        let error = validate(input(body.clone()), "system", None).unwrap_err();
        assert_eq!(error.field, field, "{body}: {error}");
    }
    let error = validate(
        input(serde_json::json!({"metadata": {"name": "q"}})),
        "shop",
        None,
    )
    .unwrap_err();
    assert_eq!(error.field, "metadata.namespace");
    let error = validate(
        input(serde_json::json!({"metadata": {"name": "other"}})),
        "system",
        Some("q"),
    )
    .unwrap_err();
    assert_eq!(error.field, "metadata.name");
}

#[test]
fn validation_keeps_exact_units() {
    let valid = validate(
        input(serde_json::json!({"metadata": {"name": "tight", "labels": {"team": "a"}},
            "spec": {"object_limits": {"http_loadbalancer": {"maximum": 2}},
                     "resource_limits": {"vcpu": {"maximum": 0.1}},
                     "api_limits": {"ves.io.List": {"unit": "per-minute", "rate": 30, "burst": 5}}}})),
        "system",
        None,
    )
    .unwrap();
    assert_eq!(valid.name, "tight");
    assert_eq!(valid.spec.object_limits["http_loadbalancer"], 2);
    assert_eq!(valid.spec.resource_limits["vcpu"], 100_000);
    assert_eq!(
        valid.spec.api_limits["ves.io.List"].unit,
        RateLimitUnit::Minute
    );
}

fn object(name: &str, disable: bool, objects: &[(&str, i64)]) -> QuotaObject {
    QuotaObject {
        name: name.into(),
        namespace: "system".into(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        description: String::new(),
        disable,
        spec: Limits {
            object_limits: objects.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Limits::default()
        },
        uid: "u".into(),
        tenant: "acme".into(),
        creation_timestamp: 0,
        modification_timestamp: 0,
        creator_id: "t".into(),
    }
}

fn plan() -> QuotaSpec {
    QuotaSpec {
        object_limits: BTreeMap::from([
            ("http_loadbalancer".into(), LimitType { maximum: 5 }),
            ("namespace".into(), LimitType { maximum: 3 }),
        ]),
        ..QuotaSpec::default()
    }
}

#[test]
fn objects_override_the_plan_the_tightest_wins_and_disabled_ones_do_not_count() {
    let loose = object("loose", false, &[("http_loadbalancer", 50)]);
    let tight = object("tight", false, &[("http_loadbalancer", 10)]);
    let off = object("off", true, &[("http_loadbalancer", 1), ("namespace", 1)]);
    let unlimited = object("unlimited", false, &[("namespace", UNLIMITED)]);
    let limits = effective_limits(&plan(), [&loose, &tight, &off, &unlimited]);
    assert_eq!(limits.object_limits["http_loadbalancer"], 10);
    assert_eq!(limits.object_limits["namespace"], UNLIMITED);
    let key = |name: &str| LimitKey {
        kind: QuotaKind::Object,
        name: name.into(),
    };
    assert_eq!(
        limits.level_limit(&key("http_loadbalancer")),
        Some(10_000_000)
    );
    assert_eq!(limits.level_limit(&key("namespace")), None);
    // Raising the plan's default works too: an object overrides it.
    assert_eq!(
        effective_limits(&plan(), [&loose]).object_limits["http_loadbalancer"],
        50
    );
}

#[test]
fn bands_and_crossings() {
    let limit = Some(10_000_000);
    assert_eq!(band(7_999_999, limit), 0);
    assert_eq!(band(8_000_000, limit), 1);
    assert_eq!(band(9_000_000, limit), 2);
    assert_eq!(band(10_000_000, limit), 3);
    assert_eq!(band(50, None), 0);
    assert_eq!(band(1, Some(0)), 3);
    let key = LimitKey {
        kind: QuotaKind::Object,
        name: "lb".into(),
    };
    let change = |from, to, level| BandChange {
        from,
        to,
        level,
        limit: 10,
    };
    let up = crossings("acme", &key, change(0, 2, 9), 7, 0);
    assert_eq!(
        up.iter()
            .map(|a| (a.threshold_percent, a.direction))
            .collect::<Vec<_>>(),
        [(80, Direction::Raised), (90, Direction::Raised)]
    );
    assert_eq!(up[0].id, "object:lb:80:raised:7");
    let down = crossings("acme", &key, change(3, 1, 8), 9, 0);
    assert_eq!(
        down.iter()
            .map(|a| (a.threshold_percent, a.direction))
            .collect::<Vec<_>>(),
        [(100, Direction::Cleared), (90, Direction::Cleared)]
    );
}

#[test]
fn label_filters() {
    let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
    assert!(LabelFilter::parse("team=a").unwrap().matches(&labels));
    assert!(!LabelFilter::parse("team!=a").unwrap().matches(&labels));
    assert!(LabelFilter::parse("team,!env").unwrap().matches(&labels));
    assert!(!LabelFilter::parse("env").unwrap().matches(&labels));
    assert!(LabelFilter::parse("").unwrap().matches(&labels));
    assert!(LabelFilter::parse("=x").is_err());
}

/// Quota state in maps: what the fold reads, updated with what it writes.
#[derive(Default)]
struct Maps {
    objects: RefCell<BTreeMap<Vec<u8>, QuotaObject>>,
    series: RefCell<BTreeMap<Vec<u8>, SeriesLevel>>,
    totals: RefCell<BTreeMap<Vec<u8>, i128>>,
    bands: RefCell<BTreeMap<Vec<u8>, u8>>,
}

impl QuotaReads for Maps {
    type Error = std::convert::Infallible;
    fn objects(&self, tenant: &str) -> Result<Vec<QuotaObject>, Self::Error> {
        let prefix = crate::log::keys::QuotaKey::objects_prefix(tenant);
        Ok(self
            .objects
            .borrow()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }
    fn series(&self, key: &[u8]) -> Result<Option<SeriesLevel>, Self::Error> {
        Ok(self.series.borrow().get(key).copied())
    }
    fn total(&self, key: &[u8]) -> Result<i128, Self::Error> {
        Ok(self.totals.borrow().get(key).copied().unwrap_or(0))
    }
    fn band(&self, key: &[u8]) -> Result<u8, Self::Error> {
        Ok(self.bands.borrow().get(key).copied().unwrap_or(0))
    }
    fn plan(&self, _tenant: &str) -> Result<Option<String>, Self::Error> {
        Ok(None)
    }
}

impl Maps {
    /// Folds `entries` (numbered from `first_seq`) in one batch and applies the writes.
    fn fold(&self, catalog: &Catalog, first_seq: u64, entries: &[LogEntry]) -> Vec<Alert> {
        let mut fold = QuotaFold::new(self, catalog);
        for (i, entry) in entries.iter().enumerate() {
            fold.fold(first_seq + i as u64, entry).unwrap();
        }
        self.apply(fold.writes)
    }

    /// Applies a fold's writes; returns its alerts.
    fn apply(&self, writes: fold::QuotaWrites) -> Vec<Alert> {
        for (k, v) in writes.objects {
            match v {
                Some(v) => self.objects.borrow_mut().insert(k, v),
                None => self.objects.borrow_mut().remove(&k),
            };
        }
        self.series.borrow_mut().extend(writes.series);
        self.totals.borrow_mut().extend(writes.totals);
        self.bands.borrow_mut().extend(writes.bands);
        writes
            .alert_rows
            .into_iter()
            .map(|(_, alert)| alert)
            .collect()
    }

    fn tenant_level(&self, key: &LimitKey) -> i128 {
        self.total(
            &crate::log::keys::QuotaKey::total("acme", crate::log::keys::Scope::Tenant, key)
                .encode(),
        )
        .unwrap()
    }
}

fn gauge(id: &str, namespace: &str, count: i64, at: i64) -> LogEntry {
    LogEntry::UsageRecorded {
        event: UsageEvent {
            tenant: "acme".into(),
            id: id.into(),
            namespace: namespace.into(),
            metric_label: "http_loadbalancers".into(),
            quantity: Micros(count * 1_000_000),
            timestamp: at,
            object_name: String::new(),
            deployment: String::new(),
            container: String::new(),
            labels: BTreeMap::new(),
        },
        source: EventSource::Http { received_at: at },
        recorded_at: at,
    }
}

#[test]
fn gauges_set_levels_and_alerts_fire_once_per_crossing_whatever_the_batching() {
    let catalog = Catalog::builtin().unwrap();
    let lb = LimitKey {
        kind: QuotaKind::Object,
        name: "http_loadbalancer".into(),
    };
    // The free plan allows 5 load balancers.
    let entries = vec![
        gauge("a", "shop", 3, 10),
        gauge("b", "blog", 1, 11), // 4 of 5: 80 %
        gauge("c", "shop", 4, 12), // 5 of 5: 90 % and 100 %
        gauge("d", "shop", 1, 9),  // older than "a": ignored (LATEST by event time)
        gauge("e", "shop", 2, 13), // 3 of 5: 60 %, every band cleared
        LogEntry::QuotaObjectPut {
            object: object("tight", false, &[("http_loadbalancer", 3)]),
            at: 14,
        }, // 3 of 3: 100 %
    ];
    let one_batch = Maps::default();
    let alerts = one_batch.fold(&catalog, 0, &entries);
    let summary: Vec<(u8, Direction, u64)> = alerts
        .iter()
        .map(|a| (a.threshold_percent, a.direction, a.trigger_seq))
        .collect();
    assert_eq!(
        summary,
        [
            (80, Direction::Raised, 1),
            (90, Direction::Raised, 2),
            (100, Direction::Raised, 2),
            (100, Direction::Cleared, 4),
            (90, Direction::Cleared, 4),
            (80, Direction::Cleared, 4),
            (80, Direction::Raised, 5),
            (90, Direction::Raised, 5),
            (100, Direction::Raised, 5),
        ]
    );
    assert_eq!(one_batch.tenant_level(&lb), 3_000_000);

    // One entry per batch gives the same alerts and the same state.
    let one_by_one = Maps::default();
    let mut alerts_one_by_one = Vec::new();
    for (seq, entry) in entries.iter().enumerate() {
        alerts_one_by_one.extend(one_by_one.fold(
            &catalog,
            seq as u64,
            std::slice::from_ref(entry),
        ));
    }
    assert_eq!(alerts_one_by_one, alerts);
    assert_eq!(*one_by_one.totals.borrow(), *one_batch.totals.borrow());
    assert_eq!(*one_by_one.bands.borrow(), *one_batch.bands.borrow());

    // Deleting the object returns to the plan's 5: 60 %, every band cleared.
    let cleared = one_batch.fold(
        &catalog,
        6,
        &[LogEntry::QuotaObjectDeleted {
            tenant: "acme".into(),
            namespace: "system".into(),
            name: "tight".into(),
            at: 15,
        }],
    );
    assert_eq!(cleared.len(), 3);
    assert!(cleared.iter().all(|a| a.direction == Direction::Cleared));
}

/// What a batch's fold would read, gathered from `maps` as the runner's prefetch gathers it
/// from the store: the tenants' objects, then the level rows their entries name.
fn snapshot<'a>(maps: &'a Maps, catalog: &Catalog, entries: &[LogEntry]) -> Snapshot<'a, Maps> {
    let mut snapshot = Snapshot::new(maps);
    for tenant in fold::tenants_to_read(entries, catalog) {
        let objects = maps.objects(&tenant).unwrap();
        snapshot.objects.insert(tenant.clone(), objects);
        snapshot.plans.insert(tenant, None);
    }
    let rows = RowsToRead::of(entries, catalog, &snapshot.objects);
    for key in rows.series {
        let level = maps.series(&key).unwrap();
        snapshot.series.insert(key, level);
    }
    for key in rows.totals {
        let total = maps.total(&key).unwrap();
        snapshot.totals.insert(key, total);
    }
    for key in rows.bands {
        let band = maps.band(&key).unwrap();
        snapshot.bands.insert(key, band);
    }
    snapshot
}

/// Folds `entries` as the runner does (a billing entry moves its tenant to `team-plan`).
fn fold_batch<R: QuotaReads<Error = std::convert::Infallible>>(
    reads: &R,
    catalog: &Catalog,
    first_seq: u64,
    entries: &[LogEntry],
) -> fold::QuotaWrites {
    let mut fold = QuotaFold::new(reads, catalog);
    for (i, entry) in entries.iter().enumerate() {
        let seq = first_seq + i as u64;
        fold.fold(seq, entry).unwrap();
        if let LogEntry::Billing { tenant, at, .. } = entry {
            fold.set_plan(tenant, "team-plan", seq, *at).unwrap();
        }
    }
    fold.writes
}

fn quota_entry(i: usize, (kind, tenant, namespace, amount): (u8, u8, u8, i64)) -> LogEntry {
    let tenant = format!("t{tenant}");
    let namespace = format!("ns{namespace}");
    let at = 1_000 + i as i64;
    let mut object = object(&format!("q{}", amount % 3), amount % 5 == 0, &[]);
    object.tenant = tenant.clone();
    match kind {
        0 | 1 => {
            let metric = if kind == 0 {
                "http_loadbalancers"
            } else {
                "appstack_vcpus"
            };
            LogEntry::UsageRecorded {
                event: UsageEvent {
                    tenant,
                    id: format!("e{i}"),
                    namespace,
                    metric_label: metric.into(),
                    quantity: Micros(amount * 1_000_000),
                    timestamp: at,
                    object_name: format!("o{}", amount % 2),
                    deployment: String::new(),
                    container: String::new(),
                    labels: BTreeMap::new(),
                },
                source: EventSource::Http { received_at: at },
                recorded_at: at,
            }
        }
        2 => {
            object
                .spec
                .object_limits
                .insert("http_loadbalancer".into(), amount % 7);
            object
                .spec
                .resource_limits
                .insert("vcpu".into(), amount * 500_000);
            if amount % 2 == 0 {
                object.spec.object_limits.insert("namespace".into(), 2);
            }
            LogEntry::QuotaObjectPut { object, at }
        }
        3 => LogEntry::QuotaObjectDeleted {
            tenant,
            namespace: "system".into(),
            name: object.name,
            at,
        },
        _ => LogEntry::Billing {
            tenant,
            at,
            change: crate::billing::BillingChange::AddonSubscribed {
                addon: "f5xc_waap_advanced".into(),
            },
        },
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// The prefetch lists every row a batch's fold reads: folded from the snapshot, each batch
    /// writes exactly what a fold reading the store as it goes writes, with no read missed.
    #[test]
    fn a_fold_from_its_prefetched_snapshot_reads_nothing_else_and_writes_the_same(
        specs in proptest::collection::vec((0u8..5, 0u8..2, 0u8..3, 0i64..12), 1..80),
        cut in 0usize..80,
    ) {
        let catalog = Catalog::builtin().unwrap();
        let entries: Vec<LogEntry> = specs.into_iter().enumerate().map(|(i, s)| quota_entry(i, s)).collect();
        let cut = cut.min(entries.len());
        let maps = Maps::default();
        let mut first_seq = 0;
        for batch in [&entries[..cut], &entries[cut..]] {
            let plain = fold_batch(&maps, &catalog, first_seq, batch);
            let prefetch = snapshot(&maps, &catalog, batch);
            let prefetched = fold_batch(&prefetch, &catalog, first_seq, batch);
            proptest::prop_assert_eq!(prefetch.misses(), 0);
            proptest::prop_assert_eq!(&prefetched, &plain);
            maps.apply(plain);
            first_seq += batch.len() as u64;
        }
    }
}
