//! In a cluster, any engine answers any request: one for a tenant whose partition another
//! engine owns is forwarded to that engine (one hop, the caller's token passed through) and
//! its answer returned as it came. Tokens are shared through the control topic, so the
//! engine a request arrives at knows whose tenant it is.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::cluster::NotHere;

/// Set on a forwarded request (to the forwarding engine's URL): the owner answers it itself,
/// whatever it thinks of the partition, so a request never travels more than one hop.
pub const FORWARDED_BY: &str = "x-tally-forwarded-by";

/// Set on a forwarded request: the offset below which the forwarding engine has applied the
/// control topic. A token it just issued is below it; the owner, not knowing the token yet,
/// waits until it has applied as much (at most [`CONTROL_CATCH_UP`]), so a token works on
/// every engine as soon as its issuance is answered.
pub const CONTROL_APPLIED: &str = "x-tally-control-applied";

/// How long a forwarded request with a token unknown here waits for the control topic.
const CONTROL_CATCH_UP: Duration = Duration::from_secs(3);

/// How long a forwarded request may take (the owner's own limits apply on top).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether requests to `path` belong to the caller's tenant (the F5 API, quota checks and
/// alerts, HTTP ingest); operator tools and operations endpoints are answered where they
/// arrive.
fn tenant_route(path: &str) -> bool {
    [
        "/api/web/",
        "/api/data/",
        "/api/tally/namespaces/",
        "/api/tally/events",
        "/api/tally/audit",
        TENANT_PATH,
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
}

/// The operator's commands for one tenant (`/api/tally/tenants/{tenant}/…`).
const TENANT_PATH: &str = "/api/tally/tenants/";

/// The tenant an operator's path names, if it names one.
fn path_tenant(path: &str) -> Option<&str> {
    path.strip_prefix(TENANT_PATH)?
        .split('/')
        .next()
        .filter(|t| !t.is_empty())
}

/// Requests that name a transition or an invoice by id, not their tenant: answered here when
/// this engine knows the id, else by the engine that does.
fn fan_out_route(path: &str) -> bool {
    [
        "/api/tally/plan_transitions/",
        "/api/tally/invoices/",
        "/no_auth/namespaces/system/billing/plan_transition",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
}

/// Answers `request` here, and when this engine does not know what it names (404), asks the
/// other engines in turn: the first that knows it answers (a 404 changed nothing anywhere).
async fn fan_out(
    state: &AppState,
    control: &crate::cluster::control::Control,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, super::MAX_INGEST_BODY + 1).await else {
        return ApiError::BadRequest("body: cannot be read".into()).into_response();
    };
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let copy = |body: bytes::Bytes| {
        let mut request = Request::new(Body::from(body));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers.clone();
        request
    };
    let here = next
        .run(Request::from_parts(parts, Body::from(body.clone())))
        .await;
    if here.status() != StatusCode::NOT_FOUND {
        return here;
    }
    for owner in control.other_urls() {
        match relay(state, &owner, control.url.as_deref(), copy(body.clone())).await {
            Ok(answer) if answer.status() != StatusCode::NOT_FOUND => return answer,
            Ok(_) => {}
            Err(reason) => {
                tracing::warn!(%owner, %reason, "an engine of the cluster cannot be asked")
            }
        }
    }
    here
}

/// The tenant an audit query names (`?tenant=`).
fn query_tenant(request: &Request) -> Option<String> {
    if request.uri().path() != "/api/tally/audit" {
        return None;
    }
    form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(name, _)| name == "tenant")
        .map(|(_, value)| value.into_owned())
}

/// The presented token, as the `Caller` extractor reads it (one header, `APIToken …`).
fn presented_token(request: &Request) -> Option<&str> {
    let mut headers = request.headers().get_all(header::AUTHORIZATION).iter();
    let value = headers.next()?;
    if headers.next().is_some() {
        return None;
    }
    value
        .to_str()
        .ok()?
        .strip_prefix("APIToken ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Middleware: forwards a request whose tenant's partition is owned by another engine that
/// the control topic knows the URL of; everything else goes on here (a partition restoring
/// here answers 503, one whose owner is unknown 421).
pub async fn forward_to_owner(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(control) = state.engine.control() else {
        return next.run(request).await;
    };
    if request.headers().contains_key(FORWARDED_BY) {
        if let Some(wanted) = control_to_catch_up(&state, control, &request) {
            catch_up_with_forwarder(control, wanted).await;
        }
        return next.run(request).await;
    }
    if fan_out_route(request.uri().path()) {
        return fan_out(&state, control, request, next).await;
    }
    if !tenant_route(request.uri().path()) {
        return next.run(request).await;
    }
    let Some(caller) =
        presented_token(&request).and_then(|t| state.engine.tokens().verify(t, state.engine.now()))
    else {
        // The handler refuses it, counting the failure.
        return next.run(request).await;
    };
    // The operator's events name their tenants one by one: they are judged here. The
    // operator's tenant commands name their tenant in the path.
    let path = request.uri().path();
    if caller.operator && path == "/api/tally/events" {
        return next.run(request).await;
    }
    let tenant = path_tenant(path)
        .map(str::to_owned)
        .or_else(|| query_tenant(&request))
        .unwrap_or_else(|| caller.tenant.clone());
    let partition = match state
        .engine
        .ownership()
        .check(&tenant, state.engine.projected())
    {
        Err(NotHere::OwnedElsewhere { partition, .. }) => partition,
        _ => return next.run(request).await,
    };
    let Some(owner) = control
        .owner_url(partition)
        .filter(|url| control.url.as_ref() != Some(url))
    else {
        return next.run(request).await;
    };
    match relay(&state, &owner, control.url.as_deref(), request).await {
        Ok(response) => response,
        Err(reason) => ApiError::Restoring(format!(
            "partition {partition} (tenant `{tenant}`) is owned by the engine at {owner}, which cannot be reached ({reason}); retry shortly"
        ))
        .into_response(),
    }
}

/// For a request forwarded with a token this engine does not know, by an engine that has
/// applied more of the control topic: the offset to wait for. Only an unknown token waits, so
/// a made-up offset delays nothing but a request that fails anyway.
fn control_to_catch_up(
    state: &AppState,
    control: &crate::cluster::control::Control,
    request: &Request,
) -> Option<i64> {
    let wanted = request
        .headers()
        .get(CONTROL_APPLIED)?
        .to_str()
        .ok()?
        .parse::<i64>()
        .ok()?;
    let known = presented_token(request).is_some_and(|t| {
        state
            .engine
            .tokens()
            .verify(t, state.engine.now())
            .is_some()
    });
    (wanted > control.applied() && !known).then_some(wanted)
}

/// Waits (briefly) until this engine has applied the control topic below `wanted`.
async fn catch_up_with_forwarder(control: &crate::cluster::control::Control, wanted: i64) {
    if !control.wait_applied(wanted, CONTROL_CATCH_UP).await {
        tracing::warn!(
            wanted,
            applied = control.applied(),
            "a forwarded request waited for the control topic in vain"
        );
    }
}

/// Headers that describe one connection, not the request: not passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
    )
}

/// Sends `request` to `owner` and returns its answer.
async fn relay(
    state: &AppState,
    owner: &str,
    own_url: Option<&str>,
    request: Request,
) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let url = format!("{}{path}", owner.trim_end_matches('/'));
    // The body was read in full already (`read_body_in_time`), within the largest route's limit.
    let body = axum::body::to_bytes(body, super::MAX_INGEST_BODY + 1)
        .await
        .map_err(|e| format!("request body: {e}"))?;
    let mut forwarded = state
        .forwarder
        .request(parts.method.clone(), &url)
        .body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name.as_str() != CONTROL_APPLIED {
            forwarded = forwarded.header(name, value);
        }
    }
    forwarded = forwarded.header(FORWARDED_BY, own_url.unwrap_or("unknown"));
    if let Some(control) = state.engine.control() {
        forwarded = forwarded.header(CONTROL_APPLIED, control.applied().to_string());
    }
    let answer = forwarded.send().await.map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !hop_by_hop(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(owner) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-tally-answered-by"), value);
    }
    Ok(response)
}
