//! The router in-process (`oneshot`), over a real engine in a temp dir: auth, bad input on
//! every endpoint, and arbitrary bytes never reaching a 5xx.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tally::api::{AppState, router};
use tally::catalog::Catalog;
use tally::config::Config;
use tally::engine::Engine;
use tower::ServiceExt;

const TOKEN: &str = "api-test-operator";

struct Harness {
    app: Router,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        admin_token: Some(TOKEN.into()),
        rate_limit: 0,
        ..Config::with_defaults(
            dir.path().join("data"),
            Arc::new(Catalog::builtin().unwrap()),
        )
    };
    let engine = Arc::new(Engine::open(config, tally::time::system_clock()).unwrap());
    Harness {
        app: router(AppState::new(engine.clone())),
        engine,
        _dir: dir,
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("APIToken {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
    )
}

async fn post(app: &Router, path: &str, body: &str) -> (StatusCode, Value) {
    call(app, "POST", path, Some(TOKEN), body.to_owned()).await
}

/// Asserts an F5-style error body whose message mentions `needle`.
fn assert_error(result: (StatusCode, Value), status: StatusCode, needle: &str) {
    let (got, body) = result;
    assert_eq!(got, status, "{body}");
    assert!(body["code"].is_u64(), "no gRPC code: {body}");
    assert!(body["details"].is_array(), "no details: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message `{message}` does not mention `{needle}`"
    );
}

const USAGE_DETAILS: &str = "/api/web/namespaces/system/usage_details";
const HOURLY: &str = "/api/web/namespaces/shop/hourly_usage_details";
const CURRENT: &str = "/api/web/namespaces/shop/current_usage";
const MONTHLY: &str = "/api/web/namespaces/system/monthly_usage";
const SUMMARY: &str = "/api/data/namespaces/system/billing/usage_summary";
const EVENTS: &str = "/api/tally/events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_refused() {
    let h = harness();
    for path in [USAGE_DETAILS, HOURLY, CURRENT, MONTHLY, SUMMARY, EVENTS] {
        assert_error(
            call(&h.app, "POST", path, None, "{}").await,
            StatusCode::UNAUTHORIZED,
            "APIToken",
        );
        assert_error(
            call(&h.app, "POST", path, Some("wrong"), "{}").await,
            StatusCode::UNAUTHORIZED,
            "APIToken",
        );
    }
    let (status, _) = call(&h.app, "GET", "/healthz", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_endpoints_name_what_is_wrong() {
    let h = harness();
    let app = &h.app;
    assert_error(
        post(app, USAGE_DETAILS, "{not json").await,
        StatusCode::BAD_REQUEST,
        "body",
    );
    assert_error(
        post(app, USAGE_DETAILS, r#"{"form": "2026-01-01T00:00:00Z"}"#).await,
        StatusCode::BAD_REQUEST,
        "form",
    );
    assert_error(
        post(app, USAGE_DETAILS, r#"{"from": "last tuesday"}"#).await,
        StatusCode::BAD_REQUEST,
        "from",
    );
    assert_error(
        post(app, USAGE_DETAILS, r#"{"from": 5}"#).await,
        StatusCode::BAD_REQUEST,
        "from",
    );
    assert_error(
        post(
            app,
            USAGE_DETAILS,
            r#"{"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "before",
    );
    assert_error(
        post(
            app,
            USAGE_DETAILS,
            r#"{"from": "2020-01-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "400 days",
    );
    assert_error(
        post(app, "/api/web/namespaces/Bad_NS/usage_details", "{}").await,
        StatusCode::BAD_REQUEST,
        "namespace",
    );
    assert_error(
        post(
            app,
            "/api/web/namespaces/shop/usage_details",
            r#"{"namespace": "blog"}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "namespace",
    );

    assert_error(
        post(app, HOURLY, "{}").await,
        StatusCode::BAD_REQUEST,
        "query",
    );
    assert_error(
        post(app, HOURLY, r#"{"query": "bm90IGEgcXVlcnk"}"#).await,
        StatusCode::BAD_REQUEST,
        "query",
    );
    let other_namespace = tally::report::HourlyQuery {
        v: 1,
        namespace: "blog".into(),
        metric_label: "http_lb_requests".into(),
        object_name: String::new(),
        from_hour: 1,
        to_hour: 2,
    };
    assert_error(
        post(
            app,
            HOURLY,
            &json!({"query": other_namespace.encode()}).to_string(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "blog",
    );

    assert_error(
        post(app, CURRENT, r#"{"to": "tomorrow"}"#).await,
        StatusCode::BAD_REQUEST,
        "to",
    );
    assert_error(
        post(app, MONTHLY, r#"{"month": 3}"#).await,
        StatusCode::BAD_REQUEST,
        "month",
    );
    assert_error(
        post(app, SUMMARY, r#"{"start_time": "soon"}"#).await,
        StatusCode::BAD_REQUEST,
        "start_time",
    );
    assert_error(
        post(app, SUMMARY, r#"{"start_time": "200", "end_time": "100"}"#).await,
        StatusCode::BAD_REQUEST,
        "start_time",
    );

    assert_error(
        call(app, "GET", USAGE_DETAILS, Some(TOKEN), Body::empty()).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
    );
    assert_error(
        call(app, "GET", "/api/web/nowhere", Some(TOKEN), Body::empty()).await,
        StatusCode::NOT_FOUND,
        "no such path",
    );

    // Empty bodies are `{}`: every usage endpoint answers its F5 shape.
    for (path, field) in [
        (USAGE_DETAILS, "usage_items"),
        (CURRENT, "usage_items"),
        (MONTHLY, "monthly_usage_items"),
        (SUMMARY, "usage_summary_items"),
    ] {
        let (status, body) = post(app, path, "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body[field].is_array(), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_bad_bodies_and_answers_per_event() {
    let h = harness();
    let app = &h.app;
    assert_error(
        post(app, EVENTS, "").await,
        StatusCode::BAD_REQUEST,
        "no events",
    );
    assert_error(
        post(app, EVENTS, "[{\"id\": 1},").await,
        StatusCode::BAD_REQUEST,
        "JSON array",
    );
    let too_many = format!("[{}]", vec!["{}"; 10_001].join(","));
    assert_error(
        post(app, EVENTS, &too_many).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "10000",
    );
    let too_big = vec![b' '; tally::api::MAX_INGEST_BODY + 1];
    assert_error(
        call(app, "POST", EVENTS, Some(TOKEN), too_big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than",
    );

    let now = chrono::Utc::now().to_rfc3339();
    let body = format!(
        "{}\n{{oops\n{}\n",
        json!({"id": "a", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 2, "timestamp": now}),
        json!({"id": "b", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": "x", "timestamp": now}),
    );
    let (status, answer) = post(app, EVENTS, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], 1);
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (rejected[0]["index"].as_u64(), rejected[0]["field"].as_str()),
        (Some(1), Some("event"))
    );
    assert_eq!(
        (
            rejected[1]["index"].as_u64(),
            rejected[1]["field"].as_str(),
            rejected[1]["id"].as_str()
        ),
        (Some(2), Some("quantity"), Some("b"))
    );

    // The accepted event is visible as soon as ingest answers (read-your-writes).
    let (_, details) = post(app, "/api/web/namespaces/shop/usage_details", "{}").await;
    assert_eq!(details["usage_items"][0]["quantity"], 2.0, "{details}");

    // Resending is a duplicate; the same id with another body is a conflict.
    let (_, again) = post(app, EVENTS, body.lines().next().unwrap()).await;
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
    let conflicting = json!({"id": "a", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 3, "timestamp": now}).to_string();
    let (_, conflict) = post(app, EVENTS, &conflicting).await;
    assert_eq!(conflict["rejected"][0]["field"], "id", "{conflict}");
    assert!(
        conflict["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("different body")
    );

    let letters = h.engine.store().dead_letters(0, 10).unwrap();
    assert_eq!(
        letters.len(),
        3,
        "two refused lines and one conflict are kept"
    );
    assert_eq!(letters[0].1.raw, b"{oops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer() {
    let h = harness();
    let (status, ready) = call(&h.app, "GET", "/readyz", None, Body::empty()).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let (status, metrics) = call(&h.app, "GET", "/metrics", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.as_str().unwrap().contains("tally_log_entries"),
        "{metrics}"
    );
    let (status, document) = call(
        &h.app,
        "GET",
        "/api/tally/openapi.json",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["paths"]["/api/web/namespaces/{namespace}/usage_details"]["post"].is_object());
}

/// One engine and runtime for every property case (opening RocksDB per case would dominate).
fn shared() -> &'static (tokio::runtime::Runtime, Harness) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, Harness)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let h = runtime.block_on(async { harness() });
        (runtime, h)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the body, every endpoint answers below 500.
    #[test]
    fn no_body_reaches_a_server_error(body in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "\\{\"(from|to|query|namespace|start_time|end_time|id|quantity)\": \"[ -~]{0,40}\"\\}".prop_map(String::into_bytes),
        "\\[\\{\"id\":\"[a-z]{1,4}\",\"namespace\":\"[a-z]{1,5}\",\"metric_label\":\"[a-z_]{1,20}\",\"quantity\":[-0-9.e]{1,12},\"timestamp\":\"[0-9TZ:-]{0,25}\"\\}\\]".prop_map(String::into_bytes),
    ]) {
        let (runtime, h) = shared();
        runtime.block_on(async {
            for path in [USAGE_DETAILS, HOURLY, CURRENT, MONTHLY, SUMMARY, EVENTS] {
                let (status, answer) = call(&h.app, "POST", path, Some(TOKEN), body.clone()).await;
                prop_assert!(status.as_u16() < 500, "{path}: {status} {answer}");
            }
            Ok(())
        })?;
    }
}

/// An engine dropped without `shutdown` (as embedders and tests do) has stopped its writer
/// and projector, and so closed its store, when the drop returns: the data directory opens
/// again at once in the same process (RocksDB refuses a directory the process still holds),
/// with what was recorded and folded. A store closed by a thread that outlives the process
/// aborted test runs at exit ("pthread lock: Invalid argument").
#[tokio::test]
async fn a_dropped_engine_releases_its_data_directory_at_once() {
    let Harness { app, engine, _dir } = harness();
    let now = chrono::Utc::now().to_rfc3339();
    let event = json!({"id": "kept", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 7, "timestamp": now});
    let (status, answer) = post(&app, EVENTS, &event.to_string()).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let config = engine.config().clone();
    drop(app);
    drop(engine);

    let reopened = Arc::new(
        Engine::open(config, tally::time::system_clock())
            .expect("a dropped engine's data directory opens again at once"),
    );
    assert_eq!(reopened.head(), 1);
    let app = router(AppState::new(reopened.clone()));
    let (_, details) = post(&app, "/api/web/namespaces/shop/usage_details", "{}").await;
    assert_eq!(details["usage_items"][0]["quantity"], 7.0, "{details}");
    reopened.shutdown().await;
}
