//! Pure reporting: projection rows + catalog → the F5 usage response shapes.
//!
//! Series values combine over time by their meter's aggregation (hour rows merge into one
//! aggregate) and across series by addition; money is `billable units × cents` per line.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Plan};
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

/// `usage_details`: one item per (metric_label, namespace, object_name) over `range`.
pub fn usage_items(
    rows: &[(SeriesRow, Aggregate)],
    catalog: &Catalog,
    range: HourRange,
) -> Vec<UsageItem> {
    // Merge each series over its hours, then add series (deployments, containers) per item.
    let mut per_series: BTreeMap<&Series, Aggregate> = BTreeMap::new();
    for (row, aggregate) in rows {
        per_series.entry(&row.series).or_default().merge(aggregate);
    }
    let mut per_item: BTreeMap<(&str, &str, &str), i128> = BTreeMap::new();
    for (series, aggregate) in per_series {
        let Some(meter) = catalog.meter(&series.metric_label) else {
            continue;
        };
        let item = (
            series.metric_label.as_str(),
            series.namespace.as_str(),
            series.object_name.as_str(),
        );
        *per_item.entry(item).or_default() += aggregate.value(meter.aggregation);
    }
    per_item
        .into_iter()
        .filter_map(|((metric_label, namespace, object_name), quantity)| {
            let meter = catalog.meter(metric_label)?;
            let query = HourlyQuery {
                v: 1,
                namespace: namespace.to_owned(),
                metric_label: metric_label.to_owned(),
                object_name: object_name.to_owned(),
                from_hour: range.from_hour,
                to_hour: range.to_hour,
            };
            Some(UsageItem {
                metric_label: metric_label.to_owned(),
                usage_type: meter.usage_type.clone(),
                namespace: namespace.to_owned(),
                object_name: object_name.to_owned(),
                unit_name: meter.unit_name.clone(),
                quantity: units::micros_to_f64(quantity),
                start_timestamp: time::format_rfc3339(range.start()),
                end_timestamp: time::format_rfc3339(range.end()),
                hourly_breakdown_query: query.encode(),
            })
        })
        .collect()
}

/// `hourly_usage_details`: one item per (hour, deployment, container) of the queried item.
pub fn hourly_items(
    rows: &[(SeriesRow, Aggregate)],
    catalog: &Catalog,
    query: &HourlyQuery,
) -> Vec<HourlyItem> {
    let Some(meter) = catalog.meter(&query.metric_label) else {
        return Vec::new();
    };
    let mut per_hour: BTreeMap<(u32, &str, &str), Aggregate> = BTreeMap::new();
    for (row, aggregate) in rows {
        let series = &row.series;
        if series.metric_label == query.metric_label
            && series.object_name == query.object_name
            && series.namespace == query.namespace
        {
            per_hour
                .entry((
                    row.bucket,
                    series.deployment.as_str(),
                    series.container.as_str(),
                ))
                .or_default()
                .merge(aggregate);
        }
    }
    per_hour
        .into_iter()
        .map(|((hour, deployment, container), aggregate)| HourlyItem {
            start_timestamp: time::format_rfc3339(time::hour_start(hour)),
            end_timestamp: time::format_rfc3339(time::hour_start(hour + 1)),
            quantity: units::micros_to_f64(aggregate.value(meter.aggregation)),
            unit_name: meter.unit_name.clone(),
            deployment: deployment.to_owned(),
            container: container.to_owned(),
        })
        .collect()
}

/// Per-metric totals (micro-units) of rows over a range: series merged over time, then added.
pub fn metric_totals(rows: &[(SeriesRow, Aggregate)], catalog: &Catalog) -> BTreeMap<String, i128> {
    let mut per_series: BTreeMap<&Series, Aggregate> = BTreeMap::new();
    for (row, aggregate) in rows {
        per_series.entry(&row.series).or_default().merge(aggregate);
    }
    let mut totals = BTreeMap::new();
    for (series, aggregate) in per_series {
        if let Some(meter) = catalog.meter(&series.metric_label) {
            *totals.entry(series.metric_label.clone()).or_default() +=
                aggregate.value(meter.aggregation);
        }
    }
    totals
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

/// `monthly_usage`: the cost of each billing period with usage, oldest first.
pub fn monthly_items(
    period_totals: &BTreeMap<u32, BTreeMap<String, i128>>,
    catalog: &Catalog,
    plan: &Plan,
) -> Vec<MonthlyUsageItem> {
    period_totals
        .iter()
        .map(|(&month, totals)| {
            let (start, end) = (time::month_start(month), time::month_start(month + 1));
            let (_, amount) = cost_lines(totals, catalog, plan, start, end);
            MonthlyUsageItem {
                start_timestamp: time::format_rfc3339(start),
                end_timestamp: time::format_rfc3339(end),
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

#[cfg(test)]
mod tests {
    use super::*;

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
