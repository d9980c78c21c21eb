//! Log entries for the fold tests, of this crate and of the shell's projector: a usage event
//! made of small numbers, so property tests can generate histories.

use std::collections::BTreeMap;

use crate::event::{EventSource, UsageEvent};
use crate::log::LogEntry;
use crate::time;
use crate::units::Micros;

/// The meters the generated events use (each of the default catalog).
pub const METRICS: [&str; 4] = [
    "http_lb_requests",
    "object_storage_peak_bytes",
    "http_loadbalancers",
    "waf_security_events",
];

/// Usage event `e{i}` of tenant `t{tenant}` in namespace `ns{ns}`: `quantity` micro-units of
/// meter `METRICS[metric]`, `hour_offset` quarter hours after 2026-11-30T20:00Z.
pub fn entry(
    i: usize,
    tenant: u8,
    ns: u8,
    metric: usize,
    quantity: i64,
    hour_offset: i64,
    object: u8,
) -> LogEntry {
    // Late November 2026, spanning a month boundary with the hour offsets below.
    let base = time::parse_rfc3339("2026-11-30T20:00:00Z").unwrap_or_default();
    LogEntry::UsageRecorded {
        event: UsageEvent {
            tenant: format!("t{tenant}"),
            id: format!("e{i}"),
            namespace: format!("ns{ns}"),
            metric_label: METRICS.get(metric).copied().unwrap_or_default().to_owned(),
            quantity: Micros(quantity),
            timestamp: base + hour_offset * time::MICROS_PER_HOUR / 4,
            object_name: format!("o{object}"),
            deployment: String::new(),
            container: String::new(),
            labels: BTreeMap::new(),
        },
        source: EventSource::Http { received_at: 0 },
        recorded_at: 0,
    }
}
