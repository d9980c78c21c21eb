//! Every key of every column family, and the column families' names: this module is the one
//! place that knows a key's bytes. Keys are encoded by hand so numeric order is byte order;
//! each kind of row has a type with `encode` and `decode` ([`SeriesKey`], [`QuotaKey`],
//! [`BillingKey`], [`AuditKey`], [`OffsetKey`], [`MetaKey`]; a seq is [`seq_key`]), and the
//! tests pin each one's bytes and check this table against the types' tags.
//!
//! | CF            | key                                                                                   | value (first byte: version)          |
//! |---------------|---------------------------------------------------------------------------------------|--------------------------------------|
//! | `log`         | seq `u64` BE                                                                          | [`LogEntry`](super::LogEntry) in log format v2 ([`format`](super::format)) |
//! | `dedup`       | [`dedup_key`]: xxh3-128(tenant `\0` id), 16 bytes                                             | v2: fingerprint `u64`, event second rounded up (40 bits), seq LEB128 (15–24 bytes); v1 (25 bytes) still read |
//! | `dead_letter` | dead-letter number `u64` BE                                                           | [`DeadLetter`](super::DeadLetter) in format v2 |
//! | `hourly`      | [`SeriesKey`]: tenant `\0` scope `\0` hour `u32` BE, namespace `\0` metric `\0` object `\0` deployment `\0` container `\0` | aggregate, 57 bytes |
//! | `monthly`     | as `hourly` with month `u32` BE (months since year 0)                                  | aggregate                            |
//! | `current`     | retired in format 2 (calendar-month totals; billing periods have their own rows) | —                                     |
//! | `quota`       | `o` tenant `\0` namespace `\0` name `\0`                                                  | quota object, bincode                |
//! |               | `s` tenant `\0` kind `\0` key `\0` namespace `\0` object `\0` deployment `\0` container `\0` | series level: value, time, id hash |
//! |               | `t` tenant `\0` scope `\0` kind `\0` key `\0`                                            | `i128` BE level (namespace or `*`)   |
//! |               | `b` tenant `\0` kind `\0` key `\0`                                                        | threshold band `u8` (0–3)            |
//! |               | `a` tenant `\0` !seq `u64` BE (seq inverted: newest first)                                | [`Alert`](crate::quota::Alert), bincode (the tenant's copy) |
//! | `alerts`      | seq `u64` BE of the alert's log entry                                                 | [`Alert`](crate::quota::Alert), bincode |
//! | `billing`     | `h` tenant `\0`                                                                       | billing header: plan, open period, addons, payment methods, coupons, waiting transitions, counters; bincode |
//! |               | `p` tenant `\0` start `i64` (sign-flipped BE)                                          | closed period and what its invoices billed, bincode |
//! |               | `i` tenant `\0` invoice number `u32` BE                                                 | invoice, bincode                     |
//! |               | `r` tenant `\0` transition id                                                           | decided plan transition, bincode     |
//! |               | `u` tenant `\0` period uid `\0` namespace `\0` metric `\0` object `\0` deployment `\0` container `\0` | aggregate of the period |
//! |               | `x` plan transition id                                                                 | tenant                               |
//! | `audit`       | [`AuditKey`]: tenant `\0` seq `u64` BE                                                | [`AuditRecord`](crate::audit::AuditRecord), bincode |
//! | `checkpoints` | projection name                                                                       | last folded seq `u64`                |
//! | `offsets`     | [`OffsetKey`]: topic `\0` partition `i32` BE                                          | next offset `i64`                    |
//! | `tokens`      | token id                                                                              | token record, bincode                |
//! | `meta`        | see [`MetaKey`]: one row per name below                                                 |                                      |
//! |               | `format_version`                                                                      | the store's format version `u32` BE  |
//! |               | `ids_forgotten_before`                                                                | event time `i64` below which ids may be forgotten |
//! |               | `longest_dedup_horizon`                                                               | micros `i64`                         |
//! |               | `meter_definitions`                                                                   | meter name → definition, JSON        |
//! |               | `alerts_indexed_per_tenant`                                                           | `1` once the tenant alert index is built |
//! |               | `webhook_cursor`                                                                      | next alert position to deliver `u64` |
//! |               | `changelog_origin`                                                                    | this store's origin id `u64`         |
//! |               | `changelog_outbox/` first seq `u64` BE (in a cluster: a request's entries to publish)  | end seq `u64`                        |
//! |               | `changelog_applied/` partition `i32` BE (in a cluster: what a restore took)           | per origin, the last seq taken       |
//!
//! The `quota` rows are [`QuotaKey`]s, the `billing` rows [`BillingKey`]s, one variant per
//! tag. `scope` is the event's namespace, or `*` for the tenant-wide copy of every row that the
//! `system` namespace reads (`*` is never a DNS-1035 label, so the two cannot collide). Strings
//! in keys never contain `\0`: validation refuses control characters. The `\0` terminator sorts
//! below every other byte, so `tenant\0` is exactly one tenant's prefix.

use crate::catalog::QuotaKind;
use crate::event::UsageEvent;
use crate::quota::{LimitKey, kind_name};
use crate::time::UnixMicros;

/// The scope a projection row is filed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Namespace(&'a str),
    /// Every namespace of the tenant (what the `system` namespace reads).
    Tenant,
}

pub const TENANT_SCOPE: &str = "*";

impl<'a> Scope<'a> {
    /// The scope a key part names (`*` is the tenant, anything else a namespace).
    pub fn from_key_part(part: &'a str) -> Scope<'a> {
        if part == TENANT_SCOPE {
            Scope::Tenant
        } else {
            Scope::Namespace(part)
        }
    }

    pub fn as_key_part(&self) -> &'a str {
        match self {
            Scope::Namespace(ns) => ns,
            Scope::Tenant => TENANT_SCOPE,
        }
    }
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_seq_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The dimensions of one series: what a projection row aggregates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub namespace: String,
    pub metric_label: String,
    pub object_name: String,
    pub deployment: String,
    pub container: String,
}

/// A row of `hourly` or `monthly`: one series of one tenant and scope in one bucket (an hour
/// or a month).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesKey<'a> {
    pub tenant: &'a str,
    pub scope: Scope<'a>,
    pub bucket: u32,
    pub series: SeriesRef<'a>,
}

impl<'a> SeriesKey<'a> {
    /// `tenant\0 scope\0 bucket namespace\0 metric\0 object\0 deployment\0 container\0`
    pub fn encode(&self) -> Vec<u8> {
        let mut key = Self::bucket_prefix(self.tenant, self.scope, self.bucket);
        key.reserve(self.series.encoded_len());
        push_series(&mut key, &self.series);
        key
    }

    pub fn decode(bytes: &'a [u8]) -> Option<SeriesKey<'a>> {
        let (tenant, rest) = take_str_ref(bytes)?;
        let (scope, rest) = take_str_ref(rest)?;
        let bucket = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let [namespace, metric_label, object_name, deployment, container] =
            take_strs(rest.get(4..)?)?;
        Some(SeriesKey {
            tenant,
            scope: Scope::from_key_part(scope),
            bucket,
            series: SeriesRef {
                namespace,
                metric_label,
                object_name,
                deployment,
                container,
            },
        })
    }

    /// `tenant\0scope\0` — every row of one tenant and scope.
    pub fn scope_prefix(tenant: &str, scope: Scope<'_>) -> Vec<u8> {
        let scope = scope.as_key_part();
        let mut key = Vec::with_capacity(tenant.len() + scope.len() + 2);
        push_str(&mut key, tenant);
        push_str(&mut key, scope);
        key
    }

    /// `tenant\0scope\0bucket` — the start of one bucket's rows.
    pub fn bucket_prefix(tenant: &str, scope: Scope<'_>, bucket: u32) -> Vec<u8> {
        let mut key = Self::scope_prefix(tenant, scope);
        key.extend_from_slice(&bucket.to_be_bytes());
        key
    }
}

/// Appends `namespace\0 metric\0 object\0 deployment\0 container\0`: the end of every
/// `hourly`/`monthly` key.
pub fn push_series(key: &mut Vec<u8>, series: &SeriesRef<'_>) {
    for part in series.parts() {
        push_str(key, part);
    }
}

/// Borrowed series dimensions, to build keys without copying strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRef<'a> {
    pub namespace: &'a str,
    pub metric_label: &'a str,
    pub object_name: &'a str,
    pub deployment: &'a str,
    pub container: &'a str,
}

impl<'a> SeriesRef<'a> {
    /// The series an event adds to.
    pub fn of(event: &'a UsageEvent) -> SeriesRef<'a> {
        SeriesRef {
            namespace: &event.namespace,
            metric_label: &event.metric_label,
            object_name: &event.object_name,
            deployment: &event.deployment,
            container: &event.container,
        }
    }

    fn parts(&self) -> [&'a str; 5] {
        [
            self.namespace,
            self.metric_label,
            self.object_name,
            self.deployment,
            self.container,
        ]
    }

    fn encoded_len(&self) -> usize {
        self.parts().iter().map(|p| p.len() + 1).sum()
    }
}

/// A decoded `hourly`/`monthly` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRow {
    pub tenant: String,
    pub scope: String,
    pub bucket: u32,
    pub series: Series,
}

/// An `hourly`/`monthly` key as an owned row, for the API's reads.
pub fn decode_series_key(key: &[u8]) -> Option<SeriesRow> {
    let key = SeriesKey::decode(key)?;
    Some(SeriesRow {
        tenant: key.tenant.to_owned(),
        scope: key.scope.as_key_part().to_owned(),
        bucket: key.bucket,
        series: Series {
            namespace: key.series.namespace.to_owned(),
            metric_label: key.series.metric_label.to_owned(),
            object_name: key.series.object_name.to_owned(),
            deployment: key.series.deployment.to_owned(),
            container: key.series.container.to_owned(),
        },
    })
}

/// The key of a `dedup` row, an event's identity: a 128-bit hash of (tenant, id). At 128 bits
/// an accidental collision is not a practical concern (2^-64 after four billion events of one
/// tenant).
pub fn dedup_key(tenant: &str, id: &str) -> [u8; 16] {
    let mut buf = Vec::with_capacity(tenant.len() + id.len() + 1);
    buf.extend_from_slice(tenant.as_bytes());
    buf.push(0);
    buf.extend_from_slice(id.as_bytes());
    xxhash_rust::xxh3::xxh3_128(&buf).to_be_bytes()
}

/// The column families, by name. Opening a store creates the missing ones.
pub const CF_LOG: &str = "log";
pub const CF_DEDUP: &str = "dedup";
pub const CF_DEAD_LETTER: &str = "dead_letter";
pub const CF_HOURLY: &str = "hourly";
pub const CF_MONTHLY: &str = "monthly";
/// Calendar-month totals of format 1, replaced by the billing periods' own rows: still opened
/// (RocksDB opens every family a store has), never written, emptied by `tally migrate`.
pub const CF_CURRENT: &str = "current";
pub const CF_CHECKPOINTS: &str = "checkpoints";
pub const CF_OFFSETS: &str = "offsets";
pub const CF_TOKENS: &str = "tokens";
pub const CF_META: &str = "meta";
pub const CF_QUOTA: &str = "quota";
pub const CF_ALERTS: &str = "alerts";
pub const CF_BILLING: &str = "billing";
pub const CF_AUDIT: &str = "audit";

/// Every column family, in one list (a test checks that the table above has a row for each).
pub const COLUMN_FAMILIES: &[&str] = &[
    CF_LOG,
    CF_DEDUP,
    CF_DEAD_LETTER,
    CF_HOURLY,
    CF_MONTHLY,
    CF_CURRENT,
    CF_CHECKPOINTS,
    CF_OFFSETS,
    CF_TOKENS,
    CF_META,
    CF_QUOTA,
    CF_ALERTS,
    CF_BILLING,
    CF_AUDIT,
];

/// Families whose aggregate rows are written as merge operands; in `billing` only the usage
/// rows are, the other rows are put.
pub const AGGREGATE_FAMILIES: &[&str] = &[CF_HOURLY, CF_MONTHLY, CF_BILLING];

/// Families a format-1 store has that this build no longer uses.
pub const RETIRED_COLUMN_FAMILIES: &[&str] = &[CF_CURRENT];

/// A row of the `meta` column family: every meta key of the store is named here, and only
/// here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// The store's format version (`u32` BE); a store of another version is refused.
    FormatVersion,
    /// The event time before which dedup records may already be pruned (`i64`).
    IdsForgottenBefore,
    /// The longest dedup horizon any run moved the forgetting horizon with (micros, `i64`):
    /// a later run with a shorter one must not forget more than it did.
    LongestDedupHorizon,
    /// The meter definitions the projections were folded with (JSON).
    MeterDefinitions,
    /// Set once every stored alert has its per-tenant index row (`[1]`): from then on the
    /// fold writes both.
    AlertsIndexedPerTenant,
    /// The next alert position the webhook delivers (`u64`).
    WebhookCursor,
    /// This store's origin id in the cluster's changelog (`u64`).
    ChangelogOrigin,
    /// In a cluster: the entries from `first_seq` to the row's end seq (`u64`) are still to be
    /// published to the changelog.
    ChangelogOutbox { first_seq: u64 },
    /// In a cluster: per origin, the last seq a restore of `partition` took.
    ChangelogApplied { partition: i32 },
}

/// The prefix of the changelog outbox rows in `meta`.
pub const OUTBOX_PREFIX: &[u8] = b"changelog_outbox/";
const APPLIED_PREFIX: &[u8] = b"changelog_applied/";

impl MetaKey {
    /// The keys of one row each (the others carry a number after their prefix).
    const SINGLE_ROWS: [MetaKey; 7] = [
        MetaKey::FormatVersion,
        MetaKey::IdsForgottenBefore,
        MetaKey::LongestDedupHorizon,
        MetaKey::MeterDefinitions,
        MetaKey::AlertsIndexedPerTenant,
        MetaKey::WebhookCursor,
        MetaKey::ChangelogOrigin,
    ];

    pub fn encode(&self) -> Vec<u8> {
        let (prefix, number): (&[u8], &[u8]) = match self {
            MetaKey::FormatVersion => (b"format_version", &[]),
            MetaKey::IdsForgottenBefore => (b"ids_forgotten_before", &[]),
            MetaKey::LongestDedupHorizon => (b"longest_dedup_horizon", &[]),
            MetaKey::MeterDefinitions => (b"meter_definitions", &[]),
            MetaKey::AlertsIndexedPerTenant => (b"alerts_indexed_per_tenant", &[]),
            MetaKey::WebhookCursor => (b"webhook_cursor", &[]),
            MetaKey::ChangelogOrigin => (b"changelog_origin", &[]),
            MetaKey::ChangelogOutbox { first_seq } => (OUTBOX_PREFIX, &first_seq.to_be_bytes()),
            MetaKey::ChangelogApplied { partition } => (APPLIED_PREFIX, &partition.to_be_bytes()),
        };
        [prefix, number].concat()
    }

    /// The key `bytes` encode, if they are a meta key of this build.
    pub fn decode(bytes: &[u8]) -> Option<MetaKey> {
        if let Some(seq) = bytes.strip_prefix(OUTBOX_PREFIX) {
            return Some(MetaKey::ChangelogOutbox {
                first_seq: u64::from_be_bytes(seq.try_into().ok()?),
            });
        }
        if let Some(partition) = bytes.strip_prefix(APPLIED_PREFIX) {
            return Some(MetaKey::ChangelogApplied {
                partition: i32::from_be_bytes(partition.try_into().ok()?),
            });
        }
        Self::SINGLE_ROWS
            .into_iter()
            .find(|key| key.encode() == bytes)
    }
}

/// A row of `offsets`: where a partition of a source topic stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetKey<'a> {
    pub topic: &'a str,
    pub partition: i32,
}

impl<'a> OffsetKey<'a> {
    /// `topic\0 partition`
    pub fn encode(&self) -> Vec<u8> {
        text_then_number(self.topic, &self.partition.to_be_bytes())
    }

    pub fn decode(bytes: &'a [u8]) -> Option<OffsetKey<'a>> {
        let (topic, partition) = split_text_then_number(bytes)?;
        Some(OffsetKey {
            topic,
            partition: i32::from_be_bytes(partition),
        })
    }

    /// `topic\0` — every partition of one topic.
    pub fn topic_prefix(topic: &str) -> Vec<u8> {
        text_then_number(topic, &[])
    }
}

/// A row of `audit`: a tenant's audit record, filed under the seq of its log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditKey<'a> {
    pub tenant: &'a str,
    pub seq: u64,
}

impl<'a> AuditKey<'a> {
    /// `tenant\0 seq`
    pub fn encode(&self) -> Vec<u8> {
        text_then_number(self.tenant, &self.seq.to_be_bytes())
    }

    pub fn decode(bytes: &'a [u8]) -> Option<AuditKey<'a>> {
        let (tenant, seq) = split_text_then_number(bytes)?;
        Some(AuditKey {
            tenant,
            seq: u64::from_be_bytes(seq),
        })
    }

    /// `tenant\0` — every audit record of a tenant.
    pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
        text_then_number(tenant, &[])
    }
}

/// `text\0` then `number` (big-endian bytes; none for a prefix of every number).
fn text_then_number(text: &str, number: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(text.len() + 1 + number.len());
    push_str(&mut key, text);
    key.extend_from_slice(number);
    key
}

/// The text and the `N` number bytes of a [`text_then_number`] key.
fn split_text_then_number<const N: usize>(bytes: &[u8]) -> Option<(&str, [u8; N])> {
    let (text, rest) = take_str_ref(bytes)?;
    Some((text, rest.try_into().ok()?))
}

/// A row of the `quota` family (see the table above): one variant per kind of row, each
/// behind its one-byte tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKey<'a> {
    /// `o tenant\0 namespace\0 name\0`: a quota object.
    Object {
        tenant: &'a str,
        namespace: &'a str,
        name: &'a str,
    },
    /// `s tenant\0 kind\0 limit\0 namespace\0 object\0 deployment\0 container\0`: the level of
    /// one series a quota counts.
    SeriesLevel {
        tenant: &'a str,
        kind: QuotaKind,
        limit: &'a str,
        namespace: &'a str,
        object: &'a str,
        deployment: &'a str,
        container: &'a str,
    },
    /// `t tenant\0 scope\0 kind\0 limit\0`: the level of a namespace, or of the tenant (`*`).
    Total {
        tenant: &'a str,
        scope: Scope<'a>,
        kind: QuotaKind,
        limit: &'a str,
    },
    /// `b tenant\0 kind\0 limit\0`: the threshold band a level last stood in.
    Band {
        tenant: &'a str,
        kind: QuotaKind,
        limit: &'a str,
    },
    /// `a tenant\0 !seq`: the tenant's copy of an alert, the seq inverted so the newest comes
    /// first in key order.
    TenantAlert { tenant: &'a str, seq: u64 },
}

impl<'a> QuotaKey<'a> {
    const OBJECT: u8 = b'o';
    const SERIES: u8 = b's';
    const TOTAL: u8 = b't';
    const BAND: u8 = b'b';
    /// A tenant's alerts, newest first (the `alerts` CF holds every tenant's in log order).
    const ALERT: u8 = b'a';

    /// The level of the series of `event` that quota `limit` counts.
    pub fn series_level(tenant: &'a str, limit: &'a LimitKey, event: &'a UsageEvent) -> Self {
        QuotaKey::SeriesLevel {
            tenant,
            kind: limit.kind,
            limit: &limit.name,
            namespace: &event.namespace,
            object: &event.object_name,
            deployment: &event.deployment,
            container: &event.container,
        }
    }

    /// The level of quota `limit` over a namespace or the tenant.
    pub fn total(tenant: &'a str, scope: Scope<'a>, limit: &'a LimitKey) -> Self {
        QuotaKey::Total {
            tenant,
            scope,
            kind: limit.kind,
            limit: &limit.name,
        }
    }

    /// The band of quota `limit`.
    pub fn band(tenant: &'a str, limit: &'a LimitKey) -> Self {
        QuotaKey::Band {
            tenant,
            kind: limit.kind,
            limit: &limit.name,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match *self {
            QuotaKey::Object {
                tenant,
                namespace,
                name,
            } => {
                let mut key = Self::namespace_objects_prefix(tenant, namespace);
                push_str(&mut key, name);
                key
            }
            QuotaKey::SeriesLevel {
                tenant,
                kind,
                limit,
                namespace,
                object,
                deployment,
                container,
            } => {
                let mut key = tagged(Self::SERIES, tenant);
                for part in [
                    kind_name(kind),
                    limit,
                    namespace,
                    object,
                    deployment,
                    container,
                ] {
                    push_str(&mut key, part);
                }
                key
            }
            QuotaKey::Total {
                tenant,
                scope,
                kind,
                limit,
            } => {
                let mut key = Self::totals_prefix(tenant, scope);
                push_str(&mut key, kind_name(kind));
                push_str(&mut key, limit);
                key
            }
            QuotaKey::Band {
                tenant,
                kind,
                limit,
            } => {
                let mut key = tagged(Self::BAND, tenant);
                push_str(&mut key, kind_name(kind));
                push_str(&mut key, limit);
                key
            }
            QuotaKey::TenantAlert { tenant, seq } => {
                let mut key = Self::tenant_alerts_prefix(tenant);
                key.extend_from_slice(&(!seq).to_be_bytes());
                key
            }
        }
    }

    /// The row `bytes` are the key of, if they are a `quota` key of this build.
    pub fn decode(bytes: &'a [u8]) -> Option<QuotaKey<'a>> {
        let (&tag, rest) = bytes.split_first()?;
        let (tenant, rest) = take_str_ref(rest)?;
        let key = match tag {
            Self::OBJECT => {
                let [namespace, name] = take_strs(rest)?;
                QuotaKey::Object {
                    tenant,
                    namespace,
                    name,
                }
            }
            Self::SERIES => {
                let [kind, limit, namespace, object, deployment, container] = take_strs(rest)?;
                QuotaKey::SeriesLevel {
                    tenant,
                    kind: kind_of_name(kind)?,
                    limit,
                    namespace,
                    object,
                    deployment,
                    container,
                }
            }
            Self::TOTAL => {
                let [scope, kind, limit] = take_strs(rest)?;
                QuotaKey::Total {
                    tenant,
                    scope: Scope::from_key_part(scope),
                    kind: kind_of_name(kind)?,
                    limit,
                }
            }
            Self::BAND => {
                let [kind, limit] = take_strs(rest)?;
                QuotaKey::Band {
                    tenant,
                    kind: kind_of_name(kind)?,
                    limit,
                }
            }
            Self::ALERT => QuotaKey::TenantAlert {
                tenant,
                seq: !u64::from_be_bytes(rest.try_into().ok()?),
            },
            _ => return None,
        };
        Some(key)
    }

    /// `o tenant\0` — every quota object of a tenant.
    pub fn objects_prefix(tenant: &str) -> Vec<u8> {
        tagged(Self::OBJECT, tenant)
    }

    /// `o tenant\0 namespace\0` — a tenant's quota objects in one namespace.
    pub fn namespace_objects_prefix(tenant: &str, namespace: &str) -> Vec<u8> {
        let mut key = Self::objects_prefix(tenant);
        push_str(&mut key, namespace);
        key
    }

    /// `t tenant\0 scope\0` — every level of a namespace, or of the tenant (`*`).
    pub fn totals_prefix(tenant: &str, scope: Scope<'_>) -> Vec<u8> {
        let mut key = tagged(Self::TOTAL, tenant);
        push_str(&mut key, scope.as_key_part());
        key
    }

    /// `a` — every tenant's alert copies.
    pub fn all_tenant_alerts() -> [u8; 1] {
        [Self::ALERT]
    }

    /// `a tenant\0` — every alert of a tenant.
    pub fn tenant_alerts_prefix(tenant: &str) -> Vec<u8> {
        tagged(Self::ALERT, tenant)
    }
}

/// The kind a key names ([`kind_name`]'s inverse).
fn kind_of_name(name: &str) -> Option<QuotaKind> {
    [QuotaKind::Object, QuotaKind::Resource, QuotaKind::Api]
        .into_iter()
        .find(|kind| kind_name(*kind) == name)
}

/// A row of the `billing` family (see the table above): one variant per kind of row, each
/// behind its one-byte tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingKey<'a> {
    /// `h tenant\0`: the tenant's header.
    Header { tenant: &'a str },
    /// `p tenant\0 start`: a closed period, its start with the sign bit flipped so that byte
    /// order is time order before 1970 too.
    Period { tenant: &'a str, start: UnixMicros },
    /// `i tenant\0 number`: an invoice.
    Invoice { tenant: &'a str, number: u32 },
    /// `r tenant\0 id`: a decided plan transition.
    Transition { tenant: &'a str, id: &'a str },
    /// `u tenant\0 period uid\0 namespace\0 metric\0 object\0 deployment\0 container\0`: the
    /// usage of one series in one billing period.
    Usage {
        tenant: &'a str,
        period_uid: &'a str,
        series: SeriesRef<'a>,
    },
    /// `x id`: the tenant a plan transition belongs to (the operator's verdict names only
    /// its id).
    TransitionOwner { id: &'a str },
}

impl<'a> BillingKey<'a> {
    const HEADER: u8 = b'h';
    const PERIOD: u8 = b'p';
    const INVOICE: u8 = b'i';
    const TRANSITION: u8 = b'r';
    const USAGE: u8 = b'u';
    const TRANSITION_OWNER: u8 = b'x';

    pub fn encode(&self) -> Vec<u8> {
        match *self {
            BillingKey::Header { tenant } => tagged(Self::HEADER, tenant),
            BillingKey::Period { tenant, start } => {
                let mut key = Self::periods(tenant);
                key.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
                key
            }
            BillingKey::Invoice { tenant, number } => {
                let mut key = Self::invoices(tenant);
                key.extend_from_slice(&number.to_be_bytes());
                key
            }
            BillingKey::Transition { tenant, id } => {
                let mut key = Self::transitions(tenant);
                key.extend_from_slice(id.as_bytes());
                key
            }
            BillingKey::Usage {
                tenant,
                period_uid,
                series,
            } => {
                let mut key = Vec::new();
                Self::usage_into(&mut key, tenant, period_uid, &series);
                key
            }
            BillingKey::TransitionOwner { id } => {
                let mut key = vec![Self::TRANSITION_OWNER];
                key.extend_from_slice(id.as_bytes());
                key
            }
        }
    }

    /// The row `bytes` are the key of, if they are a `billing` key of this build.
    pub fn decode(bytes: &'a [u8]) -> Option<BillingKey<'a>> {
        let (&tag, rest) = bytes.split_first()?;
        if tag == Self::TRANSITION_OWNER {
            return Some(BillingKey::TransitionOwner {
                id: std::str::from_utf8(rest).ok()?,
            });
        }
        let (tenant, rest) = take_str_ref(rest)?;
        let key = match tag {
            Self::HEADER if rest.is_empty() => BillingKey::Header { tenant },
            Self::PERIOD => BillingKey::Period {
                tenant,
                start: (u64::from_be_bytes(rest.try_into().ok()?) ^ (1 << 63)) as i64,
            },
            Self::INVOICE => BillingKey::Invoice {
                tenant,
                number: u32::from_be_bytes(rest.try_into().ok()?),
            },
            Self::TRANSITION => BillingKey::Transition {
                tenant,
                id: std::str::from_utf8(rest).ok()?,
            },
            Self::USAGE => {
                let [
                    period_uid,
                    namespace,
                    metric_label,
                    object_name,
                    deployment,
                    container,
                ] = take_strs(rest)?;
                BillingKey::Usage {
                    tenant,
                    period_uid,
                    series: SeriesRef {
                        namespace,
                        metric_label,
                        object_name,
                        deployment,
                        container,
                    },
                }
            }
            _ => return None,
        };
        Some(key)
    }

    /// `h` — every tenant's header.
    pub fn headers() -> [u8; 1] {
        [Self::HEADER]
    }

    /// Every closed period of `tenant`, oldest first.
    pub fn periods(tenant: &str) -> Vec<u8> {
        tagged(Self::PERIOD, tenant)
    }

    /// Every invoice of `tenant`, in issue order.
    pub fn invoices(tenant: &str) -> Vec<u8> {
        tagged(Self::INVOICE, tenant)
    }

    /// Every decided plan transition of `tenant`.
    pub fn transitions(tenant: &str) -> Vec<u8> {
        tagged(Self::TRANSITION, tenant)
    }

    /// Every usage row of one billing period of `tenant`.
    pub fn usage_of_period(tenant: &str, period_uid: &str) -> Vec<u8> {
        let mut key = tagged(Self::USAGE, tenant);
        push_str(&mut key, period_uid);
        key
    }

    /// The usage rows of one period and namespace.
    pub fn usage_of_namespace(tenant: &str, period_uid: &str, namespace: &str) -> Vec<u8> {
        let mut key = Self::usage_of_period(tenant, period_uid);
        push_str(&mut key, namespace);
        key
    }

    /// A [`BillingKey::Usage`] written over `key` (a buffer kept between calls: no
    /// allocation per event).
    pub fn usage_into(key: &mut Vec<u8>, tenant: &str, period_uid: &str, series: &SeriesRef<'_>) {
        key.clear();
        key.push(Self::USAGE);
        push_str(key, tenant);
        push_str(key, period_uid);
        push_series(key, series);
    }

    /// The metric of a usage row under a period prefix `period_len` bytes long.
    pub fn usage_metric(key: &[u8], period_len: usize) -> Option<&str> {
        let rest = key.get(period_len..)?;
        let metric = rest.split(|&b| b == 0).nth(1)?;
        std::str::from_utf8(metric).ok()
    }
}

/// The smallest key greater than every key that starts with `prefix` (an exclusive upper bound
/// for a prefix scan); `None` when no such key exists (all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `tag tenant\0`: the start of every per-tenant key of the quota and billing families.
fn tagged(tag: u8, tenant: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 32);
    key.push(tag);
    push_str(&mut key, tenant);
    key
}

pub fn push_str(key: &mut Vec<u8>, part: &str) {
    key.extend_from_slice(part.as_bytes());
    key.push(0);
}

/// The text up to the next `\0`, and what follows it.
fn take_str_ref(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(bytes.get(..end)?).ok()?;
    Some((text, bytes.get(end + 1..)?))
}

/// Exactly `N` `\0`-terminated texts, and nothing after them.
fn take_strs<const N: usize>(mut bytes: &[u8]) -> Option<[&str; N]> {
    let mut texts = [""; N];
    for text in &mut texts {
        let (taken, rest) = take_str_ref(bytes)?;
        *text = taken;
        bytes = rest;
    }
    bytes.is_empty().then_some(texts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{0,12}"
    }

    proptest! {
        #[test]
        fn series_keys_round_trip(tenant in "[a-z]{1,8}", ns in "[a-z][a-z0-9-]{0,10}", bucket: u32,
                                  metric in "[a-z_]{1,12}", object in text(), deployment in text(), container in text()) {
            let series = SeriesRef { namespace: &ns, metric_label: &metric, object_name: &object, deployment: &deployment, container: &container };
            for scope in [Scope::Namespace(&ns), Scope::Tenant] {
                let key = SeriesKey { tenant: &tenant, scope, bucket, series }.encode();
                let row = decode_series_key(&key).expect("decodes");
                prop_assert_eq!(&row.tenant, &tenant);
                prop_assert_eq!(row.scope.as_str(), scope.as_key_part());
                prop_assert_eq!(row.bucket, bucket);
                prop_assert_eq!(&row.series.object_name, &object);
                prop_assert_eq!(&row.series.container, &container);
                prop_assert!(key.starts_with(&SeriesKey::bucket_prefix(&tenant, scope, bucket)));
                prop_assert_eq!(SeriesKey::decode(&key), Some(SeriesKey { tenant: &tenant, scope, bucket, series }));
            }
        }

        #[test]
        fn bucket_order_is_byte_order(tenant in "[a-z]{1,8}", a: u32, b: u32, metric in "[a-z]{1,5}") {
            let series = SeriesRef { namespace: "ns", metric_label: &metric, object_name: "", deployment: "", container: "" };
            let ka = SeriesKey { tenant: &tenant, scope: Scope::Tenant, bucket: a, series }.encode();
            let kb = SeriesKey { tenant: &tenant, scope: Scope::Tenant, bucket: b, series }.encode();
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert_eq!(a.cmp(&b), seq_key(u64::from(a)).cmp(&seq_key(u64::from(b))));
        }

        #[test]
        fn tenant_prefixes_never_overlap(a in "[a-z]{1,6}", b in "[a-z]{1,6}") {
            prop_assume!(a != b);
            let pa = SeriesKey::scope_prefix(&a, Scope::Tenant);
            let kb = SeriesKey { tenant: &b, scope: Scope::Tenant, bucket: 7, series: SeriesRef { namespace: "x", metric_label: "m", object_name: "", deployment: "", container: "" } }.encode();
            prop_assert!(!kb.starts_with(&pa));
        }
    }

    proptest! {
        #[test]
        fn billing_period_order_is_time_order(tenant in "[a-z]{1,8}", a: i64, b: i64) {
            let (ka, kb) = (BillingKey::Period { tenant: &tenant, start: a }.encode(), BillingKey::Period { tenant: &tenant, start: b }.encode());
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert!(ka.starts_with(&BillingKey::periods(&tenant)));
        }

        #[test]
        fn billing_usage_keys_name_their_metric(tenant in "[a-z]{1,8}", uid in "[a-f0-9-]{1,36}",
                                               ns in "[a-z][a-z0-9-]{0,10}", metric in "[a-z_]{1,12}") {
            let series = SeriesRef { namespace: &ns, metric_label: &metric, object_name: "o", deployment: "", container: "" };
            let period = BillingKey::usage_of_period(&tenant, &uid);
            let key = BillingKey::Usage { tenant: &tenant, period_uid: &uid, series }.encode();
            prop_assert!(key.starts_with(&BillingKey::usage_of_namespace(&tenant, &uid, &ns)));
            prop_assert_eq!(BillingKey::usage_metric(&key, period.len()), Some(metric.as_str()));
        }
    }

    /// The stored bytes of every meta key: changing one would orphan what stores hold.
    #[test]
    fn meta_keys_are_the_bytes_stores_hold() {
        let golden: [(MetaKey, &[u8]); 9] = [
            (MetaKey::FormatVersion, b"format_version"),
            (MetaKey::IdsForgottenBefore, b"ids_forgotten_before"),
            (MetaKey::LongestDedupHorizon, b"longest_dedup_horizon"),
            (MetaKey::MeterDefinitions, b"meter_definitions"),
            (
                MetaKey::AlertsIndexedPerTenant,
                b"alerts_indexed_per_tenant",
            ),
            (MetaKey::WebhookCursor, b"webhook_cursor"),
            (MetaKey::ChangelogOrigin, b"changelog_origin"),
            (
                MetaKey::ChangelogOutbox { first_seq: 258 },
                b"changelog_outbox/\0\0\0\0\0\0\x01\x02",
            ),
            (
                MetaKey::ChangelogApplied { partition: 11 },
                b"changelog_applied/\0\0\0\x0b",
            ),
        ];
        for (key, bytes) in golden {
            assert_eq!(key.encode(), bytes, "{key:?}");
            assert_eq!(MetaKey::decode(bytes), Some(key));
            // The table in the module doc names it.
            let name = String::from_utf8_lossy(bytes);
            let name = name.split('/').next().unwrap_or_default();
            assert!(
                TABLE.contains(&format!("`{name}")),
                "{name} missing from the table"
            );
        }
        assert_eq!(MetaKey::decode(b"catalog_version"), None);
        assert_eq!(MetaKey::decode(b"changelog_outbox/\0"), None);
    }

    fn series() -> SeriesRef<'static> {
        SeriesRef {
            namespace: "ns1",
            metric_label: "m",
            object_name: "o",
            deployment: "d",
            container: "c",
        }
    }

    /// The stored bytes of one key of every kind, and each decoded back: a change to any
    /// layout fails here before it orphans a stored row.
    #[test]
    fn every_key_is_the_bytes_stores_hold() {
        let quota: [(QuotaKey, &[u8]); 5] = [
            (
                QuotaKey::Object {
                    tenant: "acme",
                    namespace: "ns1",
                    name: "q",
                },
                b"oacme\0ns1\0q\0",
            ),
            (
                QuotaKey::SeriesLevel {
                    tenant: "acme",
                    kind: QuotaKind::Resource,
                    limit: "cpu",
                    namespace: "ns1",
                    object: "o",
                    deployment: "d",
                    container: "c",
                },
                b"sacme\0resource\0cpu\0ns1\0o\0d\0c\0",
            ),
            (
                QuotaKey::Total {
                    tenant: "acme",
                    scope: Scope::Tenant,
                    kind: QuotaKind::Api,
                    limit: "calls",
                },
                b"tacme\0*\0api\0calls\0",
            ),
            (
                QuotaKey::Band {
                    tenant: "acme",
                    kind: QuotaKind::Object,
                    limit: "vms",
                },
                b"bacme\0object\0vms\0",
            ),
            (
                QuotaKey::TenantAlert {
                    tenant: "acme",
                    seq: 1,
                },
                b"aacme\0\xff\xff\xff\xff\xff\xff\xff\xfe",
            ),
        ];
        for (key, bytes) in quota {
            assert_eq!(key.encode(), bytes, "{key:?}");
            assert_eq!(QuotaKey::decode(bytes), Some(key));
            assert!(table_tags(CF_QUOTA).contains(&bytes[0]), "{key:?}");
        }
        let billing: [(BillingKey, &[u8]); 6] = [
            (BillingKey::Header { tenant: "acme" }, b"hacme\0"),
            (
                BillingKey::Period {
                    tenant: "acme",
                    start: 0,
                },
                b"pacme\0\x80\0\0\0\0\0\0\0",
            ),
            (
                BillingKey::Invoice {
                    tenant: "acme",
                    number: 3,
                },
                b"iacme\0\0\0\0\x03",
            ),
            (
                BillingKey::Transition {
                    tenant: "acme",
                    id: "t1",
                },
                b"racme\0t1",
            ),
            (
                BillingKey::Usage {
                    tenant: "acme",
                    period_uid: "p1",
                    series: series(),
                },
                b"uacme\0p1\0ns1\0m\0o\0d\0c\0",
            ),
            (BillingKey::TransitionOwner { id: "t1" }, b"xt1"),
        ];
        for (key, bytes) in billing {
            assert_eq!(key.encode(), bytes, "{key:?}");
            assert_eq!(BillingKey::decode(bytes), Some(key));
            assert!(table_tags(CF_BILLING).contains(&bytes[0]), "{key:?}");
        }
        let hourly = SeriesKey {
            tenant: "acme",
            scope: Scope::Namespace("ns1"),
            bucket: 5,
            series: series(),
        };
        let bytes = b"acme\0ns1\0\0\0\0\x05ns1\0m\0o\0d\0c\0";
        assert_eq!(hourly.encode(), bytes);
        assert_eq!(SeriesKey::decode(bytes), Some(hourly));
        let audit = AuditKey {
            tenant: "acme",
            seq: 2,
        };
        let bytes = b"acme\0\0\0\0\0\0\0\0\x02";
        assert_eq!(audit.encode(), bytes);
        assert_eq!(AuditKey::decode(bytes), Some(audit));
        let offset = OffsetKey {
            topic: "usage",
            partition: 1,
        };
        let bytes = b"usage\0\0\0\0\x01";
        assert_eq!(offset.encode(), bytes);
        assert_eq!(OffsetKey::decode(bytes), Some(offset));
        assert_eq!(seq_key(258), *b"\0\0\0\0\0\0\x01\x02");
        // What is no key of a family is refused, never misread.
        assert_eq!(QuotaKey::decode(b"zacme\0"), None);
        assert_eq!(QuotaKey::decode(b"tacme\0*\0nokind\0x\0"), None);
        assert_eq!(BillingKey::decode(b"iacme\0\x01"), None);
        assert_eq!(SeriesKey::decode(b"acme\0ns1\0\0\0"), None);
    }

    /// The one-byte tags the table above lists for `family`'s rows.
    fn table_tags(family: &str) -> Vec<u8> {
        let rows: Vec<&str> = TABLE.lines().take_while(|l| l.starts_with("//!")).collect();
        let start = format!("//! | `{family}`");
        rows.iter()
            .skip_while(|row| !row.starts_with(&start))
            .enumerate()
            .take_while(|(i, row)| *i == 0 || row.starts_with("//! |               |"))
            .filter_map(|(_, row)| {
                let key = row.split('|').nth(2)?.trim();
                let tag = key.strip_prefix('`')?;
                (tag.as_bytes().get(1) == Some(&b'`')).then(|| tag.as_bytes()[0])
            })
            .collect()
    }

    const TABLE: &str = include_str!("keys.rs");

    #[test]
    fn the_layout_table_has_a_row_for_every_column_family() {
        let rows: Vec<&str> = TABLE.lines().take_while(|l| l.starts_with("//!")).collect();
        for family in COLUMN_FAMILIES {
            let cell = format!("//! | `{family}`");
            assert!(
                rows.iter().any(|row| row.starts_with(&cell)),
                "the table in keys.rs has no row for `{family}`"
            );
        }
    }

    #[test]
    fn an_events_identity_separates_tenant_and_id() {
        assert_ne!(dedup_key("ab", "c"), dedup_key("a", "bc"));
        assert_eq!(
            hex::encode(dedup_key("acme", "e-1")),
            hex::encode(xxhash_rust::xxh3::xxh3_128(b"acme\0e-1").to_be_bytes())
        );
    }

    #[test]
    fn successor_bounds_a_prefix() {
        assert_eq!(prefix_successor(b"ab\0"), Some(b"ab\x01".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(decode_series_key(b"garbage"), None);
    }
}
