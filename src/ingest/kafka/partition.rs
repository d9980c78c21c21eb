//! A partition's phases on this consumer, and every transition between them, in one place.
//! Pure: the poll loop applies what it learns (assignments, restores, seeks, messages) here
//! and does the I/O itself.
//!
//! A single engine assigns itself every partition at its stored offset: each is
//! [`Phase::Reading`] at once. In a cluster a partition the group assigns goes
//!
//! ```text
//! (not here) --assigned--> FromChangelog --restored--> Restored --sought--> Reading
//!      ^                        |                         |                   |
//!      +-------------------------------- revoked ---------+-------------------+
//! ```
//!
//! and is assigned again (a new assignment number) from any phase. A restore finished for an
//! earlier assignment does not move the current one.
//!
//! [`crate::cluster::Ownership`] tracks the same partitions for `/readyz` and answering:
//! its `FromChangelog` is this module's [`Phase::FromChangelog`] and [`Phase::Restored`] (the
//! consumer tells it the changelog is done once the partition is sought), its `FromSource`
//! and `CaughtUp` are [`Phase::Reading`] (the lag thread tells it when the source is read to
//! its end).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where one partition stands on this consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Assigned by the group (the `assignment`-th assignment of this consumer) and being
    /// restored from the changelog: none of its messages is taken.
    FromChangelog { assignment: u64 },
    /// Restored from the changelog; messages below `stored` are recorded. Not sought there yet,
    /// so none of its messages is taken still.
    Restored { stored: i64 },
    /// Read from the source topic: messages from `next` on are taken.
    Reading { next: i64 },
}

impl Phase {
    /// The first offset of the partition whose message is taken: none while it is restored.
    fn takes_from(self) -> i64 {
        match self {
            Phase::FromChangelog { .. } | Phase::Restored { .. } => i64::MAX,
            Phase::Reading { next } => next,
        }
    }
}

/// The phases of the partitions this consumer knows; a partition it does not know is taken
/// from its first message (see [`Partitions::takes_from`]).
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    phases: BTreeMap<i32, Phase>,
}

impl Partitions {
    pub(crate) fn phase(&self, partition: i32) -> Option<Phase> {
        self.phases.get(&partition).copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.phases.is_empty()
    }

    /// The partitions known, in order.
    pub(crate) fn numbers(&self) -> Vec<i32> {
        self.phases.keys().copied().collect()
    }

    /// The first offset of `partition` whose message is taken (and the next one expected):
    /// `i64::MAX` while it is restored, 0 when the partition is not known (a message of a
    /// partition revoked during the poll that fetched it: it was fetched while owned).
    pub(crate) fn takes_from(&self, partition: i32) -> i64 {
        self.phase(partition).map_or(0, Phase::takes_from)
    }

    /// Whether `partition` is held back while it is restored (its messages are dropped).
    pub(crate) fn is_held_back(&self, partition: i32) -> bool {
        self.takes_from(partition) == i64::MAX
    }

    /// Restored partitions waiting to be sought, each with its stored offset.
    pub(crate) fn awaiting_seek(&self) -> Vec<(i32, i64)> {
        self.phases
            .iter()
            .filter_map(|(&partition, phase)| match *phase {
                Phase::Restored { stored } => Some((partition, stored)),
                _ => None,
            })
            .collect()
    }

    // Transitions. Each returns whether it applied; one that does not apply in the
    // partition's phase leaves it as it is.

    /// A single engine (re)assigned itself these partitions at their stored offsets: they are
    /// all it reads, each from its stored offset on.
    pub(crate) fn assign_all(&mut self, stored: &BTreeMap<i32, i64>) {
        self.phases = stored
            .iter()
            .map(|(&partition, &next)| (partition, Phase::Reading { next }))
            .collect();
    }

    /// A single engine forgets what it reads (a write failed): it assigns itself again.
    pub(crate) fn forget_all(&mut self) {
        self.phases.clear();
    }

    /// The group assigned `partition` (numbered `assignment`): restored from the changelog
    /// before anything of it is taken. From any phase, or none.
    pub(crate) fn assigned(&mut self, partition: i32, assignment: u64) -> bool {
        self.phases
            .insert(partition, Phase::FromChangelog { assignment });
        true
    }

    /// The restore for `assignment` finished, with `stored` the offset then stored. Applies
    /// only to a partition restoring for that very assignment (an earlier one's restore is
    /// stale: the partition was revoked, and maybe assigned again, meanwhile).
    pub(crate) fn restored(&mut self, partition: i32, assignment: u64, stored: i64) -> bool {
        match self.phases.get_mut(&partition) {
            Some(phase) if *phase == (Phase::FromChangelog { assignment }) => {
                *phase = Phase::Restored { stored };
                true
            }
            _ => false,
        }
    }

    /// A restored partition was sought to (a little before) its stored offset: it is read from
    /// there on.
    pub(crate) fn sought(&mut self, partition: i32) -> bool {
        match self.phases.get_mut(&partition) {
            Some(phase) => match *phase {
                Phase::Restored { stored } => {
                    *phase = Phase::Reading { next: stored };
                    true
                }
                Phase::FromChangelog { .. } | Phase::Reading { .. } => false,
            },
            None => false,
        }
    }

    /// After a failed write, `partition` was sought back to its stored offset: read from there
    /// again. Not one held back while it is restored (it is sought once restored).
    pub(crate) fn sought_back(&mut self, partition: i32, stored: i64) -> bool {
        if self.is_held_back(partition) {
            return false;
        }
        self.phases
            .insert(partition, Phase::Reading { next: stored });
        true
    }

    /// The group took `partition` away. From any phase; nothing to do when not known.
    pub(crate) fn revoked(&mut self, partition: i32) -> bool {
        self.phases.remove(&partition).is_some()
    }

    /// The message at `offset` of `partition` was taken: the next one expected follows it.
    /// Never one of a partition held back (its messages are dropped before they are taken).
    pub(crate) fn took(&mut self, partition: i32, offset: i64) -> bool {
        if self.is_held_back(partition) {
            return false;
        }
        self.phases.insert(
            partition,
            Phase::Reading {
                next: offset.saturating_add(1),
            },
        );
        true
    }
}

/// What happened to a partition since the poll loop last looked; it applies each to its
/// [`Partitions`] (see [`apply_changes`]).
pub(super) enum AssignmentChange {
    /// Assigned; none of its messages is taken while it is restored from the changelog.
    Assigned {
        partition: i32,
        assignment: u64,
    },
    /// Restored from the changelog for that assignment, with the offset then stored for it:
    /// messages below it are recorded, reading resumes there.
    Restored {
        partition: i32,
        assignment: u64,
        stored: i64,
    },
    Revoked {
        partition: i32,
    },
}

/// Adds `new` to the changes the poll loop takes next.
pub(super) fn push_changes(
    changes: &Mutex<Vec<AssignmentChange>>,
    new: impl IntoIterator<Item = AssignmentChange>,
) {
    changes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(new);
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELD_BACK: [Phase; 2] = [
        Phase::FromChangelog { assignment: 1 },
        Phase::Restored { stored: 5 },
    ];

    /// Partition 3 in `phase` (not known when `None`).
    fn with(phase: Option<Phase>) -> Partitions {
        let mut partitions = Partitions::default();
        if let Some(phase) = phase {
            partitions.phases.insert(3, phase);
        }
        partitions
    }

    /// `transition` does not apply to partition 3 in `phase`, and leaves it as it is.
    fn refused(phase: Option<Phase>, transition: impl FnOnce(&mut Partitions) -> bool) {
        let mut partitions = with(phase);
        assert!(!transition(&mut partitions), "applied in {phase:?}");
        assert_eq!(partitions.phase(3), phase);
    }

    #[test]
    fn a_single_engine_reads_every_partition_from_its_stored_offset() {
        let mut partitions = with(Some(Phase::FromChangelog { assignment: 0 }));
        partitions.assign_all(&BTreeMap::from([(0, 10), (1, 0)]));
        assert_eq!(partitions.numbers(), [0, 1]);
        assert_eq!(partitions.phase(0), Some(Phase::Reading { next: 10 }));
        assert_eq!(partitions.takes_from(1), 0);
        partitions.forget_all();
        assert!(partitions.is_empty());
    }

    #[test]
    fn assigned_from_any_phase_or_none_restores_from_the_changelog() {
        for before in [None, Some(HELD_BACK[0]), Some(HELD_BACK[1])]
            .into_iter()
            .chain([Some(Phase::Reading { next: 7 })])
        {
            let mut partitions = with(before);
            assert!(partitions.assigned(3, 2));
            assert_eq!(
                partitions.phase(3),
                Some(Phase::FromChangelog { assignment: 2 })
            );
            assert!(partitions.is_held_back(3));
            assert_eq!(partitions.takes_from(3), i64::MAX);
        }
    }

    #[test]
    fn restored_applies_only_to_the_same_assignment_still_restoring() {
        let mut partitions = with(Some(Phase::FromChangelog { assignment: 4 }));
        assert!(partitions.restored(3, 4, 100));
        assert_eq!(partitions.phase(3), Some(Phase::Restored { stored: 100 }));
        assert!(partitions.is_held_back(3));
        assert_eq!(partitions.awaiting_seek(), [(3, 100)]);
        // An earlier assignment's restore is stale; restored already, read, or not here:
        // nothing to restore.
        refused(Some(Phase::FromChangelog { assignment: 4 }), |p| {
            p.restored(3, 3, 100)
        });
        refused(Some(Phase::Restored { stored: 100 }), |p| {
            p.restored(3, 4, 200)
        });
        refused(Some(Phase::Reading { next: 7 }), |p| p.restored(3, 4, 200));
        refused(None, |p| p.restored(3, 4, 200));
    }

    #[test]
    fn sought_reads_a_restored_partition_from_its_stored_offset() {
        let mut partitions = with(Some(Phase::Restored { stored: 100 }));
        assert!(partitions.sought(3));
        assert_eq!(partitions.phase(3), Some(Phase::Reading { next: 100 }));
        assert!(partitions.awaiting_seek().is_empty());
        // Only a restored partition is sought.
        refused(Some(Phase::Reading { next: 100 }), |p| p.sought(3));
        refused(Some(Phase::FromChangelog { assignment: 1 }), |p| {
            p.sought(3)
        });
        refused(None, |p| p.sought(3));
    }

    #[test]
    fn sought_back_rereads_a_read_partition_but_not_a_restoring_one() {
        let mut partitions = with(Some(Phase::Reading { next: 100 }));
        assert!(partitions.sought_back(3, 80));
        assert_eq!(partitions.phase(3), Some(Phase::Reading { next: 80 }));
        assert!(partitions.sought_back(4, 0));
        assert_eq!(partitions.phase(4), Some(Phase::Reading { next: 0 }));
        for held in HELD_BACK {
            refused(Some(held), |p| p.sought_back(3, 80));
        }
    }

    #[test]
    fn revoked_forgets_a_partition_in_any_phase() {
        for phase in HELD_BACK.into_iter().chain([Phase::Reading { next: 7 }]) {
            let mut partitions = with(Some(phase));
            assert!(partitions.revoked(3));
            assert_eq!(partitions.phase(3), None);
            assert_eq!(partitions.takes_from(3), 0);
        }
        refused(None, |p| p.revoked(3));
    }

    #[test]
    fn took_moves_a_read_partition_on_and_never_a_held_back_one() {
        let mut partitions = with(Some(Phase::Reading { next: 7 }));
        assert!(partitions.took(3, 7));
        assert_eq!(partitions.takes_from(3), 8);
        // A partition revoked during the poll that fetched it: its messages were fetched
        // while it was owned, and are taken.
        assert!(partitions.took(5, 40));
        assert_eq!(partitions.phase(5), Some(Phase::Reading { next: 41 }));
        for held in HELD_BACK {
            refused(Some(held), |p| p.took(3, 9));
        }
    }
}
