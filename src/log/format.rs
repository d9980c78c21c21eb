//! Log format v2: the bytes of a log entry and of a dead letter, independent of the domain
//! types they decode into.
//!
//! A log value is a hand-encoded envelope around one per-kind *storage* struct:
//!
//! | bytes        | field                                                                    |
//! |--------------|--------------------------------------------------------------------------|
//! | 1            | format: `2`                                                              |
//! | 2, BE        | kind: a stable number, one per fact ([`Kind`]); never reused              |
//! | 2, BE        | payload version of that kind: `1` for every kind so far                  |
//! | 2, BE + text | tenant the fact belongs to (UTF-8)                                       |
//! | 8, BE        | time of the fact (µs since the Unix epoch): when it was recorded         |
//! | 1 + fields   | source: `0` a command, `1` HTTP ingest + received-at `i64`, `2` Kafka + partition `i32`, offset `i64`, topic (2 + text) |
//! | rest         | payload: the kind's storage struct at that version, bincode (standard)    |
//!
//! The storage structs below are frozen: a change to a domain or API type changes only the
//! conversion functions, never these bytes. A new field or a new meaning is a new payload
//! version of its kind: its struct is added beside the old one, and decoding upcasts the old
//! version to the current domain type, so every stored entry keeps its meaning. Golden byte
//! fixtures of every kind (`tests/fixtures/log_v2/`) are decoded by every build.
//!
//! Dead letters use the same source encoding: format `2`, the source, then a storage struct.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::codec::CodecError;
use super::{DeadLetter, LogEntry};
use crate::audit::AuditRecord;
use crate::billing::{BillingChange, Coupon, DiscountKind, PaymentRole};
use crate::catalog::{QuotaKind, RateLimitType, RateLimitUnit};
use crate::event::{EventSource, Rejection, UsageEvent};
use crate::quota::{Alert, Direction, LimitKey, Limits, QuotaObject};
use crate::units::Micros;

/// First byte of every value written in this format.
pub const FORMAT_V2: u8 = 2;

/// Largest payload bincode may decode: a corrupt length prefix is refused, not allocated.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Every kind of fact, by its stored number. Numbers are never reused or renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u16)]
pub enum Kind {
    UsageRecorded = 1,
    QuotaObjectPut = 2,
    QuotaObjectDeleted = 3,
    QuotaAlert = 4,
    TransitionRequested = 10,
    TransitionApproved = 11,
    TransitionRejected = 12,
    AddonSubscribed = 13,
    AddonUnsubscribed = 14,
    PaymentMethodAdded = 15,
    PaymentMethodRole = 16,
    PaymentMethodsSwapped = 17,
    PaymentMethodDeleted = 18,
    CouponGranted = 19,
    PeriodClosed = 20,
    InvoicePaid = 21,
    Audit = 30,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::UsageRecorded,
        Kind::QuotaObjectPut,
        Kind::QuotaObjectDeleted,
        Kind::QuotaAlert,
        Kind::TransitionRequested,
        Kind::TransitionApproved,
        Kind::TransitionRejected,
        Kind::AddonSubscribed,
        Kind::AddonUnsubscribed,
        Kind::PaymentMethodAdded,
        Kind::PaymentMethodRole,
        Kind::PaymentMethodsSwapped,
        Kind::PaymentMethodDeleted,
        Kind::CouponGranted,
        Kind::PeriodClosed,
        Kind::InvoicePaid,
        Kind::Audit,
    ];

    pub fn number(self) -> u16 {
        self as u16
    }

    pub fn from_number(number: u16) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.number() == number)
    }

    /// A name for fixtures and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::UsageRecorded => "usage_recorded",
            Kind::QuotaObjectPut => "quota_object_put",
            Kind::QuotaObjectDeleted => "quota_object_deleted",
            Kind::QuotaAlert => "quota_alert",
            Kind::TransitionRequested => "transition_requested",
            Kind::TransitionApproved => "transition_approved",
            Kind::TransitionRejected => "transition_rejected",
            Kind::AddonSubscribed => "addon_subscribed",
            Kind::AddonUnsubscribed => "addon_unsubscribed",
            Kind::PaymentMethodAdded => "payment_method_added",
            Kind::PaymentMethodRole => "payment_method_role",
            Kind::PaymentMethodsSwapped => "payment_methods_swapped",
            Kind::PaymentMethodDeleted => "payment_method_deleted",
            Kind::CouponGranted => "coupon_granted",
            Kind::PeriodClosed => "period_closed",
            Kind::InvoicePaid => "invoice_paid",
            Kind::Audit => "audit",
        }
    }

    /// The payload version this build writes for the kind.
    pub fn current_version(self) -> u16 {
        1
    }
}

/// Where a fact came from, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StoredSource {
    Command,
    Http {
        received_at: i64,
    },
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

impl StoredSource {
    fn of(source: &EventSource) -> StoredSource {
        match source {
            EventSource::Http { received_at } => StoredSource::Http {
                received_at: *received_at,
            },
            EventSource::Kafka {
                topic,
                partition,
                offset,
            } => StoredSource::Kafka {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            },
        }
    }

    fn into_event_source(self, what: &'static str) -> Result<EventSource, CodecError> {
        match self {
            StoredSource::Http { received_at } => Ok(EventSource::Http { received_at }),
            StoredSource::Kafka {
                topic,
                partition,
                offset,
            } => Ok(EventSource::Kafka {
                topic,
                partition,
                offset,
            }),
            StoredSource::Command => Err(error(what, "an event recorded without a source")),
        }
    }
}

// ---- storage structs, payload version 1 of each kind (frozen) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UsageV1 {
    id: String,
    namespace: String,
    metric_label: String,
    quantity_micros: i64,
    event_time: i64,
    object_name: String,
    deployment: String,
    container: String,
    labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RateLimitV1 {
    /// 1 second, 2 minute, 3 hour, 4 day.
    unit: u8,
    rate: u32,
    burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QuotaObjectV1 {
    name: String,
    namespace: String,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    description: String,
    disable: bool,
    /// Whole units; -1 unlimited.
    object_limits: Vec<(String, i64)>,
    /// Micro-units; -1 unlimited.
    resource_limits: Vec<(String, i64)>,
    api_limits: Vec<(String, RateLimitV1)>,
    uid: String,
    creation_timestamp: i64,
    modification_timestamp: i64,
    creator_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QuotaObjectDeletedV1 {
    namespace: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AlertV1 {
    id: String,
    /// 1 object, 2 resource, 3 API.
    key_kind: u8,
    key_name: String,
    threshold_percent: u8,
    /// 1 raised, 2 cleared.
    direction: u8,
    level: i128,
    limit: i128,
    trigger_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TransitionRequestedV1 {
    id: String,
    to_plan: String,
    requires_approval: bool,
    addons: Vec<String>,
    domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TransitionApprovedV1 {
    id: String,
    by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TransitionRejectedV1 {
    id: String,
    by: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AddonV1 {
    addon: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PaymentMethodAddedV1 {
    name: String,
    /// 1 primary, 2 secondary, 3 normal.
    role: u8,
    token: String,
    contact: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PaymentMethodRoleV1 {
    name: String,
    role: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PaymentMethodsSwappedV1 {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PaymentMethodDeletedV1 {
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CouponGrantedV1 {
    title: String,
    /// 1 fixed amount (cents), 2 percentage (0.01 % steps).
    discount_kind: u8,
    amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PeriodClosedV1 {
    period_uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InvoicePaidV1 {
    invoice: String,
    by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AuditV1 {
    actor: String,
    actor_tenant: String,
    action: String,
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeadLetterV1 {
    tenant: String,
    received_at: i64,
    rejected_id: Option<String>,
    field: String,
    reason: String,
    raw: Vec<u8>,
    raw_truncated: bool,
}

// ---- encoding ----

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

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
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

// ---- decoding ----

fn error(what: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError {
        what,
        reason: reason.into(),
    }
}

/// Reads a value front to back; every read checks the bytes left.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < n {
            return Err(error(
                self.what,
                format!(
                    "cut short in {field}: {} bytes left, {n} needed",
                    self.bytes.len()
                ),
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N, field)?;
        bytes
            .try_into()
            .map_err(|_| error(self.what, format!("{field}: {} bytes", bytes.len())))
    }

    fn u8(&mut self, field: &str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, CodecError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn i32(&mut self, field: &str) -> Result<i32, CodecError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn i64(&mut self, field: &str) -> Result<i64, CodecError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn text(&mut self, field: &str) -> Result<String, CodecError> {
        let len = usize::from(self.u16(field)?);
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| error(self.what, format!("{field} is not UTF-8")))
    }

    fn source(&mut self) -> Result<StoredSource, CodecError> {
        match self.u8("source")? {
            0 => Ok(StoredSource::Command),
            1 => Ok(StoredSource::Http {
                received_at: self.i64("source.received_at")?,
            }),
            2 => {
                let partition = self.i32("source.partition")?;
                let offset = self.i64("source.offset")?;
                let topic = self.text("source.topic")?;
                Ok(StoredSource::Kafka {
                    topic,
                    partition,
                    offset,
                })
            }
            other => Err(error(self.what, format!("unknown source tag {other}"))),
        }
    }

    /// The rest as one storage struct; trailing bytes are damage.
    fn payload<T: DeserializeOwned>(self) -> Result<T, CodecError> {
        let (value, used) = bincode::serde::decode_from_slice(self.bytes, bincode_config())
            .map_err(|e| error(self.what, format!("payload: {e}")))?;
        if used != self.bytes.len() {
            return Err(error(
                self.what,
                format!("{} trailing bytes", self.bytes.len() - used),
            ));
        }
        Ok(value)
    }
}

/// The envelope of a log value, as read before its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: Kind,
    pub payload_version: u16,
    pub tenant: String,
    pub time: i64,
}

/// Reads the envelope of a v2 log value (for inspection without decoding the payload).
pub fn read_envelope(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let mut reader = Reader {
        bytes,
        what: "log entry",
    };
    let (kind, payload_version, tenant, time, _) = read_header(&mut reader)?;
    Ok(Envelope {
        kind,
        payload_version,
        tenant,
        time,
    })
}

fn read_header(
    reader: &mut Reader<'_>,
) -> Result<(Kind, u16, String, i64, StoredSource), CodecError> {
    let format = reader.u8("format")?;
    if format != FORMAT_V2 {
        return Err(error(
            reader.what,
            format!(
                "format {format}, this build writes {FORMAT_V2} (`tally migrate` upgrades format 1)"
            ),
        ));
    }
    let number = reader.u16("kind")?;
    let kind = Kind::from_number(number).ok_or_else(|| {
        error(
            "log entry",
            format!("unknown kind {number} (written by a newer build?)"),
        )
    })?;
    let version = reader.u16("payload version")?;
    let tenant = reader.text("tenant")?;
    let time = reader.i64("time")?;
    let source = reader.source()?;
    Ok((kind, version, tenant, time, source))
}

/// Decodes a v2 log value into the current domain entry, upcasting older payload versions.
pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, CodecError> {
    let mut reader = Reader {
        bytes,
        what: "log entry",
    };
    let (kind, version, tenant, time, source) = read_header(&mut reader)?;
    if version != 1 {
        return Err(error(
            "log entry",
            format!(
                "{} payload version {version} is unknown to this build (written by a newer one?)",
                kind.name()
            ),
        ));
    }
    let billing = |change| LogEntry::Billing {
        tenant: tenant.clone(),
        at: time,
        change,
    };
    let entry = match kind {
        Kind::UsageRecorded => {
            let usage: UsageV1 = reader.payload()?;
            LogEntry::UsageRecorded {
                event: UsageEvent {
                    tenant: tenant.clone(),
                    id: usage.id,
                    namespace: usage.namespace,
                    metric_label: usage.metric_label,
                    quantity: Micros(usage.quantity_micros),
                    timestamp: usage.event_time,
                    object_name: usage.object_name,
                    deployment: usage.deployment,
                    container: usage.container,
                    labels: usage.labels.into_iter().collect(),
                },
                source: source.into_event_source("log entry")?,
                recorded_at: time,
            }
        }
        Kind::QuotaObjectPut => {
            let object: QuotaObjectV1 = reader.payload()?;
            let api_limits = object
                .api_limits
                .into_iter()
                .map(|(key, limit)| Ok((key, rate_limit(&limit)?)))
                .collect::<Result<_, CodecError>>()?;
            LogEntry::QuotaObjectPut {
                object: QuotaObject {
                    name: object.name,
                    namespace: object.namespace,
                    labels: object.labels.into_iter().collect(),
                    annotations: object.annotations.into_iter().collect(),
                    description: object.description,
                    disable: object.disable,
                    spec: Limits {
                        object_limits: object.object_limits.into_iter().collect(),
                        resource_limits: object.resource_limits.into_iter().collect(),
                        api_limits,
                    },
                    uid: object.uid,
                    tenant: tenant.clone(),
                    creation_timestamp: object.creation_timestamp,
                    modification_timestamp: object.modification_timestamp,
                    creator_id: object.creator_id,
                },
                at: time,
            }
        }
        Kind::QuotaObjectDeleted => {
            let deleted: QuotaObjectDeletedV1 = reader.payload()?;
            LogEntry::QuotaObjectDeleted {
                tenant: tenant.clone(),
                namespace: deleted.namespace,
                name: deleted.name,
                at: time,
            }
        }
        Kind::QuotaAlert => {
            let alert: AlertV1 = reader.payload()?;
            LogEntry::QuotaAlert {
                alert: Alert {
                    id: alert.id,
                    tenant: tenant.clone(),
                    key: LimitKey {
                        kind: quota_kind(alert.key_kind)?,
                        name: alert.key_name,
                    },
                    threshold_percent: alert.threshold_percent,
                    direction: match alert.direction {
                        1 => Direction::Raised,
                        2 => Direction::Cleared,
                        other => {
                            return Err(error("log entry", format!("alert direction {other}")));
                        }
                    },
                    level: alert.level,
                    limit: alert.limit,
                    trigger_seq: alert.trigger_seq,
                    at: time,
                },
            }
        }
        Kind::TransitionRequested => {
            let t: TransitionRequestedV1 = reader.payload()?;
            billing(BillingChange::TransitionRequested {
                id: t.id,
                to_plan: t.to_plan,
                requires_approval: t.requires_approval,
                addons: t.addons,
                domain: t.domain,
            })
        }
        Kind::TransitionApproved => {
            let t: TransitionApprovedV1 = reader.payload()?;
            billing(BillingChange::TransitionApproved { id: t.id, by: t.by })
        }
        Kind::TransitionRejected => {
            let t: TransitionRejectedV1 = reader.payload()?;
            billing(BillingChange::TransitionRejected {
                id: t.id,
                by: t.by,
                reason: t.reason,
            })
        }
        Kind::AddonSubscribed => {
            let a: AddonV1 = reader.payload()?;
            billing(BillingChange::AddonSubscribed { addon: a.addon })
        }
        Kind::AddonUnsubscribed => {
            let a: AddonV1 = reader.payload()?;
            billing(BillingChange::AddonUnsubscribed { addon: a.addon })
        }
        Kind::PaymentMethodAdded => {
            let p: PaymentMethodAddedV1 = reader.payload()?;
            billing(BillingChange::PaymentMethodAdded {
                name: p.name,
                role: payment_role(p.role)?,
                token: p.token,
                contact: p.contact.into_iter().collect(),
            })
        }
        Kind::PaymentMethodRole => {
            let p: PaymentMethodRoleV1 = reader.payload()?;
            billing(BillingChange::PaymentMethodRole {
                name: p.name,
                role: payment_role(p.role)?,
            })
        }
        Kind::PaymentMethodsSwapped => {
            let PaymentMethodsSwappedV1 {} = reader.payload()?;
            billing(BillingChange::PaymentMethodsSwapped)
        }
        Kind::PaymentMethodDeleted => {
            let p: PaymentMethodDeletedV1 = reader.payload()?;
            billing(BillingChange::PaymentMethodDeleted { name: p.name })
        }
        Kind::CouponGranted => {
            let c: CouponGrantedV1 = reader.payload()?;
            billing(BillingChange::CouponGranted {
                coupon: Coupon {
                    title: c.title,
                    kind: match c.discount_kind {
                        1 => DiscountKind::FixedAmount,
                        2 => DiscountKind::Percentage,
                        other => {
                            return Err(error("log entry", format!("discount kind {other}")));
                        }
                    },
                    amount: c.amount,
                },
            })
        }
        Kind::PeriodClosed => {
            let p: PeriodClosedV1 = reader.payload()?;
            billing(BillingChange::PeriodClosed {
                period_uid: p.period_uid,
            })
        }
        Kind::InvoicePaid => {
            let p: InvoicePaidV1 = reader.payload()?;
            billing(BillingChange::InvoicePaid {
                invoice: p.invoice,
                by: p.by,
            })
        }
        Kind::Audit => {
            let a: AuditV1 = reader.payload()?;
            LogEntry::Audit(AuditRecord {
                at: time,
                actor: a.actor,
                actor_tenant: a.actor_tenant,
                tenant: tenant.clone(),
                action: a.action,
                target: a.target,
            })
        }
    };
    Ok(entry)
}

fn rate_limit(limit: &RateLimitV1) -> Result<RateLimitType, CodecError> {
    let unit = match limit.unit {
        1 => RateLimitUnit::Second,
        2 => RateLimitUnit::Minute,
        3 => RateLimitUnit::Hour,
        4 => RateLimitUnit::Day,
        other => return Err(error("log entry", format!("rate limit unit {other}"))),
    };
    Ok(RateLimitType {
        unit,
        rate: limit.rate,
        burst: limit.burst,
    })
}

fn quota_kind(code: u8) -> Result<QuotaKind, CodecError> {
    match code {
        1 => Ok(QuotaKind::Object),
        2 => Ok(QuotaKind::Resource),
        3 => Ok(QuotaKind::Api),
        other => Err(error("log entry", format!("quota kind {other}"))),
    }
}

fn payment_role(code: u8) -> Result<PaymentRole, CodecError> {
    match code {
        1 => Ok(PaymentRole::Primary),
        2 => Ok(PaymentRole::Secondary),
        3 => Ok(PaymentRole::Normal),
        other => Err(error("log entry", format!("payment role {other}"))),
    }
}

// ---- dead letters ----

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

pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    let what = "dead letter";
    let mut reader = Reader { bytes, what };
    let format = reader.u8("format")?;
    if format != FORMAT_V2 {
        return Err(error(
            what,
            format!("format {format}, this build writes {FORMAT_V2}"),
        ));
    }
    let version = reader.u16("payload version")?;
    if version != 1 {
        return Err(error(
            what,
            format!("payload version {version} is unknown to this build"),
        ));
    }
    let source = reader.source()?.into_event_source(what)?;
    let letter: DeadLetterV1 = reader.payload()?;
    Ok(DeadLetter {
        received_at: letter.received_at,
        source,
        tenant: letter.tenant,
        rejection: Rejection {
            id: letter.rejected_id,
            field: letter.field,
            reason: letter.reason,
        },
        raw: letter.raw,
        raw_truncated: letter.raw_truncated,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_example_and_round_trips() {
        let examples = examples();
        let kinds: Vec<Kind> = examples.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, Kind::ALL.to_vec());
        for (kind, entry) in examples {
            let bytes = encode_entry(&entry);
            assert_eq!(read_envelope(&bytes).unwrap().kind, kind);
            assert_eq!(decode_entry(&bytes).unwrap(), entry, "{}", kind.name());
        }
        let letter = example_dead_letter();
        assert_eq!(
            decode_dead_letter(&encode_dead_letter(&letter)).unwrap(),
            letter
        );
    }

    #[test]
    fn unknown_kinds_and_versions_are_named() {
        let (_, entry) = examples().remove(0);
        let mut bytes = encode_entry(&entry);
        bytes[1..3].copy_from_slice(&999u16.to_be_bytes());
        assert!(
            decode_entry(&bytes)
                .unwrap_err()
                .reason
                .contains("unknown kind 999")
        );
        let mut bytes = encode_entry(&entry);
        bytes[3..5].copy_from_slice(&7u16.to_be_bytes());
        let reason = decode_entry(&bytes).unwrap_err().reason;
        assert!(
            reason.contains("usage_recorded payload version 7"),
            "{reason}"
        );
        let mut bytes = encode_entry(&entry);
        bytes[0] = 1;
        assert!(
            decode_entry(&bytes)
                .unwrap_err()
                .reason
                .contains("tally migrate")
        );
    }

    #[test]
    fn every_cut_of_every_example_is_refused_without_panic() {
        for (_, entry) in examples() {
            let bytes = encode_entry(&entry);
            for end in 0..bytes.len() {
                assert!(decode_entry(&bytes[..end]).is_err());
            }
        }
    }
}
