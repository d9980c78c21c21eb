//! Operator actions on a running engine: rebuild the projections from the log, back the store
//! up (under the backup root only). Operator token only.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{JsonBody, Operator, RequestBody};
use crate::api::ApiError;
use crate::backup::{self, BackupPathError};
use crate::commands::{self, Audit};
use crate::replay;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildRequest {
    #[serde(default)]
    projection: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/tally/admin/rebuild {projection, dry_run}`: rebuilds while serving; reads keep
/// being answered from the old projections until the swap.
pub async fn rebuild(
    State(state): State<AppState>,
    Operator(caller): Operator,
    JsonBody(request): JsonBody<RebuildRequest>,
) -> Result<Json<Value>, ApiError> {
    let name = request.projection.unwrap_or_else(|| "all".into());
    let cfs = replay::projection_cfs(&name)
        .map_err(|e| ApiError::BadRequest(format!("projection: {e}")))?;
    // One rebuild at a time: a second would fight over the shadow store.
    let _guard = state.rebuild_lock.lock().await;
    let engine = state.engine.clone();
    let report = tokio::task::spawn_blocking(move || {
        replay::rebuild(&engine, &cfs, request.dry_run, &|_, _| {})
    })
    .await?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let audit = Audit::new(&caller.tenant, "admin.rebuild", name);
    commands::record_audits(&state.engine, &caller, vec![audit]).await?;
    Ok(Json(
        serde_json::to_value(report).unwrap_or_else(|_| json!({})),
    ))
}

impl RequestBody for RebuildRequest {}
impl RequestBody for BackupRequest {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    to: String,
}

/// `POST /api/tally/admin/backup {to}`: a consistent copy of the store in a new directory on
/// the server, under the backup root (`--backup-root`).
pub async fn backup(
    State(state): State<AppState>,
    Operator(caller): Operator,
    JsonBody(request): JsonBody<BackupRequest>,
) -> Result<Json<Value>, ApiError> {
    let config = state.engine.config();
    let (root, data_dir) = (config.backup_root.clone(), config.data_dir.clone());
    let requested = std::path::PathBuf::from(&request.to);
    let to = tokio::task::spawn_blocking(move || {
        backup::backup_target(Some(&root), &data_dir, &requested)
    })
    .await?
    .map_err(|error| match error {
        BackupPathError::Exists(_) => ApiError::Conflict(format!("to: {error}")),
        BackupPathError::Root { .. } => ApiError::Internal(error.to_string()),
        _ => ApiError::BadRequest(format!("to: {error}")),
    })?;
    let store = state.engine.store().clone();
    let target = to.clone();
    tokio::task::spawn_blocking(move || store.checkpoint_to(&target))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let audit = Audit::new(&caller.tenant, "admin.backup", to.display().to_string());
    commands::record_audits(&state.engine, &caller, vec![audit]).await?;
    Ok(Json(json!({"backup": to.display().to_string()})))
}
