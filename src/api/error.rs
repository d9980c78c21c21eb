//! The API's one error type: an HTTP status, a gRPC code and a message, as F5 answers.
//!
//! Internal detail (store errors, panics) is logged and never returned.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::billing::decide::BillingRejection;
use crate::cluster::NotHere;
use crate::commands::{CommandError, TokenRejection};
use crate::log::append::AppendError;
use crate::log::store::StoreError;
use crate::quota::decide::QuotaRejection;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 / INVALID_ARGUMENT: the request is wrong; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 401 / UNAUTHENTICATED: no token, or not a valid one.
    #[error("a valid `Authorization: APIToken <token>` header is required")]
    Unauthenticated,
    /// 403 / PERMISSION_DENIED: a valid token without the right to this.
    #[error("{0}")]
    Forbidden(String),
    /// 404 / NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// 409 / ALREADY_EXISTS: the object exists already.
    #[error("{0}")]
    Conflict(String),
    /// 409 / RESOURCE_EXHAUSTED: a per-tenant cap (e.g. `--max-quota-objects`) is reached;
    /// nothing was changed, and deleting something first makes room.
    #[error("{0}")]
    LimitReached(String),
    /// 405: the path exists with other methods.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// 408 / DEADLINE_EXCEEDED: the request body did not arrive in time (`--body-timeout`);
    /// nothing was done.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413 / RESOURCE_EXHAUSTED: the body or batch is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// 429 / RESOURCE_EXHAUSTED: this token sent more requests than its rate allows; retry
    /// after the given seconds.
    #[error("too many requests for this token; retry after {0} s")]
    TooManyRequests(u64),
    /// 429 / RESOURCE_EXHAUSTED: this client address failed to authenticate too often
    /// (`--auth-failure-limit`); retry after the given seconds.
    #[error("too many failed authentications from this address; retry after {0} s")]
    TooManyFailedAuthentications(u64),
    /// 503 / UNAVAILABLE: storage cannot be written or read now; retrying later is safe.
    #[error("{0}")]
    Unavailable(String),
    /// 503 / UNAVAILABLE with `Retry-After`: in a cluster, the tenant's partition is being
    /// restored on this engine (or the topic is not known yet).
    #[error("{0}; retry after {RESTORE_RETRY_AFTER_SECONDS} s")]
    Restoring(String),
    /// 421 / UNAVAILABLE: in a cluster, the tenant's partition is owned by another engine.
    #[error("{0}")]
    Misdirected(String),
    /// 500 / INTERNAL: logged with its detail; the client sees a plain message.
    #[error("internal error")]
    Internal(String),
}

/// How long a client waits before asking again for a tenant being restored here.
pub const RESTORE_RETRY_AFTER_SECONDS: u64 = 2;

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u8,
    message: &'a str,
    details: [(); 0],
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, u8) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, 3),
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, 16),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, 7),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, 5),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 12),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, 6),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, 4),
            ApiError::LimitReached(_) => (StatusCode::CONFLICT, 8),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 8),
            ApiError::TooManyRequests(_) | ApiError::TooManyFailedAuthentications(_) => {
                (StatusCode::TOO_MANY_REQUESTS, 8)
            }
            ApiError::Unavailable(_) | ApiError::Restoring(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, 14)
            }
            ApiError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, 14),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 13),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let message = self.to_string();
        let mut response = (
            status,
            Json(ErrorBody {
                code,
                message: &message,
                details: [],
            }),
        )
            .into_response();
        if let ApiError::TooManyRequests(seconds) | ApiError::TooManyFailedAuthentications(seconds) =
            self
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if let ApiError::Restoring(_) = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RESTORE_RETRY_AFTER_SECONDS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("APIToken"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Rocks(e) => {
                tracing::error!(error = %e, "storage error");
                ApiError::Unavailable("storage is unavailable; retry later".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(error: AppendError) -> Self {
        tracing::error!(%error, "append failed");
        if matches!(error, AppendError::NotPublished) {
            return ApiError::Unavailable(format!("{error}; do not repeat it, read it back"));
        }
        ApiError::Unavailable(
            "the log cannot be written right now; nothing was recorded, retry later".into(),
        )
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("blocking task failed: {error}"))
    }
}

/// Each billing rejection answers the status its variant documents.
impl From<BillingRejection> for ApiError {
    fn from(rejection: BillingRejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            BillingRejection::UnknownPlan { .. }
            | BillingRejection::AlreadyOnPlan { .. }
            | BillingRejection::NeedsPaymentMethod { .. }
            | BillingRejection::NeedsDomain { .. }
            | BillingRejection::NeedsContacts { .. }
            | BillingRejection::AddonNotOnNewPlan { .. } => ApiError::BadRequest(message),
            BillingRejection::AddonNotAllowed { .. } | BillingRejection::AddonIncluded { .. } => {
                ApiError::Forbidden(message)
            }
            BillingRejection::UnknownTransition
            | BillingRejection::UnknownPaymentMethod { .. }
            | BillingRejection::UnknownInvoice { .. } => ApiError::NotFound(message),
            BillingRejection::TransitionWaiting { .. }
            | BillingRejection::TransitionNotWaiting { .. }
            | BillingRejection::PrimaryToSecondary { .. }
            | BillingRejection::NothingToSwap { .. }
            | BillingRejection::PrimaryOfPaidPlan { .. } => ApiError::Conflict(message),
            BillingRejection::PlanNotInCatalog { .. } => ApiError::Internal(message),
        }
    }
}

/// Each quota rejection answers the status its variant documents.
impl From<QuotaRejection> for ApiError {
    fn from(rejection: QuotaRejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            QuotaRejection::AlreadyExists { .. } => ApiError::Conflict(message),
            QuotaRejection::NotFound { .. } => ApiError::NotFound(message),
            QuotaRejection::TooMany { .. } => ApiError::LimitReached(message),
        }
    }
}

/// Each token rejection answers the status its variant documents.
impl From<TokenRejection> for ApiError {
    fn from(rejection: TokenRejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            TokenRejection::TooMany { .. } => ApiError::Conflict(message),
            TokenRejection::NotFound => ApiError::NotFound(message),
            TokenRejection::OperatorToken => ApiError::BadRequest(message),
        }
    }
}

/// A tenant answered by another engine of the cluster (421), or not yet by this one (503).
impl From<NotHere> for ApiError {
    fn from(reason: NotHere) -> Self {
        match reason {
            NotHere::OwnedElsewhere { .. } => {
                ApiError::Misdirected(format!("{reason}; ask that engine"))
            }
            _ => ApiError::Restoring(reason.to_string()),
        }
    }
}

/// A command's failure answers as each of its causes does on its own.
impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Quota(rejection) => rejection.into(),
            CommandError::Billing(rejection) => rejection.into(),
            CommandError::Token(rejection) => rejection.into(),
            CommandError::ProjectionsBehind => ApiError::Unavailable(error.to_string()),
            CommandError::NotHere(reason) => reason.into(),
            CommandError::Append(error) => error.into(),
            CommandError::Store(error) => error.into(),
            CommandError::ControlNotConfirmed(_) => ApiError::Unavailable(error.to_string()),
            CommandError::Task(error) => error.into(),
        }
    }
}
