//! Key layout of every column family, encoded by hand so numeric order is byte order.
//!
//! | CF            | key                                                                                   | value (first byte: version)          |
//! |---------------|---------------------------------------------------------------------------------------|--------------------------------------|
//! | `log`         | seq `u64` BE                                                                          | [`LogEntry`](super::LogEntry) in log format v2 ([`format`](super::format)) |
//! | `dedup`       | xxh3-128(tenant `\0` id), 16 bytes                                                    | seq, event time, fingerprint         |
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
//! | `billing`     | `t` tenant `\0`                                                                       | tenant billing state, bincode        |
//! |               | `u` tenant `\0` period uid `\0` namespace `\0` metric `\0` object `\0` deployment `\0` container `\0` | aggregate of the period |
//! |               | `x` plan transition id                                                                 | tenant                               |
//! | `audit`       | tenant `\0` seq `u64` BE                                                              | [`AuditRecord`](crate::audit::AuditRecord), bincode |
//! | `checkpoints` | projection name                                                                       | last folded seq `u64`                |
//! | `offsets`     | topic `\0` partition `i32` BE                                                         | next offset `i64`                    |
//! | `tokens`      | token id                                                                              | token record, bincode                |
//! | `meta`        | `format_version`, `catalog_version`                                                   | `u32` BE                             |
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
    for part in series.parts() {
        push_str(&mut key, part);
    }
    key
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

    #[test]
    fn successor_bounds_a_prefix() {
        assert_eq!(prefix_successor(b"ab\0"), Some(b"ab\x01".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(decode_series_key(b"garbage"), None);
    }
}
