//! The restore thread of an engine in a cluster: restores the partitions the group assigned
//! from the changelog, off the rebalance, and hands each back to the poll loop at the offset
//! then stored for it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

use super::KafkaSettings;
use super::fetch::stored_offsets;
use super::partition::{AssignmentChange, push_changes};
use crate::cluster::changelog::{self, ChangelogError, RestoreContext};
use crate::engine::IngestHandle;
use crate::log::store::Store;
use crate::stop::{SignalledThread, StopSignal};

/// Partitions to restore from the changelog, each with the number of its assignment.
pub(super) struct RestoreJob {
    pub(super) partitions: Vec<(i32, u64)>,
}

/// Starts the restore thread of an engine in a cluster (`None` for a single engine): it takes
/// jobs from `jobs` and pushes what it restored to `changes`.
pub(super) fn start_restorer(
    sink: &IngestHandle,
    settings: &KafkaSettings,
    jobs: mpsc::Receiver<RestoreJob>,
    changes: &Arc<Mutex<Vec<AssignmentChange>>>,
    stop: &StopSignal,
) -> Result<Option<SignalledThread>, KafkaError> {
    let (Some(_), Some(changelog)) = (&settings.cluster, &sink.changelog) else {
        return Ok(None);
    };
    let context = RestoreContext {
        brokers: settings.brokers.clone(),
        source_topic: settings.topic.clone(),
        store: sink.store.clone(),
        appender: sink.appender.clone(),
        origin: changelog.origin,
        metrics: sink.metrics.clone(),
        ownership: sink.ownership.clone(),
    };
    let changes = changes.clone();
    let thread = SignalledThread::spawn("tally-restore", stop.clone(), move |stop| {
        run_restores(&context, &jobs, &changes, &stop)
    })
    .map_err(|e| KafkaError::ClientCreation(format!("cannot start the restore thread: {e}")))?;
    Ok(Some(thread))
}

/// Each of `partitions` restored for its assignment, at the offsets the store holds now; at
/// 0 when they cannot be read (what is read again is caught as duplicates, nothing skipped).
pub(super) fn restored_at_stored(
    store: &Store,
    topic: &str,
    partitions: &[(i32, u64)],
) -> Vec<AssignmentChange> {
    let stored = stored_offsets(store, topic, partitions.iter().map(|&(p, _)| p))
        .unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read the stored offsets; reading the restored partitions from their start");
            Vec::new()
        })
        .into_iter()
        .collect::<BTreeMap<i32, i64>>();
    partitions
        .iter()
        .map(|&(partition, assignment)| AssignmentChange::Restored {
            partition,
            assignment,
            stored: stored.get(&partition).copied().unwrap_or(0),
        })
        .collect()
}

/// The restore thread: restores each job's partitions from the changelog, one job at a time
/// (a partition assigned again meanwhile is restored again after, from where it then stands),
/// and hands them back to the poll loop at their stored offsets.
fn run_restores(
    context: &RestoreContext,
    jobs: &mpsc::Receiver<RestoreJob>,
    changes: &Mutex<Vec<AssignmentChange>>,
    stop: &StopSignal,
) {
    while !stop.is_stopped() {
        let job = match jobs.recv_timeout(Duration::from_millis(200)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Partitions revoked before their turn are not restored.
        let partitions: Vec<(i32, u64)> = job
            .partitions
            .into_iter()
            .filter(|&(p, _)| context.ownership.is_from_changelog(p))
            .collect();
        let numbers: Vec<i32> = partitions.iter().map(|&(p, _)| p).collect();
        let started = Instant::now();
        match changelog::restore(context, &numbers, stop) {
            Ok(restored) => {
                let elapsed = started.elapsed();
                // Each flush of the restore told `Ownership` its progress already.
                for &partition in restored.keys() {
                    context
                        .metrics
                        .restore_milliseconds
                        .get_or_create(&crate::metrics::PartitionLabels { partition })
                        .set(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
                }
                let entries: u64 = restored.values().map(|r| r.entries).sum();
                let skipped: u64 = restored.values().map(|r| r.skipped).sum();
                if !numbers.is_empty() {
                    tracing::info!(
                        partitions = ?numbers,
                        entries,
                        skipped,
                        ?elapsed,
                        "restored from the changelog"
                    );
                }
            }
            Err(ChangelogError::Stopping) => return,
            Err(error) => {
                // Its source offsets are then where this engine last stood (the topic's
                // start when it never owned them): read again, never skipped.
                tracing::error!(%error, partitions = ?numbers, "cannot restore from the changelog; reading the source topic from the stored offsets");
            }
        }
        push_changes(
            changes,
            restored_at_stored(&context.store, &context.source_topic, &partitions),
        );
    }
}
