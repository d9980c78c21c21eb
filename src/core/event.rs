//! The usage event: wire forms (Tally JSON and CloudEvents 1.0), validation, identity.
//!
//! Pure code: decoding takes the raw bytes of one event plus a [`DecodeContext`] (catalog,
//! clock, tenant of the caller) and returns a validated [`UsageEvent`] or a [`Rejection`] that
//! names the offending field. Nothing here panics on any input.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::catalog::Catalog;
use crate::time::{self, UnixMicros};
use crate::units::{self, Micros};

/// Longest accepted `id`.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted tenant name.
pub const MAX_TENANT_LEN: usize = 64;
/// Longest `object_name`, `deployment` or `container`.
pub const MAX_DIMENSION_LEN: usize = 256;
/// Most labels one event may carry, and their sizes.
pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Largest raw event accepted (HTTP line or Kafka payload).
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// The namespace that stands for the whole tenant in queries; no event may be recorded in it.
pub const SYSTEM_NAMESPACE: &str = "system";
/// A UTF-8 byte order mark, which some tools put before JSON text.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A validated usage event, as the log stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub tenant: String,
    pub id: String,
    pub namespace: String,
    pub metric_label: String,
    pub quantity: Micros,
    /// Event time.
    pub timestamp: UnixMicros,
    pub object_name: String,
    pub deployment: String,
    pub container: String,
    pub labels: BTreeMap<String, String>,
}

/// Where a log entry came from; kept so that every entry can be traced and re-read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventSource {
    Http {
        received_at: UnixMicros,
    },
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// Why one event was refused: the field at fault (a JSON path such as `data.quantity`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The event's `id` when it could be read, so the producer can match the answer.
    pub id: Option<String>,
    pub field: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(id: Option<&str>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            id: id.map(str::to_owned),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why an event was not decoded for a caller whose namespaces are limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The event is wrong: answered on its own and kept as a dead letter.
    Invalid(Rejection),
    /// The event names a namespace the caller may not write to: an authorization failure, not
    /// a bad event.
    OutOfScope(Rejection),
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Refusal::Invalid(rejection)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// What validation needs to know besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext<'a> {
    pub catalog: &'a Catalog,
    pub now: UnixMicros,
    /// How far in the past an event time may lie.
    pub late_window: i64,
    /// How far in the future an event time may lie (clock skew of producers).
    pub future_skew: i64,
    /// The tenant the caller speaks for (the token's, or the Kafka message key).
    pub tenant: &'a str,
    /// The operator token may record events for any tenant named in the event.
    pub may_name_any_tenant: bool,
}

/// Tally's own wire form; unknown fields are refused so typos do not pass silently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeWire<'a> {
    id: Option<String>,
    tenant: Option<String>,
    namespace: Option<String>,
    metric_label: Option<String>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    timestamp: Option<String>,
    object_name: Option<String>,
    deployment: Option<String>,
    container: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

/// CloudEvents 1.0 structured JSON. Extension attributes other than `tenant` are ignored, as
/// the CloudEvents spec allows.
#[derive(Deserialize)]
struct CloudEventWire<'a> {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    tenant: Option<String>,
    #[serde(borrow)]
    data: Option<CloudEventData<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudEventData<'a> {
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    namespace: Option<String>,
    object_name: Option<String>,
    deployment: Option<String>,
    container: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

/// The fields common to both wire forms, before validation.
struct Unvalidated<'a> {
    id: Option<String>,
    tenant: Option<String>,
    namespace: Option<String>,
    namespace_field: &'static str,
    metric_label: Option<String>,
    metric_label_field: &'static str,
    quantity: Option<&'a RawValue>,
    quantity_field: &'static str,
    timestamp: Option<String>,
    timestamp_field: &'static str,
    object_name: Option<String>,
    deployment: Option<String>,
    container: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

/// Attributes only a CloudEvent has (Tally's own form shares `id` and `tenant`).
const CLOUDEVENT_ATTRIBUTES: &[&str] = &[
    "specversion",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
];

/// Decodes and validates one event, in any namespace but `system`.
pub fn decode(raw: &[u8], ctx: &DecodeContext<'_>) -> Result<UsageEvent, Rejection> {
    decode_within(raw, ctx, &|_| true).map_err(|refusal| match refusal {
        Refusal::Invalid(rejection) | Refusal::OutOfScope(rejection) => rejection,
    })
}

/// Decodes and validates one event of a caller that may write only to the namespaces
/// `may_write` allows. The namespace is judged before the catalog, so no event outside the
/// scope can become a dead letter that a later repair would record.
pub fn decode_within(
    raw: &[u8],
    ctx: &DecodeContext<'_>,
    may_write: &dyn Fn(&str) -> bool,
) -> Result<UsageEvent, Refusal> {
    if raw.len() > MAX_EVENT_BYTES {
        return Err(Rejection::new(
            None,
            "event",
            format!("is {} bytes; at most {MAX_EVENT_BYTES}", raw.len()),
        )
        .into());
    }
    let raw = raw.strip_prefix(UTF8_BOM).unwrap_or(raw);
    // serde would read a JSON array as a struct's fields in order; an event is an object.
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::new(None, "event", "must be a JSON object").into());
    }
    let fields = if looks_like_cloudevent(raw) {
        parse_cloudevent(raw)?
    } else {
        parse_native(raw)?
    };
    validate(fields, ctx, may_write)
}

fn looks_like_cloudevent(raw: &[u8]) -> bool {
    raw.windows(b"\"specversion\"".len())
        .any(|w| w == b"\"specversion\"")
}

fn parse_json<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, Rejection> {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let (field, message) = json_error_field(e, "event");
        Rejection::new(None, field, message)
    })?;
    // Whatever follows the event would otherwise be dropped unseen.
    deserializer.end().map_err(|e| {
        Rejection::new(
            None,
            "event",
            format!("{e}: one event per line or message, nothing after it"),
        )
    })?;
    Ok(value)
}

/// The field a JSON decoding error is about, and its message. Errors with no position inside
/// the document (syntax, or `.`/`?` paths) are about `whole`; serde reports an unknown field at
/// its parent's path, but its message names the field.
pub fn json_error_field(
    error: serde_path_to_error::Error<serde_json::Error>,
    whole: &str,
) -> (String, String) {
    let path = error.path().to_string();
    let message = error.into_inner().to_string();
    let at_root = matches!(path.as_str(), "" | "." | "?");
    // A missing field is reported at its parent: name the field itself.
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let field = if at_root {
            missing.to_owned()
        } else {
            format!("{path}.{missing}")
        };
        return (field, message);
    }
    if !at_root {
        return (path, message);
    }
    // An unknown field named "" (or a message without a name) is reported on the whole input.
    let field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .filter(|name| !name.is_empty())
        .unwrap_or(whole);
    (field.to_owned(), message)
}

fn parse_native(raw: &[u8]) -> Result<Unvalidated<'_>, Rejection> {
    let wire: NativeWire<'_> = parse_json(raw).map_err(|rejection| {
        // A CloudEvent that lost its `specversion` fails here on its first CloudEvents attribute.
        if CLOUDEVENT_ATTRIBUTES.contains(&rejection.field.as_str()) {
            Rejection::new(
                None,
                "specversion",
                format!(
                    "is required: the event has the CloudEvents attribute `{}`",
                    rejection.field
                ),
            )
        } else {
            rejection
        }
    })?;
    Ok(Unvalidated {
        id: wire.id,
        tenant: wire.tenant,
        namespace: wire.namespace,
        namespace_field: "namespace",
        metric_label: wire.metric_label,
        metric_label_field: "metric_label",
        quantity: wire.quantity,
        quantity_field: "quantity",
        timestamp: wire.timestamp,
        timestamp_field: "timestamp",
        object_name: wire.object_name,
        deployment: wire.deployment,
        container: wire.container,
        labels: wire.labels,
    })
}

fn parse_cloudevent(raw: &[u8]) -> Result<Unvalidated<'_>, Rejection> {
    let wire: CloudEventWire<'_> = parse_json(raw)?;
    let id = wire.id.as_deref();
    match wire.specversion.as_deref() {
        Some("1.0") => {}
        Some(other) => {
            return Err(Rejection::new(
                id,
                "specversion",
                format!("`{other}` is not supported; use 1.0"),
            ));
        }
        None => return Err(Rejection::new(id, "specversion", "is required")),
    }
    if wire.source.as_deref().is_none_or(str::is_empty) {
        return Err(Rejection::new(
            id,
            "source",
            "is required by CloudEvents 1.0",
        ));
    }
    if let Some(content_type) = wire.datacontenttype.as_deref()
        && !content_type.starts_with("application/json")
    {
        return Err(Rejection::new(
            id,
            "datacontenttype",
            format!("`{content_type}` is not application/json"),
        ));
    }
    let Some(data) = wire.data else {
        return Err(Rejection::new(
            id,
            "data",
            "is required and carries `quantity`",
        ));
    };
    if data.namespace.is_some() && wire.subject.is_some() && data.namespace != wire.subject {
        return Err(Rejection::new(
            id,
            "data.namespace",
            "differs from `subject`; give the namespace once",
        ));
    }
    let namespace_field = if wire.subject.is_some() {
        "subject"
    } else {
        "data.namespace"
    };
    Ok(Unvalidated {
        id: wire.id,
        tenant: wire.tenant,
        namespace: wire.subject.or(data.namespace),
        namespace_field,
        metric_label: wire.kind,
        metric_label_field: "type",
        quantity: data.quantity,
        quantity_field: "data.quantity",
        timestamp: wire.time,
        timestamp_field: "time",
        object_name: data.object_name,
        deployment: data.deployment,
        container: data.container,
        labels: data.labels,
    })
}

fn validate(
    fields: Unvalidated<'_>,
    ctx: &DecodeContext<'_>,
    may_write: &dyn Fn(&str) -> bool,
) -> Result<UsageEvent, Refusal> {
    let Some(id) = fields.id else {
        return Err(Rejection::new(None, "id", "is required").into());
    };
    let reject = |field: &str, reason: String| {
        Err(Refusal::Invalid(Rejection::new(Some(&id), field, reason)))
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return reject("id", format!("must be 1 to {MAX_ID_LEN} bytes"));
    }
    if has_control_chars(&id) {
        return reject("id", "must not contain control characters".into());
    }

    let tenant = match fields.tenant {
        None => ctx.tenant.to_owned(),
        Some(named) => {
            if !is_tenant_name(&named) {
                return reject(
                    "tenant",
                    format!(
                        "must be 1 to {MAX_TENANT_LEN} characters of a-z, A-Z, 0-9, `-`, `_`, `.`"
                    ),
                );
            }
            if named != ctx.tenant && !ctx.may_name_any_tenant {
                return reject(
                    "tenant",
                    format!("`{named}` is not the tenant of this credential"),
                );
            }
            named
        }
    };

    let Some(namespace) = fields.namespace else {
        return reject(fields.namespace_field, "is required".into());
    };
    if !is_dns1035_label(&namespace) {
        return reject(
            fields.namespace_field,
            format!(
                "`{}` is not a DNS-1035 label (a-z, 0-9, `-`, starting with a letter, at most 63)",
                truncate(&namespace)
            ),
        );
    }
    if namespace == SYSTEM_NAMESPACE {
        return reject(
            fields.namespace_field,
            "`system` stands for the whole tenant in queries and cannot hold events of its own; \
             name the namespace the usage belongs to"
                .into(),
        );
    }
    if !may_write(&namespace) {
        return Err(Refusal::OutOfScope(Rejection::new(
            Some(&id),
            fields.namespace_field,
            format!("this token is not scoped to namespace `{namespace}`"),
        )));
    }

    let Some(metric_label) = fields.metric_label else {
        return reject(fields.metric_label_field, "is required".into());
    };
    if ctx.catalog.meter(&metric_label).is_none() {
        return reject(
            fields.metric_label_field,
            format!(
                "`{}` is not a meter in the catalog",
                truncate(&metric_label)
            ),
        );
    }

    let Some(quantity_raw) = fields.quantity else {
        return reject(fields.quantity_field, "is required".into());
    };
    let quantity = parse_quantity_value(quantity_raw)
        .map_err(|reason| Rejection::new(Some(&id), fields.quantity_field, reason))?;

    let Some(timestamp_text) = fields.timestamp else {
        return reject(fields.timestamp_field, "is required".into());
    };
    let Some(timestamp) = time::parse_rfc3339(&timestamp_text) else {
        return reject(
            fields.timestamp_field,
            format!("`{}` is not an RFC 3339 time", truncate(&timestamp_text)),
        );
    };
    if timestamp < ctx.now.saturating_sub(ctx.late_window) {
        return reject(
            fields.timestamp_field,
            format!(
                "{} is older than the late-acceptance window ({})",
                time::format_rfc3339(timestamp),
                describe_duration(ctx.late_window)
            ),
        );
    }
    if timestamp > ctx.now.saturating_add(ctx.future_skew) {
        return reject(
            fields.timestamp_field,
            format!(
                "{} is more than {} in the future",
                time::format_rfc3339(timestamp),
                describe_duration(ctx.future_skew)
            ),
        );
    }

    let dimensions = [
        ("object_name", fields.object_name.unwrap_or_default()),
        ("deployment", fields.deployment.unwrap_or_default()),
        ("container", fields.container.unwrap_or_default()),
    ];
    for (field, value) in &dimensions {
        if value.len() > MAX_DIMENSION_LEN {
            return reject(field, format!("is longer than {MAX_DIMENSION_LEN} bytes"));
        }
        if has_control_chars(value) {
            return reject(field, "must not contain control characters".into());
        }
    }
    let [(_, object_name), (_, deployment), (_, container)] = dimensions;

    let labels = fields.labels.unwrap_or_default();
    if labels.len() > MAX_LABELS {
        return reject(
            "labels",
            format!("has {} entries; at most {MAX_LABELS}", labels.len()),
        );
    }
    for (key, value) in &labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN || has_control_chars(key) {
            return reject(
                "labels",
                format!(
                    "key `{}` must be 1 to {MAX_LABEL_KEY_LEN} printable bytes",
                    truncate(key)
                ),
            );
        }
        if value.len() > MAX_LABEL_VALUE_LEN || has_control_chars(value) {
            return reject(
                &format!("labels.{key}"),
                format!("must be at most {MAX_LABEL_VALUE_LEN} printable bytes"),
            );
        }
    }

    Ok(UsageEvent {
        tenant,
        id,
        namespace,
        metric_label,
        quantity,
        timestamp,
        object_name,
        deployment,
        container,
        labels,
    })
}

/// A quantity is a JSON number or a decimal string; either is parsed exactly from its text.
fn parse_quantity_value(raw: &RawValue) -> Result<Micros, String> {
    let text = raw.get();
    let parsed = if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).map_err(|e| e.to_string())?;
        units::parse_quantity(&inner)
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        units::parse_quantity(text)
    } else {
        return Err("must be a number or a decimal string".into());
    };
    parsed.map_err(|e| e.to_string())
}

fn describe_duration(micros: i64) -> String {
    let seconds = micros / time::MICROS_PER_SECOND;
    match seconds {
        s if s % 86_400 == 0 && s > 0 => format!("{} days", s / 86_400),
        s if s % 3_600 == 0 && s > 0 => format!("{} hours", s / 3_600),
        s if s % 60 == 0 && s > 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// Echoed values are cut short so an error message cannot be used to amplify input.
fn truncate(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn has_control_chars(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// DNS-1035 label: a lowercase letter, then letters, digits or `-`, not ending in `-`, ≤ 63.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

pub fn is_tenant_name(name: &str) -> bool {
    (1..=MAX_TENANT_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl UsageEvent {
    /// A hash of everything but the identity, to tell a true duplicate from a conflicting reuse
    /// of an id.
    pub fn fingerprint(&self) -> u64 {
        let mut buf = Vec::with_capacity(128);
        for text in [
            &self.namespace,
            &self.metric_label,
            &self.object_name,
            &self.deployment,
            &self.container,
        ] {
            buf.extend_from_slice(text.as_bytes());
            buf.push(0);
        }
        buf.extend_from_slice(&self.quantity.0.to_be_bytes());
        buf.extend_from_slice(&self.timestamp.to_be_bytes());
        for (key, value) in &self.labels {
            buf.extend_from_slice(key.as_bytes());
            buf.push(0);
            buf.extend_from_slice(value.as_bytes());
            buf.push(0);
        }
        xxhash_rust::xxh3::xxh3_64(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-28T12:00:00Z";

    fn ctx(catalog: &Catalog) -> DecodeContext<'_> {
        DecodeContext {
            catalog,
            now: time::parse_rfc3339(NOW).unwrap(),
            late_window: 35 * 86_400 * time::MICROS_PER_SECOND,
            future_skew: 300 * time::MICROS_PER_SECOND,
            tenant: "acme",
            may_name_any_tenant: false,
        }
    }

    fn decode_str(text: &str) -> Result<UsageEvent, Rejection> {
        let catalog = Catalog::builtin().unwrap();
        decode(text.as_bytes(), &ctx(&catalog))
    }

    #[test]
    fn decodes_native_event() {
        let event = decode_str(
            r#"{"id":"e1","namespace":"shop","metric_label":"http_lb_requests","quantity":"12.5",
               "timestamp":"2026-11-28T11:00:00Z","object_name":"lb-1","labels":{"region":"eu"}}"#,
        )
        .unwrap();
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.quantity, Micros(12_500_000));
        assert_eq!(event.object_name, "lb-1");
        assert_eq!(event.labels["region"], "eu");
    }

    #[test]
    fn decodes_cloudevent() {
        let event = decode_str(
            r#"{"specversion":"1.0","id":"c1","source":"/lb","type":"data_transfer_bytes","subject":"shop",
               "time":"2026-11-28T11:30:00+01:00","datacontenttype":"application/json","traceparent":"x",
               "data":{"quantity":2048,"object_name":"cdn"}}"#,
        )
        .unwrap();
        assert_eq!(event.metric_label, "data_transfer_bytes");
        assert_eq!(event.namespace, "shop");
        assert_eq!(event.quantity, Micros(2_048_000_000));
        assert_eq!(
            time::format_rfc3339(event.timestamp),
            "2026-11-28T10:30:00Z"
        );
    }

    #[test]
    fn rejections_name_the_field() {
        let base = r#""id":"e1","namespace":"shop","metric_label":"http_lb_requests","quantity":1,"timestamp":"2026-11-28T11:00:00Z""#;
        let cases = [
            (format!("{{{base},\"quantiy\":1}}"), "quantiy"),
            (
                format!("{{{}}}", base.replace("\"quantity\":1", "\"quantity\":-1")),
                "quantity",
            ),
            (
                format!("{{{}}}", base.replace("\"shop\"", "\"Shop_1\"")),
                "namespace",
            ),
            (
                format!("{{{}}}", base.replace("http_lb_requests", "nope")),
                "metric_label",
            ),
            (
                format!(
                    "{{{}}}",
                    base.replace("2026-11-28T11:00:00Z", "2026-01-01T00:00:00Z")
                ),
                "timestamp",
            ),
            (
                format!(
                    "{{{}}}",
                    base.replace("2026-11-28T11:00:00Z", "2026-11-28T12:10:00Z")
                ),
                "timestamp",
            ),
            (
                format!("{{{}}}", base.replace("2026-11-28T11:00:00Z", "yesterday")),
                "timestamp",
            ),
            (
                format!(
                    "{{{}}}",
                    base.replace("\"quantity\":1", "\"quantity\":\"1.0000001\"")
                ),
                "quantity",
            ),
            (
                format!(
                    "{{{}}}",
                    base.replace("\"quantity\":1", "\"quantity\":true")
                ),
                "quantity",
            ),
            (format!("{{{},\"tenant\":\"other\"}}", base), "tenant"),
            (format!("{{{},\"labels\":{{\"a\":5}}}}", base), "labels.a"),
            (format!("{{{}}}", base.replace("\"id\":\"e1\",", "")), "id"),
            ("[1,2]".to_owned(), "event"),
            ("{\"id\": ".to_owned(), "id"),
        ];
        for (text, field) in cases {
            let err = decode_str(&text).expect_err(&text);
            assert_eq!(err.field, field, "{text}: {err}");
        }
    }

    #[test]
    fn cloudevent_rejections_name_the_attribute() {
        let err = decode_str(r#"{"specversion":"0.3","id":"c"}"#).unwrap_err();
        assert_eq!(err.field, "specversion");
        let err = decode_str(r#"{"specversion":"1.0","id":"c","source":"s","type":"http_lb_requests","subject":"shop","time":"2026-11-28T11:00:00Z","data":{"quantity":"x"}}"#).unwrap_err();
        assert_eq!(err.field, "data.quantity");
        let err = decode_str(r#"{"specversion":"1.0","id":"c","source":"s","type":"http_lb_requests","time":"2026-11-28T11:00:00Z","data":{"quantity":1}}"#).unwrap_err();
        assert_eq!(err.field, "data.namespace");
    }

    #[test]
    fn operator_may_name_any_tenant() {
        let catalog = Catalog::builtin().unwrap();
        let mut context = ctx(&catalog);
        context.may_name_any_tenant = true;
        let event = decode(
            br#"{"id":"e","tenant":"globex","namespace":"ns","metric_label":"http_lb_requests","quantity":1,"timestamp":"2026-11-28T11:00:00Z"}"#,
            &context,
        )
        .unwrap();
        assert_eq!(event.tenant, "globex");
    }

    /// The JSON Schema and the decoder describe the same contract.
    #[test]
    fn schema_and_decoder_agree() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../schemas/usage_event.schema.json")).unwrap();
        let catalog = Catalog::builtin().unwrap();
        let context = ctx(&catalog);
        let full = serde_json::json!({
            "id": "e1", "tenant": "acme", "namespace": "shop", "metric_label": "http_lb_requests",
            "quantity": "1.5", "timestamp": "2026-11-28T11:00:00Z", "object_name": "lb",
            "deployment": "web", "container": "nginx", "labels": {"k": "v"}
        });
        let tally = &schema["$defs"]["tally"];
        let properties: Vec<&String> = tally["properties"].as_object().unwrap().keys().collect();
        let mut declared: Vec<&String> = properties.clone();
        declared.sort();
        let mut sent: Vec<&String> = full.as_object().unwrap().keys().collect();
        sent.sort();
        assert_eq!(declared, sent, "the sample carries every declared property");
        assert!(decode(full.to_string().as_bytes(), &context).is_ok());
        for required in tally["required"].as_array().unwrap() {
            let field = required.as_str().unwrap();
            let mut event = full.clone();
            event.as_object_mut().unwrap().remove(field);
            let err = decode(event.to_string().as_bytes(), &context).unwrap_err();
            assert_eq!(err.field, field);
        }
        for optional in properties.iter().filter(|p| {
            !tally["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == **p)
        }) {
            let mut event = full.clone();
            event.as_object_mut().unwrap().remove(optional.as_str());
            assert!(
                decode(event.to_string().as_bytes(), &context).is_ok(),
                "{optional} is optional"
            );
        }
        let mut extra = full.clone();
        extra["colour"] = serde_json::json!("red");
        assert_eq!(
            decode(extra.to_string().as_bytes(), &context)
                .unwrap_err()
                .field,
            "colour"
        );

        let cloudevent = &schema["$defs"]["cloudevent"];
        let full = serde_json::json!({
            "specversion": "1.0", "id": "c1", "source": "/lb", "type": "http_lb_requests", "subject": "shop",
            "time": "2026-11-28T11:00:00Z", "data": {"quantity": 2}
        });
        assert!(decode(full.to_string().as_bytes(), &context).is_ok());
        for required in cloudevent["required"].as_array().unwrap() {
            let field = required.as_str().unwrap();
            let mut event = full.clone();
            event.as_object_mut().unwrap().remove(field);
            let err = decode(event.to_string().as_bytes(), &context).unwrap_err();
            assert_eq!(err.field, field);
        }
    }

    const GOOD: &str = r#"{"id":"e1","namespace":"shop","metric_label":"http_lb_requests","quantity":1,"timestamp":"2026-11-28T11:00:00Z"}"#;

    /// Regression: a second event, or junk, after the first was dropped without a word.
    #[test]
    fn nothing_may_follow_the_event() {
        for trailing in [
            GOOD.to_owned() + GOOD,
            GOOD.to_owned() + " junk",
            GOOD.to_owned() + "\r" + GOOD,
            GOOD.to_owned() + ",",
            GOOD.replace("\"id\":\"e1\"", "\"specversion\":\"1.0\",\"id\":\"e1\"") + "]",
        ] {
            let err = decode_str(&trailing).expect_err(&trailing);
            assert_eq!(err.field, "event", "{trailing}: {err}");
            assert!(err.reason.contains("trailing characters"), "{err}");
        }
        assert!(decode_str(&format!(" \t{GOOD} \r\n")).is_ok());
    }

    /// Regression: a byte order mark made the event unreadable.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let catalog = Catalog::builtin().unwrap();
        let mut raw = UTF8_BOM.to_vec();
        raw.extend_from_slice(GOOD.as_bytes());
        assert_eq!(decode(&raw, &ctx(&catalog)).unwrap().id, "e1");
    }

    /// Regression: events were recorded in `system`, which no query can read on its own.
    #[test]
    fn no_event_is_recorded_in_system() {
        let catalog = Catalog::builtin().unwrap();
        let mut context = ctx(&catalog);
        context.may_name_any_tenant = true;
        let native = GOOD.replace("\"shop\"", "\"system\"");
        let cloudevent = r#"{"specversion":"1.0","id":"c1","source":"/lb","type":"http_lb_requests","subject":"system","time":"2026-11-28T11:00:00Z","data":{"quantity":1}}"#;
        for (raw, field) in [(native.as_str(), "namespace"), (cloudevent, "subject")] {
            let err = decode(raw.as_bytes(), &context).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.reason.contains("whole tenant"), "{err}");
            // Not even for a caller that may write to every namespace.
            assert!(matches!(
                decode_within(raw.as_bytes(), &context, &|_| true),
                Err(Refusal::Invalid(_))
            ));
        }
    }

    /// Regression: a token's namespaces did not bound where it could record events.
    #[test]
    fn a_namespace_outside_the_scope_is_refused_before_the_catalog_is_asked() {
        let catalog = Catalog::builtin().unwrap();
        let context = ctx(&catalog);
        let only_shop = |namespace: &str| namespace == "shop";
        assert!(decode_within(GOOD.as_bytes(), &context, &only_shop).is_ok());
        // Even with a meter the catalog lacks: a repair after a catalog change must not find it.
        let blog = GOOD
            .replace("\"shop\"", "\"blog\"")
            .replace("http_lb_requests", "not_yet_a_meter");
        match decode_within(blog.as_bytes(), &context, &only_shop) {
            Err(Refusal::OutOfScope(rejection)) => {
                assert_eq!(rejection.field, "namespace");
                assert_eq!(rejection.id.as_deref(), Some("e1"));
                assert!(rejection.reason.contains("`blog`"), "{rejection}");
            }
            other => panic!("{other:?}"),
        }
        // A bad namespace is a bad event, not a scope question.
        assert!(matches!(
            decode_within(
                GOOD.replace("shop", "Shop").as_bytes(),
                &context,
                &only_shop
            ),
            Err(Refusal::Invalid(_))
        ));
    }

    /// Regressions through the decoder: a quantity rounded instead of refused, and a leap
    /// second carried into the next day.
    #[test]
    fn quantities_are_exact_and_leap_seconds_stay_in_their_day() {
        let err = decode_str(&GOOD.replace(
            "\"quantity\":1",
            "\"quantity\":\"1.00000000000000000000000000000000001\"",
        ))
        .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("quantity", "has more than 6 decimal places")
        );
        let err = decode_str(&GOOD.replace(
            "\"quantity\":1",
            "\"quantity\":1.00000000000000000000000000000000001",
        ))
        .unwrap_err();
        assert_eq!(err.field, "quantity");
        let cloudevent = r#"{"specversion":"1.0","id":"c1","source":"/lb","type":"http_lb_requests","subject":"shop","time":"2026-11-28T11:00:00Z","data":{"quantity":"9223372036854.775808"}}"#;
        assert_eq!(decode_str(cloudevent).unwrap_err().field, "data.quantity");

        let catalog = Catalog::builtin().unwrap();
        let mut context = ctx(&catalog);
        context.now = time::parse_rfc3339("2026-12-01T00:01:00Z").unwrap();
        let event = decode(
            GOOD.replace("2026-11-28T11:00:00Z", "2026-11-30T23:59:60Z")
                .as_bytes(),
            &context,
        )
        .unwrap();
        assert_eq!(
            time::format_rfc3339(event.timestamp),
            "2026-11-30T23:59:59Z"
        );
    }
}
