//! The F5 quota endpoints (objects CRUD, `quota/limits`, `quota/usage`) and Tally's quota
//! check and alert list. Changes are log entries; answers come from the quota projection.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::extract::{InNamespace, JsonBody, Read, RequestBody, Write, scope_of};
use crate::api::ApiError;
use crate::auth::Caller;
use crate::catalog::{Catalog, QuotaKind, RateLimitType};
use crate::commands::{self, OnTenant};
use crate::log::keys::Scope;
use crate::log::store::Store;
use crate::projection::{quota as rows, read};
use crate::quota::decide::QuotaCommand;
use crate::quota::{
    self, LabelFilter, LimitKey, Limits, QuotaInput, QuotaObject, UNLIMITED, effective_limits,
};
use crate::time;
use crate::units;

fn invalid(error: quota::InvalidQuota) -> ApiError {
    ApiError::BadRequest(error.to_string())
}

/// Runs a store read off the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    read: impl FnOnce(&Store) -> Result<T, crate::log::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.engine.store().clone();
    Ok(tokio::task::spawn_blocking(move || read(&store)).await??)
}

/// A micro-unit amount as a JSON number (exact for the six decimals it can carry).
fn number(micros: i128) -> Value {
    units::format_micros(micros)
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// A limit as a JSON number: objects in whole units, resources in their units; -1 unlimited.
fn limit_number(kind: QuotaKind, limit: i64) -> Value {
    if limit < 0 {
        return json!(UNLIMITED);
    }
    match kind {
        QuotaKind::Object => json!(limit),
        _ => number(i128::from(limit)),
    }
}

/// F5 `quotaRateLimitType`, as the catalog type serializes it (`unit` SECOND … DAY).
fn rate_json(limit: &RateLimitType) -> Value {
    serde_json::to_value(limit).unwrap_or(Value::Null)
}

/// `{key: {maximum}}` of object or resource limits.
fn maxima(limits: &BTreeMap<String, i64>, kind: QuotaKind) -> Map<String, Value> {
    limits
        .iter()
        .map(|(k, &v)| (k.clone(), json!({"maximum": limit_number(kind, v)})))
        .collect()
}

/// F5 `schemaquotaGetSpecType`.
fn spec_json(spec: &Limits) -> Value {
    let objects = maxima(&spec.object_limits, QuotaKind::Object);
    let resources = maxima(&spec.resource_limits, QuotaKind::Resource);
    let apis: Map<String, Value> = spec
        .api_limits
        .iter()
        .map(|(k, v)| (k.clone(), rate_json(v)))
        .collect();
    json!({"object_limits": objects, "resource_limits": resources, "api_limits": apis})
}

fn metadata_json(object: &QuotaObject) -> Value {
    json!({
        "name": object.name,
        "namespace": object.namespace,
        "labels": object.labels,
        "annotations": object.annotations,
        "description": object.description,
        "disable": object.disable,
    })
}

fn system_metadata_json(object: &QuotaObject) -> Value {
    json!({
        "uid": object.uid,
        "tenant": object.tenant,
        "creation_timestamp": time::format_rfc3339(object.creation_timestamp),
        "modification_timestamp": time::format_rfc3339(object.modification_timestamp),
        "creator_id": object.creator_id,
        "creator_class": "tally",
    })
}

/// The metadata/spec form a client would send to create or replace this object.
fn form_json(object: &QuotaObject) -> Value {
    json!({"metadata": metadata_json(object), "spec": spec_json(&object.spec)})
}

fn object_json(object: &QuotaObject) -> Value {
    json!({
        "metadata": metadata_json(object),
        "spec": spec_json(&object.spec),
        "system_metadata": system_metadata_json(object),
    })
}

/// Carries out a quota command of the caller's tenant ([`commands::execute`]): answered once
/// its fact is durable, without waiting for the projector.
async fn run(state: &AppState, caller: &Caller, command: QuotaCommand) -> Result<(), ApiError> {
    let command = OnTenant::new(&caller.tenant, command);
    Ok(commands::execute(&state.engine, caller, command).await?)
}

/// `POST /api/web/namespaces/{metadata.namespace}/quotas`
pub async fn create(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Write>,
    JsonBody(input): JsonBody<QuotaInput>,
) -> Result<Json<Value>, ApiError> {
    let valid = quota::validate(input, &namespace, None).map_err(invalid)?;
    let now = state.engine.now();
    let object = QuotaObject {
        name: valid.name,
        namespace,
        labels: valid.labels,
        annotations: valid.annotations,
        description: valid.description,
        disable: valid.disable,
        spec: valid.spec,
        uid: crate::ids::random_uuid(),
        tenant: caller.tenant.clone(),
        creation_timestamp: now,
        modification_timestamp: now,
        creator_id: caller.token_id.clone(),
    };
    let answer = object_json(&object);
    let cap = state.engine.config().max_quota_objects;
    run(&state, &caller, QuotaCommand::Create { object, cap }).await?;
    Ok(Json(answer))
}

/// `PUT /api/web/namespaces/{metadata.namespace}/quotas/{metadata.name}`
pub async fn replace(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Write>,
    Path((_, name)): Path<(String, String)>,
    JsonBody(input): JsonBody<QuotaInput>,
) -> Result<Json<Value>, ApiError> {
    let valid = quota::validate(input, &namespace, Some(&name)).map_err(invalid)?;
    let command = QuotaCommand::Replace {
        namespace,
        valid,
        at: state.engine.now(),
    };
    run(&state, &caller, command).await?;
    Ok(Json(json!({})))
}

fn not_found(namespace: &str, name: &str) -> ApiError {
    quota::decide::QuotaRejection::NotFound {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
    .into()
}

/// F5 `quotaDeleteRequest` (every field optional; the path decides).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    fail_if_referred: bool,
}

impl RequestBody for DeleteRequest {
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl RequestBody for QuotaInput {}

/// `DELETE /api/web/namespaces/{namespace}/quotas/{name}`
pub async fn delete(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Write>,
    Path((_, name)): Path<(String, String)>,
    JsonBody(request): JsonBody<DeleteRequest>,
) -> Result<Json<Value>, ApiError> {
    super::check_body_matches_path("name", &name, request.name.as_deref())?;
    let command = QuotaCommand::Delete {
        tenant: caller.tenant.clone(),
        namespace,
        name,
        at: state.engine.now(),
    };
    run(&state, &caller, command).await?;
    Ok(Json(json!({})))
}

/// Query parameters, with repeated keys kept (F5 `report_fields` is an array).
fn query_params(query: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params
            .entry(key.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    params
}

/// `GET /api/web/namespaces/{namespace}/quotas/{name}`
pub async fn get_one(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
    Path((_, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    super::readable(&state, &caller.tenant).await;
    let params = query_params(query.as_deref());
    let format = params
        .get("response_format")
        .and_then(|v| v.last())
        .map_or("GET_RSP_FORMAT_DEFAULT", String::as_str)
        .to_owned();
    let (tenant, ns, n) = (caller.tenant.clone(), namespace.clone(), name.clone());
    let Some(object) = blocking(&state, move |s| rows::get_object(s, &tenant, &ns, &n)).await?
    else {
        return Err(not_found(&namespace, &name));
    };
    let answer = match format.as_str() {
        "GET_RSP_FORMAT_DEFAULT" | "GET_RSP_FORMAT_READ" => {
            let mut answer = object_json(&object);
            super::put_field(&mut answer, "status", json!([]));
            super::put_field(&mut answer, "referring_objects", json!([]));
            answer
        }
        "GET_RSP_FORMAT_FOR_CREATE" => json!({"create_form": form_json(&object)}),
        "GET_RSP_FORMAT_FOR_REPLACE" => json!({"replace_form": form_json(&object)}),
        "GET_RSP_FORMAT_STATUS" => json!({"status": []}),
        "GET_RSP_FORMAT_REFERRING_OBJECTS" => json!({"referring_objects": []}),
        "GET_RSP_FORMAT_BROKEN_REFERENCES" => {
            json!({"deleted_referred_objects": [], "disabled_referred_objects": []})
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "response_format: `{}` is not one of GET_RSP_FORMAT_DEFAULT, GET_RSP_FORMAT_FOR_CREATE, GET_RSP_FORMAT_FOR_REPLACE, GET_RSP_FORMAT_STATUS, GET_RSP_FORMAT_READ, GET_RSP_FORMAT_REFERRING_OBJECTS, GET_RSP_FORMAT_BROKEN_REFERENCES",
                other.chars().take(64).collect::<String>()
            )));
        }
    };
    Ok(Json(answer))
}

/// `GET /api/web/namespaces/{namespace}/quotas`: at most `--max-list-items` items (F5 lists
/// have no pages; a cut answer says so in `X-Tally-Truncated`).
pub async fn list(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
    RawQuery(query): RawQuery,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    super::readable(&state, &caller.tenant).await;
    let params = query_params(query.as_deref());
    let filter = match params.get("label_filter").and_then(|v| v.last()) {
        Some(text) => LabelFilter::parse(text).map_err(invalid)?,
        None => LabelFilter::parse("").map_err(invalid)?,
    };
    // F5: asking for any report field returns the full objects with the summary.
    let full = params.contains_key("report_fields") || params.contains_key("report_status_fields");
    let cap = state.engine.config().max_list_items;
    let (tenant, ns) = (caller.tenant.clone(), namespace.clone());
    let (objects, truncated) = blocking(&state, move |s| {
        rows::find_objects(s, &tenant, Some(&ns), cap, |o| filter.matches(&o.labels))
    })
    .await?;
    let items: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut item = json!({
                "name": object.name,
                "namespace": object.namespace,
                "tenant": object.tenant,
                "uid": object.uid,
                "labels": object.labels,
                "annotations": object.annotations,
                "description": object.description,
                "disabled": object.disable,
            });
            if full {
                super::put_field(&mut item, "get_spec", spec_json(&object.spec));
                super::put_field(&mut item, "metadata", metadata_json(object));
                super::put_field(&mut item, "system_metadata", system_metadata_json(object));
                super::put_field(&mut item, "status_set", json!([]));
            }
            item
        })
        .collect();
    Ok((
        super::list_headers(truncated, "quotas", &caller.tenant, cap),
        Json(json!({"items": items, "errors": []})),
    ))
}

/// The tenant's effective limits and its quota objects' levels, read together.
struct QuotaView {
    limits: Limits,
    /// (kind, name) → level in the asked scope (micro-units).
    levels: BTreeMap<(String, String), i128>,
    /// API key → observed rate per its limit unit (micro-units).
    api_rates: BTreeMap<String, i128>,
}

/// Limits and levels; with `api_rates`, also the observed API rates (a scan of the scope's
/// current-hour rows, skipped when no meter is bound to an API limit).
async fn quota_view(
    state: &AppState,
    tenant: &str,
    scope: Scope<'_>,
    api_rates: bool,
) -> Result<QuotaView, ApiError> {
    super::readable(state, tenant).await;
    let api_rates = api_rates
        && state
            .engine
            .config()
            .catalog
            .meters()
            .iter()
            .any(|m| m.quota.as_ref().is_some_and(|b| b.kind == QuotaKind::Api));
    let catalog = state.engine.config().catalog.clone();
    let now = state.engine.now();
    let (tenant, scope) = (tenant.to_owned(), scope.as_key_part().to_owned());
    blocking(state, move |store| {
        let objects = rows::list_objects(store, &tenant, None)?;
        let plan = crate::projection::billing::load_header(store, &tenant)?
            .and_then(|state| catalog.plan(&state.plan).cloned())
            .unwrap_or_else(|| catalog.default_plan().clone());
        let limits = effective_limits(&plan.default_quota, &objects);
        let namespace = match Scope::from_key_part(&scope) {
            Scope::Tenant => None,
            Scope::Namespace(ns) => Some(ns),
        };
        let levels = rows::levels(store, &tenant, namespace)?;
        let hour = time::hour_index(now);
        let hour_rows = if api_rates {
            read::hourly_rows(store, &tenant, Scope::from_key_part(&scope), hour, hour + 1)?
        } else {
            Vec::new()
        };
        let elapsed_seconds = (now - i64::from(hour) * time::MICROS_PER_HOUR) / 1_000_000;
        let elapsed_seconds = i128::from(elapsed_seconds.max(1));
        let mut api_rates = BTreeMap::new();
        for (key, limit) in &limits.api_limits {
            let requests: i128 = hour_rows
                .iter()
                .filter(|(row, _)| {
                    catalog
                        .meter(&row.series.metric_label)
                        .and_then(|m| m.quota.as_ref())
                        .is_some_and(|b| b.kind == QuotaKind::Api && &b.name == key)
                })
                .map(|(_, aggregate)| aggregate.sum)
                .sum();
            let per_unit = requests * i128::from(quota::unit_seconds(limit.unit)) / elapsed_seconds;
            api_rates.insert(key.clone(), per_unit);
        }
        Ok(QuotaView {
            limits,
            levels,
            api_rates,
        })
    })
    .await
}

/// An entry of a quota map with the catalog's `display_name` and `description` of its key.
fn described(catalog: &Catalog, kind: QuotaKind, name: &str, mut entry: Value) -> Value {
    let (display_name, description) = catalog.quota_key_text(kind, name);
    if let Some(display_name) = display_name {
        super::put_field(&mut entry, "display_name", json!(display_name));
    }
    if let Some(description) = description {
        super::put_field(&mut entry, "description", json!(description));
    }
    entry
}

/// An int32 field of F5's deprecated maps (`LimitType.maximum`, `UsageType.current`).
fn int32(value: i128) -> Value {
    json!(i32::try_from(value).unwrap_or(if value < 0 { i32::MIN } else { i32::MAX }))
}

/// The maps of `quota/limits` and `quota/usage`, each with its own value type (F5's
/// `ves.io.schema.quota` messages); `float_quota_usage` repeats `resources`.
#[derive(Default)]
struct QuotaMaps {
    objects: Map<String, Value>,
    quota_usage: Map<String, Value>,
    resources: Map<String, Value>,
    apis: Map<String, Value>,
    api_limits: Map<String, Value>,
}

impl QuotaMaps {
    fn into_json(self) -> Value {
        json!({
            "objects": self.objects, "quota_usage": self.quota_usage,
            "resources": self.resources.clone(), "float_quota_usage": self.resources,
            "apis": self.apis, "api_limits": self.api_limits,
        })
    }
}

/// `GET /api/web/namespaces/{namespace}/quota/limits`: F5 `GetQuotaLimitsResponse`, whose
/// maps hold `QuotaLimitsItemType` (`quota_usage`: `QuotaLimits`; `api_limits`: `RateLimitType`).
pub async fn limits(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
) -> Result<Json<Value>, ApiError> {
    let scope = scope_of(&namespace);
    let view = quota_view(&state, &caller.tenant, scope, false).await?;
    let catalog = &state.engine.config().catalog;
    let mut maps = QuotaMaps::default();
    for (name, &maximum) in &view.limits.object_limits {
        let item = json!({"limit": {"maximum": limit_number(QuotaKind::Object, maximum)}});
        let deprecated = json!({"limit": {"maximum": int32(i128::from(maximum))}});
        let kind = QuotaKind::Object;
        maps.objects
            .insert(name.clone(), described(catalog, kind, name, item));
        maps.quota_usage
            .insert(name.clone(), described(catalog, kind, name, deprecated));
    }
    for (name, &maximum) in &view.limits.resource_limits {
        let item = json!({"limit": {"maximum": limit_number(QuotaKind::Resource, maximum)}});
        let item = described(catalog, QuotaKind::Resource, name, item);
        maps.resources.insert(name.clone(), item);
    }
    for (name, limit) in &view.limits.api_limits {
        let item = described(
            catalog,
            QuotaKind::Api,
            name,
            json!({"api_limit": rate_json(limit)}),
        );
        maps.apis.insert(name.clone(), item);
        maps.api_limits.insert(name.clone(), rate_json(limit));
    }
    Ok(Json(maps.into_json()))
}

/// `GET /api/web/namespaces/{namespace}/quota/usage`: F5 `GetResponseType`, whose maps hold
/// `QuotaUsageItemType` (`quota_usage`: `QuotaUsage`; `api_limits`: `RateLimitType`). Levels
/// are in the asked namespace's scope; an API's `usage.current` is its observed rate per the
/// limit's unit in the current hour.
pub async fn usage(
    State(state): State<AppState>,
    InNamespace {
        caller, namespace, ..
    }: InNamespace<Read>,
) -> Result<Json<Value>, ApiError> {
    let scope = scope_of(&namespace);
    let view = quota_view(&state, &caller.tenant, scope, true).await?;
    let catalog = &state.engine.config().catalog;
    let level = |kind: QuotaKind, name: &str| {
        view.levels
            .get(&(quota::kind_name(kind).to_owned(), name.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let mut maps = QuotaMaps::default();
    for key in view
        .limits
        .level_keys()
        .into_iter()
        .chain(view.levels.keys().filter_map(|(kind, name)| {
            kind_of(kind).map(|kind| LimitKey {
                kind,
                name: name.clone(),
            })
        }))
    {
        let maximum = match key.kind {
            QuotaKind::Object => view.limits.object_limits.get(&key.name),
            _ => view.limits.resource_limits.get(&key.name),
        }
        .copied()
        .unwrap_or(UNLIMITED);
        let current = level(key.kind, &key.name);
        let item = json!({
            "limit": {"maximum": limit_number(key.kind, maximum)},
            "usage": {"current": number(current)},
        });
        let item = described(catalog, key.kind, &key.name, item);
        match key.kind {
            QuotaKind::Object => {
                let whole = current.div_euclid(i128::from(units::MICROS_PER_UNIT));
                let deprecated = json!({
                    "limit": {"maximum": int32(i128::from(maximum))},
                    "usage": {"current": int32(whole)},
                });
                let deprecated = described(catalog, key.kind, &key.name, deprecated);
                maps.quota_usage.insert(key.name.clone(), deprecated);
                maps.objects.insert(key.name, item);
            }
            _ => {
                maps.resources.insert(key.name, item);
            }
        }
    }
    for (name, limit) in &view.limits.api_limits {
        let rate = view.api_rates.get(name).copied().unwrap_or(0);
        let item = json!({"api_limit": rate_json(limit), "usage": {"current": number(rate)}});
        maps.apis
            .insert(name.clone(), described(catalog, QuotaKind::Api, name, item));
        maps.api_limits.insert(name.clone(), rate_json(limit));
    }
    Ok(Json(maps.into_json()))
}

fn kind_of(name: &str) -> Option<QuotaKind> {
    match name {
        "object" => Some(QuotaKind::Object),
        "resource" => Some(QuotaKind::Resource),
        _ => None,
    }
}

/// `POST /api/tally/namespaces/{namespace}/quota/check` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// An object kind or resource name, optionally prefixed `object:` / `resource:`.
    key: String,
    /// How much more is wanted (a number or a decimal string), kept as written: a JSON number
    /// read as a float would be rounded, and amounts are exact.
    amount: Box<serde_json::value::RawValue>,
}

impl RequestBody for CheckRequest {}

/// `POST /api/tally/namespaces/{namespace}/quota/check`: would `amount` more fit now?
pub async fn check(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Read>,
    JsonBody(request): JsonBody<CheckRequest>,
) -> Result<Json<Value>, ApiError> {
    super::readable(&state, &caller.tenant).await;
    let raw = request.amount.get();
    let amount_text = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).unwrap_or_default()
    } else {
        raw.to_owned()
    };
    let amount = units::parse_quantity(&amount_text)
        .map_err(|e| ApiError::BadRequest(format!("amount: {e}")))?;
    if amount.0 < 0 {
        return Err(ApiError::BadRequest("amount: must not be negative".into()));
    }
    let view = quota_view(&state, &caller.tenant, Scope::Tenant, false).await?;
    let (kind, name) = match request.key.split_once(':') {
        Some(("object", name)) => (Some(QuotaKind::Object), name),
        Some(("resource", name)) => (Some(QuotaKind::Resource), name),
        _ => (None, request.key.as_str()),
    };
    let kind = kind.or_else(|| {
        if view.limits.object_limits.contains_key(name) {
            Some(QuotaKind::Object)
        } else if view.limits.resource_limits.contains_key(name) {
            Some(QuotaKind::Resource)
        } else {
            None
        }
    });
    let Some(kind) = kind else {
        return Err(ApiError::NotFound(format!(
            "key: `{}` is neither an object kind nor a resource with a limit",
            name.chars().take(64).collect::<String>()
        )));
    };
    let key = LimitKey {
        kind,
        name: name.to_owned(),
    };
    let current = view
        .levels
        .get(&(quota::kind_name(kind).to_owned(), key.name.clone()))
        .copied()
        .unwrap_or(0);
    let answer = match view.limits.level_limit(&key) {
        Some(limit) => json!({
            "key": request.key,
            "allowed": current + i128::from(amount.0) <= limit,
            "limit": number(limit),
            "current": number(current),
            "remaining": number((limit - current).max(0)),
        }),
        None => json!({
            "key": request.key,
            "allowed": true,
            "limit": Value::Null,
            "current": number(current),
            "remaining": Value::Null,
        }),
    };
    Ok(Json(answer))
}

/// Alerts one page holds unless `page_size` says otherwise, and the most it may say.
const ALERT_PAGE_DEFAULT: usize = 100;
const ALERT_PAGE_MAX: usize = 1_000;

/// `page_size` of a Tally list: absent or 0 is `default`, above `max` is `max`.
fn page_size(
    params: &BTreeMap<String, Vec<String>>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match params.get("page_size").and_then(|v| v.last()) {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(0) => Ok(default),
            Ok(n) => Ok(usize::try_from(n).unwrap_or(max).min(max)),
            Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => Ok(max),
            Err(_) => Err(ApiError::BadRequest(format!(
                "page_size: `{}` is not a whole number (0 to {max})",
                text.chars().take(64).collect::<String>()
            ))),
        },
    }
}

/// An alert list's `next_page_token`: where the next page starts, opaque to clients.
fn alert_page_token(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("alerts.{seq}"))
}

fn parse_alert_page_token(token: &str) -> Result<u64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("alerts.")?.parse().ok())
        .ok_or_else(|| {
            ApiError::BadRequest("page_token: is not a next_page_token of this list".into())
        })
}

/// `GET /api/tally/namespaces/{namespace}/alerts?page_size=&page_token=`: the tenant's
/// threshold crossings, newest first, a page at a time (quota limits are tenant-wide, so every
/// namespace lists the same alerts). `next_page_token` is empty on the last page.
pub async fn alerts(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Read>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    super::readable(&state, &caller.tenant).await;
    let params = query_params(query.as_deref());
    let size = page_size(&params, ALERT_PAGE_DEFAULT, ALERT_PAGE_MAX)?;
    let from = match params.get("page_token").and_then(|v| v.last()) {
        Some(token) if !token.is_empty() => Some(parse_alert_page_token(token)?),
        _ => None,
    };
    let tenant = caller.tenant.clone();
    let page = blocking(&state, move |s| rows::list_alerts(s, &tenant, from, size)).await?;
    Ok(Json(json!({
        "alerts": page.alerts.iter().map(|(seq, a)| crate::report::alert_json(*seq, a)).collect::<Vec<_>>(),
        "next_page_token": page.next.map(alert_page_token).unwrap_or_default(),
    })))
}
