//! `POST /api/tally/events`: HTTP ingest of usage events (JSON array or NDJSON).
//!
//! Each event is judged on its own: good ones are appended durably (fsync'd) before the answer,
//! bad ones are answered with their index and reason and kept as dead letters.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{ApiError, AppState, require_role};
use crate::auth::{Caller, Role};
use crate::event::{self, EventSource};
use crate::log::DeadLetter;
use crate::log::append::{Candidate, Outcome};

/// Most events one request may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;

#[derive(Debug, Serialize)]
pub struct IngestResponse {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<RejectedEvent>,
    /// Whether reads already include the accepted events (read-your-writes). `false` when the
    /// projections did not catch up within `--ingest-wait`: the events are durable and show
    /// up in reads moments later.
    pub projected: bool,
}

#[derive(Debug, Serialize)]
pub struct RejectedEvent {
    /// Position of the event in the request (0-based; blank NDJSON lines are not counted).
    pub index: usize,
    pub id: Option<String>,
    pub field: String,
    pub reason: String,
}

pub async fn ingest_events(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestResponse>, ApiError> {
    require_role(&caller, Role::Write)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "body: larger than {} bytes; send smaller batches",
                super::MAX_INGEST_BODY
            ))
        } else {
            ApiError::BadRequest(format!("body: {rejection}"))
        }
    })?;
    let events = split_events(&body)?;
    if events.is_empty() {
        return Err(ApiError::BadRequest(
            "body: holds no events; send a JSON array or NDJSON".into(),
        ));
    }
    if events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::TooLarge(format!(
            "body: {} events; at most {MAX_EVENTS_PER_REQUEST} per request",
            events.len()
        )));
    }

    let engine = &state.engine;
    let now = engine.now();
    let context = engine.decode_context(now, &caller.tenant, caller.operator);
    let source = EventSource::Http { received_at: now };
    let candidates: Vec<Candidate> = events
        .iter()
        .map(|raw| match event::decode(raw, &context) {
            Ok(event) => Candidate::Event {
                event,
                source: source.clone(),
            },
            Err(rejection) => Candidate::Rejected(DeadLetter::new(
                now,
                source.clone(),
                &caller.tenant,
                rejection,
                raw,
            )),
        })
        .collect();
    let outcomes = engine.appender.append(candidates).await?;

    let mut response = IngestResponse {
        accepted: 0,
        duplicates: 0,
        rejected: Vec::new(),
        projected: true,
    };
    let mut conflicts = 0;
    let mut next_seq = 0;
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let rejection = match outcome {
            Outcome::Recorded { seq } => {
                response.accepted += 1;
                next_seq = next_seq.max(seq + 1);
                continue;
            }
            Outcome::Duplicate { .. } => {
                response.duplicates += 1;
                continue;
            }
            Outcome::Conflict(rejection) => {
                conflicts += 1;
                rejection
            }
            Outcome::Rejected(rejection) => rejection,
        };
        response.rejected.push(RejectedEvent {
            index,
            id: rejection.id,
            field: rejection.field,
            reason: rejection.reason,
        });
    }
    let metrics = &engine.metrics;
    metrics.count_events("recorded", "http", response.accepted as u64);
    metrics.count_events("duplicate", "http", response.duplicates as u64);
    metrics.count_events("conflict", "http", conflicts);
    metrics.count_events(
        "rejected",
        "http",
        (response.rejected.len() as u64).saturating_sub(conflicts),
    );

    // Read-your-writes: answer once the projections include these events (they are durable
    // already; if folding lags past the wait, they still show up moments later).
    let wait = engine.config.server.ingest_wait;
    if next_seq > 0 && !engine.wait_projected(next_seq, wait).await {
        tracing::warn!(
            next_seq,
            "projections did not catch up within the ingest wait"
        );
        response.projected = false;
    }
    Ok(Json(response))
}

/// The raw events of a body: the elements of a JSON array, or the non-blank lines of NDJSON.
fn split_events(body: &[u8]) -> Result<Vec<&[u8]>, ApiError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    if body.get(start) == Some(&b'[') {
        let elements: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "body: not a JSON array of events ({e}); NDJSON is accepted too"
            ))
        })?;
        return Ok(elements
            .into_iter()
            .map(|raw| raw.get().as_bytes())
            .collect());
    }
    Ok(body
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_arrays_and_ndjson() {
        assert_eq!(
            split_events(b" [ {\"a\":1}, {\"b\":[2]} ]").unwrap(),
            vec![&b"{\"a\":1}"[..], &b"{\"b\":[2]}"[..]]
        );
        assert_eq!(
            split_events(b"{\"a\":1}\r\n\n  \n{oops\n").unwrap(),
            vec![&b"{\"a\":1}"[..], &b"{oops"[..]]
        );
        assert!(split_events(b"[{\"a\":1},").is_err());
        assert!(split_events(b"   ").unwrap().is_empty());
    }
}
