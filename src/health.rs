//! A component's health flag and the reason it is failing, and the Kafka partitions that stopped
//! advancing: set by the components' threads, read by `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a background component (log writer, projector, Kafka consumer) is failing right now,
/// and why.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
    /// The failure is one only reopening the store clears (RocksDB latches some errors).
    needs_reopen: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Health {
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// The message of the failure while failing; `None` when healthy.
    pub fn reason(&self) -> Option<String> {
        if !self.is_failing() {
            return None;
        }
        self.reason.lock().ok().and_then(|reason| reason.clone())
    }

    /// Marks the component failing because of `reason` (shown by `/readyz`).
    pub fn fail(&self, reason: impl std::fmt::Display) {
        if let Ok(mut slot) = self.reason.lock() {
            *slot = Some(reason.to_string());
        }
        self.failing.store(true, Ordering::Relaxed);
    }

    /// As [`fail`](Self::fail), for a failure that only reopening the store clears: the
    /// server then reopens the engine (see `server`).
    pub fn fail_until_reopened(&self, reason: impl std::fmt::Display) {
        self.fail(reason);
        self.needs_reopen.store(true, Ordering::Relaxed);
    }

    /// Whether the component is failing in a way only a reopened store clears.
    pub fn needs_reopen(&self) -> bool {
        self.is_failing() && self.needs_reopen.load(Ordering::Relaxed)
    }

    pub fn recover(&self) {
        self.failing.store(false, Ordering::Relaxed);
        self.needs_reopen.store(false, Ordering::Relaxed);
    }
}

/// The Kafka partitions whose consumption stopped advancing, each with why (shown by `/readyz`,
/// exported as `tally_kafka_partition_stalled`). Cleared per partition once it advances again.
#[derive(Debug, Default)]
pub struct PartitionStalls {
    stalled: Mutex<BTreeMap<i32, String>>,
}

impl PartitionStalls {
    pub fn set(&self, partition: i32, reason: String) {
        if let Ok(mut stalled) = self.stalled.lock() {
            stalled.insert(partition, reason);
        }
    }

    pub fn clear(&self, partition: i32) {
        if let Ok(mut stalled) = self.stalled.lock() {
            stalled.remove(&partition);
        }
    }

    /// Partition → reason, in partition order.
    pub fn stalled(&self) -> BTreeMap<i32, String> {
        self.stalled.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn reason_is_shown_only_while_failing() {
        let health = Health::default();
        assert_eq!(health.reason(), None);
        health.fail("disk full");
        assert!(health.is_failing());
        assert_eq!(health.reason().as_deref(), Some("disk full"));
        health.recover();
        assert!(!health.is_failing());
        assert_eq!(health.reason(), None);
    }
}
