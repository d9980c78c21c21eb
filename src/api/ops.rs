//! Health, readiness, Prometheus metrics and the served OpenAPI document.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;

/// The F5 paths this build serves; the OpenAPI document lists exactly these plus Tally's own.
pub const SERVED_F5_PATHS: &[&str] = &[
    "/api/web/namespaces/{namespace}/usage_details",
    "/api/web/namespaces/{namespace}/hourly_usage_details",
    "/api/web/namespaces/{namespace}/current_usage",
    "/api/web/namespaces/{namespace}/monthly_usage",
    "/api/data/namespaces/system/billing/usage_summary",
    "/api/web/namespaces/{metadata.namespace}/quotas",
    "/api/web/namespaces/{metadata.namespace}/quotas/{metadata.name}",
    "/api/web/namespaces/{namespace}/quotas",
    "/api/web/namespaces/{namespace}/quotas/{name}",
    "/api/web/namespaces/{namespace}/quota/limits",
    "/api/web/namespaces/{namespace}/quota/usage",
    "/api/web/namespaces/system/usage_plans/current",
    "/api/web/namespaces/system/usage_plans/custom_list",
    "/api/web/namespaces/{namespace}/subscriptions/custom_list",
    "/api/web/namespaces/{namespace}/billing/plan_transition",
    "/no_auth/namespaces/system/billing/plan_transition",
    "/api/web/namespaces/system/addon/subscribe",
    "/api/web/namespaces/system/addon/unsubscribe",
    "/api/web/namespaces/{namespace}/billing/payment_methods",
    "/api/web/namespaces/{namespace}/billing/payment_methods/{name}",
    "/api/web/namespaces/{namespace}/billing/payment_method/{name}/primary",
    "/api/web/namespaces/{namespace}/billing/payment_method/{name}/secondary",
    "/api/web/namespaces/{namespace}/billing/payment_method/{name}/swap-primary",
    "/api/web/namespaces/{namespace}/usage/invoices/custom_list",
    "/api/web/namespaces/{namespace}/usage/invoice_pdf",
];

const F5_DOCUMENT: &str = include_str!("../../schemas/openapi/f5-billing-and-usage.json");
const TALLY_DOCUMENT: &str = include_str!("../../schemas/openapi/tally.json");

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    log_entries: u64,
    projected_entries: u64,
    log_writer_failing: bool,
    projector_failing: bool,
    /// Why the failing components fail (absent when ready).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
    /// Present when a Kafka consumer runs: whether its brokers are unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka_failing: Option<bool>,
    /// Partition → why it stopped advancing (absent when none did).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    kafka_stalled_partitions: BTreeMap<i32, String>,
    /// In a cluster: the partitions this engine owns, each ready or still restoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    owned_partitions: Option<Vec<crate::cluster::OwnedPartition>>,
}

/// Ready when the log can be written and the projector folds without errors; the positions let
/// clients and tests see how far the projections are behind the log.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let engine = &state.engine;
    let writer_failing = engine.status().writer.is_failing();
    let projector_failing = engine.status().projector.is_failing();
    let kafka_failing = engine
        .config()
        .kafka
        .as_ref()
        .map(|_| engine.status().kafka.is_failing());
    let stalled = engine.status().kafka_stalls.stalled();
    let projected = engine.projected();
    // Not ready before the projections hold what the log held at start (answers would be
    // older than the log), nor while appends would be refused for lack of disk.
    let catching_up = (projected < engine.status().log_entries_at_start).then(|| {
        format!(
            "projector: catching up after start: {projected} of {} entries folded",
            engine.status().log_entries_at_start
        )
    });
    let disk = engine
        .store()
        .ensure_room()
        .err()
        .map(|error| format!("disk: {error}"));
    let failing = writer_failing
        || projector_failing
        || kafka_failing == Some(true)
        || !stalled.is_empty()
        || catching_up.is_some()
        || disk.is_some();
    let mut reasons: Vec<String> = [
        ("log writer", &engine.status().writer),
        ("projector", &engine.status().projector),
        ("kafka consumer", &engine.status().kafka),
    ]
    .into_iter()
    .filter_map(|(component, health)| health.reason().map(|r| format!("{component}: {r}")))
    .collect();
    reasons.extend(catching_up.into_iter().chain(disk));
    reasons.extend(
        stalled
            .iter()
            .map(|(partition, reason)| format!("kafka partition {partition} stalled: {reason}")),
    );
    let body = Readiness {
        status: if failing { "unavailable" } else { "ready" },
        log_entries: engine.head(),
        projected_entries: projected,
        log_writer_failing: writer_failing,
        projector_failing,
        reasons,
        kafka_failing,
        kafka_stalled_partitions: stalled,
        owned_partitions: engine
            .ownership()
            .in_cluster()
            .then(|| engine.ownership().owned(projected)),
    };
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let engine = &state.engine;
    if let Some(partitions) = engine.ownership().partition_count() {
        let owned: Vec<(i32, bool)> = (engine.ownership().owned(engine.projected()).iter())
            .map(|p| (p.partition, p.ready))
            .collect();
        engine.metrics().set_partitions(partitions, &owned);
    }
    if let Some(changelog) = &engine.ingest().changelog {
        let behind = engine.head().saturating_sub(changelog.published.get());
        engine
            .metrics()
            .publish_lag
            .set(i64::try_from(behind).unwrap_or(i64::MAX));
    }
    let text = engine.metrics().render(
        engine.head(),
        engine.projected(),
        engine.store().available_disk().ok(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::clone(&state.openapi),
    )
        .into_response()
}

/// The F5 document cut to the served paths, with Tally's paths and schemas added, and made to
/// describe what Tally answers so standard tools can use it:
/// - error responses are Tally's JSON `{code, message, details}` (F5 declares a bare string),
///   and 400 is listed;
/// - length bounds the F5 generator only guessed (`"source": "inferred"`, or reconciled from an
///   example) are dropped: a title of "Free" is fine;
/// - dotted path parameters (`{metadata.namespace}`) become `{metadata_namespace}`: the same
///   URLs, a name templating tools accept;
/// - `externalDocs` moves from `info` (where OpenAPI does not allow it) to the top level.
///
/// Both inputs are compiled in; a unit test proves they merge.
pub fn openapi_document() -> Bytes {
    let mut document: Value = serde_json::from_str(F5_DOCUMENT)
        .unwrap_or_else(|_| json!({"openapi": "3.0.3", "paths": {}}));
    let tally: Value = serde_json::from_str(TALLY_DOCUMENT).unwrap_or_else(|_| json!({}));
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        paths.retain(|path, _| SERVED_F5_PATHS.contains(&path.as_str()));
        let served: Vec<(String, Value)> = std::mem::take(paths).into_iter().collect();
        for (path, mut item) in served {
            let path = path
                .replace("{metadata.namespace}", "{metadata_namespace}")
                .replace("{metadata.name}", "{metadata_name}");
            describe_tally_errors(&mut item);
            paths.insert(path, item);
        }
        if let Some(own) = tally.get("paths").and_then(Value::as_object) {
            paths.extend(own.clone());
        }
    }
    if let Some(components) = document.get_mut("components") {
        drop_guessed_bounds(components);
    }
    if let Some(docs) = document
        .get_mut("info")
        .and_then(Value::as_object_mut)
        .and_then(|info| info.remove("externalDocs"))
        && let Some(top) = document.as_object_mut()
    {
        top.insert("externalDocs".into(), docs);
    }
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        && let Some(own) = tally.get("schemas").and_then(Value::as_object)
    {
        schemas.extend(own.clone());
        type_quota_maps(schemas);
    }
    if let Some(info) = document.get_mut("info").and_then(Value::as_object_mut) {
        info.insert(
            "title".into(),
            json!("Tally — F5 Distributed Cloud Billing & Usage API"),
        );
        info.insert("x-tally-version".into(), json!(env!("CARGO_PKG_VERSION")));
    }
    Bytes::from(serde_json::to_vec(&document).unwrap_or_default())
}

/// The value types of the quota maps: F5's OpenAPI files declare them as bare objects, F5's
/// protobuf definitions (`ves.io.schema.quota`) say what each map holds.
const QUOTA_MAP_TYPES: &[(&str, &[(&str, &str)])] = &[
    (
        "quotaGetQuotaLimitsResponse",
        &[
            ("objects", "quotaQuotaLimitsItemType"),
            ("resources", "quotaQuotaLimitsItemType"),
            ("apis", "quotaQuotaLimitsItemType"),
            ("quota_usage", "quotaQuotaLimits"),
            ("float_quota_usage", "quotaQuotaLimitsItemType"),
            ("api_limits", "quotaRateLimitType"),
        ],
    ),
    (
        "quotaGetResponseType",
        &[
            ("objects", "quotaQuotaUsageItemType"),
            ("resources", "quotaQuotaUsageItemType"),
            ("apis", "quotaQuotaUsageItemType"),
            ("quota_usage", "quotaQuotaUsage"),
            ("float_quota_usage", "quotaQuotaUsageItemType"),
            ("api_limits", "quotaRateLimitType"),
        ],
    ),
];

/// Gives each quota map its value type (`additionalProperties` with a `$ref`), so clients and
/// strict validators see what every entry holds.
fn type_quota_maps(schemas: &mut serde_json::Map<String, Value>) {
    for (schema, fields) in QUOTA_MAP_TYPES {
        for (field, value_type) in *fields {
            if let Some(map) = schemas
                .get_mut(*schema)
                .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
                .and_then(Value::as_object_mut)
            {
                map.insert(
                    "additionalProperties".into(),
                    json!({"$ref": format!("#/components/schemas/{value_type}")}),
                );
            }
        }
    }
}

/// Error responses of a path item as Tally sends them; dotted parameter names as in the path.
fn describe_tally_errors(item: &mut Value) {
    let Some(operations) = item.as_object_mut() else {
        return;
    };
    for operation in operations.values_mut() {
        if let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        {
            for parameter in parameters {
                if parameter["in"] == "path"
                    && let Some(name) = parameter["name"].as_str()
                {
                    parameter["name"] = json!(name.replace('.', "_"));
                }
            }
        }
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        responses
            .entry("400")
            .or_insert_with(|| json!({"description": "A field is wrong; the message names it."}));
        // An engine of a cluster (`--cluster`) forwards a tenant's request to the engine that
        // owns it; these are what it answers when it cannot.
        responses.entry("421").or_insert_with(|| {
            json!({"description": "In a cluster: the tenant's partition is owned by another engine this one cannot forward to; the message names the partition."})
        });
        responses.entry("503").or_insert_with(|| {
            json!({"description": "Not available right now (storage, or in a cluster a partition being restored); retry after `Retry-After`."})
        });
        for (status, response) in responses.iter_mut() {
            if status.starts_with('4') || status.starts_with('5') {
                response["content"] = json!({"application/json": {"schema": {"$ref": "#/components/schemas/tallyError"}}});
            }
        }
    }
}

/// Removes `minLength`/`maxLength` that the F5 generator inferred rather than specified.
fn drop_guessed_bounds(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let guessed = map.get("x-reconciled-from-discovery") == Some(&Value::Bool(true))
                || map
                    .get("x-f5xc-constraints")
                    .and_then(|c| c.pointer("/metadata/source"))
                    .is_some_and(|s| s == "inferred");
            if guessed {
                map.remove("minLength");
                map.remove("maxLength");
            }
            map.values_mut().for_each(drop_guessed_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_guessed_bounds),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_exactly_what_is_served() {
        let document: Value = serde_json::from_slice(&openapi_document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for path in SERVED_F5_PATHS {
            let served = path.replace('.', "_");
            assert!(paths.contains_key(&served), "{served}");
        }
        // Errors are described as Tally sends them.
        let get = &paths["/api/web/namespaces/{namespace}/quotas/{name}"]["get"];
        assert_eq!(
            get["responses"]["404"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/tallyError"
        );
        assert!(get["responses"]["400"].is_object());
        assert!(document["info"].get("externalDocs").is_none());
        assert!(paths.contains_key("/api/tally/events"));
        assert!(paths.contains_key("/api/web/namespaces/{namespace}/quotas/{name}"));
        assert!(paths.contains_key("/api/tally/namespaces/{namespace}/quota/check"));
        let f5: Value = serde_json::from_str(F5_DOCUMENT).unwrap();
        let all_f5 = f5["paths"].as_object().unwrap();
        assert_eq!(all_f5.len(), 25);
        for path in all_f5.keys() {
            assert!(
                SERVED_F5_PATHS.contains(&path.as_str()),
                "{path} is not served"
            );
        }
        assert!(paths.contains_key("/api/tally/plan_transitions/{id}/approve"));
        assert!(document["components"]["schemas"]["tallyIngestResponse"].is_object());
        assert!(document["components"]["schemas"]["usageUsageItem"].is_object());
        // Every quota map names its value type, and every named type exists.
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for (schema, fields) in QUOTA_MAP_TYPES {
            for (field, value_type) in *fields {
                let reference =
                    &schemas[*schema]["properties"][*field]["additionalProperties"]["$ref"];
                assert_eq!(
                    reference,
                    &json!(format!("#/components/schemas/{value_type}"))
                );
                assert!(schemas[*value_type].is_object(), "{value_type}");
            }
        }
    }
}
