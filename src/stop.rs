//! One stop signal for the background tasks of a serving engine (Kafka consumer, webhook
//! deliverer, billing clock): threads poll it between units of work, async tasks await it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

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

/// A background thread that obeys a [`StopSignal`]: it gets its own clone of the signal,
/// and [`SignalledThread::stop`] signals it and waits for the thread to finish.
pub struct SignalledThread {
    stop: StopSignal,
    thread: JoinHandle<()>,
}

impl SignalledThread {
    /// Runs `work` on a new thread named `name`, handing it a clone of `stop`.
    pub fn spawn(
        name: &str,
        stop: StopSignal,
        work: impl FnOnce(StopSignal) + Send + 'static,
    ) -> std::io::Result<Self> {
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || work(signal))?;
        Ok(SignalledThread { stop, thread })
    }

    /// Signals the stop (every holder of the signal sees it) and waits for this thread to
    /// finish the unit of work in hand.
    pub fn stop(self) {
        self.stop.stop();
        if self.thread.join().is_err() {
            tracing::error!("a background thread panicked before it stopped");
        }
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

    #[test]
    fn a_signalled_thread_stops_at_its_signal_and_is_joined() {
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = SignalledThread::spawn("test-worker", StopSignal::default(), move |stop| {
            let mut rounds = 0u64;
            while !stop.is_stopped() {
                rounds += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = sender.send(rounds);
        })
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        thread.stop();
        // Joined: the thread has already sent what it did before the stop.
        assert!(receiver.try_recv().is_ok_and(|rounds| rounds > 0));
    }
}
