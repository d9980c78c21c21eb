//! Quota commands on the write side: a tenant's quota objects are what they are decided
//! against ([`crate::quota::decide`] holds the rules); each records one fact.

use super::{Audit, Command, CommandError, OnTenant, Recorded, Written, blocking};
use super::{tenant_basis, tenant_turn};
use crate::config::Config;
use crate::engine::Engine;
use crate::log::LogEntry;
use crate::projection::quota as rows;
use crate::quota::decide::{self, QuotaCommand, TenantQuotas};
use crate::time::UnixMicros;
use crate::turns::Turn;

/// The one fact a quota command records, and what the audit trail calls it.
#[derive(Debug)]
pub struct QuotaFact {
    tenant: String,
    action: &'static str,
    fact: LogEntry,
}

/// The audit action of a quota command.
fn action(command: &QuotaCommand) -> &'static str {
    match command {
        QuotaCommand::Create { .. } => "quota.create",
        QuotaCommand::Replace { .. } => "quota.replace",
        QuotaCommand::Delete { .. } => "quota.delete",
    }
}

/// The audit target of a quota fact: `namespace/name`.
fn target(fact: &LogEntry) -> String {
    match fact {
        LogEntry::QuotaObjectPut { object, .. } => format!("{}/{}", object.namespace, object.name),
        LogEntry::QuotaObjectDeleted {
            namespace, name, ..
        } => format!("{namespace}/{name}"),
        _ => String::new(),
    }
}

/// The tenant's quota objects as the projection holds them now.
async fn projected(engine: &Engine, tenant: &str) -> Result<TenantQuotas, CommandError> {
    let tenant = tenant.to_owned();
    blocking(engine, move |store| {
        Ok(TenantQuotas::from_objects(rows::list_objects(
            store, &tenant, None,
        )?))
    })
    .await
}

impl Command for OnTenant<QuotaCommand> {
    type Turn = Turn<TenantQuotas>;
    type State = TenantQuotas;
    type Facts = QuotaFact;
    type Answer = ();

    async fn begin(&self, engine: &Engine) -> Result<Self::Turn, CommandError> {
        tenant_turn(engine, &engine.commands().quota, &self.tenant).await
    }

    async fn basis(
        &self,
        engine: &Engine,
        turn: &mut Self::Turn,
    ) -> Result<TenantQuotas, CommandError> {
        tenant_basis(engine, turn, projected(engine, &self.tenant)).await
    }

    fn decide(self, _config: &Config, state: &TenantQuotas) -> Result<QuotaFact, CommandError> {
        let action = action(&self.command);
        let fact = decide::decide(state, self.command)?;
        Ok(QuotaFact {
            tenant: self.tenant,
            action,
            fact,
        })
    }

    fn written(facts: &QuotaFact, _at: UnixMicros) -> Written {
        Written {
            entries: vec![facts.fact.clone()],
            audits: vec![Audit::new(&facts.tenant, facts.action, target(&facts.fact))],
            rows: Vec::new(),
        }
    }

    fn apply(
        _engine: &Engine,
        turn: Self::Turn,
        mut state: TenantQuotas,
        facts: QuotaFact,
        recorded: Recorded,
    ) {
        state.apply(&facts.fact);
        turn.record(state, recorded.through);
    }

    fn unchanged(_state: TenantQuotas, _facts: QuotaFact) {}
}
