//! The F5 billing endpoints (usage plans, subscriptions, plan transitions, addons, payment
//! methods, invoices and their PDFs) and Tally's admin actions on them (approve or reject a
//! transition, grant a coupon, mark an invoice paid). Changes are log entries; answers come
//! from the billing projection.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::extract::{Change, InNamespace, JsonBody, Operator, RawBody, Read, RequestBody};
use crate::api::ApiError;
use crate::auth::Caller;
use crate::billing::decide::{BillingCommand, TransitionRequest as Transition, Verdict};
use crate::billing::{self, BillingChange, Coupon, DiscountKind, PaymentRole, TenantBilling};
use crate::catalog::{Catalog, Plan};
use crate::commands::billing::Done;
use crate::commands::{self, OnTenant};
use crate::projection::billing as rows;
use crate::time;

/// The tenant's billing state once the projections hold its every fact (reads); a tenant
/// not seen yet is on the default plan from now.
pub(crate) async fn tenant_state(
    state: &AppState,
    tenant: &str,
) -> Result<TenantBilling, ApiError> {
    super::readable(state, tenant).await;
    Ok(commands::billing::projected(&state.engine, tenant).await?)
}

/// Carries out a billing command for `tenant` ([`commands::execute`]): answered once its
/// facts are durable, without waiting for the projector.
async fn run(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    command: BillingCommand,
) -> Result<Done, ApiError> {
    let command = OnTenant::new(tenant, command);
    Ok(commands::execute(&state.engine, caller, command).await?)
}

fn addon_details(catalog: &Catalog, names: &[String]) -> Vec<Value> {
    names
        .iter()
        .map(|name| {
            let display = catalog
                .addons()
                .iter()
                .find(|a| &a.name == name)
                .map_or(name.as_str(), |a| a.display_name.as_str());
            json!({"name": name, "display_name": display})
        })
        .collect()
}

/// F5 `planPlanInternal` of `plan` for a tenant in `billing`.
fn plan_json(plan: &Plan, billing: &TenantBilling, catalog: &Catalog) -> Value {
    let current = plan.name == billing.plan;
    let pending = billing
        .pending_transition()
        .is_some_and(|t| t.to_plan == plan.name || current);
    let mut value = serde_json::to_value(plan).unwrap_or_else(|_| json!({}));
    if let Some(object) = value.as_object_mut() {
        object.remove("prices");
        object.insert("current".into(), json!(current));
        object.insert(
            "state".into(),
            json!(if pending {
                "STATE_TRANSITION_PENDING"
            } else {
                "STATE_READY"
            }),
        );
        object.insert(
            "included_addon_services".into(),
            json!(addon_details(catalog, &plan.included_addon_services)),
        );
        object.insert(
            "allowed_addon_services".into(),
            json!(addon_details(catalog, &plan.allowed_addon_services)),
        );
    }
    value
}

const LOCALE: &str = "en-US";

/// The catalog's plans (or only the tenant's own) as the caller's tenant sees them.
async fn plans_seen_by(
    state: &AppState,
    caller: &Caller,
    only_current: bool,
) -> Result<Vec<Value>, ApiError> {
    let billing = tenant_state(state, &caller.tenant).await?;
    let catalog = &state.engine.config().catalog;
    Ok(catalog
        .plans()
        .iter()
        .filter(|plan| !only_current || plan.name == billing.plan)
        .map(|plan| plan_json(plan, &billing, catalog))
        .collect())
}

/// `GET /api/web/namespaces/system/usage_plans/current`
pub async fn current_plan(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Read>,
) -> Result<Json<Value>, ApiError> {
    let plans = plans_seen_by(&state, &caller, true).await?;
    Ok(Json(json!({"locale": LOCALE, "plans": plans})))
}

/// `GET /api/web/namespaces/system/usage_plans/custom_list`
pub async fn list_plans(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Read>,
) -> Result<Json<Value>, ApiError> {
    let plans = plans_seen_by(&state, &caller, false).await?;
    Ok(Json(
        json!({"usage_plans": [{"locale": LOCALE, "plans": plans}]}),
    ))
}

#[derive(Debug, Deserialize)]
pub struct SubscriptionsQuery {
    #[serde(default)]
    current: Option<bool>,
}

/// `GET /api/web/namespaces/{namespace}/subscriptions/custom_list?current=`: one subscription
/// per stretch of time on one plan, with its closed billing periods and their invoices.
pub async fn list_subscriptions(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Read>,
    Query(query): Query<SubscriptionsQuery>,
) -> Result<Json<Value>, ApiError> {
    let billing = tenant_state(&state, &caller.tenant).await?;
    let catalog = &state.engine.config().catalog;
    // One subscription per stretch of consecutive periods on one plan.
    let runs: Vec<&[billing::Period]> = billing.periods.chunk_by(|a, b| a.plan == b.plan).collect();
    let last = runs.len().saturating_sub(1);
    let subscriptions: Vec<Value> = runs
        .iter()
        .enumerate()
        .filter(|(index, _)| query.current != Some(true) || *index == last)
        .filter_map(|(index, run)| {
            // A stretch is never empty.
            let (first, latest) = (run.first()?, run.last()?);
            let plan = catalog.plan(&first.plan);
            let previous: Vec<Value> = run
                .iter()
                .filter(|p| p.closed)
                .map(|p| {
                    let invoices: Vec<&String> = p.invoice.iter().collect();
                    json!({
                        "uid": p.uid,
                        "start_date": time::format_rfc3339(p.start),
                        "end_date": time::format_rfc3339(p.end),
                        "internal_start_date": time::format_rfc3339(p.start),
                        "internal_end_date": time::format_rfc3339(p.end),
                        "trial": false,
                        "invoices": invoices,
                        "closed_invoice": invoices,
                        "pending_invoice": [],
                    })
                })
                .collect();
            let mut subscription = json!({
                "name": format!("{}-{}", first.plan, time::to_datetime(first.start).format("%Y%m%d%H%M%S")),
                "plan_name": plan.map_or(first.plan.as_str(), |p| p.title.as_str()),
                "plan_object_name": first.plan,
                "start_date": time::format_rfc3339(first.start),
                "current": index == last,
                "cancelled": index != last,
                "last_billing_period_start_date": time::format_rfc3339(latest.start),
                "last_billing_period_end_date": time::format_rfc3339(latest.end),
                "previous_billing_periods": previous,
            });
            if index != last {
                super::put_field(
                    &mut subscription,
                    "cancellation_date",
                    json!(time::format_rfc3339(latest.end)),
                );
            }
            Some(subscription)
        })
        .collect();
    Ok(Json(json!({"subscriptions": subscriptions})))
}

/// F5 `plan_transitionTransitionPayload` (the fields Tally uses; others are accepted).
#[derive(Debug, Default, Deserialize)]
struct TransitionPayload {
    #[serde(default)]
    payment_provider_token: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    billing_address: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    payment_address: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    subscribe_addon_services: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    billing_provider_account_id: String,
    #[serde(default)]
    #[allow(dead_code)]
    create_support_ticket: bool,
    #[serde(default)]
    #[allow(dead_code)]
    deletion_feedback: String,
    #[serde(default)]
    #[allow(dead_code)]
    deletion_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    new_plan: String,
    #[serde(default)]
    payload: Option<TransitionPayload>,
}

impl RequestBody for TransitionRequest {
    /// F5 clients name `system` in the body of a transition asked in any namespace.
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref().filter(|n| *n != "system")
    }
}

/// The string fields of an F5 address object (others are not contact details).
fn contact_of(address: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    address
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

/// `POST /api/web/namespaces/{namespace}/billing/plan_transition`
pub async fn request_transition(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Change>,
    JsonBody(request): JsonBody<TransitionRequest>,
) -> Result<Json<Value>, ApiError> {
    let payload = request.payload.unwrap_or_default();
    let contact = payload
        .payment_address
        .as_ref()
        .or(payload.billing_address.as_ref())
        .map(contact_of)
        .unwrap_or_default();
    let transition = Transition {
        new_plan: request.new_plan,
        payment_provider_token: payload.payment_provider_token,
        domain: payload.domain,
        has_billing_address: payload
            .billing_address
            .as_ref()
            .is_some_and(|address| !address.is_empty()),
        contact,
        subscribe_addon_services: payload.subscribe_addon_services,
    };
    let id = crate::ids::random_uuid();
    let command = BillingCommand::RequestTransition {
        id: id.clone(),
        request: transition,
    };
    let done = run(&state, &caller, &caller.tenant, command).await?;
    let requires_approval = done.changes.iter().any(|change| {
        matches!(
            change,
            BillingChange::TransitionRequested {
                requires_approval: true,
                ..
            }
        )
    });
    Ok(Json(
        json!({"id": id, "requires_manual_approval": requires_approval}),
    ))
}

#[derive(Debug, Deserialize)]
pub struct TransitionQuery {
    #[serde(default)]
    id: String,
}

/// `GET /no_auth/namespaces/system/billing/plan_transition?id=`: the state and nothing else.
pub async fn transition_state(
    State(state): State<AppState>,
    Query(query): Query<TransitionQuery>,
) -> Result<Json<Value>, ApiError> {
    let unknown = || ApiError::NotFound("no plan transition has this id".into());
    if query.id.is_empty() || query.id.len() > 64 {
        return Err(ApiError::BadRequest(
            "id: a plan transition id is required".into(),
        ));
    }
    let tenant = transition_tenant(&state, &query.id)
        .await?
        .ok_or_else(unknown)?;
    let billing = tenant_state(&state, &tenant).await?;
    let transition = billing.transitions.get(&query.id).ok_or_else(unknown)?;
    Ok(Json(json!({"state": transition.state.f5_name()})))
}

/// The tenant a plan transition id belongs to: one requested and not folded yet is known to
/// the write side; otherwise the projection names it. An id found in neither may be of a
/// request another engine process appended, so it is looked for again once the log is folded.
async fn transition_tenant(state: &AppState, id: &str) -> Result<Option<String>, ApiError> {
    if let Some(tenant) = state.engine.commands().unfolded_transition(id) {
        return Ok(Some(tenant));
    }
    let lookup = || {
        let store = state.engine.store().clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || rows::transition_tenant(&store, &id))
    };
    if let Some(tenant) = lookup().await?? {
        return Ok(Some(tenant));
    }
    let head = state.engine.head();
    state
        .engine
        .wait_projected(head, super::PROJECTION_WAIT)
        .await;
    Ok(lookup().await??)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    #[serde(default)]
    reason: String,
}

impl RequestBody for DecisionRequest {}

/// An operator's verdict on a plan transition waiting for approval.
async fn give_verdict(
    state: &AppState,
    caller: &Caller,
    id: &str,
    request: DecisionRequest,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    let tenant = transition_tenant(state, id)
        .await?
        .ok_or(billing::decide::BillingRejection::UnknownTransition)?;
    let verdict = if approve {
        Verdict::Approve
    } else {
        Verdict::Reject(request.reason)
    };
    let command = BillingCommand::DecideTransition {
        id: id.to_owned(),
        by: caller.token_id.clone(),
        verdict,
    };
    let done = run(state, caller, &tenant, command).await?;
    let state_name = done
        .state
        .transitions
        .get(id)
        .map_or("STATE_UNSPECIFIED", |t| t.state.f5_name());
    Ok(Json(json!({"id": id, "state": state_name})))
}

/// `POST /api/tally/plan_transitions/{id}/approve` (operator)
pub async fn approve(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<DecisionRequest>,
) -> Result<Json<Value>, ApiError> {
    give_verdict(&state, &caller, &id, request, true).await
}

/// `POST /api/tally/plan_transitions/{id}/reject` (operator) `{reason}`
pub async fn reject(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<DecisionRequest>,
) -> Result<Json<Value>, ApiError> {
    give_verdict(&state, &caller, &id, request, false).await
}

/// The one addon a subscribe/unsubscribe body names (F5 oneof `addon_choice`).
fn one_addon(body: &[u8], catalog: &Catalog) -> Result<String, ApiError> {
    let value: Map<String, Value> = super::parse_body(body)?;
    let mut names: Vec<&String> = value.keys().collect();
    if names.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "addon_choice: exactly one addon must be named, got {}",
            names.len()
        )));
    }
    let name = names.remove(0);
    if !catalog.addons().iter().any(|a| &a.name == name) {
        return Err(ApiError::BadRequest(format!(
            "addon_choice: `{}` is not an addon service",
            name.chars().take(64).collect::<String>()
        )));
    }
    if !value
        .get(name)
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        return Err(ApiError::BadRequest(format!(
            "{name}: must be an empty object"
        )));
    }
    Ok(name.clone())
}

async fn change_addon(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
    subscribe: bool,
) -> Result<Json<Value>, ApiError> {
    let addon = one_addon(body, &state.engine.config().catalog)?;
    let command = BillingCommand::ChangeAddon { addon, subscribe };
    run(state, caller, &caller.tenant, command).await?;
    Ok(Json(json!({})))
}

/// `POST /api/web/namespaces/system/addon/subscribe`
pub async fn subscribe_addon(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Change>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    change_addon(&state, &caller, &body, true).await
}

/// `POST /api/web/namespaces/system/addon/unsubscribe`
pub async fn unsubscribe_addon(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Change>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    change_addon(&state, &caller, &body, false).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentMethod {
    #[serde(default)]
    contact: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    token: String,
}

impl RequestBody for CreatePaymentMethod {
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

fn parse_role(role: Option<&str>) -> Result<PaymentRole, ApiError> {
    match role.unwrap_or("PAYMENT_METHOD_ROLE_NORMAL") {
        "PAYMENT_METHOD_ROLE_PRIMARY" => Ok(PaymentRole::Primary),
        "PAYMENT_METHOD_ROLE_SECONDARY" => Ok(PaymentRole::Secondary),
        "PAYMENT_METHOD_ROLE_NORMAL" | "PAYMENT_METHOD_ROLE_UNKNOWN" => Ok(PaymentRole::Normal),
        other => Err(ApiError::BadRequest(format!(
            "role: `{}` is not a payment method role",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

/// `POST /api/web/namespaces/{namespace}/billing/payment_methods`
pub async fn create_payment_method(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Change>,
    JsonBody(request): JsonBody<CreatePaymentMethod>,
) -> Result<Json<Value>, ApiError> {
    if request.token.trim().is_empty() || request.token.len() > 4096 {
        return Err(ApiError::BadRequest(
            "token: the payment provider's token is required (at most 4096 bytes)".into(),
        ));
    }
    let role = parse_role(request.role.as_deref())?;
    let name = format!("pm-{}", &crate::ids::random_uuid()[..8]);
    let command = BillingCommand::AddPaymentMethod {
        name: name.clone(),
        role,
        token: request.token,
        contact: request.contact.as_ref().map(contact_of).unwrap_or_default(),
    };
    run(&state, &caller, &caller.tenant, command).await?;
    Ok(Json(json!({"name": name})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

impl RequestBody for NamedRequest {
    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

/// A change of the payment method `name`: the path names it, and a body may repeat it.
async fn change_payment_method(
    state: &AppState,
    caller: &Caller,
    name: &str,
    request: NamedRequest,
    command: BillingCommand,
) -> Result<Json<Value>, ApiError> {
    super::check_body_matches_path("name", name, request.name.as_deref())?;
    run(state, caller, &caller.tenant, command).await?;
    Ok(Json(json!({})))
}

/// `POST /api/web/namespaces/{namespace}/billing/payment_method/{name}/{action}`: `primary`
/// and `secondary` give the method that role; `swap-primary` makes the named secondary the
/// primary and the primary secondary.
pub async fn payment_method_action(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Change>,
    Path((_, name, action)): Path<(String, String, String)>,
    JsonBody(request): JsonBody<NamedRequest>,
) -> Result<Json<Value>, ApiError> {
    let command = match action.as_str() {
        "primary" | "secondary" => BillingCommand::SetPaymentRole {
            name: name.clone(),
            role: if action == "primary" {
                PaymentRole::Primary
            } else {
                PaymentRole::Secondary
            },
        },
        "swap-primary" => BillingCommand::SwapPrimary { name: name.clone() },
        _ => {
            return Err(ApiError::NotFound(format!(
                "`{}` is not a payment method action (primary, secondary, swap-primary)",
                action.chars().take(64).collect::<String>()
            )));
        }
    };
    change_payment_method(&state, &caller, &name, request, command).await
}

/// `DELETE /api/web/namespaces/{namespace}/billing/payment_methods/{name}`
pub async fn delete_payment_method(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Change>,
    Path((_, name)): Path<(String, String)>,
    JsonBody(request): JsonBody<NamedRequest>,
) -> Result<Json<Value>, ApiError> {
    let command = BillingCommand::DeletePaymentMethod { name: name.clone() };
    change_payment_method(&state, &caller, &name, request, command).await
}

#[derive(Debug, Deserialize)]
pub struct InvoicesQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// The open period's invoice so far, priced as it would be issued now.
async fn pending_amount(state: &AppState, billing: &TenantBilling) -> Result<i64, ApiError> {
    let catalog = state.engine.config().catalog.clone();
    let store = state.engine.store().clone();
    let (tenant, period) = (billing.tenant.clone(), billing.open_period().clone());
    let values = tokio::task::spawn_blocking(move || {
        rows::period_values(
            &store,
            &catalog,
            &tenant,
            &period.uid,
            &rows::PendingRows::default(),
        )
    })
    .await??;
    let catalog = &state.engine.config().catalog;
    let Some(plan) = catalog.plan(&billing.open_period().plan) else {
        return Ok(0);
    };
    if plan.billing_disabled {
        return Ok(0);
    }
    let open = billing.open_period();
    let flat = billing::flat_price(
        plan,
        open.start,
        state.engine.now().clamp(open.start, open.end),
    );
    let usage: i64 = billing::usage_lines(plan, &values, catalog)
        .iter()
        .map(|l| l.amount)
        .sum();
    Ok(flat + usage)
}

/// `GET /api/web/namespaces/{namespace}/usage/invoices/custom_list?limit=`: newest first, the
/// open period first of all as `STATUS_PENDING`.
pub async fn list_invoices(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Read>,
    Query(query): Query<InvoicesQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1_000);
    let billing = tenant_state(&state, &caller.tenant).await?;
    let now = state.engine.now();
    let currency = state.engine.config().catalog.currency().to_owned();
    let open = billing.open_period();
    let mut invoices = vec![json!({
        "name": format!("pending-{}", &open.uid[..8]),
        "period_start": time::format_rfc3339(open.start),
        "period_end": time::format_rfc3339(open.end),
        "amount": pending_amount(&state, &billing).await?.to_string(),
        "currency": currency,
        "status": "STATUS_PENDING",
        "active": true,
    })];
    invoices.extend(billing.invoices.iter().rev().map(|invoice| {
        json!({
            "name": invoice.name,
            "period_start": time::format_rfc3339(invoice.period_start),
            "period_end": time::format_rfc3339(invoice.period_end),
            "amount": invoice.total.to_string(),
            "currency": invoice.currency,
            "status": billing::invoice_status(invoice, now),
            "active": false,
        })
    }));
    invoices.truncate(limit);
    Ok(Json(json!({"invoices": invoices})))
}

#[derive(Debug, Deserialize)]
pub struct PdfQuery {
    #[serde(default)]
    name: String,
}

/// `GET /api/web/namespaces/{namespace}/usage/invoice_pdf?name=`
pub async fn invoice_pdf(
    State(state): State<AppState>,
    InNamespace { caller, .. }: InNamespace<Read>,
    Query(query): Query<PdfQuery>,
) -> Result<Json<Value>, ApiError> {
    let billing = tenant_state(&state, &caller.tenant).await?;
    let invoice = billing
        .invoices
        .iter()
        .find(|i| i.name == query.name)
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "name: no invoice `{}`",
                query.name.chars().take(64).collect::<String>()
            ))
        })?;
    let status = billing::invoice_status(&invoice, state.engine.now());
    let tenant = caller.tenant.clone();
    let pdf = tokio::task::spawn_blocking(move || billing::pdf::render(&invoice, &tenant, status))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        json!({"pdf": base64::engine::general_purpose::STANDARD.encode(pdf)}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkPaid {
    tenant: String,
}

impl RequestBody for MarkPaid {}

/// `POST /api/tally/invoices/{name}/mark_paid` (operator) `{tenant}`
pub async fn mark_paid(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<MarkPaid>,
) -> Result<Json<Value>, ApiError> {
    let command = BillingCommand::MarkPaid {
        invoice: name.clone(),
        by: caller.token_id.clone(),
    };
    run(&state, &caller, &request.tenant, command).await?;
    Ok(Json(json!({"name": name, "status": "STATUS_PAID"})))
}

/// `POST /api/tally/tenants/{tenant}/coupons` (operator): F5 `usageCoupon` (`title`,
/// `discount_type`, `discount_amount`), applied to the tenant's next invoice.
pub async fn grant_coupon(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(tenant): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Grant {
        #[serde(default)]
        title: String,
        discount_type: String,
        discount_amount: i64,
    }
    // The tenant is checked before the body is read.
    if !crate::event::is_tenant_name(&tenant) {
        return Err(ApiError::BadRequest(format!(
            "tenant: `{}` is not a tenant name",
            tenant.chars().take(64).collect::<String>()
        )));
    }
    let grant: Grant = super::parse_body(&body)?;
    let kind = match grant.discount_type.as_str() {
        "DISCOUNT_TYPE_FIXED_AMOUNT" => DiscountKind::FixedAmount,
        "DISCOUNT_TYPE_PERCENTAGE" => DiscountKind::Percentage,
        other => {
            return Err(ApiError::BadRequest(format!(
                "discount_type: `{}` is not DISCOUNT_TYPE_FIXED_AMOUNT or DISCOUNT_TYPE_PERCENTAGE",
                other.chars().take(64).collect::<String>()
            )));
        }
    };
    let max = if kind == DiscountKind::Percentage {
        10_000
    } else {
        i64::from(i32::MAX)
    };
    if !(1..=max).contains(&grant.discount_amount) {
        return Err(ApiError::BadRequest(format!(
            "discount_amount: must be from 1 to {max}"
        )));
    }
    if grant.title.len() > 256 {
        return Err(ApiError::BadRequest("title: at most 256 bytes".into()));
    }
    let coupon = Coupon {
        title: grant.title,
        kind,
        amount: grant.discount_amount,
    };
    run(
        &state,
        &caller,
        &tenant,
        BillingCommand::GrantCoupon { coupon },
    )
    .await?;
    Ok(Json(json!({})))
}

/// Pending coupons of a tenant in F5 `usageCoupon` form (shown by `current_usage`).
pub fn coupons_json(billing: &TenantBilling) -> Vec<Value> {
    billing
        .coupons
        .iter()
        .map(|coupon| {
            json!({
                "title": coupon.title,
                "discount_type": match coupon.kind {
                    DiscountKind::FixedAmount => "DISCOUNT_TYPE_FIXED_AMOUNT",
                    DiscountKind::Percentage => "DISCOUNT_TYPE_PERCENTAGE",
                },
                "discount_amount": coupon.amount,
            })
        })
        .collect()
}
