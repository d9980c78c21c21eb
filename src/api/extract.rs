//! The request extractors every endpoint starts with: who asks, what they may do in the
//! path's namespace, then the JSON body — checked in that order before the handler runs, so
//! a caller without the right is refused before its body is read.

use std::marker::PhantomData;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState, body_bytes, check_body_namespace, parse_body};
use crate::auth::{Caller, Role};
use crate::log::keys::Scope;

/// What a caller must hold in a namespace for an endpoint.
pub trait Access: Send + Sync + 'static {
    fn check(caller: &Caller, namespace: &str) -> Result<(), ApiError>;
}

/// Reads: a token scoped to the namespace (`system`: to every namespace).
pub struct Read;

/// Quota changes: a read scope and the admin role.
pub struct Write;

/// Billing changes: billing is tenant-wide, so an admin token scoped to every namespace.
pub struct Change;

impl Access for Read {
    fn check(caller: &Caller, namespace: &str) -> Result<(), ApiError> {
        super::namespace_scope(caller, namespace).map(|_| ())
    }
}

impl Access for Write {
    fn check(caller: &Caller, namespace: &str) -> Result<(), ApiError> {
        Read::check(caller, namespace)?;
        super::require_role(caller, Role::Admin)
    }
}

impl Access for Change {
    fn check(caller: &Caller, namespace: &str) -> Result<(), ApiError> {
        Read::check(caller, namespace)?;
        if !caller.may_read_namespace("*") {
            return Err(ApiError::Forbidden(
                "billing changes need a token scoped to every namespace".into(),
            ));
        }
        super::require_role(caller, Role::Admin)
    }
}

/// The `{namespace}` parameter of a route (other parameters are the handler's).
#[derive(Deserialize)]
struct NamespaceParam {
    namespace: Option<String>,
}

/// The namespace a request names: its `{namespace}` parameter, or `system` on the routes
/// that spell it out (`/api/web/namespaces/system/…`).
async fn path_namespace(parts: &mut Parts, state: &AppState) -> Result<String, ApiError> {
    let Path(param) = Path::<NamespaceParam>::from_request_parts(parts, state)
        .await
        .map_err(|rejection| ApiError::BadRequest(format!("path: {rejection}")))?;
    Ok(param.namespace.unwrap_or_else(|| "system".to_owned()))
}

/// A request of a caller holding `A` in the path's namespace.
pub struct InNamespace<A> {
    pub caller: Caller,
    pub namespace: String,
    access: PhantomData<A>,
}

impl<A> InNamespace<A> {
    /// The projection scope the namespace reads (`system`: the whole tenant).
    pub fn scope(&self) -> Scope<'_> {
        scope_of(&self.namespace)
    }
}

/// The projection scope of a namespace that passed [`Access::check`].
pub fn scope_of(namespace: &str) -> Scope<'_> {
    if namespace == "system" {
        Scope::Tenant
    } else {
        Scope::Namespace(namespace)
    }
}

impl<A: Access> FromRequestParts<AppState> for InNamespace<A> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let namespace = path_namespace(parts, state).await?;
        A::check(&caller, &namespace)?;
        answered_here(state, &caller.tenant)?;
        Ok(InNamespace {
            caller,
            namespace,
            access: PhantomData,
        })
    }
}

/// In a cluster, whether this engine answers for `tenant`: it must own the tenant's
/// partition and have restored it, for reads and commands alike (a command's facts are
/// published to the changelog before it is answered, so they move with the partition).
/// Always so for a single engine.
pub fn answered_here(state: &AppState, tenant: &str) -> Result<(), ApiError> {
    let engine = &state.engine;
    Ok(engine.ownership().check(tenant, engine.projected())?)
}

/// The caller, once `check` let it through.
async fn caller_passing(
    parts: &mut Parts,
    state: &AppState,
    check: impl FnOnce(&Caller) -> Result<(), ApiError>,
) -> Result<Caller, ApiError> {
    let caller = Caller::from_request_parts(parts, state).await?;
    check(&caller)?;
    Ok(caller)
}

/// A request with the operator's token.
pub struct Operator(pub Caller);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        caller_passing(parts, state, super::require_operator)
            .await
            .map(Operator)
    }
}

/// A request with a token of the admin role (of its tenant, or the operator's).
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        caller_passing(parts, state, |caller| {
            super::require_role(caller, Role::Admin)
        })
        .await
        .map(Admin)
    }
}

/// A JSON request body that may repeat the path's namespace (which must then match it).
pub trait RequestBody: DeserializeOwned + Send {
    fn namespace(&self) -> Option<&str> {
        None
    }
}

/// The request's JSON body (an empty one reads as `{}`), parsed with errors that name the
/// field. Extract it last: the checks before it run first.
pub struct JsonBody<T>(pub T);

impl<T: RequestBody> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        // Only a route with a `{namespace}` parameter has one for the body to repeat.
        let namespace = Path::<NamespaceParam>::from_request_parts(&mut parts, state)
            .await
            .ok()
            .and_then(|Path(param)| param.namespace);
        let bytes = body_bytes(Bytes::from_request(Request::from_parts(parts, body), state).await)?;
        let parsed: T = parse_body(&bytes)?;
        if let Some(namespace) = namespace {
            check_body_namespace(&namespace, parsed.namespace())?;
        }
        Ok(JsonBody(parsed))
    }
}

/// The request's body as sent, for endpoints that read it their own way.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        body_bytes(Bytes::from_request(request, state).await).map(RawBody)
    }
}
