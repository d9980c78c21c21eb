//! Lag and stalls: each assigned partition's lag, measured on a thread of its own, and the
//! partitions that stand still while behind ([`StallDetector`]); tells [`Ownership`] when a
//! partition restored from the changelog has read its source to the end.
//!
//! [`Ownership`]: crate::cluster::Ownership

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use super::{KafkaSettings, TallyContext};
use crate::engine::IngestHandle;
use crate::stop::{SignalledThread, StopSignal};

/// How often lag and stalls are measured.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Starts the lag thread. Lag is measured on a thread of its own: a watermark request can wait
/// behind the broker's long-polled fetches for up to a second, which the poll loop must not.
pub(super) fn start_lag_thread(
    sink: &IngestHandle,
    consumer: &Arc<BaseConsumer<TallyContext>>,
    settings: &KafkaSettings,
    stalls: &Arc<Mutex<StallDetector>>,
    stop: &StopSignal,
) -> Result<SignalledThread, KafkaError> {
    let (sink, consumer, settings, stalls) = (
        sink.clone(),
        consumer.clone(),
        settings.clone(),
        stalls.clone(),
    );
    SignalledThread::spawn("tally-kafka-lag", stop.clone(), move |stop| {
        while !stop.is_stopped() {
            record_lag(&consumer, &sink, &settings, &stalls);
            let next = Instant::now() + LAG_CHECK_INTERVAL;
            while !stop.is_stopped() && Instant::now() < next {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .map_err(|e| KafkaError::ClientCreation(format!("cannot start the lag thread: {e}")))
}

/// Measures each assigned partition's lag, and reports the partitions that stand still while
/// behind (or while their high watermark cannot be read) for longer than the stall time.
fn record_lag(
    consumer: &BaseConsumer<TallyContext>,
    sink: &IngestHandle,
    settings: &KafkaSettings,
    stalls: &Mutex<StallDetector>,
) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let now = Instant::now();
    let stored = sink
        .store
        .source_offsets(&settings.topic)
        .unwrap_or_default();
    for element in assignment.elements() {
        let partition = element.partition();
        match consumer.fetch_watermarks(&settings.topic, partition, Duration::from_secs(1)) {
            Ok((low, listed_high)) => {
                sink.kafka_health.recover();
                // ListOffsets can answer too low (see `watermarks`); fetch responses do not.
                let fetched = consumer
                    .context()
                    .watermarks
                    .high(&settings.topic, partition);
                let high = listed_high.max(fetched.unwrap_or(-1));
                let position = stored.get(&partition).copied().unwrap_or(low);
                let lag = high.saturating_sub(position).max(0);
                sink.metrics.set_kafka_lag(partition, lag);
                sink.ownership.lag(partition, lag);
                // Read to the end: everything the partition held is in the log below the head
                // now (the stored offset moves in the same write as the events). Only a fetch
                // since the assignment tells the end: the listed one can be a batch short.
                if lag == 0 && fetched.is_some() && sink.ownership.is_reading_source(partition) {
                    sink.ownership.caught_up(partition, sink.log_head.get());
                    tracing::info!(partition, "partition read to its end");
                }
                // Not read while it is restored from the changelog: standing still is expected.
                let held_back = sink.ownership.is_from_changelog(partition);
                let verdict = stalls.lock().ok().and_then(|mut stalls| {
                    if held_back {
                        stalls.held_back(partition, position, now);
                        None
                    } else {
                        stalls.observe(partition, position, Ok(lag), now)
                    }
                });
                report_stall(sink, partition, verdict);
            }
            Err(error) => {
                tracing::warn!(%error, partition, "cannot fetch watermarks");
                sink.kafka_health.fail(&error);
                let position = stored.get(&partition).copied().unwrap_or(0);
                let verdict = stalls.lock().ok().and_then(|mut stalls| {
                    stalls.observe(partition, position, Err(error.to_string()), now)
                });
                report_stall(sink, partition, verdict);
            }
        }
    }
}

fn report_stall(sink: &IngestHandle, partition: i32, verdict: Option<String>) {
    let was_stalled = sink.kafka_stalls.stalled().contains_key(&partition);
    match verdict {
        Some(reason) => {
            if !was_stalled {
                tracing::error!(partition, %reason, "kafka partition stalled");
            }
            sink.metrics.set_kafka_stalled(partition, true);
            sink.kafka_stalls.set(partition, reason);
        }
        None => {
            if was_stalled {
                tracing::info!(partition, "kafka partition advances again");
            }
            sink.metrics.set_kafka_stalled(partition, false);
            sink.kafka_stalls.clear(partition);
        }
    }
}

/// Tells a partition that is slow from one that stands still. Pure: fed positions, lags and
/// instants, so the rules are tested without a broker.
pub(crate) struct StallDetector {
    stall_after: Duration,
    partitions: BTreeMap<i32, Progress>,
    /// The newest consumer error (librdkafka does not say which partition it came from).
    last_error: Option<String>,
}

struct Progress {
    position: i64,
    /// When the position last moved, or the partition was last seen caught up.
    since: Instant,
}

impl StallDetector {
    pub(crate) fn new(stall_after: Duration) -> StallDetector {
        StallDetector {
            stall_after,
            partitions: BTreeMap::new(),
            last_error: None,
        }
    }

    pub(crate) fn consumer_error(&mut self, error: String) {
        self.last_error = Some(error);
    }

    /// `partition` stands at `position` on purpose (not read while it is restored): its stall
    /// time starts afresh.
    pub(crate) fn held_back(&mut self, partition: i32, position: i64, now: Instant) {
        self.partitions.insert(
            partition,
            Progress {
                position,
                since: now,
            },
        );
    }

    /// Records where `partition` stands (`lag`, or why it cannot be measured) and says why it
    /// is stalled, or `None` when it is caught up or advanced within the stall time.
    pub(crate) fn observe(
        &mut self,
        partition: i32,
        position: i64,
        lag: Result<i64, String>,
        now: Instant,
    ) -> Option<String> {
        let progress = self.partitions.entry(partition).or_insert(Progress {
            position,
            since: now,
        });
        if progress.position != position || lag == Ok(0) {
            progress.position = position;
            progress.since = now;
            if lag == Ok(0) {
                self.last_error = None;
            }
            return None;
        }
        let still = now.saturating_duration_since(progress.since);
        if still < self.stall_after {
            return None;
        }
        let mut reason = match lag {
            Ok(lag) => format!(
                "no progress for {} s at offset {position} with {lag} messages behind",
                still.as_secs()
            ),
            Err(error) => format!(
                "no progress for {} s at offset {position}; the high watermark cannot be read: {error}",
                still.as_secs()
            ),
        };
        if let Some(error) = &self.last_error {
            reason.push_str(&format!("; last consumer error: {error}"));
        }
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_behind_that_stands_still_is_stalled_until_it_moves() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut stalls = StallDetector::new(Duration::from_secs(60));
        assert_eq!(stalls.observe(0, 100, Ok(50), at(0)), None);
        assert_eq!(stalls.observe(0, 100, Ok(50), at(59)), None);
        stalls.consumer_error("Decompression (codec 0x4) Not implemented".into());
        let reason = stalls.observe(0, 100, Ok(50), at(61)).expect("stalled");
        assert_eq!(
            reason,
            "no progress for 61 s at offset 100 with 50 messages behind; last consumer error: Decompression (codec 0x4) Not implemented"
        );
        // Moving clears it at once; standing still again starts the clock anew.
        assert_eq!(stalls.observe(0, 101, Ok(49), at(62)), None);
        assert_eq!(stalls.observe(0, 101, Ok(49), at(100)), None);
        assert!(stalls.observe(0, 101, Ok(49), at(123)).is_some());
        // Held back while it is restored: the clock starts anew once it is read again.
        stalls.held_back(0, 101, at(200));
        assert_eq!(stalls.observe(0, 101, Ok(49), at(250)), None);
        assert!(stalls.observe(0, 101, Ok(49), at(261)).is_some());
    }

    #[test]
    fn an_idle_caught_up_partition_is_never_stalled_and_unreadable_ones_are() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut stalls = StallDetector::new(Duration::from_secs(5));
        for s in 0..100 {
            assert_eq!(stalls.observe(1, 7, Ok(0), at(s)), None);
        }
        assert_eq!(stalls.observe(2, 0, Err("broker down".into()), at(0)), None);
        let reason = stalls
            .observe(2, 0, Err("broker down".into()), at(6))
            .expect("stalled");
        assert!(
            reason.contains("high watermark cannot be read: broker down"),
            "{reason}"
        );
        // Partition 1 is unaffected.
        assert_eq!(stalls.observe(1, 7, Ok(0), at(101)), None);
    }
}
