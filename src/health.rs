//! A component's health flag: set by the component's thread, read by `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a background component (log writer, projector) is failing right now.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
}

impl Health {
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}
