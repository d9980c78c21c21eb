//! The write side: the one path every quota, billing and token command takes ([`execute`]),
//! free of HTTP, so that any front end can serve it.
//!
//! A command takes its turn, reads what it is decided against (its basis), is decided by the
//! pure rules of its kind, has its facts appended with an audit record of each in one durable
//! batch (in a cluster: answered once the changelog holds them), applies them to the state
//! the next command starts from, and answers. Each kind ([`quota`], [`billing`], [`tokens`])
//! says only what differs, through [`Command`]. The per-tenant turns and the states
//! commands are decided against are [`crate::turns`], which the engine holds.

pub mod billing;
pub mod quota;
pub mod tokens;

pub use crate::turns::{Basis, CommandStates, Turn, WriteSide};

use std::future::Future;
use std::sync::Arc;

use crate::audit::AuditRecord;
use crate::auth::Caller;
use crate::billing::decide::BillingRejection;
use crate::cluster::NotHere;
use crate::config::Config;
use crate::engine::{Engine, PROJECTION_WAIT, recorded_next};
use crate::log::LogEntry;
use crate::log::append::{AppendError, RowWrite};
use crate::log::store::StoreError;
use crate::quota::decide::QuotaRejection;
use crate::time::UnixMicros;

pub use tokens::{TokenCommand, TokenRejection};

/// Why a command was not carried out (a front end maps each to its own answer).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Quota(#[from] QuotaRejection),
    #[error(transparent)]
    Billing(#[from] BillingRejection),
    #[error(transparent)]
    Token(#[from] TokenRejection),
    /// The projections did not reach the tenant's last change in time; nothing was done.
    #[error("the projections are behind this tenant's last change; retry shortly")]
    ProjectionsBehind,
    /// In a cluster, the tenant's commands are taken by another engine, or not yet here.
    #[error(transparent)]
    NotHere(#[from] NotHere),
    /// The facts could not be appended, or (in a cluster) not published in time.
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// In a cluster, the control topic did not confirm a token change; nothing was recorded.
    #[error("the cluster's control topic did not confirm the token change ({0}); retry later")]
    ControlNotConfirmed(String),
    /// A task of the command (a store read, the append) failed.
    #[error("a command's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// That the actor did `action` to `target` of `tenant`: one audit record of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub tenant: String,
    pub action: String,
    pub target: String,
}

impl Audit {
    pub fn new(tenant: impl Into<String>, action: impl Into<String>, target: String) -> Audit {
        Audit {
            tenant: tenant.into(),
            action: action.into(),
            target,
        }
    }
}

/// What a decided command writes, in one durable batch: its log entries, an audit record of
/// each thing it did, and store rows kept beside the log (tokens).
#[derive(Debug, Default)]
pub struct Written {
    pub entries: Vec<LogEntry>,
    pub audits: Vec<Audit>,
    pub rows: Vec<RowWrite>,
}

impl Written {
    /// A command that changes nothing (subscribing an addon twice) records nothing.
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.audits.is_empty() && self.rows.is_empty()
    }
}

/// Where a command's facts landed: decided at `at`, in the log below `through`.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    pub at: UnixMicros,
    pub through: u64,
}

/// What one kind of command brings to [`execute`]; the order of the steps is `execute`'s.
pub trait Command: Sized + Send + Sync + 'static {
    /// Held from before the basis is read until the facts are applied.
    type Turn: Send + 'static;
    /// What the command is decided against.
    type State: Send + 'static;
    /// What deciding it yields.
    type Facts: Send + 'static;
    /// What the command answers.
    type Answer: Send + 'static;

    /// Waits for the command's turn (refused where the command is not taken).
    fn begin(
        &self,
        engine: &Engine,
    ) -> impl Future<Output = Result<Self::Turn, CommandError>> + Send;

    /// What the command is decided against, read in its turn.
    fn basis(
        &self,
        engine: &Engine,
        turn: &mut Self::Turn,
    ) -> impl Future<Output = Result<Self::State, CommandError>> + Send;

    /// The facts the command records, or why it may not happen (the kind's pure rules).
    fn decide(self, config: &Config, state: &Self::State) -> Result<Self::Facts, CommandError>;

    /// What the facts write, decided at `at`.
    fn written(facts: &Self::Facts, at: UnixMicros) -> Written;

    /// Before the facts are appended: where else they must be known first (none by default).
    fn publish(
        _engine: &Engine,
        _facts: &Self::Facts,
    ) -> impl Future<Output = Result<(), CommandError>> + Send {
        std::future::ready(Ok(()))
    }

    /// The facts are durable: applies them to the state the next command starts from, ends
    /// the turn and answers.
    fn apply(
        engine: &Engine,
        turn: Self::Turn,
        state: Self::State,
        facts: Self::Facts,
        recorded: Recorded,
    ) -> Self::Answer;

    /// The answer of a command that wrote nothing.
    fn unchanged(state: Self::State, facts: Self::Facts) -> Self::Answer;
}

/// Carries out `command` for `actor`: turn → basis → decide → append (with the audit
/// records) → apply → answer. In a cluster it is answered once the changelog holds its
/// facts ([`AppendError::NotPublished`] when it does not in time).
pub async fn execute<C: Command>(
    engine: &Arc<Engine>,
    actor: &Caller,
    command: C,
) -> Result<C::Answer, CommandError> {
    let mut turn = command.begin(engine).await?;
    let state = command.basis(engine, &mut turn).await?;
    let facts = command.decide(engine.config(), &state)?;
    let at = engine.now();
    let written = C::written(&facts, at);
    if written.is_empty() {
        return Ok(C::unchanged(state, facts));
    }
    let entries = with_audit_records(actor, at, written.entries, written.audits);
    let engine = engine.clone();
    // One task that a dropped request (a client gone, a shutdown) cannot cut in half: the log,
    // the state the next command starts from and the token registry never disagree.
    let answer = tokio::spawn(async move {
        C::publish(&engine, &facts).await?;
        let outcomes = engine.append_facts_with_rows(entries, written.rows).await?;
        let through = recorded_next(&outcomes).unwrap_or_else(|| engine.head());
        Ok::<_, CommandError>(C::apply(
            &engine,
            turn,
            state,
            facts,
            Recorded { at, through },
        ))
    });
    answer.await?
}

/// Appends an audit record of each of `audits` the actor did, alone (operator actions that
/// change no state).
pub async fn record_audits(
    engine: &Engine,
    actor: &Caller,
    audits: Vec<Audit>,
) -> Result<(), CommandError> {
    let entries = with_audit_records(actor, engine.now(), Vec::new(), audits);
    engine.append_facts(entries).await?;
    Ok(())
}

/// `entries` followed by an audit record of each of `audits` the actor did at `at`.
fn with_audit_records(
    actor: &Caller,
    at: UnixMicros,
    mut entries: Vec<LogEntry>,
    audits: Vec<Audit>,
) -> Vec<LogEntry> {
    entries.extend(audits.into_iter().map(|audit| {
        LogEntry::Audit(AuditRecord {
            at,
            actor: actor.token_id.clone(),
            actor_tenant: actor.tenant.clone(),
            tenant: audit.tenant,
            action: audit.action,
            target: audit.target,
        })
    }));
    entries
}

/// A command on one tenant's own state (quota, billing).
#[derive(Debug, Clone)]
pub struct OnTenant<C> {
    pub tenant: String,
    pub command: C,
}

impl<C> OnTenant<C> {
    pub fn new(tenant: &str, command: C) -> OnTenant<C> {
        OnTenant {
            tenant: tenant.to_owned(),
            command,
        }
    }
}

/// Runs a store read off the async workers.
async fn blocking<T: Send + 'static>(
    engine: &Engine,
    read: impl FnOnce(&crate::log::store::Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, CommandError> {
    let store = engine.store().clone();
    Ok(tokio::task::spawn_blocking(move || read(&store)).await??)
}

/// The turn of a command on `tenant`'s own state. In a cluster only the engine that owns the
/// tenant's partition (and has restored it) takes the tenant's commands: their facts are
/// published to the partition's changelog, so they move with it.
async fn tenant_turn<S: Clone>(
    engine: &Engine,
    states: &CommandStates<S>,
    tenant: &str,
) -> Result<Turn<S>, CommandError> {
    engine.ownership().check(tenant, engine.projected())?;
    Ok(states.begin(tenant).await)
}

/// What a command on a tenant's own state is decided against in its `turn`: the state its
/// tenant's unfolded facts left, or else the projection (`projected` reads it) once it holds
/// the tenant's every fact of this kind. Other tenants' backlog is never waited for.
async fn tenant_basis<S: Clone>(
    engine: &Engine,
    turn: &mut Turn<S>,
    projected: impl Future<Output = Result<S, CommandError>>,
) -> Result<S, CommandError> {
    // Read apart from the match: a watch borrow held across the wait below would stall the
    // projector that the wait is for.
    let folded = engine.projected();
    match turn.basis(folded) {
        Basis::Unfolded(current) => Ok(current),
        Basis::Projection { settled_at } => {
            let position = settled_at.max(engine.status().log_entries_at_start);
            if !engine.wait_projected(position, PROJECTION_WAIT).await {
                return Err(CommandError::ProjectionsBehind);
            }
            projected.await
        }
    }
}
