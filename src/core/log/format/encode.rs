//! Log format v2, writing: a log entry or a dead letter into its stored bytes.

use super::*;

/// The encoded log value of `entry`.
pub fn encode_entry(entry: &LogEntry) -> Vec<u8> {
    let (kind, header, payload) = storage_of(entry);
    let mut out = Vec::with_capacity(32 + header.tenant.len() + payload.len());
    out.push(FORMAT_V2);
    out.extend_from_slice(&kind.number().to_be_bytes());
    out.extend_from_slice(&kind.current_version().to_be_bytes());
    put_text(&mut out, header.tenant);
    out.extend_from_slice(&header.time.to_be_bytes());
    put_source(&mut out, &header.source);
    out.extend_from_slice(&payload);
    out
}

struct Header<'a> {
    tenant: &'a str,
    time: i64,
    source: StoredSource,
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn payload<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain storage structs into a Vec cannot fail.
    bincode::serde::encode_to_vec(value, bincode_config()).unwrap_or_default()
}

fn command(tenant: &str, time: i64) -> Header<'_> {
    Header {
        tenant,
        time,
        source: StoredSource::Command,
    }
}

fn storage_of(entry: &LogEntry) -> (Kind, Header<'_>, Vec<u8>) {
    match entry {
        LogEntry::UsageRecorded {
            event,
            source,
            recorded_at,
        } => (
            Kind::UsageRecorded,
            Header {
                tenant: &event.tenant,
                time: *recorded_at,
                source: StoredSource::of(source),
            },
            payload(&UsageV1 {
                id: event.id.clone(),
                namespace: event.namespace.clone(),
                metric_label: event.metric_label.clone(),
                quantity_micros: event.quantity.0,
                event_time: event.timestamp,
                object_name: event.object_name.clone(),
                deployment: event.deployment.clone(),
                container: event.container.clone(),
                labels: pairs(&event.labels),
            }),
        ),
        LogEntry::QuotaObjectPut { object, at } => (
            Kind::QuotaObjectPut,
            command(&object.tenant, *at),
            payload(&QuotaObjectV1 {
                name: object.name.clone(),
                namespace: object.namespace.clone(),
                labels: pairs(&object.labels),
                annotations: pairs(&object.annotations),
                description: object.description.clone(),
                disable: object.disable,
                object_limits: object
                    .spec
                    .object_limits
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                resource_limits: object
                    .spec
                    .resource_limits
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                api_limits: object
                    .spec
                    .api_limits
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            RateLimitV1 {
                                unit: rate_unit_code(v.unit),
                                rate: v.rate,
                                burst: v.burst,
                            },
                        )
                    })
                    .collect(),
                uid: object.uid.clone(),
                creation_timestamp: object.creation_timestamp,
                modification_timestamp: object.modification_timestamp,
                creator_id: object.creator_id.clone(),
            }),
        ),
        LogEntry::QuotaObjectDeleted {
            tenant,
            namespace,
            name,
            at,
        } => (
            Kind::QuotaObjectDeleted,
            command(tenant, *at),
            payload(&QuotaObjectDeletedV1 {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
        ),
        LogEntry::QuotaAlert { alert } => (
            Kind::QuotaAlert,
            command(&alert.tenant, alert.at),
            payload(&AlertV1 {
                id: alert.id.clone(),
                key_kind: quota_kind_code(alert.key.kind),
                key_name: alert.key.name.clone(),
                threshold_percent: alert.threshold_percent,
                direction: match alert.direction {
                    Direction::Raised => 1,
                    Direction::Cleared => 2,
                },
                level: alert.level,
                limit: alert.limit,
                trigger_seq: alert.trigger_seq,
            }),
        ),
        LogEntry::Billing { tenant, at, change } => {
            let (kind, body) = billing_storage(change);
            (kind, command(tenant, *at), body)
        }
        LogEntry::Audit(record) => (
            Kind::Audit,
            command(&record.tenant, record.at),
            payload(&AuditV1 {
                actor: record.actor.clone(),
                actor_tenant: record.actor_tenant.clone(),
                action: record.action.clone(),
                target: record.target.clone(),
            }),
        ),
    }
}

fn billing_storage(change: &BillingChange) -> (Kind, Vec<u8>) {
    match change {
        BillingChange::TransitionRequested {
            id,
            to_plan,
            requires_approval,
            addons,
            domain,
        } => (
            Kind::TransitionRequested,
            payload(&TransitionRequestedV1 {
                id: id.clone(),
                to_plan: to_plan.clone(),
                requires_approval: *requires_approval,
                addons: addons.clone(),
                domain: domain.clone(),
            }),
        ),
        BillingChange::TransitionApproved { id, by } => (
            Kind::TransitionApproved,
            payload(&TransitionApprovedV1 {
                id: id.clone(),
                by: by.clone(),
            }),
        ),
        BillingChange::TransitionRejected { id, by, reason } => (
            Kind::TransitionRejected,
            payload(&TransitionRejectedV1 {
                id: id.clone(),
                by: by.clone(),
                reason: reason.clone(),
            }),
        ),
        BillingChange::AddonSubscribed { addon } => (
            Kind::AddonSubscribed,
            payload(&AddonV1 {
                addon: addon.clone(),
            }),
        ),
        BillingChange::AddonUnsubscribed { addon } => (
            Kind::AddonUnsubscribed,
            payload(&AddonV1 {
                addon: addon.clone(),
            }),
        ),
        BillingChange::PaymentMethodAdded {
            name,
            role,
            token,
            contact,
        } => (
            Kind::PaymentMethodAdded,
            payload(&PaymentMethodAddedV1 {
                name: name.clone(),
                role: payment_role_code(*role),
                token: token.clone(),
                contact: pairs(contact),
            }),
        ),
        BillingChange::PaymentMethodRole { name, role } => (
            Kind::PaymentMethodRole,
            payload(&PaymentMethodRoleV1 {
                name: name.clone(),
                role: payment_role_code(*role),
            }),
        ),
        BillingChange::PaymentMethodsSwapped => (
            Kind::PaymentMethodsSwapped,
            payload(&PaymentMethodsSwappedV1 {}),
        ),
        BillingChange::PaymentMethodDeleted { name } => (
            Kind::PaymentMethodDeleted,
            payload(&PaymentMethodDeletedV1 { name: name.clone() }),
        ),
        BillingChange::CouponGranted { coupon } => (
            Kind::CouponGranted,
            payload(&CouponGrantedV1 {
                title: coupon.title.clone(),
                discount_kind: match coupon.kind {
                    DiscountKind::FixedAmount => 1,
                    DiscountKind::Percentage => 2,
                },
                amount: coupon.amount,
            }),
        ),
        BillingChange::PeriodClosed { period_uid } => (
            Kind::PeriodClosed,
            payload(&PeriodClosedV1 {
                period_uid: period_uid.clone(),
            }),
        ),
        BillingChange::InvoicePaid { invoice, by } => (
            Kind::InvoicePaid,
            payload(&InvoicePaidV1 {
                invoice: invoice.clone(),
                by: by.clone(),
            }),
        ),
    }
}

fn rate_unit_code(unit: RateLimitUnit) -> u8 {
    match unit {
        RateLimitUnit::Second => 1,
        RateLimitUnit::Minute => 2,
        RateLimitUnit::Hour => 3,
        RateLimitUnit::Day => 4,
    }
}

fn quota_kind_code(kind: QuotaKind) -> u8 {
    match kind {
        QuotaKind::Object => 1,
        QuotaKind::Resource => 2,
        QuotaKind::Api => 3,
    }
}

fn payment_role_code(role: PaymentRole) -> u8 {
    match role {
        PaymentRole::Primary => 1,
        PaymentRole::Secondary => 2,
        PaymentRole::Normal => 3,
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    // Tenants and topics are bounded far below 64 KiB where they arrive; a longer one is cut
    // at a character boundary rather than written with a wrong length.
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text.get(..end).unwrap_or_default();
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_source(out: &mut Vec<u8>, source: &StoredSource) {
    match source {
        StoredSource::Command => out.push(0),
        StoredSource::Http { received_at } => {
            out.push(1);
            out.extend_from_slice(&received_at.to_be_bytes());
        }
        StoredSource::Kafka {
            topic,
            partition,
            offset,
        } => {
            out.push(2);
            out.extend_from_slice(&partition.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            put_text(out, topic);
        }
    }
}

/// The encoded value of a dead letter: format 2, its source, then its storage struct.
pub fn encode_dead_letter(letter: &DeadLetter) -> Vec<u8> {
    let mut out = vec![FORMAT_V2];
    out.extend_from_slice(&1u16.to_be_bytes());
    put_source(&mut out, &StoredSource::of(&letter.source));
    out.extend_from_slice(&payload(&DeadLetterV1 {
        tenant: letter.tenant.clone(),
        received_at: letter.received_at,
        rejected_id: letter.rejection.id.clone(),
        field: letter.rejection.field.clone(),
        reason: letter.rejection.reason.clone(),
        raw: letter.raw.clone(),
        raw_truncated: letter.raw_truncated,
    }));
    out
}
