//! Token management (`/api/tally/tokens`) and the audit trail (`/api/tally/audit`).
//!
//! The operator may manage tokens of any tenant; a tenant's admin only its own tenant's whose
//! namespaces are all within its own scope, and never issues one wider than that. A token it
//! may not manage is "not found". Changes are commands ([`crate::commands::tokens`]): each
//! and its audit record are one write batch.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Admin, JsonBody, RequestBody};
use crate::api::ApiError;
use crate::auth::{Role, TokenRecord, Tokens};
use crate::commands::{self, TokenCommand};
use crate::event::{is_dns1035_label, is_tenant_name};
use crate::time;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    tenant: Option<String>,
    role: Role,
    namespaces: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

impl RequestBody for CreateToken {}

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
    Admin(caller): Admin,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<Json<Value>, ApiError> {
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
    let (record, token) = Tokens::mint(&tenant, request.role, request.namespaces, expires_at, now);
    let mut answer = token_json(&record);
    commands::execute(&state.engine, &caller, TokenCommand::Create { record }).await?;
    super::put_field(&mut answer, "token", json!(token));
    Ok(Json(answer))
}

/// Most tokens or audit records one page holds, and how many when `page_size` is not given.
const MAX_PAGE_SIZE: usize = 1_000;
const DEFAULT_PAGE_SIZE: usize = 100;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    page_size: Option<usize>,
    #[serde(default)]
    page_token: Option<String>,
}

/// Where a page starts: after the token created at `.0` with id `.1` (the list's order).
type Cursor = (time::UnixMicros, String);

fn encode_page_token((created_at, id): &Cursor) -> String {
    let mut bytes = created_at.to_be_bytes().to_vec();
    bytes.extend_from_slice(id.as_bytes());
    hex::encode(bytes)
}

fn decode_page_token(text: &str) -> Option<Cursor> {
    let bytes = hex::decode(text).ok()?;
    let (at, id) = bytes.split_at_checked(8)?;
    let at = time::UnixMicros::from_be_bytes(at.try_into().ok()?);
    Some((at, String::from_utf8(id.to_vec()).ok()?))
}

/// One page of `records` (in list order): up to `page_size` after `after`, and the cursor
/// of the next page when more follow.
fn page(
    records: Vec<TokenRecord>,
    after: Option<&Cursor>,
    page_size: usize,
) -> (Vec<TokenRecord>, Option<Cursor>) {
    let mut rest = records
        .into_iter()
        .filter(|r| after.is_none_or(|(at, id)| (r.created_at, &r.id) > (*at, id)));
    let page: Vec<TokenRecord> = rest.by_ref().take(page_size).collect();
    let next = match (rest.next(), page.last()) {
        (Some(_), Some(last)) => Some((last.created_at, last.id.clone())),
        _ => None,
    };
    (page, next)
}

/// `GET /api/tally/tokens[?page_size=&page_token=]`: metadata only (never a secret or its
/// hash) of the tokens the caller may manage, oldest first, a page at a time.
pub async fn list(
    State(state): State<AppState>,
    Admin(caller): Admin,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let page_size = super::page_size(query.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let after = match query.page_token.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => Some(decode_page_token(text).ok_or_else(|| {
            ApiError::BadRequest("page_token: not a `next_page_token` of this list".into())
        })?),
    };
    let tenant = (!caller.operator).then_some(caller.tenant.as_str());
    let visible: Vec<TokenRecord> = state
        .engine
        .tokens()
        .list(tenant)
        .into_iter()
        .filter(|r| caller.may_manage(r))
        .collect();
    let (tokens, next) = page(visible, after.as_ref(), page_size);
    let tokens: Vec<Value> = tokens.iter().map(token_json).collect();
    let next_page_token = next.as_ref().map(encode_page_token).unwrap_or_default();
    Ok(Json(
        json!({"tokens": tokens, "next_page_token": next_page_token}),
    ))
}

/// `DELETE /api/tally/tokens/{id}`: revoked at once. A token the caller may not manage (another
/// tenant's, or one wider than the caller's scope) is "not found".
pub async fn revoke(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let command = TokenCommand::Revoke {
        id: id.clone(),
        by: caller.clone(),
    };
    commands::execute(&state.engine, &caller, command).await?;
    Ok(Json(json!({"id": id, "revoked": true})))
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    tenant: Option<String>,
    /// Records per page (`limit` is its older name).
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    page_size: Option<usize>,
    /// `next_page_token` of the previous page: the records older than it.
    #[serde(default)]
    page_token: Option<String>,
}

/// `GET /api/tally/audit[?tenant=&page_size=&page_token=]`: the tenant's admin and billing
/// changes, newest first, a page at a time (the operator may name any tenant). An admin
/// scoped to some namespaces reads only the records about them ([`crate::audit::visible_to`]).
pub async fn audit(
    State(state): State<AppState>,
    Admin(caller): Admin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let tenant = query.tenant.unwrap_or_else(|| caller.tenant.clone());
    if !caller.operator && tenant != caller.tenant {
        return Err(ApiError::Forbidden(
            "a tenant's admin reads its own tenant's audit trail".into(),
        ));
    }
    super::readable(&state, &tenant).await;
    // `limit`, the older name, keeps its old meaning: clamped into range, never refused.
    let page_size = match query.page_size {
        Some(_) => super::page_size(query.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
        None => query
            .limit
            .map_or(DEFAULT_PAGE_SIZE, |n| n.clamp(1, MAX_PAGE_SIZE)),
    };
    // The token is the seq of the last record of the previous page; this page is older.
    let before = match query.page_token.as_deref().filter(|t| !t.is_empty()) {
        None => u64::MAX,
        Some(token) => token.parse::<u64>().map_err(|_| {
            ApiError::BadRequest("page_token: not a token this list returned".into())
        })?,
    };
    let store = state.engine.store().clone();
    let reader = caller.clone();
    // Newest first, reading only as far as the page needs (a tenant's trail is unbounded).
    let (records, last_seq) = tokio::task::spawn_blocking(move || {
        crate::projection::read::audit_page(&store, &tenant, before, page_size, |record| {
            crate::audit::visible_to(record, &reader)
        })
    })
    .await??;
    let next_page_token = match last_seq {
        Some(seq) if records.len() == page_size => seq.to_string(),
        _ => String::new(),
    };
    let records: Vec<Value> = records
        .iter()
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
    Ok(Json(
        json!({"audit": records, "next_page_token": next_page_token}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<TokenRecord> {
        (0..n)
            .map(|i| {
                let (mut record, _) = Tokens::mint("acme", Role::Read, vec!["*".into()], None, 0);
                // Two tokens per instant: the id breaks the tie.
                record.created_at = i64::try_from(i / 2).unwrap();
                record.id = format!("{i:04}");
                record
            })
            .collect()
    }

    #[test]
    fn pages_cover_the_list_once_in_order() {
        let all = records(7);
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (page, next) = page(all.clone(), after.as_ref(), 3);
            seen.extend(page.into_iter().map(|r| r.id));
            pages += 1;
            match next {
                Some(cursor) => {
                    let text = encode_page_token(&cursor);
                    after = Some(decode_page_token(&text).unwrap());
                }
                None => break,
            }
        }
        let ids: Vec<String> = all.into_iter().map(|r| r.id).collect();
        assert_eq!((seen, pages), (ids, 3));
        let (page, next) = page(records(3), None, 3);
        assert_eq!(
            (page.len(), next),
            (3, None),
            "a full last page has no next"
        );
    }

    #[test]
    fn page_tokens_that_were_not_handed_out_are_refused() {
        assert_eq!(decode_page_token("zz"), None);
        assert_eq!(decode_page_token("0102"), None);
        assert_eq!(
            decode_page_token(&encode_page_token(&(-5, "ab".into()))),
            Some((-5, "ab".into()))
        );
    }
}
