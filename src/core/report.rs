//! Pure reporting: projection rows + catalog → the F5 usage response shapes.
//!
//! Series values combine over time by their meter's aggregation (hour rows merge into one
//! aggregate) and across series by addition; money is `billable units × cents` per line.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::catalog::{Aggregation, Catalog, Plan};
use crate::log::keys::{Series, SeriesRow};
use crate::projection::Aggregate;
use crate::time::{self, UnixMicros};
use crate::units::{self, Cents};

/// F5 `usageHourlyItem`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourlyItem {
    pub start_timestamp: String,
    pub end_timestamp: String,
    pub quantity: f64,
    pub unit_name: String,
    pub deployment: String,
    pub container: String,
}

/// F5 `usageUsageItem` (the deprecated inline `hourly_breakdown` is left out; use the query).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageItem {
    pub metric_label: String,
    pub usage_type: String,
    pub namespace: String,
    pub object_name: String,
    pub unit_name: String,
    pub quantity: f64,
    pub start_timestamp: String,
    pub end_timestamp: String,
    pub hourly_breakdown_query: String,
}

/// F5 `usageCalculatedUsageItem`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalculatedUsageItem {
    pub usage_type: String,
    pub metric_labels: Vec<String>,
    pub unit_name: String,
    pub quantity: f64,
    pub unit_name_billable: String,
    pub quantity_billable: String,
    pub amount: String,
    pub currency_code: String,
    pub start_timestamp: String,
    pub end_timestamp: String,
    pub fixed: bool,
    pub status: &'static str,
}

/// F5 `usageMonthlyUsageType`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthlyUsageItem {
    pub start_timestamp: String,
    pub end_timestamp: String,
    pub amount: String,
    pub currency_code: String,
}

/// F5 `billingUsageSummaryItem`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageSummaryItem {
    pub name: String,
    pub service: String,
    pub usage_metric_data: UsageMetricData,
    pub billing_metric_data: BillingMetricData,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageMetricData {
    pub unit: String,
    pub metric_value: MetricValue,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricValue {
    pub timestamp: f64,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BillingMetricData {
    pub unit: String,
    pub value: String,
}

/// What `hourly_breakdown_query` carries: the item's identity and its whole-hour range. The
/// tenant is never in it; it always comes from the caller's credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourlyQuery {
    pub v: u8,
    pub namespace: String,
    pub metric_label: String,
    pub object_name: String,
    pub from_hour: u32,
    pub to_hour: u32,
}

impl HourlyQuery {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes a query string; `None` for anything `usage_details` did not produce.
    pub fn decode(text: &str) -> Option<HourlyQuery> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
        let query: HourlyQuery = serde_json::from_slice(&bytes).ok()?;
        // Forged queries must not steer key prefixes: the parts are checked like event fields.
        let valid = query.v == 1
            && query.from_hour <= query.to_hour
            && crate::event::is_dns1035_label(&query.namespace)
            && crate::catalog::is_metric_label(&query.metric_label)
            && !query.object_name.contains(char::is_control);
        valid.then_some(query)
    }
}

/// A half-open range of whole UTC hours `[from_hour, to_hour)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourRange {
    pub from_hour: u32,
    pub to_hour: u32,
}

impl HourRange {
    /// The whole hours covering `[from, to)`: `from` rounds down, `to` rounds up.
    pub fn covering(from: UnixMicros, to: UnixMicros) -> HourRange {
        let from_hour = time::hour_index(from);
        let mut to_hour = time::hour_index(to);
        if time::hour_start(to_hour) < to {
            to_hour += 1;
        }
        HourRange {
            from_hour,
            to_hour: to_hour.max(from_hour),
        }
    }

    pub fn start(&self) -> UnixMicros {
        time::hour_start(self.from_hour)
    }

    pub fn end(&self) -> UnixMicros {
        time::hour_start(self.to_hour)
    }
}

/// The first `cap` keys of what is added, in key order, and whether any other was seen: what
/// a capped list keeps while rows stream by in any order (memory follows the cap).
#[derive(Debug)]
pub struct FirstKeys<K, V> {
    cap: usize,
    map: BTreeMap<K, V>,
    truncated: bool,
}

impl<K: Ord, V: Default> FirstKeys<K, V> {
    pub fn new(cap: usize) -> Self {
        FirstKeys {
            cap,
            map: BTreeMap::new(),
            truncated: false,
        }
    }

    /// The value of `key`, or `None` when `key` is past the first `cap` keys seen so far. A
    /// key that pushes out the largest kept one pushes it out for good: every later key
    /// that is kept is smaller still.
    pub fn entry(&mut self, key: K) -> Option<&mut V> {
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.truncated = true;
            match self.map.last_key_value() {
                Some((last, _)) if key < *last => {
                    self.map.pop_last();
                }
                _ => return None,
            }
        }
        Some(self.map.entry(key).or_default())
    }

    /// The kept keys in order, and whether others were left out.
    pub fn finish(self) -> (BTreeMap<K, V>, bool) {
        (self.map, self.truncated)
    }
}

/// A `usage_details` item: (metric_label, namespace, object_name).
type ItemKey = (String, String, String);
/// An item's series by (deployment, container), each merged over the hours read.
type ItemSeries = BTreeMap<(String, String), Aggregate>;

/// `usage_details`: one item per (metric_label, namespace, object_name), folded from hourly
/// rows as they are read; at most `cap` items, the first in that order.
#[derive(Debug)]
pub struct UsageItems {
    items: FirstKeys<ItemKey, ItemSeries>,
}

impl UsageItems {
    pub fn new(cap: usize) -> Self {
        UsageItems {
            items: FirstKeys::new(cap),
        }
    }

    pub fn add(&mut self, catalog: &Catalog, row: SeriesRow, aggregate: Aggregate) {
        // Rows of meters the catalog no longer has make no item, so they take no place.
        if catalog.meter(&row.series.metric_label).is_none() {
            return;
        }
        let Series {
            namespace,
            metric_label,
            object_name,
            deployment,
            container,
        } = row.series;
        if let Some(series) = self.items.entry((metric_label, namespace, object_name)) {
            series
                .entry((deployment, container))
                .or_default()
                .merge(&aggregate);
        }
    }

    /// The items over `range` (series values added per item), and whether the cap cut them.
    pub fn finish(self, catalog: &Catalog, range: HourRange) -> (Vec<UsageItem>, bool) {
        let (items, truncated) = self.items.finish();
        let items = items
            .into_iter()
            .filter_map(|((metric_label, namespace, object_name), series)| {
                let meter = catalog.meter(&metric_label)?;
                let quantity: i128 = series
                    .values()
                    .map(|aggregate| aggregate.value(meter.aggregation))
                    .sum();
                let query = HourlyQuery {
                    v: 1,
                    namespace: namespace.clone(),
                    metric_label: metric_label.clone(),
                    object_name: object_name.clone(),
                    from_hour: range.from_hour,
                    to_hour: range.to_hour,
                };
                Some(UsageItem {
                    usage_type: meter.usage_type.clone(),
                    unit_name: meter.unit_name.clone(),
                    quantity: units::micros_to_f64(quantity),
                    start_timestamp: time::format_rfc3339(range.start()),
                    end_timestamp: time::format_rfc3339(range.end()),
                    hourly_breakdown_query: query.encode(),
                    metric_label,
                    namespace,
                    object_name,
                })
            })
            .collect();
        (items, truncated)
    }
}

/// `hourly_usage_details`: one item per (hour, deployment, container) of the queried item,
/// folded from rows as they are read; at most `cap` items, the first in that order.
#[derive(Debug)]
pub struct HourlyItems {
    query: HourlyQuery,
    items: FirstKeys<(u32, String, String), Aggregate>,
}

impl HourlyItems {
    pub fn new(query: HourlyQuery, cap: usize) -> Self {
        HourlyItems {
            query,
            items: FirstKeys::new(cap),
        }
    }

    pub fn add(&mut self, _catalog: &Catalog, row: SeriesRow, aggregate: Aggregate) {
        let series = &row.series;
        if series.metric_label != self.query.metric_label
            || series.object_name != self.query.object_name
            || series.namespace != self.query.namespace
        {
            return;
        }
        let Series {
            deployment,
            container,
            ..
        } = row.series;
        if let Some(hour) = self.items.entry((row.bucket, deployment, container)) {
            hour.merge(&aggregate);
        }
    }

    /// The items, and whether the cap cut them.
    pub fn finish(self, catalog: &Catalog) -> (Vec<HourlyItem>, bool) {
        let (items, truncated) = self.items.finish();
        let Some(meter) = catalog.meter(&self.query.metric_label) else {
            return (Vec::new(), false);
        };
        let items = items
            .into_iter()
            .map(|((hour, deployment, container), aggregate)| HourlyItem {
                start_timestamp: time::format_rfc3339(time::hour_start(hour)),
                end_timestamp: time::format_rfc3339(time::hour_start(hour + 1)),
                quantity: units::micros_to_f64(aggregate.value(meter.aggregation)),
                unit_name: meter.unit_name.clone(),
                deployment,
                container,
            })
            .collect();
        (items, truncated)
    }
}

/// Per-metric totals (micro-units) over a range, folded from rows as they are read: series
/// merged over time, then added. SUM and COUNT add up row by row; only MAX and LATEST series
/// are held until the end.
#[derive(Debug, Default)]
pub struct MetricTotals {
    additive: BTreeMap<String, i128>,
    per_series: BTreeMap<Series, Aggregate>,
}

impl MetricTotals {
    pub fn add(&mut self, catalog: &Catalog, row: SeriesRow, aggregate: Aggregate) {
        let Some(meter) = catalog.meter(&row.series.metric_label) else {
            return;
        };
        match meter.aggregation {
            Aggregation::Sum | Aggregation::Count => {
                *self.additive.entry(row.series.metric_label).or_default() +=
                    aggregate.value(meter.aggregation);
            }
            Aggregation::Max | Aggregation::Latest => {
                self.per_series
                    .entry(row.series)
                    .or_default()
                    .merge(&aggregate);
            }
        }
    }

    pub fn finish(self, catalog: &Catalog) -> BTreeMap<String, i128> {
        let mut totals = self.additive;
        for (series, aggregate) in self.per_series {
            if let Some(meter) = catalog.meter(&series.metric_label) {
                *totals.entry(series.metric_label).or_default() +=
                    aggregate.value(meter.aggregation);
            }
        }
        totals
    }
}

/// One cost line per metered label with usage; returns the lines and their total.
pub fn cost_lines(
    totals: &BTreeMap<String, i128>,
    catalog: &Catalog,
    plan: &Plan,
    start: UnixMicros,
    end: UnixMicros,
) -> (Vec<CalculatedUsageItem>, Cents) {
    let mut lines = Vec::new();
    let mut total = Cents(0);
    for (label, &quantity) in totals {
        let Some(meter) = catalog.meter(label) else {
            continue;
        };
        if quantity == 0 {
            continue;
        }
        let billable = units::billable_units(quantity, meter.division_factor);
        let amount = units::line_amount(billable, catalog.price(plan, label));
        total = Cents(total.0.saturating_add(amount.0));
        lines.push(CalculatedUsageItem {
            usage_type: meter.usage_type.clone(),
            metric_labels: vec![label.clone()],
            unit_name: meter.unit_name.clone(),
            quantity: units::micros_to_f64(quantity),
            unit_name_billable: meter.unit_name_billable.clone(),
            quantity_billable: billable.to_string(),
            amount: amount.0.to_string(),
            currency_code: catalog.currency().to_owned(),
            start_timestamp: time::format_rfc3339(start),
            end_timestamp: time::format_rfc3339(end),
            fixed: false,
            status: "STATUS_ACTIVE",
        });
    }
    (lines, total)
}

/// One billing period's usage in a scope, with the plan it is priced at.
pub struct PeriodUsage<'a> {
    pub start: UnixMicros,
    pub end: UnixMicros,
    pub plan: &'a Plan,
    /// Metric label → micro-units.
    pub totals: BTreeMap<String, i128>,
}

/// `monthly_usage`: one item per billing period, priced at the period's own plan.
pub fn monthly_items(periods: &[PeriodUsage<'_>], catalog: &Catalog) -> Vec<MonthlyUsageItem> {
    periods
        .iter()
        .map(|period| {
            let (_, amount) = cost_lines(
                &period.totals,
                catalog,
                period.plan,
                period.start,
                period.end,
            );
            MonthlyUsageItem {
                start_timestamp: time::format_rfc3339(period.start),
                end_timestamp: time::format_rfc3339(period.end),
                amount: amount.0.to_string(),
                currency_code: catalog.currency().to_owned(),
            }
        })
        .collect()
}

/// `usage_summary`: per meter with usage, the raw value and the billing value (raw ÷ factor).
pub fn usage_summary(
    totals: &BTreeMap<String, i128>,
    catalog: &Catalog,
    end: UnixMicros,
) -> Vec<UsageSummaryItem> {
    totals
        .iter()
        .filter(|(_, quantity)| **quantity != 0)
        .filter_map(|(label, &quantity)| {
            let meter = catalog.meter(label)?;
            let raw = units::format_micros(quantity);
            Some(UsageSummaryItem {
                name: meter.usage_type.clone(),
                service: meter.service.clone(),
                usage_metric_data: UsageMetricData {
                    unit: meter.unit_name.clone(),
                    metric_value: MetricValue {
                        timestamp: end as f64 / time::MICROS_PER_SECOND as f64,
                        value: if raw.contains('.') {
                            raw
                        } else {
                            format!("{raw}.0")
                        },
                    },
                },
                billing_metric_data: BillingMetricData {
                    unit: meter.unit_name_billable.clone(),
                    value: units::format_ratio(quantity, meter.division_factor),
                },
            })
        })
        .collect()
}

/// One alert as JSON: what the alert list shows and the webhook receives. `position` is where
/// it is filed ([`crate::quota::alert_position`]), shown as `seq`.
pub fn alert_json(position: u64, alert: &crate::quota::Alert) -> serde_json::Value {
    let number = |micros: i128| {
        units::format_micros(micros)
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)
    };
    serde_json::json!({
        "id": alert.id,
        "seq": position.to_string(),
        "tenant": alert.tenant,
        "kind": crate::quota::kind_name(alert.key.kind),
        "key": alert.key.name,
        "threshold_percent": alert.threshold_percent,
        "direction": match alert.direction {
            crate::quota::Direction::Raised => "RAISED",
            crate::quota::Direction::Cleared => "CLEARED",
        },
        "level": number(alert.level),
        "limit": number(alert.limit),
        "at": time::format_rfc3339(alert.at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order rows come in, a capped list keeps the first `cap` keys with every
        /// row of each merged, and says whether others were left out.
        #[test]
        fn first_keys_keep_the_smallest_keys_whole(keys in proptest::collection::vec(0u8..40, 0..200), cap in 1usize..12) {
            let mut first = FirstKeys::<u8, u32>::new(cap);
            let mut all: BTreeMap<u8, u32> = BTreeMap::new();
            for &key in &keys {
                if let Some(count) = first.entry(key) {
                    *count += 1;
                }
                *all.entry(key).or_default() += 1;
            }
            let (kept, truncated) = first.finish();
            let expected: BTreeMap<u8, u32> = all.iter().take(cap).map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(kept, expected);
            prop_assert_eq!(truncated, all.len() > cap);
        }
    }

    fn row(hour: u32, namespace: &str, metric: &str, object: &str, container: &str) -> SeriesRow {
        SeriesRow {
            tenant: "t".into(),
            scope: "*".into(),
            bucket: hour,
            series: Series {
                namespace: namespace.into(),
                metric_label: metric.into(),
                object_name: object.into(),
                deployment: String::new(),
                container: container.into(),
            },
        }
    }

    fn quantity(units: i64) -> Aggregate {
        let mut aggregate = Aggregate::default();
        aggregate.merge(&Aggregate {
            sum: i128::from(units) * 1_000_000,
            count: 1,
            max: units * 1_000_000,
            last: units * 1_000_000,
            last_at: 0,
            last_tiebreak: 0,
        });
        aggregate
    }

    #[test]
    fn metric_totals_add_sums_by_row_and_gauges_by_series() {
        let catalog = Catalog::builtin().unwrap();
        let mut totals = MetricTotals::default();
        // Two hours of a SUM and of a LATEST meter, in two series each.
        for (hour, units) in [(10, 1), (11, 2)] {
            for object in ["a", "b"] {
                let mut gauge = quantity(units * 10);
                gauge.last_at = i64::from(hour);
                totals.add(
                    &catalog,
                    row(hour, "shop", "http_lb_requests", object, ""),
                    quantity(units),
                );
                totals.add(
                    &catalog,
                    row(hour, "shop", "http_loadbalancers", object, ""),
                    gauge,
                );
            }
        }
        totals.add(
            &catalog,
            row(10, "shop", "no_such_meter", "a", ""),
            quantity(5),
        );
        let totals = totals.finish(&catalog);
        let expected: BTreeMap<String, i128> = [
            ("http_lb_requests".to_owned(), 6_000_000),
            ("http_loadbalancers".to_owned(), 40_000_000),
        ]
        .into();
        assert_eq!(totals, expected);
    }

    #[test]
    fn usage_items_are_capped_in_item_order_with_every_hour_of_the_kept_ones() {
        let catalog = Catalog::builtin().unwrap();
        let range = HourRange {
            from_hour: 10,
            to_hour: 12,
        };
        // Hour-major, as the hourly rows are stored: later items first in the first hour.
        let rows = [
            row(10, "shop", "http_lb_requests", "lb-c", ""),
            row(10, "shop", "http_lb_requests", "lb-b", "x"),
            row(10, "shop", "no_such_meter", "lb-a", ""),
            row(11, "shop", "http_lb_requests", "lb-a", ""),
            row(11, "shop", "http_lb_requests", "lb-b", "y"),
            row(11, "shop", "http_lb_requests", "lb-b", "x"),
        ];
        let mut items = UsageItems::new(2);
        for (units, row) in (1..).zip(rows) {
            items.add(&catalog, row, quantity(units));
        }
        let (items, truncated) = items.finish(&catalog, range);
        let got: Vec<(&str, f64)> = items
            .iter()
            .map(|i| (i.object_name.as_str(), i.quantity))
            .collect();
        assert_eq!(got, [("lb-a", 4.0), ("lb-b", 2.0 + 5.0 + 6.0)]);
        assert!(truncated, "lb-c was left out");
        let mut all = UsageItems::new(3);
        all.add(
            &catalog,
            row(10, "shop", "http_lb_requests", "lb-a", ""),
            quantity(1),
        );
        assert!(!all.finish(&catalog, range).1);
    }

    #[test]
    fn hourly_queries_round_trip_and_refuse_garbage() {
        let query = HourlyQuery {
            v: 1,
            namespace: "shop".into(),
            metric_label: "m".into(),
            object_name: "lb".into(),
            from_hour: 5,
            to_hour: 9,
        };
        assert_eq!(HourlyQuery::decode(&query.encode()), Some(query.clone()));
        assert_eq!(HourlyQuery::decode("not base64!"), None);
        let forged = HourlyQuery {
            namespace: "shop\u{0}x".into(),
            ..query.clone()
        };
        assert_eq!(HourlyQuery::decode(&forged.encode()), None);
        assert_eq!(
            HourlyQuery::decode(&URL_SAFE_NO_PAD.encode(b"{\"v\":2}")),
            None
        );
    }

    #[test]
    fn ranges_cover_whole_hours() {
        let at = |s| time::parse_rfc3339(s).unwrap();
        let range = HourRange::covering(at("2026-11-28T10:30:00Z"), at("2026-11-28T12:00:00Z"));
        assert_eq!(time::format_rfc3339(range.start()), "2026-11-28T10:00:00Z");
        assert_eq!(time::format_rfc3339(range.end()), "2026-11-28T12:00:00Z");
        let range = HourRange::covering(at("2026-11-28T10:30:00Z"), at("2026-11-28T12:00:01Z"));
        assert_eq!(time::format_rfc3339(range.end()), "2026-11-28T13:00:00Z");
    }

    #[test]
    fn cost_lines_round_billable_units_as_f5_says() {
        let catalog = Catalog::builtin().unwrap();
        let plan = catalog.plan("individual-plan").unwrap();
        let mut totals = BTreeMap::new();
        totals.insert(
            "data_transfer_bytes".to_owned(),
            2_500_000_000i128 * 1_000_000,
        ); // 2.5 GB → 2 GB
        totals.insert("public_vip_hours".to_owned(), 20_000_000); // 20 h / 24 → 1 VIP-day
        totals.insert("http_lb_requests".to_owned(), 0);
        let (lines, total) = cost_lines(&totals, &catalog, plan, 0, 1);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].quantity_billable, "2");
        assert_eq!(lines[0].amount, "16");
        assert_eq!(lines[1].quantity_billable, "1");
        assert_eq!(lines[1].amount, "120");
        assert_eq!(total, Cents(136));
    }
}
