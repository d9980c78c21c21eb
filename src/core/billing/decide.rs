//! Billing rules: whether a tenant's billing command may happen and which facts it records,
//! decided from the tenant's own state and the catalog alone (pure: the write side hands in
//! the state, the API appends the facts).

use std::collections::BTreeMap;

use super::{BillingChange, Coupon, PaymentRole, TenantBilling, TransitionState};
use crate::catalog::{Catalog, TransitionRequiredField};

/// A plan transition as asked for (F5 `plan_transition` with its payload), parsed.
#[derive(Debug, Clone, Default)]
pub struct TransitionRequest {
    pub new_plan: String,
    pub payment_provider_token: String,
    pub domain: String,
    /// The payload named a non-empty `billing_address`.
    pub has_billing_address: bool,
    /// The contact kept with a payment token: the payment address, else the billing one.
    pub contact: BTreeMap<String, String>,
    pub subscribe_addon_services: Vec<String>,
}

/// An operator's verdict on a transition waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    /// With the reason given (empty: a default one).
    Reject(String),
}

/// A tenant's billing command, parsed and authorised. Ids and names are chosen by the caller
/// (random), so deciding stays a function of its inputs.
#[derive(Debug, Clone)]
pub enum BillingCommand {
    RequestTransition {
        id: String,
        request: TransitionRequest,
    },
    DecideTransition {
        id: String,
        by: String,
        verdict: Verdict,
    },
    /// Subscribe (`true`) or unsubscribe an addon the catalog has.
    ChangeAddon {
        addon: String,
        subscribe: bool,
    },
    AddPaymentMethod {
        name: String,
        role: PaymentRole,
        token: String,
        contact: BTreeMap<String, String>,
    },
    /// Make a payment method primary or secondary.
    SetPaymentRole {
        name: String,
        role: PaymentRole,
    },
    /// The named secondary becomes primary and the primary secondary.
    SwapPrimary {
        name: String,
    },
    DeletePaymentMethod {
        name: String,
    },
    MarkPaid {
        invoice: String,
        by: String,
    },
    GrantCoupon {
        coupon: Coupon,
    },
}

impl BillingCommand {
    /// Whether the command is decided by what only the fold computes: invoices, priced from
    /// usage. Such a command is decided against the projection once it holds every fact of
    /// the tenant, never against the write side's state.
    pub fn needs_folded_state(&self) -> bool {
        matches!(self, BillingCommand::MarkPaid { .. })
    }
}

/// Why a billing command is refused; each variant says the HTTP status it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingRejection {
    /// 400: `new_plan` names no plan.
    #[error("new_plan: `{}` is not a plan of the catalog", short(plan))]
    UnknownPlan { plan: String },
    /// 400: `new_plan` is the tenant's plan.
    #[error("new_plan: the tenant is on `{plan}` already")]
    AlreadyOnPlan { plan: String },
    /// 409: another transition waits for its verdict.
    #[error("plan transition {id} is waiting for approval; it must be decided first")]
    TransitionWaiting { id: String },
    /// 400: the plan needs a payment token, and none is on file.
    #[error("payload.payment_provider_token: plan `{plan}` needs a payment method")]
    NeedsPaymentMethod { plan: String },
    /// 400: the plan needs the tenant's domain.
    #[error("payload.domain: plan `{plan}` needs the tenant's domain (a host name)")]
    NeedsDomain { plan: String },
    /// 400: the plan needs billing contacts.
    #[error("payload.billing_address: plan `{plan}` needs billing contacts")]
    NeedsContacts { plan: String },
    /// 400: an addon to subscribe with the transition is not offered on the new plan.
    #[error("payload.subscribe_addon_services: `{addon}` is not allowed on plan `{plan}`")]
    AddonNotOnNewPlan { addon: String, plan: String },
    /// 404.
    #[error("no plan transition has this id")]
    UnknownTransition,
    /// 409: the transition was decided already (or never waited).
    #[error("plan transition {id} is {state}, not waiting for approval")]
    TransitionNotWaiting { id: String, state: &'static str },
    /// 500: the tenant's plan left the catalog (a catalog change without its plans).
    #[error("the tenant's plan {plan} is not in the catalog")]
    PlanNotInCatalog { plan: String },
    /// 403: the tenant's plan does not offer the addon.
    #[error("addon `{addon}` is not allowed on plan `{plan}`")]
    AddonNotAllowed { addon: String, plan: String },
    /// 403: the plan includes the addon.
    #[error("addon `{addon}` is included in plan `{plan}` and cannot be unsubscribed")]
    AddonIncluded { addon: String, plan: String },
    /// 404.
    #[error("payment method `{}` does not exist", short(name))]
    UnknownPaymentMethod { name: String },
    /// 409: a primary becomes secondary only by a swap.
    #[error("payment method `{name}` is the primary; swap-primary exchanges the roles")]
    PrimaryToSecondary { name: String },
    /// 409.
    #[error("swap-primary needs `{name}` to be the secondary and a primary to swap with")]
    NothingToSwap { name: String },
    /// 409: a paid plan keeps its primary.
    #[error(
        "payment method `{name}` is the primary of a paid plan; make another one primary first"
    )]
    PrimaryOfPaidPlan { name: String },
    /// 404.
    #[error("no invoice `{name}` for this tenant")]
    UnknownInvoice { name: String },
}

/// Names in messages are cut to 64 characters: they may come from the request.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}

/// The reason a rejection records when the operator gave none, and the most it keeps.
const DEFAULT_REJECTION: &str = "rejected by the billing department";
const MAX_REASON_CHARS: usize = 1024;

/// A host name: dot-separated labels of letters, digits and inner hyphens.
pub fn is_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.contains('.')
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The facts `command` records for the tenant in `state` (none: nothing to change, as for
/// subscribing an addon twice), or why it may not happen.
pub fn decide(
    state: &TenantBilling,
    catalog: &Catalog,
    command: BillingCommand,
) -> Result<Vec<BillingChange>, BillingRejection> {
    match command {
        BillingCommand::RequestTransition { id, request } => {
            request_transition(state, catalog, id, request)
        }
        BillingCommand::DecideTransition { id, by, verdict } => {
            let transition = state
                .transitions
                .get(&id)
                .ok_or(BillingRejection::UnknownTransition)?;
            if transition.state != TransitionState::WaitingForApproval {
                return Err(BillingRejection::TransitionNotWaiting {
                    state: transition.state.f5_name(),
                    id,
                });
            }
            Ok(vec![match verdict {
                Verdict::Approve => BillingChange::TransitionApproved { id, by },
                Verdict::Reject(reason) => BillingChange::TransitionRejected {
                    id,
                    by,
                    reason: if reason.is_empty() {
                        DEFAULT_REJECTION.to_owned()
                    } else {
                        reason.chars().take(MAX_REASON_CHARS).collect()
                    },
                },
            }])
        }
        BillingCommand::ChangeAddon { addon, subscribe } => {
            let plan =
                catalog
                    .plan(&state.plan)
                    .ok_or_else(|| BillingRejection::PlanNotInCatalog {
                        plan: state.plan.clone(),
                    })?;
            let subscribed = state.addons.contains(&addon);
            if subscribe == subscribed {
                return Ok(Vec::new());
            }
            if subscribe {
                if !plan.allowed_addon_services.contains(&addon) {
                    return Err(BillingRejection::AddonNotAllowed {
                        addon,
                        plan: plan.name.clone(),
                    });
                }
                Ok(vec![BillingChange::AddonSubscribed { addon }])
            } else {
                if plan.included_addon_services.contains(&addon) {
                    return Err(BillingRejection::AddonIncluded {
                        addon,
                        plan: plan.name.clone(),
                    });
                }
                Ok(vec![BillingChange::AddonUnsubscribed { addon }])
            }
        }
        BillingCommand::AddPaymentMethod {
            name,
            role,
            token,
            contact,
        } => Ok(vec![BillingChange::PaymentMethodAdded {
            name,
            role,
            token,
            contact,
        }]),
        BillingCommand::SetPaymentRole { name, role } => {
            let current = role_of(state, &name)?;
            if role == PaymentRole::Secondary && current == PaymentRole::Primary {
                return Err(BillingRejection::PrimaryToSecondary { name });
            }
            Ok(vec![BillingChange::PaymentMethodRole { name, role }])
        }
        BillingCommand::SwapPrimary { name } => {
            let has_primary = state
                .payment_methods
                .values()
                .any(|m| m.role == PaymentRole::Primary);
            if role_of(state, &name)? != PaymentRole::Secondary || !has_primary {
                return Err(BillingRejection::NothingToSwap { name });
            }
            Ok(vec![BillingChange::PaymentMethodsSwapped])
        }
        BillingCommand::DeletePaymentMethod { name } => {
            let role = role_of(state, &name)?;
            let paid = catalog
                .plan(&state.plan)
                .is_some_and(|p| !p.billing_disabled && p.flat_price > 0);
            if paid && role == PaymentRole::Primary {
                return Err(BillingRejection::PrimaryOfPaidPlan { name });
            }
            Ok(vec![BillingChange::PaymentMethodDeleted { name }])
        }
        BillingCommand::MarkPaid { invoice, by } => {
            let Some(found) = state.invoices.iter().find(|i| i.name == invoice) else {
                return Err(BillingRejection::UnknownInvoice { name: invoice });
            };
            if found.paid_at.is_some() {
                return Ok(Vec::new());
            }
            Ok(vec![BillingChange::InvoicePaid { invoice, by }])
        }
        BillingCommand::GrantCoupon { coupon } => Ok(vec![BillingChange::CouponGranted { coupon }]),
    }
}

/// The role of the tenant's payment method `name`; a 404 when there is none.
fn role_of(state: &TenantBilling, name: &str) -> Result<PaymentRole, BillingRejection> {
    state
        .payment_methods
        .get(name)
        .map(|m| m.role)
        .ok_or_else(|| BillingRejection::UnknownPaymentMethod {
            name: name.to_owned(),
        })
}

fn request_transition(
    state: &TenantBilling,
    catalog: &Catalog,
    id: String,
    request: TransitionRequest,
) -> Result<Vec<BillingChange>, BillingRejection> {
    let Some(plan) = catalog.plan(&request.new_plan) else {
        return Err(BillingRejection::UnknownPlan {
            plan: request.new_plan,
        });
    };
    if state.plan == plan.name {
        return Err(BillingRejection::AlreadyOnPlan {
            plan: plan.name.clone(),
        });
    }
    if let Some(pending) = state.pending_transition() {
        return Err(BillingRejection::TransitionWaiting {
            id: pending.id.clone(),
        });
    }
    let has_primary = state
        .payment_methods
        .values()
        .any(|m| m.role == PaymentRole::Primary);
    let plan_name = || plan.name.clone();
    for field in &plan.transition_flow.required_fields {
        match field {
            TransitionRequiredField::TRANSITION_REQUIRED_FIELD_PAYMENT_TOKEN
                if request.payment_provider_token.is_empty() && !has_primary =>
            {
                return Err(BillingRejection::NeedsPaymentMethod { plan: plan_name() });
            }
            TransitionRequiredField::TRANSITION_REQUIRED_FIELD_DOMAIN
                if !is_hostname(&request.domain) =>
            {
                return Err(BillingRejection::NeedsDomain { plan: plan_name() });
            }
            TransitionRequiredField::TRANSITION_REQUIRED_FIELD_CONTACTS
                if !request.has_billing_address =>
            {
                return Err(BillingRejection::NeedsContacts { plan: plan_name() });
            }
            _ => {}
        }
    }
    if let Some(addon) = request.subscribe_addon_services.iter().find(|addon| {
        !plan.allowed_addon_services.contains(*addon)
            && !plan.included_addon_services.contains(*addon)
    }) {
        return Err(BillingRejection::AddonNotOnNewPlan {
            addon: addon.clone(),
            plan: plan_name(),
        });
    }
    let mut changes = Vec::new();
    if !request.payment_provider_token.is_empty() {
        changes.push(BillingChange::PaymentMethodAdded {
            name: format!("pm-{}", id.chars().take(8).collect::<String>()),
            role: PaymentRole::Primary,
            token: request.payment_provider_token,
            contact: request.contact,
        });
    }
    changes.push(BillingChange::TransitionRequested {
        id,
        to_plan: plan.name.clone(),
        requires_approval: plan.transition_flow.requires_manual_approval,
        addons: request.subscribe_addon_services,
        domain: request.domain,
    });
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::apply;

    const AT: i64 = 1_773_100_800_000_000;

    fn catalog() -> Catalog {
        Catalog::builtin().unwrap()
    }

    /// A tenant on the built-in default plan (`free-plan`).
    fn tenant() -> TenantBilling {
        TenantBilling::new("acme", &catalog(), AT)
    }

    /// Decides `command`, then folds what it recorded, as the write side does.
    fn run(
        state: &mut TenantBilling,
        command: BillingCommand,
    ) -> Result<Vec<BillingChange>, BillingRejection> {
        let catalog = catalog();
        let changes = decide(state, &catalog, command)?;
        for change in &changes {
            apply(state, change, AT, &catalog);
        }
        Ok(changes)
    }

    fn to_plan(id: &str, plan: &str, request: TransitionRequest) -> BillingCommand {
        BillingCommand::RequestTransition {
            id: id.into(),
            request: TransitionRequest {
                new_plan: plan.into(),
                ..request
            },
        }
    }

    fn add_method(state: &mut TenantBilling, name: &str, role: PaymentRole) {
        run(
            state,
            BillingCommand::AddPaymentMethod {
                name: name.into(),
                role,
                token: "tok".into(),
                contact: BTreeMap::new(),
            },
        )
        .unwrap();
    }

    #[test]
    fn a_transition_needs_a_new_known_plan_and_the_fields_that_plan_requires() {
        let mut state = tenant();
        let plain = TransitionRequest::default;
        assert_eq!(
            run(&mut state, to_plan("t1", "free-plan", plain())),
            Err(BillingRejection::AlreadyOnPlan {
                plan: "free-plan".into()
            })
        );
        let unknown = run(&mut state, to_plan("t1", &"x".repeat(100), plain())).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            format!(
                "new_plan: `{}` is not a plan of the catalog",
                "x".repeat(64)
            )
        );
        // team-plan needs a payment token and contacts, and offers no CDN-advanced addon.
        assert_eq!(
            run(&mut state, to_plan("t1", "team-plan", plain())),
            Err(BillingRejection::NeedsPaymentMethod {
                plan: "team-plan".into()
            })
        );
        let with_token = || TransitionRequest {
            payment_provider_token: "tok_visa".into(),
            ..plain()
        };
        assert_eq!(
            run(&mut state, to_plan("t1", "team-plan", with_token())),
            Err(BillingRejection::NeedsContacts {
                plan: "team-plan".into()
            })
        );
        let complete = || TransitionRequest {
            has_billing_address: true,
            ..with_token()
        };
        assert_eq!(
            run(
                &mut state,
                to_plan(
                    "t1",
                    "team-plan",
                    TransitionRequest {
                        subscribe_addon_services: vec![
                            "f5xc_content_delivery_network_advanced".into()
                        ],
                        ..complete()
                    }
                )
            ),
            Err(BillingRejection::AddonNotOnNewPlan {
                addon: "f5xc_content_delivery_network_advanced".into(),
                plan: "team-plan".into()
            })
        );
        // A complete request records the payment method, then the transition, which finishes.
        let changes = run(&mut state, to_plan("abcdef1234", "team-plan", complete())).unwrap();
        assert!(matches!(
            changes.as_slice(),
            [
                BillingChange::PaymentMethodAdded { name, role: PaymentRole::Primary, .. },
                BillingChange::TransitionRequested { requires_approval: false, .. },
            ] if name == "pm-abcdef12"
        ));
        assert_eq!(state.plan, "team-plan");
    }

    #[test]
    fn a_transition_that_waits_for_approval_blocks_others_until_its_verdict() {
        let mut state = tenant();
        let request = || TransitionRequest {
            domain: "shop.example.com".into(),
            has_billing_address: true,
            ..TransitionRequest::default()
        };
        assert_eq!(
            run(
                &mut state,
                to_plan(
                    "t1",
                    "organization-plan",
                    TransitionRequest {
                        domain: "not a host".into(),
                        ..request()
                    }
                )
            ),
            Err(BillingRejection::NeedsDomain {
                plan: "organization-plan".into()
            })
        );
        run(&mut state, to_plan("t1", "organization-plan", request())).unwrap();
        assert_eq!(state.plan, "free-plan", "waits for its verdict");
        assert_eq!(
            run(&mut state, to_plan("t2", "individual-plan", request())),
            Err(BillingRejection::TransitionWaiting { id: "t1".into() })
        );
        let verdict = |id: &str, verdict: Verdict| BillingCommand::DecideTransition {
            id: id.into(),
            by: "operator".into(),
            verdict,
        };
        assert_eq!(
            run(&mut state, verdict("t9", Verdict::Approve)),
            Err(BillingRejection::UnknownTransition)
        );
        let rejected = run(&mut state, verdict("t1", Verdict::Reject(String::new()))).unwrap();
        assert!(matches!(
            rejected.as_slice(),
            [BillingChange::TransitionRejected { reason, .. }] if reason == DEFAULT_REJECTION
        ));
        assert_eq!(
            run(&mut state, verdict("t1", Verdict::Approve)),
            Err(BillingRejection::TransitionNotWaiting {
                id: "t1".into(),
                state: "STATE_FAILED"
            })
        );
    }

    #[test]
    fn addons_follow_the_plan_and_repeating_a_change_records_nothing() {
        let mut state = tenant();
        let change = |addon: &str, subscribe| BillingCommand::ChangeAddon {
            addon: addon.into(),
            subscribe,
        };
        let allowed = "f5xc_synthetic_monitoring_standard";
        assert_eq!(run(&mut state, change(allowed, true)).unwrap().len(), 1);
        assert_eq!(run(&mut state, change(allowed, true)), Ok(Vec::new()));
        assert_eq!(
            run(&mut state, change("f5xc_waap_advanced", true)),
            Err(BillingRejection::AddonNotAllowed {
                addon: "f5xc_waap_advanced".into(),
                plan: "free-plan".into()
            })
        );
        assert_eq!(
            run(&mut state, change("f5xc_waap_advanced", false)),
            Ok(Vec::new())
        );
        assert_eq!(run(&mut state, change(allowed, false)).unwrap().len(), 1);
        assert!(state.addons.is_empty());
    }

    #[test]
    fn payment_roles_move_by_the_f5_rules() {
        let mut state = tenant();
        add_method(&mut state, "pm-a", PaymentRole::Primary);
        add_method(&mut state, "pm-b", PaymentRole::Normal);
        let set = |name: &str, role| BillingCommand::SetPaymentRole {
            name: name.into(),
            role,
        };
        let swap = |name: &str| BillingCommand::SwapPrimary { name: name.into() };
        assert_eq!(
            run(&mut state, set("pm-a", PaymentRole::Secondary)),
            Err(BillingRejection::PrimaryToSecondary {
                name: "pm-a".into()
            })
        );
        assert_eq!(
            run(&mut state, swap("pm-b")),
            Err(BillingRejection::NothingToSwap {
                name: "pm-b".into()
            })
        );
        run(&mut state, set("pm-b", PaymentRole::Secondary)).unwrap();
        run(&mut state, swap("pm-b")).unwrap();
        let role = |state: &TenantBilling, name: &str| state.payment_methods[name].role;
        assert_eq!(
            (role(&state, "pm-a"), role(&state, "pm-b")),
            (PaymentRole::Secondary, PaymentRole::Primary)
        );
        let delete = |name: &str| BillingCommand::DeletePaymentMethod { name: name.into() };
        assert_eq!(
            run(&mut state, delete("pm-zzz")),
            Err(BillingRejection::UnknownPaymentMethod {
                name: "pm-zzz".into()
            })
        );
        // The free plan is not paid: even its primary may go.
        run(&mut state, delete("pm-b")).unwrap();
        assert!(!state.payment_methods.contains_key("pm-b"));
    }

    #[test]
    fn a_paid_plan_keeps_its_primary_and_only_issued_invoices_are_paid() {
        let mut state = tenant();
        run(
            &mut state,
            to_plan(
                "t1",
                "individual-plan",
                TransitionRequest {
                    payment_provider_token: "tok_visa".into(),
                    ..TransitionRequest::default()
                },
            ),
        )
        .unwrap();
        let primary = state
            .payment_methods
            .values()
            .find(|m| m.role == PaymentRole::Primary)
            .map(|m| m.name.clone())
            .unwrap();
        assert_eq!(
            run(
                &mut state,
                BillingCommand::DeletePaymentMethod {
                    name: primary.clone()
                }
            ),
            Err(BillingRejection::PrimaryOfPaidPlan { name: primary })
        );
        assert_eq!(
            run(
                &mut state,
                BillingCommand::MarkPaid {
                    invoice: "INV-1".into(),
                    by: "operator".into()
                }
            ),
            Err(BillingRejection::UnknownInvoice {
                name: "INV-1".into()
            })
        );
    }
}
