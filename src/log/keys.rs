//! Key layout of every column family, encoded by hand so numeric order is byte order.
//!
//! | CF            | key                                                                                   | value (first byte: version)          |
//! |---------------|---------------------------------------------------------------------------------------|--------------------------------------|
//! | `log`         | seq `u64` BE                                                                          | [`LogEntry`](super::LogEntry) in log format v2 ([`format`](super::format)) |
//! | `dedup`       | xxh3-128(tenant `\0` id), 16 bytes                                                    | v2: fingerprint `u64`, event second rounded up (40 bits), seq LEB128 (15–24 bytes); v1 (25 bytes) still read |
//! | `dead_letter` | dead-letter number `u64` BE                                                           | [`DeadLetter`](super::DeadLetter) in format v2 |
//! | `hourly`      | tenant `\0` scope `\0` hour `u32` BE, namespace `\0` metric `\0` object `\0` deployment `\0` container `\0` | aggregate, 57 bytes |
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
//! | `audit`       | tenant `\0` seq `u64` BE                                                              | [`AuditRecord`](crate::audit::AuditRecord), bincode |
//! | `checkpoints` | projection name                                                                       | last folded seq `u64`                |
//! | `offsets`     | topic `\0` partition `i32` BE                                                         | next offset `i64`                    |
//! | `tokens`      | token id                                                                              | token record, bincode                |
//! | `meta`        | `format_version`, `catalog_version`                                                   | `u32` BE                             |
//! |               | `changelog_outbox/` first seq `u64` BE (in a cluster: a request's entries to publish)  | end seq `u64`                        |
//! |               | `changelog_applied/` partition `i32` BE (in a cluster: what a restore took)           | per origin, the last seq taken       |
//! |               | `changelog_origin`                                                                    | this store's origin id `u64`         |
//!
//! `scope` is the event's namespace, or `*` for the tenant-wide copy of every row that the
//! `system` namespace reads (`*` is never a DNS-1035 label, so the two cannot collide). Strings
//! in keys never contain `\0`: validation refuses control characters. The `\0` terminator sorts
//! below every other byte, so `tenant\0` is exactly one tenant's prefix.

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
    let mut key = scope_prefix(tenant, scope);
    key.extend_from_slice(&bucket.to_be_bytes());
    key
}

pub fn series_key(tenant: &str, scope: Scope<'_>, bucket: u32, series: &SeriesRef<'_>) -> Vec<u8> {
    let mut key = bucket_prefix(tenant, scope, bucket);
    key.reserve(series.encoded_len());
    push_series(&mut key, series);
    key
}

/// Appends `namespace\0 metric\0 object\0 deployment\0 container\0`: the end of every
/// `hourly`/`monthly` key.
pub fn push_series(key: &mut Vec<u8>, series: &SeriesRef<'_>) {
    for part in series.parts() {
        push_str(key, part);
    }
}

/// Borrowed series dimensions, to build keys without copying strings.
#[derive(Debug, Clone, Copy)]
pub struct SeriesRef<'a> {
    pub namespace: &'a str,
    pub metric_label: &'a str,
    pub object_name: &'a str,
    pub deployment: &'a str,
    pub container: &'a str,
}

impl<'a> SeriesRef<'a> {
    /// The series an event adds to.
    pub fn of(event: &'a crate::event::UsageEvent) -> SeriesRef<'a> {
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

pub fn decode_series_key(key: &[u8]) -> Option<SeriesRow> {
    let (tenant, rest) = take_str(key)?;
    let (scope, rest) = take_str(rest)?;
    let bucket = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let rest = rest.get(4..)?;
    let (namespace, rest) = take_str(rest)?;
    let (metric_label, rest) = take_str(rest)?;
    let (object_name, rest) = take_str(rest)?;
    let (deployment, rest) = take_str(rest)?;
    let (container, rest) = take_str(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some(SeriesRow {
        tenant,
        scope,
        bucket,
        series: Series {
            namespace,
            metric_label,
            object_name,
            deployment,
            container,
        },
    })
}

/// The prefix of the changelog outbox rows in `meta`.
pub const OUTBOX_PREFIX: &[u8] = b"changelog_outbox/";

/// `changelog_outbox/` first seq: the entries from there to the row's end seq are still to be
/// published to the cluster's changelog.
pub fn outbox_key(first_seq: u64) -> Vec<u8> {
    let mut key = OUTBOX_PREFIX.to_vec();
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// `changelog_applied/` partition: per origin, the last seq a restore took of the partition.
pub fn applied_key(partition: i32) -> Vec<u8> {
    let mut key = b"changelog_applied/".to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// `topic\0` — every partition of one topic.
pub fn offset_prefix(topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 5);
    push_str(&mut key, topic);
    key
}

pub fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = offset_prefix(topic);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Keys of the `quota` column family (see the table above).
pub mod quota {
    use super::{Scope, push_str, tagged};
    use crate::event::UsageEvent;
    use crate::quota::{LimitKey, kind_name};

    const OBJECT: u8 = b'o';
    const SERIES: u8 = b's';
    const TOTAL: u8 = b't';
    const BAND: u8 = b'b';
    /// A tenant's alerts, newest first (the `alerts` CF holds every tenant's in log order).
    const ALERT: u8 = b'a';

    fn push_limit(key: &mut Vec<u8>, limit: &LimitKey) {
        push_str(key, kind_name(limit.kind));
        push_str(key, &limit.name);
    }

    /// `o tenant\0` — every quota object of a tenant.
    pub fn objects_prefix(tenant: &str) -> Vec<u8> {
        tagged(OBJECT, tenant)
    }

    /// `o tenant\0 namespace\0` — a tenant's quota objects in one namespace.
    pub fn namespace_objects_prefix(tenant: &str, namespace: &str) -> Vec<u8> {
        let mut key = objects_prefix(tenant);
        push_str(&mut key, namespace);
        key
    }

    /// `o tenant\0 namespace\0 name\0`
    pub fn object_key(tenant: &str, namespace: &str, name: &str) -> Vec<u8> {
        let mut key = namespace_objects_prefix(tenant, namespace);
        push_str(&mut key, name);
        key
    }

    /// `s tenant\0 kind\0 name\0 namespace\0 object\0 deployment\0 container\0`
    pub fn series_key(tenant: &str, limit: &LimitKey, event: &UsageEvent) -> Vec<u8> {
        let mut key = tagged(SERIES, tenant);
        push_limit(&mut key, limit);
        for part in [
            &event.namespace,
            &event.object_name,
            &event.deployment,
            &event.container,
        ] {
            push_str(&mut key, part);
        }
        key
    }

    /// `t tenant\0 scope\0` — every level of a namespace, or of the tenant (`*`).
    pub fn totals_prefix(tenant: &str, scope: Scope<'_>) -> Vec<u8> {
        let mut key = tagged(TOTAL, tenant);
        push_str(&mut key, scope.as_key_part());
        key
    }

    /// `t tenant\0 scope\0 kind\0 name\0` — one level of a namespace or of the tenant.
    pub fn total_key(tenant: &str, scope: Scope<'_>, limit: &LimitKey) -> Vec<u8> {
        let mut key = totals_prefix(tenant, scope);
        push_limit(&mut key, limit);
        key
    }

    /// `b tenant\0 kind\0 name\0`
    pub fn band_key(tenant: &str, limit: &LimitKey) -> Vec<u8> {
        let mut key = tagged(BAND, tenant);
        push_limit(&mut key, limit);
        key
    }

    /// `a` — every tenant's alert copies.
    pub fn all_tenant_alerts() -> [u8; 1] {
        [ALERT]
    }

    /// `a tenant\0` — every alert of a tenant.
    pub fn tenant_alerts_prefix(tenant: &str) -> Vec<u8> {
        tagged(ALERT, tenant)
    }

    /// `a tenant\0 !seq` — the seq inverted, so the newest alert comes first in key order.
    pub fn tenant_alert_key(tenant: &str, seq: u64) -> Vec<u8> {
        let mut key = tenant_alerts_prefix(tenant);
        key.extend_from_slice(&(!seq).to_be_bytes());
        key
    }

    /// The seq of a [`tenant_alert_key`].
    pub fn decode_tenant_alert_seq(key: &[u8]) -> Option<u64> {
        let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
        Some(!u64::from_be_bytes(tail))
    }
}

/// Keys of the `billing` column family (see the table above).
pub mod billing {
    use super::{SeriesRef, push_str, tagged};
    use crate::time::UnixMicros;

    const HEADER: u8 = b'h';
    const PERIOD: u8 = b'p';
    const INVOICE: u8 = b'i';
    const TRANSITION: u8 = b'r';
    const USAGE: u8 = b'u';
    const TRANSITION_OWNER: u8 = b'x';

    /// `h` — every tenant's header.
    pub fn headers() -> [u8; 1] {
        [HEADER]
    }

    pub fn header(tenant: &str) -> Vec<u8> {
        tagged(HEADER, tenant)
    }

    /// Every closed period of `tenant`, oldest first.
    pub fn periods(tenant: &str) -> Vec<u8> {
        tagged(PERIOD, tenant)
    }

    /// The closed period of `tenant` starting at `start`; the sign bit flipped so that byte
    /// order is time order before 1970 too.
    pub fn period(tenant: &str, start: UnixMicros) -> Vec<u8> {
        let mut key = periods(tenant);
        key.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
        key
    }

    /// Every invoice of `tenant`, in issue order.
    pub fn invoices(tenant: &str) -> Vec<u8> {
        tagged(INVOICE, tenant)
    }

    pub fn invoice(tenant: &str, number: u32) -> Vec<u8> {
        let mut key = invoices(tenant);
        key.extend_from_slice(&number.to_be_bytes());
        key
    }

    /// Every decided plan transition of `tenant`.
    pub fn transitions(tenant: &str) -> Vec<u8> {
        tagged(TRANSITION, tenant)
    }

    pub fn transition(tenant: &str, id: &str) -> Vec<u8> {
        let mut key = transitions(tenant);
        key.extend_from_slice(id.as_bytes());
        key
    }

    /// Every usage row of one billing period of `tenant`.
    pub fn usage_of_period(tenant: &str, period_uid: &str) -> Vec<u8> {
        let mut key = tagged(USAGE, tenant);
        push_str(&mut key, period_uid);
        key
    }

    /// The usage rows of one period and namespace.
    pub fn usage_of_namespace(tenant: &str, period_uid: &str, namespace: &str) -> Vec<u8> {
        let mut key = usage_of_period(tenant, period_uid);
        push_str(&mut key, namespace);
        key
    }

    pub fn usage(tenant: &str, period_uid: &str, series: &SeriesRef<'_>) -> Vec<u8> {
        let mut key = Vec::new();
        usage_into(&mut key, tenant, period_uid, series);
        key
    }

    /// [`usage`] written over `key` (a buffer kept between calls: no allocation per event).
    pub fn usage_into(key: &mut Vec<u8>, tenant: &str, period_uid: &str, series: &SeriesRef<'_>) {
        key.clear();
        key.push(USAGE);
        push_str(key, tenant);
        push_str(key, period_uid);
        super::push_series(key, series);
    }

    /// The metric of a usage row under a period prefix `period_len` bytes long.
    pub fn usage_metric(key: &[u8], period_len: usize) -> Option<&str> {
        let rest = key.get(period_len..)?;
        let metric = rest.split(|&b| b == 0).nth(1)?;
        std::str::from_utf8(metric).ok()
    }

    /// The tenant a plan transition belongs to (the operator's verdict names only its id).
    pub fn transition_owner(id: &str) -> Vec<u8> {
        let mut key = vec![TRANSITION_OWNER];
        key.extend_from_slice(id.as_bytes());
        key
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

fn take_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    let end = bytes.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(bytes.get(..end)?).ok()?.to_owned();
    Some((text, bytes.get(end + 1..)?))
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
                let key = series_key(&tenant, scope, bucket, &series);
                let row = decode_series_key(&key).expect("decodes");
                prop_assert_eq!(&row.tenant, &tenant);
                prop_assert_eq!(row.scope.as_str(), scope.as_key_part());
                prop_assert_eq!(row.bucket, bucket);
                prop_assert_eq!(&row.series.object_name, &object);
                prop_assert_eq!(&row.series.container, &container);
                prop_assert!(key.starts_with(&bucket_prefix(&tenant, scope, bucket)));
            }
        }

        #[test]
        fn bucket_order_is_byte_order(tenant in "[a-z]{1,8}", a: u32, b: u32, metric in "[a-z]{1,5}") {
            let series = SeriesRef { namespace: "ns", metric_label: &metric, object_name: "", deployment: "", container: "" };
            let ka = series_key(&tenant, Scope::Tenant, a, &series);
            let kb = series_key(&tenant, Scope::Tenant, b, &series);
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert_eq!(a.cmp(&b), seq_key(u64::from(a)).cmp(&seq_key(u64::from(b))));
        }

        #[test]
        fn tenant_prefixes_never_overlap(a in "[a-z]{1,6}", b in "[a-z]{1,6}") {
            prop_assume!(a != b);
            let pa = scope_prefix(&a, Scope::Tenant);
            let kb = series_key(&b, Scope::Tenant, 7, &SeriesRef { namespace: "x", metric_label: "m", object_name: "", deployment: "", container: "" });
            prop_assert!(!kb.starts_with(&pa));
        }
    }

    proptest! {
        #[test]
        fn billing_period_order_is_time_order(tenant in "[a-z]{1,8}", a: i64, b: i64) {
            let (ka, kb) = (billing::period(&tenant, a), billing::period(&tenant, b));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert!(ka.starts_with(&billing::periods(&tenant)));
        }

        #[test]
        fn billing_usage_keys_name_their_metric(tenant in "[a-z]{1,8}", uid in "[a-f0-9-]{1,36}",
                                               ns in "[a-z][a-z0-9-]{0,10}", metric in "[a-z_]{1,12}") {
            let series = SeriesRef { namespace: &ns, metric_label: &metric, object_name: "o", deployment: "", container: "" };
            let period = billing::usage_of_period(&tenant, &uid);
            let key = billing::usage(&tenant, &uid, &series);
            prop_assert!(key.starts_with(&billing::usage_of_namespace(&tenant, &uid, &ns)));
            prop_assert_eq!(billing::usage_metric(&key, period.len()), Some(metric.as_str()));
        }
    }

    #[test]
    fn successor_bounds_a_prefix() {
        assert_eq!(prefix_successor(b"ab\0"), Some(b"ab\x01".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(decode_series_key(b"garbage"), None);
    }
}
