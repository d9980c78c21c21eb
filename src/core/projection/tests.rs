//! Property tests of the folds: order never matters, batches compose, buckets agree.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

use super::testing::entry;

fn entries() -> impl Strategy<Value = Vec<LogEntry>> {
    proptest::collection::vec(
        (0u8..2, 0u8..3, 0usize..4, 0i64..5_000_000, 0i64..40, 0u8..3),
        1..60,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (t, ns, m, q, h, o))| entry(i, t, ns, m, q, h, o))
            .collect()
    })
}

fn incremental(chunks: &[&[LogEntry]], catalog: &Catalog) -> RowUpdates {
    let mut hourly: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    let mut monthly: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    for chunk in chunks {
        let mut deltas = UsageDeltas::default();
        for e in *chunk {
            deltas.fold(e, catalog);
        }
        let updates = deltas.rows();
        for (stored, rows) in [
            (&mut hourly, updates.hourly),
            (&mut monthly, updates.monthly),
        ] {
            for (key, delta) in rows {
                stored.entry(key).or_default().merge(&delta);
            }
        }
    }
    RowUpdates {
        hourly: hourly.into_iter().collect(),
        monthly: monthly.into_iter().collect(),
    }
}

/// The fold as written before the roll-up: four ordered rows per event, keyed as stored.
fn reference_fold(events: &[LogEntry], catalog: &Catalog) -> RowUpdates {
    let mut hourly: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    let mut monthly: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    for entry in events {
        let LogEntry::UsageRecorded { event, .. } = entry else {
            continue;
        };
        if catalog.meter(&event.metric_label).is_none() {
            continue;
        }
        let series = keys::SeriesRef::of(event);
        let (hour, month) = (
            time::hour_index(event.timestamp),
            time::month_index(event.timestamp),
        );
        for scope in [
            keys::Scope::Namespace(&event.namespace),
            keys::Scope::Tenant,
        ] {
            for (rows, bucket) in [(&mut hourly, hour), (&mut monthly, month)] {
                rows.entry(
                    keys::SeriesKey {
                        tenant: &event.tenant,
                        scope,
                        bucket,
                        series,
                    }
                    .encode(),
                )
                .or_default()
                .merge(&Aggregate::of(event));
            }
        }
    }
    RowUpdates {
        hourly: hourly.into_iter().collect(),
        monthly: monthly.into_iter().collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_rolled_up_fold_equals_four_rows_per_event(events in entries()) {
        let catalog = Catalog::builtin().unwrap();
        prop_assert_eq!(fold_from_scratch(&events, &catalog), reference_fold(&events, &catalog));
    }

    #[test]
    fn any_permutation_folds_to_the_same_rows(events in entries(), seed: u64) {
        let catalog = Catalog::builtin().unwrap();
        let expected = fold_from_scratch(&events, &catalog);
        let mut shuffled = events.clone();
        // A deterministic shuffle from the seed (Fisher–Yates with an LCG).
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(fold_from_scratch(&shuffled, &catalog), expected);
    }

    #[test]
    fn folding_in_batches_equals_folding_at_once(events in entries(), cut1 in 0usize..60, cut2 in 0usize..60) {
        let catalog = Catalog::builtin().unwrap();
        let (a, b) = (cut1.min(events.len()), cut2.min(events.len()));
        let (a, b) = (a.min(b), a.max(b));
        let chunks = [&events[..a], &events[a..b], &events[b..]];
        prop_assert_eq!(incremental(&chunks, &catalog), fold_from_scratch(&events, &catalog));
    }

    #[test]
    fn hourly_sums_equal_monthly_sums(events in entries()) {
        let catalog = Catalog::builtin().unwrap();
        let rows = fold_from_scratch(&events, &catalog);
        let mut from_hours: BTreeMap<(String, String, u32, keys::Series), Aggregate> = BTreeMap::new();
        for (key, agg) in &rows.hourly {
            let row = keys::decode_series_key(key).expect("hourly key");
            from_hours
                .entry((row.tenant, row.scope, time::month_of_hour(row.bucket), row.series))
                .or_default()
                .merge(agg);
        }
        let from_months: BTreeMap<_, _> = rows.monthly.iter().map(|(key, agg)| {
            let row = keys::decode_series_key(key).expect("monthly key");
            ((row.tenant, row.scope, row.bucket, row.series), *agg)
        }).collect();
        prop_assert_eq!(from_hours, from_months);
    }

    #[test]
    fn aggregates_round_trip(sum: i128, count: u64, max: i64, last: i64, last_at: i64, last_tiebreak: u64) {
        let agg = Aggregate { sum, count, max, last, last_at, last_tiebreak };
        prop_assert_eq!(Aggregate::decode(&agg.encode()).unwrap(), agg);
    }
}

#[test]
fn tenant_scope_rows_mirror_namespace_rows() {
    let catalog = Catalog::builtin().unwrap();
    let rows = fold_from_scratch(
        &[
            entry(0, 0, 1, 0, 5_000_000, 0, 0),
            entry(1, 0, 2, 0, 7_000_000, 0, 0),
        ],
        &catalog,
    );
    // Two namespaces → two namespace rows and two tenant-wide rows per bucket.
    assert_eq!(rows.hourly.len(), 4);
    let tenant_total: i128 = rows
        .hourly
        .iter()
        .filter(|(k, _)| keys::decode_series_key(k).is_some_and(|row| row.scope == "*"))
        .map(|(_, aggregate)| aggregate.sum)
        .sum();
    assert_eq!(tenant_total, 12_000_000);
}

#[test]
fn the_merge_operator_refuses_undecodable_values_and_saturates() {
    let one = Aggregate {
        sum: i128::MAX,
        count: u64::MAX,
        max: 7,
        last: 7,
        last_at: 1,
        last_tiebreak: 1,
    }
    .encode();
    // An undecodable stored value or operand gives no row (RocksDB reports corruption).
    assert_eq!(merge_encoded(Some(b"junk"), [one.as_slice()]), None);
    assert_eq!(
        merge_encoded(None, [one.as_slice(), b"\x01short".as_slice()]),
        None
    );
    // Sums and counts stop at their bounds instead of overflowing inside RocksDB.
    let merged = merge_encoded(Some(one.as_slice()), [one.as_slice()]).expect("merged");
    let row = Aggregate::decode(&merged).expect("row");
    assert_eq!((row.sum, row.count, row.max), (i128::MAX, u64::MAX, 7));
}
