//! The audit trail: who changed what, when. Every admin and billing change is appended to the
//! log with an audit record in the same batch; records never carry secrets (payment or API
//! tokens), only names and ids.

use serde::{Deserialize, Serialize};

use crate::billing::BillingChange;
use crate::time::UnixMicros;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: UnixMicros,
    /// Id of the token that acted (`operator` for the operator token).
    pub actor: String,
    /// Tenant of that token.
    pub actor_tenant: String,
    /// Tenant whose data changed.
    pub tenant: String,
    /// What was done, e.g. `quota.create`, `payment_method.delete`, `token.revoke`.
    pub action: String,
    /// What it was done to (a name or id; never a secret).
    pub target: String,
}

/// The action and target of a billing change, for the audit trail.
pub fn billing_action(change: &BillingChange) -> (&'static str, String) {
    match change {
        BillingChange::TransitionRequested { id, to_plan, .. } => {
            ("plan_transition.request", format!("{id} to {to_plan}"))
        }
        BillingChange::TransitionApproved { id, .. } => ("plan_transition.approve", id.clone()),
        BillingChange::TransitionRejected { id, .. } => ("plan_transition.reject", id.clone()),
        BillingChange::AddonSubscribed { addon } => ("addon.subscribe", addon.clone()),
        BillingChange::AddonUnsubscribed { addon } => ("addon.unsubscribe", addon.clone()),
        // The provider token is deliberately left out.
        BillingChange::PaymentMethodAdded { name, role, .. } => {
            ("payment_method.create", format!("{name} ({role:?})"))
        }
        BillingChange::PaymentMethodRole { name, role } => {
            ("payment_method.role", format!("{name} ({role:?})"))
        }
        BillingChange::PaymentMethodsSwapped => ("payment_method.swap_primary", String::new()),
        BillingChange::PaymentMethodDeleted { name } => ("payment_method.delete", name.clone()),
        BillingChange::CouponGranted { coupon } => ("coupon.grant", coupon.title.clone()),
        BillingChange::PeriodClosed { period_uid } => ("period.close", period_uid.clone()),
        BillingChange::InvoicePaid { invoice, .. } => ("invoice.mark_paid", invoice.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::PaymentRole;

    #[test]
    fn payment_tokens_stay_out_of_the_trail() {
        let change = BillingChange::PaymentMethodAdded {
            name: "pm-1".into(),
            role: PaymentRole::Primary,
            token: "tok_very_secret".into(),
            contact: Default::default(),
        };
        let (action, target) = billing_action(&change);
        assert_eq!(action, "payment_method.create");
        assert!(!target.contains("tok_very_secret"));
    }
}
