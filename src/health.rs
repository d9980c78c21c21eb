//! A component's health flag and the reason it is failing: set by the component's thread,
//! read by `/readyz`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a background component (log writer, projector, Kafka consumer) is failing right now,
/// and why.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
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

    pub fn recover(&self) {
        self.failing.store(false, Ordering::Relaxed);
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
