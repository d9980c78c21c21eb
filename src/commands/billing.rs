//! Billing commands on the write side: a tenant's billing state is what they are decided
//! against ([`crate::billing::decide`] holds the rules); each records zero or more changes.

use super::{Audit, Command, CommandError, OnTenant, Recorded, Written, blocking};
use super::{tenant_basis, tenant_turn};
use crate::billing::decide::{self, BillingCommand};
use crate::billing::{self, BillingChange, TenantBilling};
use crate::config::Config;
use crate::engine::Engine;
use crate::log::LogEntry;
use crate::projection::billing as rows;
use crate::time::UnixMicros;
use crate::turns::Turn;

/// The changes a billing command decided for its tenant.
#[derive(Debug)]
pub struct BillingFacts {
    tenant: String,
    changes: Vec<BillingChange>,
}

/// A billing command that was carried out: the changes it recorded (none: nothing changed)
/// and the state they leave.
#[derive(Debug)]
pub struct Done {
    pub changes: Vec<BillingChange>,
    pub state: TenantBilling,
}

/// The tenant's billing state as the projection holds it now; a tenant not seen yet is on
/// the default plan from now.
pub async fn projected(engine: &Engine, tenant: &str) -> Result<TenantBilling, CommandError> {
    let owned = tenant.to_owned();
    let stored = blocking(engine, move |store| rows::load_tenant(store, &owned)).await?;
    Ok(
        stored
            .unwrap_or_else(|| TenantBilling::new(tenant, &engine.config().catalog, engine.now())),
    )
}

impl Command for OnTenant<BillingCommand> {
    type Turn = Turn<TenantBilling>;
    type State = TenantBilling;
    type Facts = BillingFacts;
    type Answer = Done;

    async fn begin(&self, engine: &Engine) -> Result<Self::Turn, CommandError> {
        tenant_turn(engine, &engine.commands().billing, &self.tenant).await
    }

    async fn basis(
        &self,
        engine: &Engine,
        turn: &mut Self::Turn,
    ) -> Result<TenantBilling, CommandError> {
        if self.command.needs_folded_state() && !engine.wait_tenant_current(&self.tenant).await {
            return Err(CommandError::ProjectionsBehind);
        }
        tenant_basis(engine, turn, projected(engine, &self.tenant)).await
    }

    fn decide(self, config: &Config, state: &TenantBilling) -> Result<BillingFacts, CommandError> {
        let changes = decide::decide(state, &config.catalog, self.command)?;
        Ok(BillingFacts {
            tenant: self.tenant,
            changes,
        })
    }

    fn written(facts: &BillingFacts, at: UnixMicros) -> Written {
        let tenant = &facts.tenant;
        let audits = facts
            .changes
            .iter()
            .map(|change| {
                let (action, target) = crate::audit::billing_action(change);
                Audit::new(tenant, action, target)
            })
            .collect();
        let entries = facts
            .changes
            .iter()
            .map(|change| LogEntry::Billing {
                tenant: tenant.clone(),
                at,
                change: change.clone(),
            })
            .collect();
        Written {
            entries,
            audits,
            rows: Vec::new(),
        }
    }

    fn apply(
        engine: &Engine,
        turn: Self::Turn,
        mut state: TenantBilling,
        facts: BillingFacts,
        recorded: Recorded,
    ) -> Done {
        let catalog = &engine.config().catalog;
        let folded = engine.projected();
        for change in &facts.changes {
            billing::apply(&mut state, change, recorded.at, catalog);
            // An operator's verdict finds the transition before the projector does.
            if let BillingChange::TransitionRequested { id, .. } = change {
                engine
                    .commands()
                    .note_transition(id, &facts.tenant, recorded.through, folded);
            }
        }
        turn.record(state.clone(), recorded.through);
        Done {
            changes: facts.changes,
            state,
        }
    }

    fn unchanged(state: TenantBilling, facts: BillingFacts) -> Done {
        Done {
            changes: facts.changes,
            state,
        }
    }
}
