//! Partition ownership in a cluster of engines: which partitions of the source topic Kafka's
//! consumer group assigned to this engine, which of them are restored, and so whether a
//! tenant's requests may be answered here.
//!
//! The topic is keyed by tenant, so a tenant's events, and everything folded from them, live
//! in one partition ([`partition_of_tenant`]). An engine answers for a tenant only while it
//! owns that partition and has caught up with it: a partition just assigned is *restoring*,
//! first from the changelog (what other engines recorded for it), then from the source topic
//! until the consumer has read to its end and the projector has folded what was read. Before
//! that the answer is 503 with `Retry-After`, and for a partition owned elsewhere 421, never
//! a number that is short. Without `--cluster` an engine owns everything.

pub mod changelog;
pub mod control;

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::kafka::partition_of_tenant;

/// How far a partition owned here is. Moves only forward, [`Ownership`] told by the consumer
/// (whose own phases of a partition, in `ingest::kafka::partition`, match these): assigned
/// ([`Ownership::assigned`]) → restored from the changelog and sought to its stored offset
/// ([`Ownership::changelog_restored`]) → source read to its end ([`Ownership::caught_up`]);
/// revoked from any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Assigned; being restored from the changelog, its source messages not read yet.
    FromChangelog,
    /// Restored from the changelog; the consumer reads the source but has not yet read it to
    /// its end.
    FromSource,
    /// Read to the end when the log head was at this position; ready once the projections
    /// hold every entry below it.
    CaughtUp { log_head: u64 },
}

impl PartitionState {
    /// Whether its tenants are answered, the projections holding every entry below
    /// `projected`.
    fn ready(self, projected: u64) -> bool {
        matches!(self, PartitionState::CaughtUp { log_head } if projected >= log_head)
    }

    /// What `/readyz` calls it.
    fn phase(self, projected: u64) -> RestorePhase {
        match self {
            PartitionState::FromChangelog => RestorePhase::Changelog,
            PartitionState::FromSource => RestorePhase::Source,
            PartitionState::CaughtUp { .. } if self.ready(projected) => RestorePhase::Ready,
            PartitionState::CaughtUp { .. } => RestorePhase::Folding,
        }
    }
}

/// Where a partition owned here stands, as `/readyz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestorePhase {
    /// Taking what other engines recorded for it from the changelog.
    Changelog,
    /// Reading the source topic from where the changelog left it to the end.
    Source,
    /// Read to the end; the projections are folding what was read.
    Folding,
    /// Its tenants are answered here.
    Ready,
}

/// Why a tenant's request is not answered here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotHere {
    #[error("the partition count of the source topic is not known yet")]
    NoTopic,
    #[error("partition {partition} (tenant `{tenant}`) is owned by another engine of the cluster")]
    OwnedElsewhere { tenant: String, partition: i32 },
    #[error("partition {partition} (tenant `{tenant}`) is being restored on this engine")]
    Restoring { tenant: String, partition: i32 },
}

/// One partition owned here, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnedPartition {
    pub partition: i32,
    pub ready: bool,
    pub phase: RestorePhase,
    /// Entries its last restore took from the changelog (so far, while it restores).
    pub restored_entries: u64,
    /// Messages of the source topic not yet read, when last measured.
    pub lag: Option<i64>,
}

#[derive(Default)]
struct Owned {
    /// Whether the group has assigned this engine anything yet (an empty share included).
    assignment_known: bool,
    partitions: Option<i32>,
    owned: BTreeMap<i32, PartitionState>,
    /// Per partition owned, what its last restore took from the changelog.
    restored: BTreeMap<i32, u64>,
    /// Per partition owned, its lag when last measured.
    lag: BTreeMap<i32, i64>,
}

impl Owned {
    fn partition_of(&self, tenant: &str) -> Option<i32> {
        self.partitions
            .and_then(|count| partition_of_tenant(tenant, count))
    }
}

/// This engine's share of the topic: everything (a single engine), or what the consumer
/// group assigned (`--cluster`).
pub struct Ownership {
    /// `None`: not in a cluster, every tenant is answered here.
    cluster: Option<Mutex<Owned>>,
}

impl Ownership {
    /// A single engine: it owns every tenant.
    pub fn everything() -> Ownership {
        Ownership { cluster: None }
    }

    /// An engine of a cluster, owning nothing until the group assigns it partitions.
    pub fn cluster() -> Ownership {
        Ownership {
            cluster: Some(Mutex::new(Owned::default())),
        }
    }

    pub fn in_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    fn with<T>(&self, default: T, f: impl FnOnce(&mut Owned) -> T) -> T {
        match &self.cluster {
            // A poisoned lock only means a panic elsewhere mid-update; the map is still whole.
            Some(owned) => f(&mut owned.lock().unwrap_or_else(|e| e.into_inner())),
            None => default,
        }
    }

    /// The source topic has `partitions` partitions (looked up again as it grows).
    pub fn set_partition_count(&self, partitions: i32) {
        self.with((), |owned| owned.partitions = Some(partitions));
    }

    /// The group assigned these partitions: each restores, from the changelog and then the
    /// source topic, before its tenants are answered.
    pub fn assigned(&self, partitions: &[i32]) {
        self.with((), |owned| {
            owned.assignment_known = true;
            for &partition in partitions {
                owned.owned.insert(partition, PartitionState::FromChangelog);
                owned.restored.remove(&partition);
            }
        });
    }

    /// `partition` is restored from the changelog: the consumer reads its source topic now.
    pub fn changelog_restored(&self, partition: i32) {
        self.with((), |owned| {
            if let Some(state @ PartitionState::FromChangelog) = owned.owned.get_mut(&partition) {
                *state = PartitionState::FromSource;
            }
        });
    }

    /// The group took these partitions away.
    pub fn revoked(&self, partitions: &[i32]) {
        self.with((), |owned| {
            for partition in partitions {
                owned.owned.remove(partition);
                owned.restored.remove(partition);
                owned.lag.remove(partition);
            }
        });
    }

    /// The restore of `partition` took `entries` from the changelog.
    pub fn restored(&self, partition: i32, entries: u64) {
        self.with((), |owned| {
            owned.restored.insert(partition, entries);
        });
    }

    /// Whether this engine knows what it owns: the partition count, and the group's first
    /// assignment (always so outside a cluster).
    pub fn known(&self) -> bool {
        self.with(true, |owned| {
            owned.assignment_known && owned.partitions.is_some()
        })
    }

    /// The consumer measured `partition`'s lag.
    pub fn lag(&self, partition: i32, lag: i64) {
        self.with((), |owned| {
            if owned.owned.contains_key(&partition) {
                owned.lag.insert(partition, lag);
            }
        });
    }

    /// The partition count of the source topic, once known (`None` outside a cluster).
    pub fn partition_count(&self) -> Option<i32> {
        self.with(None, |owned| owned.partitions)
    }

    /// The consumer has read `partition` to its end, everything it read being below
    /// `log_head` in the log.
    pub fn caught_up(&self, partition: i32, log_head: u64) {
        self.with((), |owned| {
            if let Some(state @ PartitionState::FromSource) = owned.owned.get_mut(&partition) {
                *state = PartitionState::CaughtUp { log_head };
            }
        });
    }

    /// In a cluster, the partition that holds `tenant` (`None` outside a cluster, or before the
    /// partition count is known).
    pub fn partition_of(&self, tenant: &str) -> Option<i32> {
        self.with(None, |owned| owned.partition_of(tenant))
    }

    /// Whether `partition` is owned here (restored or not); always so outside a cluster.
    pub fn owns(&self, partition: i32) -> bool {
        self.with(true, |owned| owned.owned.contains_key(&partition))
    }

    /// Whether `partition` is owned here and still being restored from the changelog.
    pub fn is_from_changelog(&self, partition: i32) -> bool {
        self.with(false, |owned| {
            owned.owned.get(&partition) == Some(&PartitionState::FromChangelog)
        })
    }

    /// Whether `partition` is owned here, restored from the changelog, and its source topic
    /// not yet read to the end.
    pub fn is_reading_source(&self, partition: i32) -> bool {
        self.with(false, |owned| {
            owned.owned.get(&partition) == Some(&PartitionState::FromSource)
        })
    }

    /// Whether `tenant` is answered here, the projections holding every entry below
    /// `projected`.
    pub fn check(&self, tenant: &str, projected: u64) -> Result<(), NotHere> {
        self.with(Ok(()), |owned| {
            let partition = owned.partition_of(tenant).ok_or(NotHere::NoTopic)?;
            match owned.owned.get(&partition) {
                None => Err(NotHere::OwnedElsewhere {
                    tenant: tenant.to_owned(),
                    partition,
                }),
                Some(state) if state.ready(projected) => Ok(()),
                Some(_) => Err(NotHere::Restoring {
                    tenant: tenant.to_owned(),
                    partition,
                }),
            }
        })
    }

    /// The partitions owned here, in order (empty when not in a cluster).
    pub fn owned(&self, projected: u64) -> Vec<OwnedPartition> {
        self.with(Vec::new(), |owned| {
            owned
                .owned
                .iter()
                .map(|(&partition, state)| OwnedPartition {
                    partition,
                    ready: state.ready(projected),
                    phase: state.phase(projected),
                    restored_entries: owned.restored.get(&partition).copied().unwrap_or(0),
                    lag: owned.lag.get(&partition).copied(),
                })
                .collect()
        })
    }
}

/// Creates the cluster's changelog topic (as many partitions as the source topic) and its
/// control topic (one partition) where they do not exist yet. A source topic that does not
/// exist yet is left for later: nothing is created and the reason is returned.
pub fn ensure_topics(brokers: &str, source_topic: &str) -> Result<(), String> {
    let brokers = brokers.to_owned();
    let source_topic = source_topic.to_owned();
    // The admin client is asynchronous; it runs on a runtime of its own, off the caller's.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(create_topics(&brokers, &source_topic))
    })
    .join()
    .map_err(|_| "the topic check panicked".to_owned())?
}

async fn create_topics(brokers: &str, source_topic: &str) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(source_topic), std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == source_topic)
        .map_or(0, |t| t.partitions().len());
    let partitions = i32::try_from(partitions).unwrap_or(0);
    if partitions == 0 {
        return Err(format!(
            "the source topic `{source_topic}` does not exist yet"
        ));
    }
    let changelog = changelog::changelog_topic(source_topic);
    let control = control::control_topic(source_topic);
    let wanted = [
        NewTopic::new(&changelog, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&control, 1, TopicReplication::Fixed(1)),
    ];
    let results = admin
        .create_topics(&wanted, &AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create `{topic}`: {code}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_engine_answers_every_tenant() {
        let ownership = Ownership::everything();
        assert_eq!(ownership.check("anyone", 0), Ok(()));
        assert!(ownership.owned(0).is_empty());
    }

    #[test]
    fn a_tenant_is_answered_only_once_its_partition_is_owned_read_and_folded() {
        let ownership = Ownership::cluster();
        // "default" is partition 3 of 4, "acme" partition 2 (CRC-32 of the key).
        assert_eq!(ownership.check("default", 0), Err(NotHere::NoTopic));
        ownership.set_partition_count(4);
        let elsewhere = ownership.check("default", 0).unwrap_err();
        assert_eq!(
            elsewhere,
            NotHere::OwnedElsewhere {
                tenant: "default".into(),
                partition: 3
            }
        );
        ownership.assigned(&[3]);
        assert!(ownership.is_from_changelog(3));
        assert!(!ownership.is_reading_source(3));
        assert!(matches!(
            ownership.check("default", 0),
            Err(NotHere::Restoring { partition: 3, .. })
        ));
        // Read to the end of the source while the changelog is still being restored (nothing
        // of the partition is taken yet): not caught up.
        ownership.caught_up(3, 10);
        assert_eq!(ownership.owned(10)[0].phase, RestorePhase::Changelog);
        ownership.changelog_restored(3);
        assert!(ownership.is_reading_source(3));
        assert_eq!(ownership.owned(10)[0].phase, RestorePhase::Source);
        assert!(ownership.check("default", 10).is_err());
        ownership.caught_up(3, 50);
        assert_eq!(ownership.owned(49)[0].phase, RestorePhase::Folding);
        // Read to the end, but the projections lag behind what was read.
        assert!(ownership.check("default", 49).is_err());
        assert_eq!(ownership.check("default", 50), Ok(()));
        assert!(
            ownership.check("acme", 50).is_err(),
            "partition 2 is not owned"
        );
        assert_eq!(
            ownership.owned(50),
            [OwnedPartition {
                partition: 3,
                ready: true,
                phase: RestorePhase::Ready,
                restored_entries: 0,
                lag: None
            }]
        );
        // Caught up once is enough: a later burst of lag does not make it restore again.
        ownership.caught_up(3, 90);
        assert_eq!(ownership.check("default", 50), Ok(()));
        ownership.revoked(&[3]);
        assert!(matches!(
            ownership.check("default", 50),
            Err(NotHere::OwnedElsewhere { partition: 3, .. })
        ));
        // Assigned back: restored again before it answers.
        ownership.assigned(&[3]);
        assert!(ownership.check("default", 1_000).is_err());
        assert_eq!(ownership.owned(1_000)[0].phase, RestorePhase::Changelog);
    }
}
