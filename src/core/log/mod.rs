//! The log's facts and their bytes: [`LogEntry`] and what is stored beside it, log format v2
//! ([`format`](mod@format)), the format-1 reader ([`legacy`]), value encodings ([`codec`]), each row's stored value ([`values`]) and the key of
//! every row ([`keys`]). The RocksDB store and the writer that appends are the shell's.

pub mod codec;
pub mod format;
pub mod keys;
pub mod legacy;
pub mod values;

use serde::{Deserialize, Serialize};

use crate::audit::AuditRecord;
use crate::billing::BillingChange;
use crate::event::{EventSource, Rejection, UsageEvent};
use crate::quota::{Alert, QuotaObject};
use crate::time::UnixMicros;

/// One immutable fact. Names are past tense: the log records what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEntry {
    /// A usage event was accepted (validated and not a duplicate).
    UsageRecorded {
        event: UsageEvent,
        source: EventSource,
        recorded_at: UnixMicros,
    },
    /// A quota object was created or replaced (the whole object as it now stands).
    QuotaObjectPut { object: QuotaObject, at: UnixMicros },
    /// A quota object was deleted.
    QuotaObjectDeleted {
        tenant: String,
        namespace: String,
        name: String,
        at: UnixMicros,
    },
    /// A quota level crossed a threshold (appended by the projector, once per crossing).
    QuotaAlert { alert: Alert },
    /// A billing fact of one tenant (plan transitions, addons, payment methods, coupons,
    /// period closes, payments).
    Billing {
        tenant: String,
        at: UnixMicros,
        change: BillingChange,
    },
    /// Who made an admin or billing change (written in the same batch as the change).
    Audit(AuditRecord),
}

impl LogEntry {
    /// The tenant the fact belongs to.
    pub fn tenant(&self) -> &str {
        match self {
            LogEntry::UsageRecorded { event, .. } => &event.tenant,
            LogEntry::QuotaObjectPut { object, .. } => &object.tenant,
            LogEntry::QuotaObjectDeleted { tenant, .. } | LogEntry::Billing { tenant, .. } => {
                tenant
            }
            LogEntry::QuotaAlert { alert } => &alert.tenant,
            LogEntry::Audit(record) => &record.tenant,
        }
    }
}

/// What the dedup index remembers of an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupRecord {
    pub seq: u64,
    /// Event time: the compaction filter forgets records past the dedup horizon by it.
    pub event_time: UnixMicros,
    pub fingerprint: u64,
}

/// Input that could not be recorded, kept with the reason so nothing is silently lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub received_at: UnixMicros,
    pub source: EventSource,
    /// The tenant the input arrived for (token or message key).
    pub tenant: String,
    pub rejection: Rejection,
    /// The input as received, whole, so that a repair can record it once the cause is gone.
    /// Its size is bounded where it arrives: an HTTP request with a piece larger than
    /// [`MAX_EVENT_BYTES`](crate::event::MAX_EVENT_BYTES) is refused whole, a Kafka payload
    /// by the broker's message size.
    pub raw: Vec<u8>,
    /// Set only by releases that cut the input to 4 KiB; such a letter cannot be repaired.
    pub raw_truncated: bool,
}

impl DeadLetter {
    pub fn new(
        received_at: UnixMicros,
        source: EventSource,
        tenant: &str,
        rejection: Rejection,
        raw: &[u8],
    ) -> Self {
        DeadLetter {
            received_at,
            source,
            tenant: tenant.to_owned(),
            rejection,
            raw: raw.to_vec(),
            raw_truncated: false,
        }
    }
}
