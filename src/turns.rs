//! What each tenant's commands are decided against, and the turns that serialise them: per
//! tenant and kind for quota and billing commands, one for every token change.
//!
//! A tenant's state is its projection, except while the projector has not folded the facts
//! this engine appended for the tenant: then it is the state those facts left, computed when
//! they were decided with the fold's own pure functions (`billing::apply`,
//! `TenantQuotas::apply`). So a command is decided against its tenant's own facts and never
//! waits for other tenants' backlog; only facts the write side does not compute (a period
//! the billing clock closed, which issues an invoice from usage) send the next command back to
//! the projection, which then waits for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::billing::TenantBilling;
use crate::quota::decide::TenantQuotas;

/// The write sides of the engine: billing and quota commands, each serialised on its own per
/// tenant, and token changes.
#[derive(Default)]
pub struct WriteSide {
    pub billing: CommandStates<TenantBilling>,
    pub quota: CommandStates<TenantQuotas>,
    /// One token change at a time, so a tenant's token cap is judged against every earlier
    /// change (a revoke learns its token's tenant only in its turn).
    pub tokens: Arc<tokio::sync::Mutex<()>>,
    /// Plan transitions requested and not yet folded: id → (tenant, log position past the
    /// request), so an operator's verdict finds its tenant before the projector does.
    transitions: Mutex<HashMap<String, (String, u64)>>,
}

impl WriteSide {
    /// Records that transition `id` of `tenant` is in the log below `through`; forgets the
    /// ones the projections hold by now (`folded`).
    pub fn note_transition(&self, id: &str, tenant: &str, through: u64, folded: u64) {
        let mut transitions = lock(&self.transitions);
        transitions.retain(|_, (_, position)| *position > folded);
        transitions.insert(id.to_owned(), (tenant.to_owned(), through));
    }

    /// The tenant of a transition requested and not yet folded, if `id` is one.
    pub fn unfolded_transition(&self, id: &str) -> Option<String> {
        lock(&self.transitions)
            .get(id)
            .map(|(tenant, _)| tenant.clone())
    }
}

/// A poisoned lock still holds consistent data here: every critical section is one
/// assignment or map operation.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One kind of command state, per tenant (created on first use, kept for the tenant).
pub struct CommandStates<S> {
    tenants: Mutex<HashMap<String, Arc<Slot<S>>>>,
}

impl<S> Default for CommandStates<S> {
    fn default() -> Self {
        CommandStates {
            tenants: Mutex::default(),
        }
    }
}

struct Slot<S> {
    /// Held for the whole of a command: decide, append, record.
    turn: Arc<tokio::sync::Mutex<()>>,
    known: Mutex<Known<S>>,
}

struct Known<S> {
    /// Moves when a fact the write side does not compute is appended for the tenant, so a
    /// command decided before it does not record a state that lacks it.
    generation: u64,
    /// The state after the tenant's last command, and the log position just past its facts.
    unfolded: Option<(S, u64)>,
    /// The projections show the tenant's every fact of this kind once they reach this.
    settled_at: u64,
}

/// What a command is decided against.
#[derive(Debug, PartialEq)]
pub enum Basis<S> {
    /// The tenant's last facts are not folded yet: the state they left.
    Unfolded(S),
    /// The projection, once it reaches `settled_at` (it holds every fact of the tenant then).
    Projection { settled_at: u64 },
}

impl<S: Clone> CommandStates<S> {
    fn slot(&self, tenant: &str) -> Arc<Slot<S>> {
        lock(&self.tenants)
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    turn: Arc::default(),
                    known: Mutex::new(Known {
                        generation: 0,
                        unfolded: None,
                        settled_at: 0,
                    }),
                })
            })
            .clone()
    }

    /// Waits for `tenant`'s turn; other tenants' commands go on meanwhile.
    pub async fn begin(&self, tenant: &str) -> Turn<S> {
        let slot = self.slot(tenant);
        let guard = slot.turn.clone().lock_owned().await;
        let generation = lock(&slot.known).generation;
        Turn {
            slot,
            generation,
            _turn: guard,
        }
    }

    /// A fact of `tenant` the write side does not compute was appended below `through`: the
    /// next command reads the projection once it holds it.
    pub fn invalidate(&self, tenant: &str, through: u64) {
        let slot = self.slot(tenant);
        let mut known = lock(&slot.known);
        known.generation += 1;
        known.unfolded = None;
        known.settled_at = known.settled_at.max(through);
    }
}

/// One command's turn for its tenant: decide against [`Turn::basis`], append, then
/// [`Turn::record`] the state the facts leave.
pub struct Turn<S> {
    slot: Arc<Slot<S>>,
    generation: u64,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl<S: Clone> Turn<S> {
    /// What to decide against, given that the projections hold the log below `folded`.
    pub fn basis(&mut self, folded: u64) -> Basis<S> {
        let mut known = lock(&self.slot.known);
        self.generation = known.generation;
        match &known.unfolded {
            Some((state, through)) if folded < *through => Basis::Unfolded(state.clone()),
            _ => {
                known.unfolded = None;
                Basis::Projection {
                    settled_at: known.settled_at,
                }
            }
        }
    }

    /// The command's facts are in the log below `through` and leave `state`.
    pub fn record(&self, state: S, through: u64) {
        let mut known = lock(&self.slot.known);
        known.settled_at = known.settled_at.max(through);
        known.unfolded = (known.generation == self.generation).then_some((state, through));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recorded_state_is_the_basis_until_the_projections_hold_its_facts() {
        let states = CommandStates::<u32>::default();
        let mut turn = states.begin("acme").await;
        assert_eq!(turn.basis(0), Basis::Projection { settled_at: 0 });
        turn.record(7, 10);
        drop(turn);
        let mut turn = states.begin("acme").await;
        assert_eq!(turn.basis(9), Basis::Unfolded(7));
        assert_eq!(turn.basis(10), Basis::Projection { settled_at: 10 });
        // Once the projection was the basis, the recorded state is gone.
        assert_eq!(turn.basis(9), Basis::Projection { settled_at: 10 });
    }

    #[tokio::test]
    async fn a_fact_the_write_side_does_not_compute_sends_commands_to_the_projection() {
        let states = CommandStates::<u32>::default();
        let mut turn = states.begin("acme").await;
        turn.basis(0);
        turn.record(1, 5);
        drop(turn);
        states.invalidate("acme", 8);
        let mut turn = states.begin("acme").await;
        assert_eq!(turn.basis(0), Basis::Projection { settled_at: 8 });
        // A period closed while this command was being decided: its state is not kept.
        states.invalidate("acme", 12);
        turn.record(2, 15);
        drop(turn);
        let mut turn = states.begin("acme").await;
        assert_eq!(turn.basis(0), Basis::Projection { settled_at: 15 });
        // Another tenant is untouched.
        let mut other = states.begin("zeta").await;
        assert_eq!(other.basis(0), Basis::Projection { settled_at: 0 });
    }

    #[tokio::test]
    async fn one_tenants_turn_does_not_hold_up_another() {
        let states = CommandStates::<u32>::default();
        let _held = states.begin("acme").await;
        let other = tokio::time::timeout(std::time::Duration::from_secs(5), states.begin("zeta"));
        assert!(other.await.is_ok());
        let same = tokio::time::timeout(std::time::Duration::from_millis(50), states.begin("acme"));
        assert!(same.await.is_err(), "the same tenant waits for its turn");
    }

    #[test]
    fn verdicts_find_unfolded_transitions_and_folded_ones_are_forgotten() {
        let side = WriteSide::default();
        side.note_transition("t1", "acme", 10, 0);
        assert_eq!(side.unfolded_transition("t1").as_deref(), Some("acme"));
        side.note_transition("t2", "zeta", 20, 10);
        assert_eq!(side.unfolded_transition("t1"), None);
        assert_eq!(side.unfolded_transition("t2").as_deref(), Some("zeta"));
    }
}
