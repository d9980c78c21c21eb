//! Quotas, pure: the F5 quota object model and its validation, effective limits (a plan's
//! `default_quota` overridden by quota objects), levels fed by quota-bound meters, and the
//! threshold bands whose crossings raise alerts.
//!
//! Nothing here touches storage; [`fold`] applies log entries to loaded state and says what to
//! write and which alerts to append.

pub mod decide;
pub mod fold;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, QuotaKind, QuotaSpec, RateLimitType, RateLimitUnit};
use crate::event::is_dns1035_label;
use crate::time::UnixMicros;
use crate::units::{self, MICROS_PER_UNIT};

/// The namespace quota objects live in (F5: quotas are tenant-wide, kept in `system`).
pub const QUOTA_NAMESPACE: &str = "system";

/// Thresholds, in percent of a limit, whose crossings raise alerts.
pub const THRESHOLDS: [u8; 3] = [80, 90, 100];

/// A limit of `-1` means unlimited (F5's convention); it overrides a plan default upwards.
pub const UNLIMITED: i64 = -1;

/// One limit key: an object kind (`http_loadbalancer`), a resource (`vcpu`) or an API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LimitKey {
    pub kind: QuotaKind,
    pub name: String,
}

/// Limits in exact units: object counts in whole units, resources in micro-units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub object_limits: BTreeMap<String, i64>,
    /// Micro-units; [`UNLIMITED`] stays `-1`.
    pub resource_limits: BTreeMap<String, i64>,
    pub api_limits: BTreeMap<String, RateLimitType>,
}

impl Limits {
    /// A plan's `default_quota` in exact units.
    pub fn from_plan(spec: &QuotaSpec) -> Limits {
        Limits {
            object_limits: spec
                .object_limits
                .iter()
                .map(|(k, v)| (k.clone(), v.maximum))
                .collect(),
            resource_limits: spec
                .resource_limits
                .iter()
                .map(|(k, v)| (k.clone(), float_to_micros(v.maximum).unwrap_or(UNLIMITED)))
                .collect(),
            api_limits: spec.api_limits.clone(),
        }
    }

    /// The level limit of an object or resource key, in micro-units; `None` when unlimited or
    /// not limited at all.
    pub fn level_limit(&self, key: &LimitKey) -> Option<i128> {
        let limit = match key.kind {
            QuotaKind::Object => self.object_limits.get(&key.name).map(|&n| {
                if n < 0 {
                    n
                } else {
                    n.saturating_mul(MICROS_PER_UNIT)
                }
            }),
            QuotaKind::Resource => self.resource_limits.get(&key.name).copied(),
            QuotaKind::Api => None,
        }?;
        (limit >= 0).then_some(i128::from(limit))
    }

    /// Every object and resource key with a limit.
    pub fn level_keys(&self) -> BTreeSet<LimitKey> {
        let objects = self.object_limits.keys().map(|name| LimitKey {
            kind: QuotaKind::Object,
            name: name.clone(),
        });
        let resources = self.resource_limits.keys().map(|name| LimitKey {
            kind: QuotaKind::Resource,
            name: name.clone(),
        });
        objects.chain(resources).collect()
    }
}

/// A resource maximum as exact micro-units (`-1` stays unlimited); `None` when not a finite
/// number of at most six decimals.
pub fn float_to_micros(value: f64) -> Option<i64> {
    if value == -1.0 {
        return Some(UNLIMITED);
    }
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    // Shortest round-trip text, then exact decimal parsing: 0.1 is exactly 100000 micros.
    units::parse_quantity(&format!("{value}")).ok().map(|m| m.0)
}

/// The F5 quota object as stored: metadata, spec (exact units) and system metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaObject {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub description: String,
    pub disable: bool,
    pub spec: Limits,
    pub uid: String,
    pub tenant: String,
    pub creation_timestamp: UnixMicros,
    pub modification_timestamp: UnixMicros,
    pub creator_id: String,
}

/// The tenant's effective limits: the plan default, then for every key set by an enabled
/// quota object the smallest value those objects give (order-independent, and the safe side
/// when two objects disagree).
pub fn effective_limits<'a>(
    plan_default: &QuotaSpec,
    objects: impl IntoIterator<Item = &'a QuotaObject>,
) -> Limits {
    let mut limits = Limits::from_plan(plan_default);
    let mut object_override: BTreeMap<String, i64> = BTreeMap::new();
    let mut resource_override: BTreeMap<String, i64> = BTreeMap::new();
    let mut api_override: BTreeMap<String, RateLimitType> = BTreeMap::new();
    for object in objects.into_iter().filter(|o| !o.disable) {
        for (key, &value) in &object.spec.object_limits {
            let slot = object_override.entry(key.clone()).or_insert(value);
            *slot = tighter(*slot, value);
        }
        for (key, &value) in &object.spec.resource_limits {
            let slot = resource_override.entry(key.clone()).or_insert(value);
            *slot = tighter(*slot, value);
        }
        for (key, value) in &object.spec.api_limits {
            api_override
                .entry(key.clone())
                .and_modify(|slot| {
                    if rate_per_second_micros(value) < rate_per_second_micros(slot) {
                        *slot = value.clone();
                    }
                })
                .or_insert_with(|| value.clone());
        }
    }
    limits.object_limits.extend(object_override);
    limits.resource_limits.extend(resource_override);
    limits.api_limits.extend(api_override);
    limits
}

/// The smaller of two limits, where `-1` (unlimited) is the largest.
fn tighter(a: i64, b: i64) -> i64 {
    match (a < 0, b < 0) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

fn rate_per_second_micros(limit: &RateLimitType) -> i128 {
    i128::from(limit.rate) * i128::from(MICROS_PER_UNIT) / i128::from(unit_seconds(limit.unit))
}

pub fn unit_seconds(unit: RateLimitUnit) -> i64 {
    match unit {
        RateLimitUnit::Second => 1,
        RateLimitUnit::Minute => 60,
        RateLimitUnit::Hour => 3_600,
        RateLimitUnit::Day => 86_400,
    }
}

/// How far a level is into its limit: 0 below 80 %, 1 from 80 %, 2 from 90 %, 3 from 100 %.
pub fn band(level: i128, limit: Option<i128>) -> u8 {
    let Some(limit) = limit else {
        return 0;
    };
    if limit == 0 {
        return if level > 0 { 3 } else { 0 };
    }
    THRESHOLDS
        .iter()
        .filter(|&&percent| level * 100 >= limit * i128::from(percent))
        .count() as u8
}

/// Which way a level crossed a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// The level reached the threshold from below.
    Raised,
    /// The level fell back below the threshold.
    Cleared,
}

/// One threshold crossing, appended to the log once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: the same crossing of the same log entry always has the same id, so a
    /// refold (restart, rebuild) cannot append it twice.
    pub id: String,
    pub tenant: String,
    pub key: LimitKey,
    pub threshold_percent: u8,
    pub direction: Direction,
    /// Tenant-wide level and limit when it crossed (micro-units).
    pub level: i128,
    pub limit: i128,
    /// The log entry whose fold crossed the threshold, and its time.
    pub trigger_seq: u64,
    pub at: UnixMicros,
}

/// Where an alert is filed and delivered from: the seq of the log entry whose fold crossed the
/// threshold, times 65,536, plus the alert's order among that entry's alerts. Derived from the
/// log alone, so every fold of the same log (restart, rebuild) files an alert at the same
/// position, and the webhook's cursor stays valid across them.
pub fn alert_position(trigger_seq: u64, ordinal: u16) -> u64 {
    trigger_seq.saturating_mul(1 << 16) | u64::from(ordinal)
}

/// A key's move from one band to another, with the tenant level and limit that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandChange {
    pub from: u8,
    pub to: u8,
    pub level: i128,
    pub limit: i128,
}

/// The alerts of one band change (one per threshold crossed, in crossing order).
pub fn crossings(
    tenant: &str,
    key: &LimitKey,
    change: BandChange,
    trigger_seq: u64,
    at: UnixMicros,
) -> Vec<Alert> {
    let BandChange {
        from: from_band,
        to: to_band,
        level,
        limit,
    } = change;
    let alert = |index: u8, direction: Direction| {
        let threshold_percent = THRESHOLDS.get(usize::from(index)).copied().unwrap_or(100);
        let way = match direction {
            Direction::Raised => "raised",
            Direction::Cleared => "cleared",
        };
        Alert {
            id: format!(
                "{}:{}:{threshold_percent}:{way}:{trigger_seq}",
                kind_name(key.kind),
                key.name
            ),
            tenant: tenant.to_owned(),
            key: key.clone(),
            threshold_percent,
            direction,
            level,
            limit,
            trigger_seq,
            at,
        }
    };
    if to_band > from_band {
        (from_band..to_band)
            .map(|i| alert(i, Direction::Raised))
            .collect()
    } else {
        (to_band..from_band)
            .rev()
            .map(|i| alert(i, Direction::Cleared))
            .collect()
    }
}

pub fn kind_name(kind: QuotaKind) -> &'static str {
    match kind {
        QuotaKind::Object => "object",
        QuotaKind::Resource => "resource",
        QuotaKind::Api => "api",
    }
}

/// The quota key a meter feeds, when it is bound to one.
pub fn meter_key(catalog: &Catalog, metric_label: &str) -> Option<LimitKey> {
    let binding = catalog.meter(metric_label)?.quota.as_ref()?;
    Some(LimitKey {
        kind: binding.kind,
        name: binding.name.clone(),
    })
}

/// Why a quota object request is refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidQuota {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidQuota {
    InvalidQuota {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `metadata` of a create or replace request (F5 `ObjectCreateMetaType`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataInput {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub disable: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitInput<T> {
    pub maximum: T,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    pub unit: String,
    pub rate: i64,
    #[serde(default)]
    pub burst: i64,
}

/// `spec` of a create or replace request (F5 `quotaCreateSpecType`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecInput {
    #[serde(default)]
    pub object_limits: BTreeMap<String, LimitInput<i64>>,
    #[serde(default)]
    pub resource_limits: BTreeMap<String, LimitInput<f64>>,
    #[serde(default)]
    pub api_limits: BTreeMap<String, RateLimitInput>,
}

/// A create or replace body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaInput {
    pub metadata: MetadataInput,
    #[serde(default)]
    pub spec: SpecInput,
}

/// Validated metadata and spec; system metadata is added by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidQuota {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub description: String,
    pub disable: bool,
    pub spec: Limits,
}

/// Map keys of limits: `^[a-zA-Z][a-zA-Z0-9-._]*[a-zA-Z0-9]$`, 1 to 512 bytes (the spec's).
fn is_limit_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let middle_ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    (2..=512).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.iter().all(middle_ok)
}

fn parse_rate_unit(text: &str) -> Option<RateLimitUnit> {
    match text.to_ascii_lowercase().as_str() {
        "second" | "per-second" => Some(RateLimitUnit::Second),
        "minute" | "per-minute" => Some(RateLimitUnit::Minute),
        "hour" | "per-hour" => Some(RateLimitUnit::Hour),
        "day" | "per-day" => Some(RateLimitUnit::Day),
        _ => None,
    }
}

/// Validates a create/replace body for `path_namespace` (and `path_name` on replace).
pub fn validate(
    input: QuotaInput,
    path_namespace: &str,
    path_name: Option<&str>,
) -> Result<ValidQuota, InvalidQuota> {
    let meta = input.metadata;
    if let Some(namespace) = meta.namespace.as_deref().filter(|n| !n.is_empty())
        && namespace != path_namespace
    {
        return Err(invalid(
            "metadata.namespace",
            format!("`{namespace}` differs from the path's `{path_namespace}`"),
        ));
    }
    if path_namespace != QUOTA_NAMESPACE {
        return Err(invalid(
            "metadata.namespace",
            format!(
                "quota objects live in the `{QUOTA_NAMESPACE}` namespace (they are tenant-wide)"
            ),
        ));
    }
    if let Some(name) = path_name
        && !meta.name.is_empty()
        && meta.name != name
    {
        return Err(invalid(
            "metadata.name",
            format!("`{}` differs from the path's `{name}`", meta.name),
        ));
    }
    let name = if meta.name.is_empty() {
        path_name.unwrap_or_default().to_owned()
    } else {
        meta.name
    };
    if !is_dns1035_label(&name) {
        return Err(invalid(
            "metadata.name",
            "must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter, at most 63 characters",
        ));
    }
    if meta.labels.len() > 64 || meta.annotations.len() > 64 {
        return Err(invalid(
            if meta.labels.len() > 64 {
                "metadata.labels"
            } else {
                "metadata.annotations"
            },
            "at most 64 entries",
        ));
    }
    for (key, value) in &meta.labels {
        if key.is_empty() || key.len() > 317 || key.chars().any(char::is_control) {
            return Err(invalid(
                format!("metadata.labels.{key}"),
                "key must be 1 to 317 printable characters",
            ));
        }
        if value.len() > 63 || value.chars().any(char::is_control) {
            return Err(invalid(
                format!("metadata.labels.{key}"),
                "value must be at most 63 printable characters",
            ));
        }
    }
    for (key, value) in &meta.annotations {
        if key.is_empty() || key.len() > 64 {
            return Err(invalid(
                format!("metadata.annotations.{key}"),
                "key must be 1 to 64 bytes",
            ));
        }
        if value.is_empty() || value.len() > 1024 {
            return Err(invalid(
                format!("metadata.annotations.{key}"),
                "value must be 1 to 1024 bytes",
            ));
        }
    }
    if meta.description.len() > 1200 {
        return Err(invalid(
            "metadata.description",
            "must be at most 1200 bytes",
        ));
    }
    let spec = validate_spec(input.spec)?;
    Ok(ValidQuota {
        name,
        labels: meta.labels,
        annotations: meta.annotations,
        description: meta.description,
        disable: meta.disable,
        spec,
    })
}

fn validate_spec(spec: SpecInput) -> Result<Limits, InvalidQuota> {
    let check_key = |map: &str, key: &str| {
        if is_limit_key(key) {
            Ok(())
        } else {
            Err(invalid(
                format!("spec.{map}.{key}"),
                "key must match ^[a-zA-Z][a-zA-Z0-9-._]*[a-zA-Z0-9]$ (at most 512 bytes)",
            ))
        }
    };
    let mut limits = Limits::default();
    for (key, limit) in spec.object_limits {
        check_key("object_limits", &key)?;
        if limit.maximum < UNLIMITED || limit.maximum > i64::from(i32::MAX) {
            return Err(invalid(
                format!("spec.object_limits.{key}.maximum"),
                "must be a count from 0 to 2147483647, or -1 for unlimited",
            ));
        }
        limits.object_limits.insert(key, limit.maximum);
    }
    for (key, limit) in spec.resource_limits {
        check_key("resource_limits", &key)?;
        let micros = float_to_micros(limit.maximum).ok_or_else(|| {
            invalid(
                format!("spec.resource_limits.{key}.maximum"),
                "must be a non-negative number with at most 6 decimals, or -1 for unlimited",
            )
        })?;
        limits.resource_limits.insert(key, micros);
    }
    for (key, limit) in spec.api_limits {
        check_key("api_limits", &key)?;
        let field = |part: &str| format!("spec.api_limits.{key}.{part}");
        let unit = parse_rate_unit(&limit.unit).ok_or_else(|| {
            invalid(field("unit"), "must be SECOND, MINUTE, HOUR or DAY (or per-second, per-minute, per-hour, per-day)")
        })?;
        let in_range = |n: i64| (0..=i64::from(i32::MAX)).contains(&n);
        if !in_range(limit.rate) {
            return Err(invalid(field("rate"), "must be from 0 to 2147483647"));
        }
        if !in_range(limit.burst) {
            return Err(invalid(field("burst"), "must be from 0 to 2147483647"));
        }
        limits.api_limits.insert(
            key,
            RateLimitType {
                unit,
                rate: u32::try_from(limit.rate).unwrap_or(u32::MAX),
                burst: u32::try_from(limit.burst).unwrap_or(u32::MAX),
            },
        );
    }
    Ok(limits)
}

/// A `label_filter` of F5 list calls: comma-separated `key=value`, `key!=value`, `key` or
/// `!key` terms, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter(Vec<LabelTerm>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl LabelFilter {
    pub fn parse(text: &str) -> Result<LabelFilter, InvalidQuota> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let parsed = if let Some((key, value)) = term.split_once("!=") {
                LabelTerm::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                LabelTerm::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some(key) = term.strip_prefix('!') {
                LabelTerm::Absent(key.trim().to_owned())
            } else {
                LabelTerm::Exists(term.to_owned())
            };
            let key = match &parsed {
                LabelTerm::Equals(k, _)
                | LabelTerm::NotEquals(k, _)
                | LabelTerm::Exists(k)
                | LabelTerm::Absent(k) => k,
            };
            if key.is_empty() {
                return Err(invalid("label_filter", format!("`{term}` names no label")));
            }
            terms.push(parsed);
        }
        Ok(LabelFilter(terms))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|term| match term {
            LabelTerm::Equals(k, v) => labels.get(k) == Some(v),
            LabelTerm::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelTerm::Exists(k) => labels.contains_key(k),
            LabelTerm::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests;
