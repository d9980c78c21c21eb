//! One stop signal for the background tasks of a serving engine (Kafka consumer, webhook
//! deliverer, billing clock): threads poll it between units of work, async tasks await it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Cloned into every background task; [`StopSignal::stop`] asks all of them at once.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    stopped: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl StopSignal {
    /// Asks every task holding a clone to stop after the unit of work in hand.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Completes once [`StopSignal::stop`] was called (at once if it already was).
    pub async fn stopped(&self) {
        let notified = self.notify.notified();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_one_stop() {
        let signal = StopSignal::default();
        let task = signal.clone();
        let waiter = tokio::spawn(async move { task.stopped().await });
        assert!(!signal.clone().is_stopped());
        signal.stop();
        waiter.await.unwrap();
        assert!(signal.is_stopped());
        // Awaited after the stop, it completes at once.
        signal.clone().stopped().await;
    }
}
