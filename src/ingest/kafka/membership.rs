//! Which partitions this consumer reads: every partition of the topic at its stored offset (a
//! single engine), or the consumer group's share (`--cluster`): the rebalance callback, and
//! the assignment changes it and the restore thread hand to the poll loop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::fetch::{partitions_of, rewound, stored_offsets};
use super::partition::{AssignmentChange, Partitions, push_changes};
use super::restore::{RestoreJob, restored_at_stored};
use super::{KafkaSettings, TallyContext};
use crate::cluster::Ownership;
use crate::cluster::changelog::Published;
use crate::engine::IngestHandle;
use crate::log::append::LogHead;
use crate::log::store::Store;

/// How long a revoked partition waits for the changelog to hold what was recorded for it.
const REVOKE_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// The consumer's side of a cluster: applies the group's assignments, has each assigned
/// partition restored from the changelog (none of its messages taken meanwhile), and tells
/// [`Ownership`] and the poll loop about them.
pub(super) struct GroupMember {
    pub(super) store: Store,
    pub(super) topic: String,
    pub(super) ownership: Arc<Ownership>,
    /// Where assigned partitions go to be restored from the changelog: off the rebalance,
    /// which must return well within the group's poll interval.
    pub(super) restores: mpsc::Sender<RestoreJob>,
    /// How far the changelog holds this engine's entries: a revoked partition is let go once
    /// everything recorded for it is published.
    pub(super) published: Published,
    pub(super) log_head: Arc<LogHead>,
    /// Numbers each assignment of a partition, so a restore finished for an earlier one is
    /// told from the current one's.
    pub(super) assignments: AtomicU64,
    /// Changes since the poll loop last looked (rebalances run inside its `poll`; restores
    /// finish on their own thread).
    pub(super) changes: Arc<Mutex<Vec<AssignmentChange>>>,
}

impl GroupMember {
    fn push(&self, changes: impl IntoIterator<Item = AssignmentChange>) {
        push_changes(&self.changes, changes);
    }

    fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Applies the changes since the last poll to `partitions` (a restore finished for an earlier
/// assignment of a partition is stale, and dropped there).
pub(super) fn apply_changes(member: Option<&GroupMember>, partitions: &mut Partitions) {
    for change in member.map(GroupMember::take_changes).unwrap_or_default() {
        match change {
            AssignmentChange::Assigned {
                partition,
                assignment,
            } => {
                partitions.assigned(partition, assignment);
            }
            AssignmentChange::Restored {
                partition,
                assignment,
                stored,
            } => {
                partitions.restored(partition, assignment, stored);
            }
            AssignmentChange::Revoked { partition } => {
                partitions.revoked(partition);
            }
        }
    }
}

impl ConsumerContext for TallyContext {
    /// Only called in a cluster (a single engine assigns itself): takes what the group
    /// assigns at the offsets stored in RocksDB, not at Kafka's committed ones.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        let Some(member) = &self.member else {
            return;
        };
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.take_assigned(consumer, member, list, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                give_up_revoked(consumer, member, list, cooperative)
            }
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "rebalance failed");
            }
        }
    }
}

impl TallyContext {
    /// Takes the partitions the group assigned, each at its end until it is restored, and
    /// sends them to the restore thread.
    fn take_assigned(
        &self,
        consumer: &BaseConsumer<Self>,
        member: &GroupMember,
        list: &mut TopicPartitionList,
        cooperative: bool,
    ) {
        let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
        member.ownership.assigned(&partitions);
        let numbered: Vec<(i32, u64)> = partitions
            .iter()
            .map(|&p| (p, member.assignments.fetch_add(1, Ordering::Relaxed)))
            .collect();
        for &partition in &partitions {
            self.watermarks.forget(&member.topic, partition);
        }
        // Nothing of them is taken until they are restored from the changelog.
        member.push(
            numbered
                .iter()
                .map(|&(partition, assignment)| AssignmentChange::Assigned {
                    partition,
                    assignment,
                }),
        );
        // They start at their end and are not paused: librdkafka has known position bugs
        // around pause and resume (its issues 2190 and 3471), and a cluster test that paused
        // them lost messages once. What arrives before they are restored is dropped; they are
        // sought to their stored offsets once they are.
        for &partition in &partitions {
            if let Err(error) = list.set_partition_offset(&member.topic, partition, Offset::End) {
                tracing::warn!(%error, partition, "cannot start a partition at its end while it is restored");
            }
        }
        let result = if cooperative {
            consumer.incremental_assign(list)
        } else {
            consumer.assign(list)
        };
        match result {
            Ok(()) => {
                tracing::info!(topic = %member.topic, ?partitions, "assigned by the group")
            }
            Err(error) => {
                tracing::error!(%error, ?partitions, "cannot take the assigned partitions")
            }
        }
        if numbered.is_empty() {
            // A rebalance that assigns nothing new (most of them, cooperative).
        } else if let Err(mpsc::SendError(job)) = member.restores.send(RestoreJob {
            partitions: numbered,
        }) {
            tracing::error!(
                ?partitions,
                "the restore thread is gone; reading the source topic from the stored offsets"
            );
            member.push(restored_at_stored(
                &member.store,
                &member.topic,
                &job.partitions,
            ));
        }
    }
}

/// Lets the revoked partitions go once the changelog holds what was recorded for them (or the
/// wait is over).
fn give_up_revoked(
    consumer: &BaseConsumer<TallyContext>,
    member: &GroupMember,
    list: &TopicPartitionList,
    cooperative: bool,
) {
    let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
    // The next owner restores from the changelog: it must hold what was recorded.
    if !member
        .published
        .wait_blocking(member.log_head.get(), REVOKE_FLUSH_WAIT)
    {
        tracing::warn!(
            ?partitions,
            "revoked before the changelog held everything recorded for them; the next owner reads the rest from the source topic"
        );
    }
    member.ownership.revoked(&partitions);
    member.push(
        partitions
            .iter()
            .map(|&partition| AssignmentChange::Revoked { partition }),
    );
    let result = if cooperative {
        consumer.incremental_unassign(list)
    } else {
        consumer.unassign()
    };
    match result {
        Ok(()) => {
            tracing::info!(topic = %member.topic, ?partitions, "revoked by the group")
        }
        Err(error) => {
            tracing::error!(%error, ?partitions, "cannot give up the revoked partitions")
        }
    }
}

/// Looks the topic's partitions up (their count says which partition holds which tenant) and,
/// on a single engine, assigns itself every one when they changed: between batches, so the
/// stored offsets are exactly where reading stands. In a cluster the group assigns.
pub(super) fn refresh_partitions(
    consumer: &BaseConsumer<TallyContext>,
    sink: &IngestHandle,
    settings: &KafkaSettings,
    partitions: &mut Partitions,
) {
    match partitions_of(consumer, &settings.topic, Duration::from_secs(5)) {
        Ok(found) if found.is_empty() => {
            tracing::warn!(topic = %settings.topic, "topic has no partitions (does it exist?); retrying");
        }
        Ok(found) => {
            if let Ok(count) = i32::try_from(found.len()) {
                sink.ownership.set_partition_count(count);
            }
            if consumer.context().member.is_none() && found != partitions.numbers() {
                match assign_all(consumer, &sink.store, &settings.topic, &found) {
                    Ok(stored) => partitions.assign_all(&stored),
                    Err(error) => {
                        tracing::warn!(%error, "cannot assign partitions; retrying")
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read topic metadata; retrying"),
    }
}

/// Assigns every partition of the topic a little before the offset stored in RocksDB (its
/// start when none). Returns the stored offsets: messages below them are already recorded. An
/// error leaves the previous assignment in place.
fn assign_all(
    consumer: &BaseConsumer<TallyContext>,
    store: &Store,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, String> {
    let stored =
        stored_offsets(store, topic, partitions.iter().copied()).map_err(|e| e.to_string())?;
    let mut assignment = TopicPartitionList::new();
    let mut resume = BTreeMap::new();
    for (partition, stored_offset) in stored {
        let start = rewound(stored_offset);
        assignment
            .add_partition_offset(topic, partition, start)
            .map_err(|e| e.to_string())?;
        resume.insert(partition, stored_offset);
        tracing::info!(%topic, partition, stored_offset, ?start, "assigned");
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    Ok(resume)
}
