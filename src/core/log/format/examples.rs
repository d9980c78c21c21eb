//! One example of every kind of fact, with fixed content: the golden fixtures
//! (`tests/fixtures/log_v2/`) are these entries' bytes, and the format tests round-trip them.

use super::*;

/// One example entry of every kind, with a fixed content: the golden fixtures are these
/// entries' bytes, and the format test checks that every kind has one.
pub fn examples() -> Vec<(Kind, LogEntry)> {
    let at = 1_790_000_000_000_000;
    let tenant = "acme".to_string();
    let billing = |change| LogEntry::Billing {
        tenant: tenant.clone(),
        at,
        change,
    };
    let event = UsageEvent {
        tenant: tenant.clone(),
        id: "evt-1".into(),
        namespace: "shop".into(),
        metric_label: "http_lb_requests".into(),
        quantity: Micros(1_500_000),
        timestamp: at - 3_600_000_000,
        object_name: "lb-a".into(),
        deployment: "d".into(),
        container: "c".into(),
        labels: [("region".to_string(), "eu".to_string())].into(),
    };
    let object = QuotaObject {
        name: "tight".into(),
        namespace: "shop".into(),
        labels: [("team".to_string(), "web".to_string())].into(),
        annotations: BTreeMap::new(),
        description: "tighter".into(),
        disable: false,
        spec: Limits {
            object_limits: [("http_loadbalancer".to_string(), 4)].into(),
            resource_limits: [("vcpu".to_string(), 2_500_000)].into(),
            api_limits: [(
                "list_usage_details".to_string(),
                RateLimitType {
                    unit: RateLimitUnit::Minute,
                    rate: 30,
                    burst: 5,
                },
            )]
            .into(),
        },
        uid: "5f0c3c5e-0000-4000-8000-000000000001".into(),
        tenant: tenant.clone(),
        creation_timestamp: at,
        modification_timestamp: at,
        creator_id: "tok-1".into(),
    };
    vec![
        (
            Kind::UsageRecorded,
            LogEntry::UsageRecorded {
                event,
                source: EventSource::Kafka {
                    topic: "usage".into(),
                    partition: 3,
                    offset: 1_234,
                },
                recorded_at: at,
            },
        ),
        (
            Kind::QuotaObjectPut,
            LogEntry::QuotaObjectPut { object, at },
        ),
        (
            Kind::QuotaObjectDeleted,
            LogEntry::QuotaObjectDeleted {
                tenant: tenant.clone(),
                namespace: "shop".into(),
                name: "tight".into(),
                at,
            },
        ),
        (
            Kind::QuotaAlert,
            LogEntry::QuotaAlert {
                alert: Alert {
                    id: "alert-1".into(),
                    tenant: tenant.clone(),
                    key: LimitKey {
                        kind: QuotaKind::Object,
                        name: "http_loadbalancer".into(),
                    },
                    threshold_percent: 80,
                    direction: Direction::Raised,
                    level: 4_000_000,
                    limit: 5_000_000,
                    trigger_seq: 17,
                    at,
                },
            },
        ),
        (
            Kind::TransitionRequested,
            billing(BillingChange::TransitionRequested {
                id: "tr-1".into(),
                to_plan: "team-plan".into(),
                requires_approval: true,
                addons: vec!["f5xc_waap_advanced".into()],
                domain: "example.com".into(),
            }),
        ),
        (
            Kind::TransitionApproved,
            billing(BillingChange::TransitionApproved {
                id: "tr-1".into(),
                by: "operator".into(),
            }),
        ),
        (
            Kind::TransitionRejected,
            billing(BillingChange::TransitionRejected {
                id: "tr-1".into(),
                by: "operator".into(),
                reason: "no".into(),
            }),
        ),
        (
            Kind::AddonSubscribed,
            billing(BillingChange::AddonSubscribed {
                addon: "f5xc_waap_advanced".into(),
            }),
        ),
        (
            Kind::AddonUnsubscribed,
            billing(BillingChange::AddonUnsubscribed {
                addon: "f5xc_waap_advanced".into(),
            }),
        ),
        (
            Kind::PaymentMethodAdded,
            billing(BillingChange::PaymentMethodAdded {
                name: "pm-1".into(),
                role: PaymentRole::Primary,
                token: "tok_secret".into(),
                contact: [("city".to_string(), "Paris".to_string())].into(),
            }),
        ),
        (
            Kind::PaymentMethodRole,
            billing(BillingChange::PaymentMethodRole {
                name: "pm-1".into(),
                role: PaymentRole::Secondary,
            }),
        ),
        (
            Kind::PaymentMethodsSwapped,
            billing(BillingChange::PaymentMethodsSwapped),
        ),
        (
            Kind::PaymentMethodDeleted,
            billing(BillingChange::PaymentMethodDeleted {
                name: "pm-1".into(),
            }),
        ),
        (
            Kind::CouponGranted,
            billing(BillingChange::CouponGranted {
                coupon: Coupon {
                    title: "Loyalty".into(),
                    kind: DiscountKind::Percentage,
                    amount: 1_250,
                },
            }),
        ),
        (
            Kind::PeriodClosed,
            billing(BillingChange::PeriodClosed {
                period_uid: "p-1".into(),
            }),
        ),
        (
            Kind::InvoicePaid,
            billing(BillingChange::InvoicePaid {
                invoice: "inv-1".into(),
                by: "operator".into(),
            }),
        ),
        (
            Kind::Audit,
            LogEntry::Audit(AuditRecord {
                at,
                actor: "tok-1".into(),
                actor_tenant: tenant.clone(),
                tenant: tenant.clone(),
                action: "quota.create".into(),
                target: "shop/tight".into(),
            }),
        ),
    ]
}

/// The example dead letter of the golden fixtures.
pub fn example_dead_letter() -> DeadLetter {
    DeadLetter {
        received_at: 1_790_000_000_000_000,
        source: EventSource::Http {
            received_at: 1_790_000_000_000_000,
        },
        tenant: "acme".into(),
        rejection: Rejection::new(Some("bad-1"), "metric_label", "no meter `x`"),
        raw: br#"{"id":"bad-1","metric_label":"x"}"#.to_vec(),
        raw_truncated: false,
    }
}
