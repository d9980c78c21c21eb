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

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

fn error(what: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError {
        what,
        reason: reason.into(),
    }
}

mod decode;
mod encode;
mod examples;

pub use decode::{Envelope, decode_dead_letter, decode_entry, read_envelope};
pub use encode::{encode_dead_letter, encode_entry};
pub use examples::{example_dead_letter, examples};

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
