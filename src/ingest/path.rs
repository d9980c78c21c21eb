//! The one ingest path every event source takes (HTTP, the Kafka consumer, a Kafka replay):
//! an event's bytes decoded, checked against the sender's scope and this engine's ownership,
//! and made a candidate for the log writer (an event, or a dead letter); then the writer's
//! outcomes tallied and counted in the metrics.

use crate::auth::DEFAULT_TENANT;
use crate::cluster::Ownership;
use crate::engine::IngestHandle;
use crate::event::{self, DecodeContext, EventSource, Refusal, Rejection, UsageEvent};
use crate::log::DeadLetter;
use crate::log::append::{Candidate, Outcome};
use crate::metrics::Metrics;
use crate::time::UnixMicros;

/// Where an event must have arrived to be recorded here: in a cluster a tenant's events are
/// folded by the owner of its partition alone, so an event recorded anywhere else would be
/// counted where nobody reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Placement {
    /// Sent to this engine (HTTP): its tenant must be answered here, the projections holding
    /// every entry below `projected`.
    AnsweredHere { projected: u64 },
    /// Read from this partition of the source topic: it must be its tenant's.
    InPartition(i32),
}

impl Placement {
    /// Why `event` is not recorded where it arrived (`None` outside a cluster).
    fn misplaced(self, ownership: &Ownership, event: &UsageEvent) -> Option<Rejection> {
        match self {
            Placement::AnsweredHere { projected } => {
                let reason = ownership.check(&event.tenant, projected).err()?;
                Some(Rejection::new(
                    Some(&event.id),
                    "tenant",
                    format!("{reason}; send it to that engine or to the Kafka topic"),
                ))
            }
            Placement::InPartition(partition) => match ownership.partition_of(&event.tenant) {
                Some(expected) if expected != partition => Some(Rejection::new(
                    Some(&event.id),
                    "key",
                    format!(
                        "in a cluster a message must be keyed by its tenant: tenant `{}` belongs in partition {expected}, not {partition}",
                        event.tenant
                    ),
                )),
                _ => None,
            },
        }
    }
}

/// Judges one raw event arriving from `source`: decoded against `context`, its namespace
/// checked against `may_write` and its tenant's ownership against `placement`. A bad or
/// misplaced event becomes a dead letter (of the context's tenant when it cannot be decoded).
/// `Err` is an event outside the sender's namespaces, with its source handed back: the caller
/// refuses it (see [`judge_keeping`] for a source that cannot be answered).
pub(crate) fn judge(
    ownership: &Ownership,
    context: &DecodeContext<'_>,
    may_write: &dyn Fn(&str) -> bool,
    placement: Placement,
    source: EventSource,
    raw: &[u8],
) -> Result<Candidate, (Rejection, EventSource)> {
    let now = context.now;
    match event::decode_within(raw, context, may_write) {
        Ok(event) => Ok(match placement.misplaced(ownership, &event) {
            None => Candidate::Event { event, source },
            Some(rejection) => {
                Candidate::Rejected(DeadLetter::new(now, source, &event.tenant, rejection, raw))
            }
        }),
        Err(Refusal::Invalid(rejection)) => Ok(Candidate::Rejected(DeadLetter::new(
            now,
            source,
            context.tenant,
            rejection,
            raw,
        ))),
        Err(Refusal::OutOfScope(rejection)) => Err((rejection, source)),
    }
}

/// [`judge`] for a source no one can be answered through (Kafka): an event in a namespace no
/// one may write (`system`) is kept as a dead letter too.
pub(crate) fn judge_keeping(
    ownership: &Ownership,
    context: &DecodeContext<'_>,
    placement: Placement,
    source: EventSource,
    raw: &[u8],
) -> Candidate {
    judge(ownership, context, &|_| true, placement, source, raw).unwrap_or_else(
        |(rejection, source)| {
            Candidate::Rejected(DeadLetter::new(
                context.now,
                source,
                context.tenant,
                rejection,
                raw,
            ))
        },
    )
}

/// A Kafka message as the ingest path reads it: its partition, key and payload.
pub(crate) struct KafkaMessage<'a> {
    pub(crate) partition: i32,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) payload: &'a [u8],
}

/// Judges one Kafka message. The message key is the tenant; a message without a key is the
/// event's own tenant or the default one. An event naming another tenant than its key is
/// refused.
pub(crate) fn decode_message(
    sink: &IngestHandle,
    now: UnixMicros,
    source: EventSource,
    message: KafkaMessage<'_>,
) -> Candidate {
    let key_tenant = match message.key.map(std::str::from_utf8) {
        None => None,
        Some(Ok(tenant)) if event::is_tenant_name(tenant) => Some(tenant),
        Some(_) => {
            let rejection = Rejection::new(
                None,
                "key",
                "the message key must be a tenant name (a-z, A-Z, 0-9, `-`, `_`, `.`, at most 64)",
            );
            return Candidate::Rejected(DeadLetter::new(
                now,
                source,
                DEFAULT_TENANT,
                rejection,
                message.payload,
            ));
        }
    };
    let tenant = key_tenant.unwrap_or(DEFAULT_TENANT);
    let context = sink.decode_context(now, tenant, key_tenant.is_none());
    judge_keeping(
        &sink.ownership,
        &context,
        Placement::InPartition(message.partition),
        source,
        message.payload,
    )
}

/// How many of a write's events ended each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutcomeTally {
    pub(crate) recorded: u64,
    pub(crate) duplicate: u64,
    pub(crate) conflict: u64,
    pub(crate) rejected: u64,
}

impl OutcomeTally {
    pub(crate) fn of(outcomes: &[Outcome]) -> OutcomeTally {
        let mut tally = OutcomeTally::default();
        for outcome in outcomes {
            let slot = match outcome {
                Outcome::Recorded { .. } => &mut tally.recorded,
                Outcome::Duplicate { .. } => &mut tally.duplicate,
                Outcome::Conflict(_) => &mut tally.conflict,
                Outcome::Rejected(_) => &mut tally.rejected,
            };
            *slot += 1;
        }
        tally
    }

    /// Counts the tally in the events metric, under `source` (`http`, `kafka`).
    pub(crate) fn count(&self, metrics: &Metrics, source: &'static str) {
        metrics.count_events("recorded", source, self.recorded);
        metrics.count_events("duplicate", source, self.duplicate);
        metrics.count_events("conflict", source, self.conflict);
        metrics.count_events("rejected", source, self.rejected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_each_outcome_once() {
        let rejection = || Rejection::new(None, "f", "r");
        let outcomes = [
            Outcome::Recorded { seq: 0 },
            Outcome::Recorded { seq: 1 },
            Outcome::Conflict(rejection()),
            Outcome::Rejected(rejection()),
            Outcome::Rejected(rejection()),
            Outcome::Rejected(rejection()),
        ];
        assert_eq!(
            OutcomeTally::of(&outcomes),
            OutcomeTally {
                recorded: 2,
                duplicate: 0,
                conflict: 1,
                rejected: 3
            }
        );
    }
}
