//! The dedup horizon: how far back event ids are remembered, and the stored forgetting horizon
//! below which their dedup records may be pruned. A policy over two numbers the store keeps in
//! `meta` (it reads and writes them); the store's compaction filter reads the horizon.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::codec;
use super::keys::MetaKey;
use crate::time::UnixMicros;

/// The stored horizon moves in steps of at least this, so batches of duplicates alone do not
/// each become a write.
const FORGET_STEP_MICROS: i64 = 1_000_000;

/// The forgetting horizon of one store (clones share it).
#[derive(Clone)]
pub struct DedupHorizon {
    /// This run's `--dedup-horizon`.
    own: Duration,
    /// The stored forgetting horizon as last written; the dedup compaction filter prunes below
    /// it and nothing else.
    forgotten_before: Arc<AtomicI64>,
    /// [`MetaKey::LongestDedupHorizon`] as stored (0 when none is).
    longest: Arc<AtomicI64>,
}

impl DedupHorizon {
    /// A horizon of `own` length whose stored value the compaction filter reads through
    /// `forgotten_before` (`i64::MIN` until [`load`](Self::load): nothing is pruned before).
    pub(super) fn new(own: Duration, forgotten_before: Arc<AtomicI64>) -> Self {
        DedupHorizon {
            own,
            forgotten_before,
            longest: Arc::default(),
        }
    }

    /// Takes what the store holds: the longest horizon any run moved the forgetting horizon
    /// with, and the forgetting horizon itself ([`MetaKey::LongestDedupHorizon`],
    /// [`MetaKey::IdsForgottenBefore`]).
    pub(super) fn restore(&self, longest: Option<i64>, forgotten_before: Option<i64>) {
        if let Some(stored) = longest {
            self.longest.fetch_max(stored, Ordering::SeqCst);
        }
        if let Some(stored) = forgotten_before {
            self.forgotten_before.fetch_max(stored, Ordering::SeqCst);
        }
    }

    /// Ids of events whose time is before this may already be forgotten: their dedup records
    /// were pruned (or may be at the next compaction), so a resend could not be told from the
    /// original, and the log writer refuses such events. It is stored in the store, only
    /// grows, and is written before pruning uses it, whatever horizon a later run is started
    /// with. `i64::MIN` while nothing was forgotten.
    pub fn ids_forgotten_before(&self) -> UnixMicros {
        self.forgotten_before.load(Ordering::SeqCst)
    }

    /// The horizon to store at `now` (`now − dedup_horizon`), when it has moved on by a step.
    pub fn forget_cutoff(&self, now: UnixMicros) -> Option<UnixMicros> {
        let cutoff = now.saturating_sub(self.effective());
        (cutoff
            >= self
                .ids_forgotten_before()
                .saturating_add(FORGET_STEP_MICROS))
        .then_some(cutoff)
    }

    /// The `meta` rows that store a new forgetting horizon; pruning uses it only once
    /// [`forgotten_before_written`](Self::forgotten_before_written) says the batch that
    /// carried them is durable.
    pub fn forgotten_before_rows(&self, cutoff: UnixMicros) -> [(Vec<u8>, [u8; 9]); 2] {
        let cutoff = cutoff.max(self.ids_forgotten_before());
        [
            (
                MetaKey::IdsForgottenBefore.encode(),
                codec::encode_i64(cutoff),
            ),
            (
                MetaKey::LongestDedupHorizon.encode(),
                codec::encode_i64(self.effective()),
            ),
        ]
    }

    /// The batch carrying `cutoff` reached the disk: compactions may now forget ids below it.
    pub fn forgotten_before_written(&self, cutoff: UnixMicros) {
        self.forgotten_before.fetch_max(cutoff, Ordering::SeqCst);
        self.longest.fetch_max(self.effective(), Ordering::SeqCst);
    }

    /// The horizon the forgetting horizon moves with: this run's `--dedup-horizon`, or the
    /// longest any earlier run moved it with (micros).
    fn effective(&self) -> i64 {
        let own = i64::try_from(self.own.as_micros()).unwrap_or(i64::MAX);
        own.max(self.longest.load(Ordering::SeqCst))
    }
}
