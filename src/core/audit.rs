//! The audit trail: who changed what, when. Every admin and billing change is appended to the
//! log with an audit record in the same batch; records never carry secrets (payment or API
//! tokens), only names and ids.
//!
//! A tenant's admin scoped to some namespaces reads only the records about those namespaces
//! (see [`namespaces_of`]); records about the whole tenant need a token scoped to `*`.

use serde::{Deserialize, Serialize};

use crate::billing::BillingChange;
use crate::identity::Caller;
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

/// The target of a token change: its id and the namespaces it is scoped to, so the record can
/// be shown to the admins whose scope covers the token.
pub fn token_target(id: &str, namespaces: &[String]) -> String {
    format!("{id} (namespaces {})", namespaces.join(","))
}

/// The namespaces a record is about, when it is about particular namespaces: a quota change
/// (`namespace/name`), a token change (the token's namespaces, `*` included). `None` for
/// records about the whole tenant (billing, admin) and for token records written before their
/// target named the namespaces.
pub fn namespaces_of(record: &AuditRecord) -> Option<Vec<&str>> {
    if record.action.starts_with("quota.") {
        let (namespace, _) = record.target.split_once('/')?;
        return Some(vec![namespace]);
    }
    if record.action.starts_with("token.") {
        let (_, rest) = record.target.split_once(" (namespaces ")?;
        let list = rest.strip_suffix(')')?;
        return Some(list.split(',').collect());
    }
    None
}

/// Whether `caller` may read `record` (of the caller's tenant, or any for the operator): a
/// caller scoped to `*` reads all; another only records about namespaces all in its scope.
pub fn visible_to(record: &AuditRecord, caller: &Caller) -> bool {
    caller.may_read_namespace("*") || namespaces_of(record).is_some_and(|ns| caller.covers(&ns))
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

    fn record(action: &str, target: &str) -> AuditRecord {
        AuditRecord {
            at: 0,
            actor: "t".into(),
            actor_tenant: "acme".into(),
            tenant: "acme".into(),
            action: action.into(),
            target: target.into(),
        }
    }

    fn caller(namespaces: &[&str]) -> Caller {
        Caller {
            token_id: "c".into(),
            tenant: "acme".into(),
            role: crate::identity::Role::Admin,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            operator: false,
        }
    }

    #[test]
    fn a_scoped_admin_reads_only_records_about_its_namespaces() {
        let shop_token = token_target("ab12", &["shop".into()]);
        let wide_token = token_target("cd34", &["*".into()]);
        let two_token = token_target("ef56", &["shop".into(), "blog".into()]);
        assert_eq!(shop_token, "ab12 (namespaces shop)");
        let records = [
            record("quota.create", "shop/lbs"),
            record("quota.delete", "system/lbs"),
            record("quota.create", "blog/lbs"),
            record("token.create", &shop_token),
            record("token.revoke", &wide_token),
            record("token.create", &two_token),
            record("token.create", "0011aabb"),
            record("payment_method.create", "pm-1 (Primary)"),
            record("admin.rebuild", "all"),
        ];
        let seen = |c: &Caller| -> Vec<usize> {
            (0..records.len())
                .filter(|&i| visible_to(&records[i], c))
                .collect()
        };
        assert_eq!(seen(&caller(&["shop"])), vec![0, 3]);
        assert_eq!(seen(&caller(&["shop", "blog"])), vec![0, 2, 3, 5]);
        assert_eq!(
            seen(&caller(&["*"])),
            (0..records.len()).collect::<Vec<_>>()
        );
        assert_eq!(namespaces_of(&records[5]), Some(vec!["shop", "blog"]));
        assert_eq!(namespaces_of(&records[6]), None);
    }
}
