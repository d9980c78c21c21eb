//! Log format 1, kept only for `tally migrate`: bincode of the Rust types as they stood in the
//! last release before format 2, mirrored here field for field and frozen, then converted to
//! the current domain types.
//!
//! bincode (standard config) encodes a struct as its fields in order and an enum as its variant
//! index, so these mirrors read exactly the bytes format 1 wrote, whatever the live types have
//! become since. Nothing writes this format.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::codec::CodecError;
use super::{DeadLetter, LogEntry};
use crate::audit::AuditRecord;
use crate::billing::{BillingChange, Coupon, DiscountKind, PaymentRole};
use crate::catalog::{QuotaKind, RateLimitType, RateLimitUnit};
use crate::event::{EventSource, Rejection, UsageEvent};
use crate::quota::{Alert, Direction, LimitKey, Limits, QuotaObject};
use crate::units::Micros;

/// First byte of every format-1 value.
pub const FORMAT_V1: u8 = 1;

const DECODE_LIMIT: usize = 256 * 1024 * 1024;

#[derive(Deserialize)]
enum EntryV1 {
    UsageRecorded {
        event: UsageEventV1,
        source: SourceV1,
        recorded_at: i64,
    },
    QuotaObjectPut {
        object: QuotaObjectV1,
        at: i64,
    },
    QuotaObjectDeleted {
        tenant: String,
        namespace: String,
        name: String,
        at: i64,
    },
    QuotaAlert {
        alert: AlertV1,
    },
    Billing {
        tenant: String,
        at: i64,
        change: BillingV1,
    },
    Audit(AuditV1),
}

#[derive(Deserialize)]
struct UsageEventV1 {
    tenant: String,
    id: String,
    namespace: String,
    metric_label: String,
    quantity: i64,
    timestamp: i64,
    object_name: String,
    deployment: String,
    container: String,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
enum SourceV1 {
    Http {
        received_at: i64,
    },
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

#[derive(Deserialize)]
struct QuotaObjectV1 {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    description: String,
    disable: bool,
    spec: LimitsV1,
    uid: String,
    tenant: String,
    creation_timestamp: i64,
    modification_timestamp: i64,
    creator_id: String,
}

#[derive(Deserialize)]
struct LimitsV1 {
    object_limits: BTreeMap<String, i64>,
    resource_limits: BTreeMap<String, i64>,
    api_limits: BTreeMap<String, RateLimitV1>,
}

#[derive(Deserialize)]
struct RateLimitV1 {
    unit: RateUnitV1,
    rate: u32,
    burst: u32,
}

#[derive(Deserialize)]
enum RateUnitV1 {
    Second,
    Minute,
    Hour,
    Day,
}

#[derive(Deserialize)]
struct AlertV1 {
    id: String,
    tenant: String,
    key: LimitKeyV1,
    threshold_percent: u8,
    direction: DirectionV1,
    level: i128,
    limit: i128,
    trigger_seq: u64,
    at: i64,
}

#[derive(Deserialize)]
struct LimitKeyV1 {
    kind: QuotaKindV1,
    name: String,
}

#[derive(Deserialize)]
enum QuotaKindV1 {
    Object,
    Resource,
    Api,
}

#[derive(Deserialize)]
enum DirectionV1 {
    Raised,
    Cleared,
}

#[derive(Deserialize)]
enum BillingV1 {
    TransitionRequested {
        id: String,
        to_plan: String,
        requires_approval: bool,
        addons: Vec<String>,
        domain: String,
    },
    TransitionApproved {
        id: String,
        by: String,
    },
    TransitionRejected {
        id: String,
        by: String,
        reason: String,
    },
    AddonSubscribed {
        addon: String,
    },
    AddonUnsubscribed {
        addon: String,
    },
    PaymentMethodAdded {
        name: String,
        role: RoleV1,
        token: String,
        contact: BTreeMap<String, String>,
    },
    PaymentMethodRole {
        name: String,
        role: RoleV1,
    },
    PaymentMethodsSwapped,
    PaymentMethodDeleted {
        name: String,
    },
    CouponGranted {
        coupon: CouponV1,
    },
    PeriodClosed {
        period_uid: String,
    },
    InvoicePaid {
        invoice: String,
        by: String,
    },
}

#[derive(Deserialize)]
enum RoleV1 {
    Primary,
    Secondary,
    Normal,
}

#[derive(Deserialize)]
struct CouponV1 {
    title: String,
    kind: DiscountV1,
    amount: i64,
}

#[derive(Deserialize)]
enum DiscountV1 {
    FixedAmount,
    Percentage,
}

#[derive(Deserialize)]
struct AuditV1 {
    at: i64,
    actor: String,
    actor_tenant: String,
    tenant: String,
    action: String,
    target: String,
}

#[derive(Deserialize)]
struct DeadLetterV1 {
    received_at: i64,
    source: SourceV1,
    tenant: String,
    rejection: RejectionV1,
    raw: Vec<u8>,
    raw_truncated: bool,
}

#[derive(Deserialize)]
struct RejectionV1 {
    id: Option<String>,
    field: String,
    reason: String,
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    let error = |reason: String| CodecError { what, reason };
    let body = match bytes.split_first() {
        Some((&FORMAT_V1, body)) => body,
        Some((format, _)) => return Err(error(format!("format {format}, not 1"))),
        None => return Err(error("empty value".into())),
    };
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let (value, used) =
        bincode::serde::decode_from_slice(body, config).map_err(|e| error(e.to_string()))?;
    if used != body.len() {
        return Err(error(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

/// A format-1 log value as the current domain entry.
pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, CodecError> {
    Ok(match decode::<EntryV1>(bytes, "format-1 log entry")? {
        EntryV1::UsageRecorded {
            event,
            source,
            recorded_at,
        } => LogEntry::UsageRecorded {
            event: UsageEvent {
                tenant: event.tenant,
                id: event.id,
                namespace: event.namespace,
                metric_label: event.metric_label,
                quantity: Micros(event.quantity),
                timestamp: event.timestamp,
                object_name: event.object_name,
                deployment: event.deployment,
                container: event.container,
                labels: event.labels,
            },
            source: source.into(),
            recorded_at,
        },
        EntryV1::QuotaObjectPut { object, at } => LogEntry::QuotaObjectPut {
            object: QuotaObject {
                name: object.name,
                namespace: object.namespace,
                labels: object.labels,
                annotations: object.annotations,
                description: object.description,
                disable: object.disable,
                spec: Limits {
                    object_limits: object.spec.object_limits,
                    resource_limits: object.spec.resource_limits,
                    api_limits: object
                        .spec
                        .api_limits
                        .into_iter()
                        .map(|(key, limit)| {
                            let unit = match limit.unit {
                                RateUnitV1::Second => RateLimitUnit::Second,
                                RateUnitV1::Minute => RateLimitUnit::Minute,
                                RateUnitV1::Hour => RateLimitUnit::Hour,
                                RateUnitV1::Day => RateLimitUnit::Day,
                            };
                            let limit = RateLimitType {
                                unit,
                                rate: limit.rate,
                                burst: limit.burst,
                            };
                            (key, limit)
                        })
                        .collect(),
                },
                uid: object.uid,
                tenant: object.tenant,
                creation_timestamp: object.creation_timestamp,
                modification_timestamp: object.modification_timestamp,
                creator_id: object.creator_id,
            },
            at,
        },
        EntryV1::QuotaObjectDeleted {
            tenant,
            namespace,
            name,
            at,
        } => LogEntry::QuotaObjectDeleted {
            tenant,
            namespace,
            name,
            at,
        },
        EntryV1::QuotaAlert { alert } => LogEntry::QuotaAlert {
            alert: Alert {
                id: alert.id,
                tenant: alert.tenant,
                key: LimitKey {
                    kind: match alert.key.kind {
                        QuotaKindV1::Object => QuotaKind::Object,
                        QuotaKindV1::Resource => QuotaKind::Resource,
                        QuotaKindV1::Api => QuotaKind::Api,
                    },
                    name: alert.key.name,
                },
                threshold_percent: alert.threshold_percent,
                direction: match alert.direction {
                    DirectionV1::Raised => Direction::Raised,
                    DirectionV1::Cleared => Direction::Cleared,
                },
                level: alert.level,
                limit: alert.limit,
                trigger_seq: alert.trigger_seq,
                at: alert.at,
            },
        },
        EntryV1::Billing { tenant, at, change } => LogEntry::Billing {
            tenant,
            at,
            change: change.into(),
        },
        EntryV1::Audit(record) => LogEntry::Audit(AuditRecord {
            at: record.at,
            actor: record.actor,
            actor_tenant: record.actor_tenant,
            tenant: record.tenant,
            action: record.action,
            target: record.target,
        }),
    })
}

/// A format-1 dead letter as the current one.
pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    let letter: DeadLetterV1 = decode(bytes, "format-1 dead letter")?;
    Ok(DeadLetter {
        received_at: letter.received_at,
        source: letter.source.into(),
        tenant: letter.tenant,
        rejection: Rejection {
            id: letter.rejection.id,
            field: letter.rejection.field,
            reason: letter.rejection.reason,
        },
        raw: letter.raw,
        raw_truncated: letter.raw_truncated,
    })
}

impl From<SourceV1> for EventSource {
    fn from(source: SourceV1) -> Self {
        match source {
            SourceV1::Http { received_at } => EventSource::Http { received_at },
            SourceV1::Kafka {
                topic,
                partition,
                offset,
            } => EventSource::Kafka {
                topic,
                partition,
                offset,
            },
        }
    }
}

impl From<RoleV1> for PaymentRole {
    fn from(role: RoleV1) -> Self {
        match role {
            RoleV1::Primary => PaymentRole::Primary,
            RoleV1::Secondary => PaymentRole::Secondary,
            RoleV1::Normal => PaymentRole::Normal,
        }
    }
}

impl From<BillingV1> for BillingChange {
    fn from(change: BillingV1) -> Self {
        match change {
            BillingV1::TransitionRequested {
                id,
                to_plan,
                requires_approval,
                addons,
                domain,
            } => BillingChange::TransitionRequested {
                id,
                to_plan,
                requires_approval,
                addons,
                domain,
            },
            BillingV1::TransitionApproved { id, by } => {
                BillingChange::TransitionApproved { id, by }
            }
            BillingV1::TransitionRejected { id, by, reason } => {
                BillingChange::TransitionRejected { id, by, reason }
            }
            BillingV1::AddonSubscribed { addon } => BillingChange::AddonSubscribed { addon },
            BillingV1::AddonUnsubscribed { addon } => BillingChange::AddonUnsubscribed { addon },
            BillingV1::PaymentMethodAdded {
                name,
                role,
                token,
                contact,
            } => BillingChange::PaymentMethodAdded {
                name,
                role: role.into(),
                token,
                contact,
            },
            BillingV1::PaymentMethodRole { name, role } => BillingChange::PaymentMethodRole {
                name,
                role: role.into(),
            },
            BillingV1::PaymentMethodsSwapped => BillingChange::PaymentMethodsSwapped,
            BillingV1::PaymentMethodDeleted { name } => {
                BillingChange::PaymentMethodDeleted { name }
            }
            BillingV1::CouponGranted { coupon } => BillingChange::CouponGranted {
                coupon: Coupon {
                    title: coupon.title,
                    kind: match coupon.kind {
                        DiscountV1::FixedAmount => DiscountKind::FixedAmount,
                        DiscountV1::Percentage => DiscountKind::Percentage,
                    },
                    amount: coupon.amount,
                },
            },
            BillingV1::PeriodClosed { period_uid } => BillingChange::PeriodClosed { period_uid },
            BillingV1::InvoicePaid { invoice, by } => BillingChange::InvoicePaid { invoice, by },
        }
    }
}
