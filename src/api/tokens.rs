//! Token management (`/api/tally/tokens`) and the audit trail (`/api/tally/audit`).
//!
//! The operator may manage tokens of any tenant; a tenant's admin only its own, and never
//! wider than its own token (role and namespaces). Another tenant's token is "not found".

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, append_audited, body_bytes, parse_body, require_role};
use crate::api::ApiError;
use crate::auth::{Caller, Role, TokenRecord};
use crate::event::{is_dns1035_label, is_tenant_name};
use crate::log::codec;
use crate::log::keys::push_str;
use crate::log::store::CF_AUDIT;
use crate::time;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    tenant: Option<String>,
    role: Role,
    namespaces: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

fn token_json(record: &TokenRecord) -> Value {
    json!({
        "id": record.id,
        "tenant": record.tenant,
        "role": record.role,
        "namespaces": record.namespaces,
        "operator": record.operator,
        "created_at": time::format_rfc3339(record.created_at),
        "expires_at": record.expires_at.map(time::format_rfc3339),
    })
}

/// `POST /api/tally/tokens {tenant, role, namespaces, expires_at}` → `{id, token}`; the token
/// is shown once.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_role(&caller, Role::Admin)?;
    let body = body_bytes(body)?;
    let request: CreateToken = parse_body(&body)?;
    let tenant = request.tenant.unwrap_or_else(|| caller.tenant.clone());
    if !is_tenant_name(&tenant) {
        return Err(ApiError::BadRequest(format!(
            "tenant: `{}` is not a tenant name",
            tenant.chars().take(64).collect::<String>()
        )));
    }
    if !caller.operator && tenant != caller.tenant {
        return Err(ApiError::Forbidden(
            "a tenant's admin issues tokens for its own tenant only".into(),
        ));
    }
    if request.namespaces.is_empty() || request.namespaces.len() > 100 {
        return Err(ApiError::BadRequest(
            "namespaces: 1 to 100 namespaces, or [\"*\"] for all".into(),
        ));
    }
    for namespace in &request.namespaces {
        if namespace != "*" && !is_dns1035_label(namespace) {
            return Err(ApiError::BadRequest(format!(
                "namespaces: `{}` is not a DNS-1035 label",
                namespace.chars().take(64).collect::<String>()
            )));
        }
        if !caller.operator && !caller.may_read_namespace(namespace) {
            return Err(ApiError::Forbidden(format!(
                "namespaces: `{namespace}` is outside this token's own scope"
            )));
        }
    }
    let now = state.engine.now();
    let expires_at = match request.expires_at.as_deref() {
        None => None,
        Some(text) => {
            let at = time::parse_rfc3339(text).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "expires_at: `{}` is not an RFC 3339 time",
                    text.chars().take(64).collect::<String>()
                ))
            })?;
            if at <= now {
                return Err(ApiError::BadRequest(
                    "expires_at: must be in the future".into(),
                ));
            }
            Some(at)
        }
    };
    let engine = state.engine.clone();
    let (role, namespaces, owner) = (request.role, request.namespaces, tenant.clone());
    let (id, token) = tokio::task::spawn_blocking(move || {
        engine
            .tokens
            .issue(&owner, role, namespaces, expires_at, now)
    })
    .await??;
    let audit = (tenant.clone(), "token.create".to_owned(), id.clone());
    append_audited(&state, &caller, Vec::new(), vec![audit]).await?;
    let mut answer = state
        .engine
        .tokens
        .get(&id)
        .map(|r| token_json(&r))
        .unwrap_or_else(|| json!({"id": id}));
    answer["token"] = json!(token);
    Ok(Json(answer))
}

/// `GET /api/tally/tokens`: metadata only (never a secret or its hash).
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    require_role(&caller, Role::Admin)?;
    let tenant = (!caller.operator).then_some(caller.tenant.as_str());
    let tokens: Vec<Value> = state
        .engine
        .tokens
        .list(tenant)
        .iter()
        .map(token_json)
        .collect();
    Ok(Json(json!({"tokens": tokens})))
}

/// `DELETE /api/tally/tokens/{id}`: revoked at once.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_role(&caller, Role::Admin)?;
    let not_found = || ApiError::NotFound("no token has this id".into());
    let record = state.engine.tokens.get(&id).ok_or_else(not_found)?;
    if !caller.operator && record.tenant != caller.tenant {
        return Err(not_found());
    }
    if record.operator {
        return Err(ApiError::BadRequest(
            "id: the operator token is replaced by restarting with another TALLY_ADMIN_TOKEN"
                .into(),
        ));
    }
    let engine = state.engine.clone();
    let revoked_id = id.clone();
    tokio::task::spawn_blocking(move || engine.tokens.revoke(&revoked_id)).await??;
    let audit = (record.tenant.clone(), "token.revoke".to_owned(), id.clone());
    append_audited(&state, &caller, Vec::new(), vec![audit]).await?;
    Ok(Json(json!({"id": id, "revoked": true})))
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/tally/audit[?tenant=&limit=]`: the tenant's admin and billing changes, newest
/// first (the operator may name any tenant).
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    require_role(&caller, Role::Admin)?;
    let tenant = query.tenant.unwrap_or_else(|| caller.tenant.clone());
    if !caller.operator && tenant != caller.tenant {
        return Err(ApiError::Forbidden(
            "a tenant's admin reads its own tenant's audit trail".into(),
        ));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 1_000);
    let store = state.engine.store.clone();
    let records = tokio::task::spawn_blocking(move || {
        let mut prefix = Vec::new();
        push_str(&mut prefix, &tenant);
        let mut records = Vec::new();
        let mut failure = None;
        store.scan_prefix(CF_AUDIT, &prefix, |_, value| {
            match codec::decode_audit(value) {
                Ok(record) => records.push(record),
                Err(error) => failure = Some(error),
            }
            failure.is_none()
        })?;
        match failure {
            Some(source) => Err(crate::log::store::StoreError::Corrupt {
                cf: CF_AUDIT,
                source,
            }),
            None => Ok(records),
        }
    })
    .await??;
    let records: Vec<Value> = records
        .iter()
        .rev()
        .take(limit)
        .map(|r| {
            json!({
                "at": time::format_rfc3339(r.at),
                "actor": r.actor,
                "actor_tenant": r.actor_tenant,
                "tenant": r.tenant,
                "action": r.action,
                "target": r.target,
            })
        })
        .collect();
    Ok(Json(json!({"audit": records})))
}
