//! The HTTP API: F5 Billing & Usage paths, Tally's own `/api/tally/…`, health and metrics.
//!
//! [`router`] builds every route in one place; handlers are thin: parse, authorize, call the
//! store or the pure report code, or carry out a command ([`crate::commands::execute`]), and
//! shape the answer.

pub mod admin;
pub mod billing;
pub mod error;
pub mod extract;
pub mod forward;
pub mod ingest;
pub mod ops;
pub mod quota;
pub mod tokens;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::auth::{Caller, FailureLimit, Role};
use crate::engine::Engine;
use crate::event::is_dns1035_label;
use crate::log::keys::Scope;
use crate::metrics::{RequestLabels, RouteLabels};

/// Largest HTTP ingest body.
pub const MAX_INGEST_BODY: usize = 10 * 1024 * 1024;
/// Largest body of every other request.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// The window `--auth-failure-limit` counts failed authentications of one client in.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub openapi: Arc<Bytes>,
    /// One rebuild at a time.
    pub rebuild_lock: Arc<tokio::sync::Mutex<()>>,
    /// Requests per token (none when `--rate-limit 0`).
    pub limiter: Option<Arc<governor::DefaultKeyedRateLimiter<String>>>,
    /// Failed authentications per client address (none when `--auth-failure-limit 0`).
    pub auth_failures: Option<Arc<FailureLimit>>,
    /// In a cluster: sends requests on to the engine that owns their tenant.
    pub forwarder: reqwest::Client,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> AppState {
        let engine_rate_limit = engine.config().rate_limit;
        let auth_failures =
            FailureLimit::new(engine.config().auth_failure_limit, AUTH_FAILURE_WINDOW)
                .map(Arc::new);
        AppState {
            engine,
            openapi: Arc::new(ops::openapi_document()),
            rebuild_lock: Arc::default(),
            limiter: rate_limiter(engine_rate_limit),
            auth_failures,
            forwarder: reqwest::Client::builder()
                .timeout(forward::FORWARD_TIMEOUT)
                .connect_timeout(std::time::Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

fn rate_limiter(per_second: u32) -> Option<Arc<governor::DefaultKeyedRateLimiter<String>>> {
    let rate = std::num::NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
    Some(Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    )))
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    let usage = Router::new()
        .route(
            "/api/web/namespaces/{namespace}/usage_details",
            post(usage::usage_details),
        )
        .route(
            "/api/web/namespaces/{namespace}/hourly_usage_details",
            post(usage::hourly_usage_details),
        )
        .route(
            "/api/web/namespaces/{namespace}/current_usage",
            post(usage::current_usage),
        )
        .route(
            "/api/web/namespaces/{namespace}/monthly_usage",
            post(usage::monthly_usage),
        )
        .route(
            "/api/data/namespaces/system/billing/usage_summary",
            post(usage::usage_summary),
        )
        .route(
            "/api/web/namespaces/{namespace}/quotas",
            post(quota::create).get(quota::list),
        )
        .route(
            "/api/web/namespaces/{namespace}/quotas/{name}",
            get(quota::get_one)
                .put(quota::replace)
                .delete(quota::delete),
        )
        .route(
            "/api/web/namespaces/{namespace}/quota/limits",
            get(quota::limits),
        )
        .route(
            "/api/web/namespaces/{namespace}/quota/usage",
            get(quota::usage),
        )
        .route(
            "/api/tally/namespaces/{namespace}/quota/check",
            post(quota::check),
        )
        .route(
            "/api/tally/namespaces/{namespace}/alerts",
            get(quota::alerts),
        )
        .route(
            "/api/web/namespaces/system/usage_plans/current",
            get(billing::current_plan),
        )
        .route(
            "/api/web/namespaces/system/usage_plans/custom_list",
            get(billing::list_plans),
        )
        .route(
            "/api/web/namespaces/{namespace}/subscriptions/custom_list",
            get(billing::list_subscriptions),
        )
        .route(
            "/api/web/namespaces/{namespace}/billing/plan_transition",
            post(billing::request_transition),
        )
        .route(
            "/no_auth/namespaces/system/billing/plan_transition",
            get(billing::transition_state),
        )
        .route(
            "/api/tally/plan_transitions/{id}/approve",
            post(billing::approve),
        )
        .route(
            "/api/tally/plan_transitions/{id}/reject",
            post(billing::reject),
        )
        .route(
            "/api/web/namespaces/system/addon/subscribe",
            post(billing::subscribe_addon),
        )
        .route(
            "/api/web/namespaces/system/addon/unsubscribe",
            post(billing::unsubscribe_addon),
        )
        .route(
            "/api/web/namespaces/{namespace}/billing/payment_methods",
            post(billing::create_payment_method),
        )
        .route(
            "/api/web/namespaces/{namespace}/billing/payment_methods/{name}",
            axum::routing::delete(billing::delete_payment_method),
        )
        .route(
            // primary, secondary and swap-primary (F5 names three paths).
            "/api/web/namespaces/{namespace}/billing/payment_method/{name}/{action}",
            post(billing::payment_method_action),
        )
        .route(
            "/api/web/namespaces/{namespace}/usage/invoices/custom_list",
            get(billing::list_invoices),
        )
        .route(
            "/api/web/namespaces/{namespace}/usage/invoice_pdf",
            get(billing::invoice_pdf),
        )
        .route(
            "/api/tally/invoices/{name}/mark_paid",
            post(billing::mark_paid),
        )
        .route(
            "/api/tally/tenants/{tenant}/coupons",
            post(billing::grant_coupon),
        )
        .route("/api/tally/admin/rebuild", post(admin::rebuild))
        .route("/api/tally/admin/backup", post(admin::backup))
        .route("/api/tally/tokens", post(tokens::create).get(tokens::list))
        .route(
            "/api/tally/tokens/{id}",
            axum::routing::delete(tokens::revoke),
        )
        .route("/api/tally/audit", get(tokens::audit))
        .layer(middleware::from_fn(refuse_large_body))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY));
    let ingest = Router::new()
        .route("/api/tally/events", post(ingest::ingest_events))
        .layer(DefaultBodyLimit::max(MAX_INGEST_BODY));
    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/tally/openapi.json", get(ops::openapi));
    Router::new()
        .merge(usage)
        .merge(ingest)
        .merge(ops)
        .route_layer(middleware::from_fn_with_state(state.clone(), track_request))
        .fallback(|| async { ApiError::NotFound("no such path".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::forward_to_owner,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Reads the whole request body within `--body-timeout` before the handler sees it: a client
/// sending a body slowly (or never finishing it) gets 408 instead of holding a connection and
/// a handler. At most one byte past the largest body any route takes is read; the routes'
/// own limits answer 413 from there.
async fn read_body_in_time(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = state.engine.config().server.body_timeout;
    let (parts, body) = request.into_parts();
    if declared_length(&parts).is_some_and(|length| length > MAX_INGEST_BODY) {
        // Refused unread: no route takes that much.
        return ApiError::TooLarge(format!(
            "body: larger than {MAX_INGEST_BODY} bytes; send smaller batches"
        ))
        .into_response();
    }
    let read = axum::body::to_bytes(body, MAX_INGEST_BODY + 1);
    let bytes = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            let error = error.into_inner();
            if error.is::<http_body_util::LengthLimitError>() {
                return ApiError::TooLarge(format!(
                    "body: larger than {MAX_INGEST_BODY} bytes; send smaller batches"
                ))
                .into_response();
            }
            return ApiError::BadRequest(format!("body: cannot be read ({error})")).into_response();
        }
        Err(_) => {
            return ApiError::RequestTimeout(format!(
                "body: not received within {} (--body-timeout); nothing was done",
                humantime::format_duration(timeout)
            ))
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The body length a request declares in `Content-Length`, when it declares one.
fn declared_length(parts: &axum::http::request::Parts) -> Option<usize> {
    parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Reads the body of every non-ingest request up to [`MAX_REQUEST_BODY`] and answers 413 in
/// Tally's JSON when it is larger, also for handlers that take no body (they would otherwise
/// answer as if it had not been sent). Handlers then read the body from memory.
async fn refuse_large_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match read_bounded(body, declared_length(&parts)).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(error) => error.into_response(),
    }
}

/// How much of a too-large body is still read (and dropped) before answering 413, so that a
/// client still sending it reads the answer instead of a reset connection. (The body-timeout
/// layer outside has already read up to [`MAX_INGEST_BODY`] of it, within `--body-timeout`,
/// and refused a longer declared length unread.)
const DRAIN_LIMIT: usize = 1024 * 1024;

async fn read_bounded(
    mut body: axum::body::Body,
    declared: Option<usize>,
) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody;
    if declared.is_some_and(|length| length > DRAIN_LIMIT) {
        return Err(body_too_large());
    }
    let mut kept = Vec::new();
    let mut read = 0usize;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read = read.saturating_add(data.len());
        if read > DRAIN_LIMIT {
            return Err(body_too_large());
        }
        if read <= MAX_REQUEST_BODY {
            kept.extend_from_slice(&data);
        }
    }
    if read > MAX_REQUEST_BODY {
        return Err(body_too_large());
    }
    Ok(Bytes::from(kept))
}

async fn track_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = state.engine.metrics();
    metrics
        .request_seconds
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut headers = parts.headers.get_all(AUTHORIZATION).iter();
        let header = headers.next().ok_or(ApiError::Unauthenticated)?;
        if headers.next().is_some() {
            // Proxies and servers disagree on which of several wins; refuse to pick one.
            return Err(ApiError::BadRequest(
                "Authorization: more than one header; send exactly one".into(),
            ));
        }
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("APIToken "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        // The peer address; absent only when the router is driven in-process (tests).
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let failures = state.auth_failures.as_deref().zip(client);
        let now = Instant::now();
        if let Some((failures, client)) = failures
            && let Some(wait) = failures.blocked(client, now)
        {
            return Err(ApiError::TooManyFailedAuthentications(retry_after(wait)));
        }
        // No await between the check above and the count below: at most one request per
        // runtime thread can slip past a budget that is just being used up.
        let Some(caller) = state.engine.tokens().verify(token, state.engine.now()) else {
            if let Some((failures, client)) = failures {
                failures.record_failure(client, now);
            }
            return Err(ApiError::Unauthenticated);
        };
        if let Some(limiter) = &state.limiter
            && let Err(not_until) = limiter.check_key(&caller.token_id)
        {
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            return Err(ApiError::TooManyRequests(wait.as_secs().max(1)));
        }
        Ok(caller)
    }
}

/// Whole seconds to put in `Retry-After`: rounded up, at least 1.
fn retry_after(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// Refuses callers below `role`.
pub fn require_role(caller: &Caller, role: Role) -> Result<(), ApiError> {
    if caller.role >= role {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            format!(
                "this token's role ({:?}) cannot do this; it needs {:?}",
                caller.role, role
            )
            .to_lowercase(),
        ))
    }
}

/// The projection scope a path namespace reads: `system` is the whole tenant.
pub fn namespace_scope<'a>(caller: &Caller, namespace: &'a str) -> Result<Scope<'a>, ApiError> {
    if namespace == "system" {
        if caller.may_read_namespace("*") {
            return Ok(Scope::Tenant);
        }
        return Err(ApiError::Forbidden(
            "the `system` namespace needs a token scoped to every namespace".into(),
        ));
    }
    if !is_dns1035_label(namespace) {
        return Err(ApiError::BadRequest(format!(
            "namespace: `{}` is not a DNS-1035 label",
            namespace.chars().take(64).collect::<String>()
        )));
    }
    if !caller.may_read_namespace(namespace) {
        return Err(ApiError::Forbidden(format!(
            "this token is not scoped to namespace `{namespace}`"
        )));
    }
    Ok(Scope::Namespace(namespace))
}

/// The request body, or a 413 when it is over the limit and a 400 naming it otherwise.
pub fn body_bytes(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large()
        } else {
            ApiError::BadRequest(format!("body: {rejection}"))
        }
    })
}

fn body_too_large() -> ApiError {
    ApiError::TooLarge(format!(
        "body: larger than {MAX_REQUEST_BODY} bytes, the most this endpoint reads"
    ))
}

/// Refuses every token but the operator's.
pub fn require_operator(caller: &Caller) -> Result<(), ApiError> {
    if caller.operator {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the operator token may do this".into(),
        ))
    }
}

/// Waits (up to [`PROJECTION_WAIT`]) until the projections hold `tenant`'s every fact, so a
/// read shows the tenant's own changes; other tenants' backlog is not waited for. Answers
/// from what is projected when the wait runs out.
pub async fn readable(state: &AppState, tenant: &str) {
    state.engine.wait_tenant_current(tenant).await;
}

/// The `page_size` of a Tally list that refuses sizes out of range: `default` when absent,
/// else 1 to `max`.
pub fn page_size(requested: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match requested {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "page_size: 1 to {max}, not {n}"
        ))),
    }
}

/// Parses a JSON body into `T`, naming the field at fault; nothing may follow it. An empty
/// body reads as `{}`.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let (field, message) = crate::event::json_error_field(e, "body");
        ApiError::BadRequest(format!("{field}: {message}"))
    })?;
    // Whatever follows the object would otherwise be ignored unseen.
    deserializer
        .end()
        .map_err(|e| ApiError::BadRequest(format!("body: {e}; send one JSON object")))?;
    Ok(value)
}

/// A body namespace, when given, must match the path's.
pub fn check_body_namespace(
    path_namespace: &str,
    body_namespace: Option<&str>,
) -> Result<(), ApiError> {
    check_body_matches_path("namespace", path_namespace, body_namespace)
}

/// A body `field` that repeats a path parameter, when given (and not empty), must match it.
pub fn check_body_matches_path(
    field: &str,
    path_value: &str,
    body_value: Option<&str>,
) -> Result<(), ApiError> {
    match body_value {
        Some(value) if !value.is_empty() && value != path_value => Err(ApiError::BadRequest(
            format!("{field}: the body names `{value}` but the path names `{path_value}`"),
        )),
        _ => Ok(()),
    }
}

/// Header of an F5 list answer that `--max-list-items` cut short. F5 list answers have no
/// page fields, so the cut is said beside the body instead of in it.
pub const TRUNCATED_HEADER: &str = "x-tally-truncated";

/// The headers of an F5 list answer: `X-Tally-Truncated: true` when it was cut at `cap`
/// items (logged too, so operators see which lists outgrow the cap).
pub fn list_headers(truncated: bool, list: &str, tenant: &str, cap: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if truncated {
        tracing::warn!(
            list,
            tenant,
            cap,
            "list answer cut at --max-list-items; narrow the query"
        );
        headers.insert(TRUNCATED_HEADER, HeaderValue::from_static("true"));
    }
    headers
}

pub use crate::engine::PROJECTION_WAIT;

/// Sets `key` of a JSON object built by a handler (anything else is left as it is).
pub(crate) fn put_field(object: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Range {
        from: Option<String>,
    }

    /// Regression: whatever followed the body's object was ignored.
    #[test]
    fn nothing_may_follow_a_json_body() {
        assert!(parse_body::<Range>(b" {\"from\": \"a\"} \r\n").is_ok());
        assert_eq!(parse_body::<Range>(b"").unwrap().from, None);
        for trailing in [&b"{} {\"from\": \"b\"}"[..], b"{}}", b"{} junk", b"{},"] {
            let error = parse_body::<Range>(trailing).unwrap_err();
            assert!(
                matches!(&error, ApiError::BadRequest(m) if m.starts_with("body: trailing")),
                "{error}"
            );
        }
    }
}
