//! The F5 usage endpoints: usage_details, hourly_usage_details, current_usage, monthly_usage
//! and usage_summary, answered from the projections.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::extract::{InNamespace, JsonBody, Read, RequestBody, scope_of};
use super::{ApiError, AppState, list_headers};
use std::collections::BTreeMap;

use crate::billing::TenantBilling;
use crate::catalog::Catalog;
use crate::log::keys::{Scope, SeriesRow};
use crate::projection::Aggregate;
use crate::projection::read;
use crate::report::{
    self, CalculatedUsageItem, HourRange, HourlyItem, HourlyItems, HourlyQuery, MetricTotals,
    MonthlyUsageItem, UsageItem, UsageItems, UsageSummaryItem,
};
use crate::time::{self, UnixMicros};

/// Longest range one usage query may cover.
pub const MAX_QUERY_DAYS: i64 = 400;
/// `usage_summary`'s default window.
const SUMMARY_DEFAULT: i64 = 6 * time::MICROS_PER_HOUR;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeRequest {
    namespace: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourlyRequest {
    namespace: Option<String>,
    query: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthlyRequest {
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryRequest {
    start_time: Option<String>,
    end_time: Option<String>,
}

impl RequestBody for RangeRequest {
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl RequestBody for HourlyRequest {
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl RequestBody for MonthlyRequest {
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl RequestBody for SummaryRequest {}

#[derive(Serialize)]
pub struct UsageDetailsResponse {
    usage_items: Vec<UsageItem>,
}

#[derive(Serialize)]
pub struct HourlyUsageDetailsResponse {
    hourly_usage_items: Vec<HourlyItem>,
}

#[derive(Serialize)]
pub struct CurrentUsageResponse {
    usage_items: Vec<CalculatedUsageItem>,
    total_cost: String,
    discount: String,
    coupons: Vec<serde_json::Value>,
}

#[derive(Serialize)]
pub struct MonthlyUsageResponse {
    monthly_usage_items: Vec<MonthlyUsageItem>,
}

#[derive(Serialize)]
pub struct UsageSummaryResponse {
    usage_summary_items: Vec<UsageSummaryItem>,
}

fn parse_time(field: &str, text: &str) -> Result<UnixMicros, ApiError> {
    time::parse_rfc3339(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{field}: `{}` is not an RFC 3339 time",
            shorten(text)
        ))
    })
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The tenant's billing state and the range `request` asks for: by default the tenant's open
/// billing period (the default of `usage_details` and `current_usage` alike).
async fn billing_and_range(
    state: &AppState,
    tenant: &str,
    request: &RangeRequest,
) -> Result<(TenantBilling, (UnixMicros, UnixMicros)), ApiError> {
    let billing = super::billing::tenant_state(state, tenant).await?;
    let open = billing.open_period();
    let range = resolve_range(
        request.from.as_deref(),
        request.to.as_deref(),
        (open.start, open.end),
    )?;
    Ok((billing, range))
}

/// Resolves `from`/`to` (each optional) against a default range and checks it.
fn resolve_range(
    from: Option<&str>,
    to: Option<&str>,
    default: (UnixMicros, UnixMicros),
) -> Result<(UnixMicros, UnixMicros), ApiError> {
    let from = from
        .filter(|s| !s.is_empty())
        .map(|s| parse_time("from", s))
        .transpose()?;
    let to = to
        .filter(|s| !s.is_empty())
        .map(|s| parse_time("to", s))
        .transpose()?;
    let range = (from.unwrap_or(default.0), to.unwrap_or(default.1));
    check_range(range, ("from", "to"))?;
    Ok(range)
}

/// A query range must be ordered, after 1970 and at most [`MAX_QUERY_DAYS`] long.
fn check_range(
    (from, to): (UnixMicros, UnixMicros),
    (from_name, to_name): (&str, &str),
) -> Result<(), ApiError> {
    if from >= to {
        return Err(ApiError::BadRequest(format!(
            "{from_name}: must be before `{to_name}`"
        )));
    }
    if from < 0 {
        return Err(ApiError::BadRequest(format!(
            "{from_name}: must not be before 1970"
        )));
    }
    if to - from > MAX_QUERY_DAYS * 24 * time::MICROS_PER_HOUR {
        return Err(ApiError::BadRequest(format!(
            "{to_name}: the range is longer than {MAX_QUERY_DAYS} days; query in parts"
        )));
    }
    Ok(())
}

/// Folds the hourly rows of `tenant` in `scope` over `range` into `fold` as they are read
/// (never all held at once), off the async workers.
async fn fold_hours<F: Send + 'static>(
    state: &AppState,
    tenant: &str,
    scope: Scope<'_>,
    range: HourRange,
    mut fold: F,
    add: fn(&mut F, &Catalog, SeriesRow, Aggregate),
) -> Result<F, ApiError> {
    let (store, catalog, tenant, scope) = (
        state.engine.store().clone(),
        state.engine.config().catalog.clone(),
        tenant.to_owned(),
        scope.as_key_part().to_owned(),
    );
    Ok(tokio::task::spawn_blocking(move || {
        read::visit_hourly_rows(
            &store,
            &tenant,
            Scope::from_key_part(&scope),
            range.from_hour,
            range.to_hour,
            |row, aggregate| add(&mut fold, &catalog, row, aggregate),
        )
        .map(|()| fold)
    })
    .await??)
}

/// Per-meter usage of one billing period of the tenant in `scope`, from the billing rows.
async fn billing_period_totals(
    state: &AppState,
    tenant: &str,
    period_uid: &str,
    scope: Scope<'_>,
) -> Result<BTreeMap<String, i128>, ApiError> {
    let (store, catalog) = (
        state.engine.store().clone(),
        state.engine.config().catalog.clone(),
    );
    let (tenant, period_uid) = (tenant.to_owned(), period_uid.to_owned());
    let namespace = match scope {
        Scope::Tenant => None,
        Scope::Namespace(namespace) => Some(namespace.to_owned()),
    };
    Ok(tokio::task::spawn_blocking(move || {
        crate::projection::billing::period_usage(
            &store,
            &catalog,
            &tenant,
            &period_uid,
            namespace.as_deref(),
        )
    })
    .await??)
}

/// `POST /api/web/namespaces/{namespace}/usage_details`
pub async fn usage_details(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
    JsonBody(request): JsonBody<RangeRequest>,
) -> Result<(HeaderMap, Json<UsageDetailsResponse>), ApiError> {
    let scope = scope_of(&namespace);
    let (_, (from, to)) = billing_and_range(&state, &caller.tenant, &request).await?;
    let range = HourRange::covering(from, to);
    let cap = state.engine.config().max_list_items;
    let items = UsageItems::new(cap);
    let items = fold_hours(&state, &caller.tenant, scope, range, items, UsageItems::add).await?;
    let (usage_items, truncated) = items.finish(&state.engine.config().catalog, range);
    Ok((
        list_headers(truncated, "usage_details", &caller.tenant, cap),
        Json(UsageDetailsResponse { usage_items }),
    ))
}

/// `POST /api/web/namespaces/{namespace}/hourly_usage_details`
pub async fn hourly_usage_details(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
    JsonBody(request): JsonBody<HourlyRequest>,
) -> Result<(HeaderMap, Json<HourlyUsageDetailsResponse>), ApiError> {
    let text = request.query.filter(|q| !q.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("query: is required; pass an item's hourly_breakdown_query".into())
    })?;
    let query = HourlyQuery::decode(&text).ok_or_else(|| {
        ApiError::BadRequest(
            "query: is not an hourly_breakdown_query returned by usage_details".into(),
        )
    })?;
    if namespace != "system" && query.namespace != namespace {
        return Err(ApiError::BadRequest(format!(
            "query: is for namespace `{}`, not `{namespace}`",
            query.namespace
        )));
    }
    if i64::from(query.to_hour - query.from_hour) > MAX_QUERY_DAYS * 24 {
        return Err(ApiError::BadRequest(format!(
            "query: covers more than {MAX_QUERY_DAYS} days"
        )));
    }
    // The item's own namespace rows hold exactly its series; the tenant comes from the token.
    let range = HourRange {
        from_hour: query.from_hour,
        to_hour: query.to_hour,
    };
    let cap = state.engine.config().max_list_items;
    let item_namespace = query.namespace.clone();
    let items = HourlyItems::new(query, cap);
    let items = fold_hours(
        &state,
        &caller.tenant,
        Scope::Namespace(&item_namespace),
        range,
        items,
        HourlyItems::add,
    )
    .await?;
    let (hourly_usage_items, truncated) = items.finish(&state.engine.config().catalog);
    Ok((
        list_headers(truncated, "hourly_usage_details", &caller.tenant, cap),
        Json(HourlyUsageDetailsResponse { hourly_usage_items }),
    ))
}

/// `POST /api/web/namespaces/{namespace}/current_usage`
pub async fn current_usage(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
    JsonBody(request): JsonBody<RangeRequest>,
) -> Result<Json<CurrentUsageResponse>, ApiError> {
    let scope = scope_of(&namespace);
    let engine = &state.engine;
    let (billing, (from, to)) = billing_and_range(&state, &caller.tenant, &request).await?;
    let catalog = &engine.config().catalog;
    let mut plan = catalog
        .plan(&billing.plan)
        .unwrap_or_else(|| catalog.default_plan());
    // A billing period is priced at its own plan, as its invoice is, and answered from the
    // rows its invoice bills (usage filed by event time, so none of an hour a plan change
    // split counts twice); any other range from whole hours, at the current plan.
    let period = billing
        .periods
        .iter()
        .find(|p| (p.start, p.end) == (from, to));
    let totals = match period {
        Some(period) => {
            plan = catalog.plan(&period.plan).unwrap_or(plan);
            billing_period_totals(&state, &caller.tenant, &period.uid, scope).await?
        }
        None => {
            let range = HourRange::covering(from, to);
            fold_hours(
                &state,
                &caller.tenant,
                scope,
                range,
                MetricTotals::default(),
                MetricTotals::add,
            )
            .await?
            .finish(catalog)
        }
    };
    let (usage_items, total) = report::cost_lines(&totals, catalog, plan, from, to);
    Ok(Json(CurrentUsageResponse {
        usage_items,
        total_cost: total.0.to_string(),
        discount: "0".into(),
        // Granted coupons apply to the next invoice; shown here until then.
        coupons: super::billing::coupons_json(&billing),
    }))
}

/// `POST /api/web/namespaces/{namespace}/monthly_usage`
pub async fn monthly_usage(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
    JsonBody(_): JsonBody<MonthlyRequest>,
) -> Result<Json<MonthlyUsageResponse>, ApiError> {
    let scope = scope_of(&namespace);
    let billing = super::billing::tenant_state(&state, &caller.tenant).await?;
    let catalog = &state.engine.config().catalog;
    // One item per billing period with usage in scope, priced at that period's own plan, as
    // its invoice is (a plan change mid-month makes two items of that month).
    let mut periods = Vec::with_capacity(billing.periods.len());
    for period in &billing.periods {
        let totals = billing_period_totals(&state, &caller.tenant, &period.uid, scope).await?;
        if totals.values().all(|total| *total == 0) {
            continue;
        }
        let plan = catalog
            .plan(&period.plan)
            .unwrap_or_else(|| catalog.default_plan());
        periods.push(report::PeriodUsage {
            start: period.start,
            end: period.end,
            plan,
            totals,
        });
    }
    Ok(Json(MonthlyUsageResponse {
        monthly_usage_items: report::monthly_items(&periods, catalog),
    }))
}

/// `POST /api/data/namespaces/system/billing/usage_summary`
pub async fn usage_summary(
    State(state): State<AppState>,
    request: InNamespace<Read>,
    JsonBody(body): JsonBody<SummaryRequest>,
) -> Result<Json<UsageSummaryResponse>, ApiError> {
    let (caller, scope) = (&request.caller, request.scope());
    let request = body;
    let parse = |field: &str, value: Option<&str>| -> Result<Option<UnixMicros>, ApiError> {
        value
            .filter(|s| !s.is_empty())
            .map(|s| {
                time::parse_unix_or_rfc3339(s).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{field}: `{}` is neither a unix timestamp nor RFC 3339",
                        shorten(s)
                    ))
                })
            })
            .transpose()
    };
    let start = parse("start_time", request.start_time.as_deref())?;
    let end = parse("end_time", request.end_time.as_deref())?;
    // The spec's defaults: a missing bound is the other ± 6 h; with neither, the last 6 h.
    let now = state.engine.now();
    let (start, end) = match (start, end) {
        (Some(s), Some(e)) => (s, e),
        (Some(s), None) => (s, s + SUMMARY_DEFAULT),
        (None, Some(e)) => (e - SUMMARY_DEFAULT, e),
        (None, None) => (now - SUMMARY_DEFAULT, now),
    };
    check_range((start, end), ("start_time", "end_time"))?;
    let range = HourRange::covering(start, end);
    let totals = MetricTotals::default();
    let catalog = &state.engine.config().catalog;
    let totals = fold_hours(
        &state,
        &caller.tenant,
        scope,
        range,
        totals,
        MetricTotals::add,
    )
    .await?
    .finish(catalog);
    Ok(Json(UsageSummaryResponse {
        usage_summary_items: report::usage_summary(&totals, catalog, end),
    }))
}
