//! Token commands on the write side: issuing and revoking API tokens, decided against the
//! token registry in one turn for every token change. In a cluster a change goes to the
//! control topic before it is appended, so every engine verifies the token alike.

use tokio::sync::OwnedMutexGuard;

use super::{Audit, Command, CommandError, Recorded, Written};
use crate::auth::{Caller, TokenChange, TokenRecord, Tokens};
use crate::config::Config;
use crate::engine::Engine;
use crate::time::UnixMicros;

/// A token change asked for, its token minted or named by the caller (so that deciding stays
/// a function of its inputs).
#[derive(Debug, Clone)]
pub enum TokenCommand {
    /// Issue `record` (its tenant, role and scope already checked against the caller's).
    Create { record: TokenRecord },
    /// Revoke token `id`, if `by` may manage it.
    Revoke { id: String, by: Caller },
}

/// Why a token change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// 409: the tenant holds `--max-tokens-per-tenant` tokens already.
    #[error(
        "tenant `{tenant}` holds {cap} tokens, the most --max-tokens-per-tenant allows; revoke one first"
    )]
    TooMany { tenant: String, cap: usize },
    /// 404: no such token, or one the caller may not manage (it is not told which).
    #[error("no token has this id")]
    NotFound,
    /// 400: the operator token is not revoked through the API.
    #[error("id: the operator token is replaced by restarting with another TALLY_ADMIN_TOKEN")]
    OperatorToken,
}

/// The change a token command records, with its audit record.
#[derive(Debug)]
pub struct TokenFact {
    change: TokenChange,
    audit: Audit,
}

/// The audit record of `action` on `record`: its tenant, id and namespaces.
fn audit_of(action: &str, record: &TokenRecord) -> Audit {
    let target = crate::audit::token_target(&record.id, &record.namespaces);
    Audit::new(&record.tenant, action, target)
}

/// The change `command` records, given the registered tokens it is about (`held`) and the
/// most tokens a tenant may hold (`cap`), or why it may not happen.
fn decide(
    command: TokenCommand,
    held: &[TokenRecord],
    cap: usize,
) -> Result<TokenFact, TokenRejection> {
    match command {
        TokenCommand::Create { record } => {
            // The operator token is not the tenant's to count.
            if held.iter().filter(|token| !token.operator).count() >= cap {
                return Err(TokenRejection::TooMany {
                    tenant: record.tenant,
                    cap,
                });
            }
            let audit = audit_of("token.create", &record);
            Ok(TokenFact {
                change: TokenChange::Put(record),
                audit,
            })
        }
        TokenCommand::Revoke { id, by } => {
            let record = held
                .iter()
                .find(|token| token.id == id)
                .filter(|token| by.may_manage(token))
                .ok_or(TokenRejection::NotFound)?;
            if record.operator {
                return Err(TokenRejection::OperatorToken);
            }
            Ok(TokenFact {
                audit: audit_of("token.revoke", record),
                change: TokenChange::Delete(id),
            })
        }
    }
}

impl Command for TokenCommand {
    type Turn = OwnedMutexGuard<()>;
    /// The registered tokens the command is about: the tenant's (create), the named one
    /// (revoke).
    type State = Vec<TokenRecord>;
    type Facts = TokenFact;
    type Answer = ();

    async fn begin(&self, engine: &Engine) -> Result<Self::Turn, CommandError> {
        Ok(engine.commands().tokens.clone().lock_owned().await)
    }

    async fn basis(
        &self,
        engine: &Engine,
        _turn: &mut Self::Turn,
    ) -> Result<Vec<TokenRecord>, CommandError> {
        let tokens = engine.tokens();
        Ok(match self {
            TokenCommand::Create { record } => tokens.list(Some(&record.tenant)),
            TokenCommand::Revoke { id, .. } => tokens.get(id).into_iter().collect(),
        })
    }

    fn decide(self, config: &Config, state: &Vec<TokenRecord>) -> Result<TokenFact, CommandError> {
        Ok(decide(self, state, config.max_tokens_per_tenant)?)
    }

    fn written(facts: &TokenFact, _at: UnixMicros) -> Written {
        let row = match &facts.change {
            TokenChange::Put(record) => Tokens::put_row(record),
            TokenChange::Delete(id) => Tokens::delete_row(id),
        };
        Written {
            entries: Vec::new(),
            audits: vec![facts.audit.clone()],
            rows: vec![row],
        }
    }

    /// In a cluster the change goes to the control topic first, so every engine verifies the
    /// token alike and a fresh engine learns it; it is answered once Kafka holds it.
    async fn publish(engine: &Engine, facts: &TokenFact) -> Result<(), CommandError> {
        if let Some(control) = engine.control() {
            control
                .publish_token(&facts.change)
                .await
                .map_err(|error| CommandError::ControlNotConfirmed(error.to_string()))?;
        }
        Ok(())
    }

    /// In force from the moment it is durable (the audit list waits for its record).
    fn apply(
        engine: &Engine,
        _turn: Self::Turn,
        _: Vec<TokenRecord>,
        facts: TokenFact,
        _: Recorded,
    ) {
        match facts.change {
            TokenChange::Put(record) => engine.tokens().remember(record),
            TokenChange::Delete(id) => engine.tokens().forget(&id),
        }
    }

    fn unchanged(_state: Vec<TokenRecord>, _facts: TokenFact) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn token(tenant: &str, namespaces: &[&str]) -> TokenRecord {
        let namespaces = namespaces.iter().map(|n| (*n).to_owned()).collect();
        Tokens::mint(tenant, Role::Admin, namespaces, None, 0).0
    }

    fn caller_of(record: &TokenRecord) -> Caller {
        Caller {
            token_id: record.id.clone(),
            tenant: record.tenant.clone(),
            role: record.role,
            namespaces: record.namespaces.clone(),
            operator: record.operator,
        }
    }

    #[test]
    fn a_tenant_holds_at_most_cap_tokens_and_the_operator_token_is_not_counted() {
        let mut operator = token("acme", &["*"]);
        operator.operator = true;
        let held = vec![token("acme", &["*"]), operator];
        let create = || TokenCommand::Create {
            record: token("acme", &["shop"]),
        };
        let fact = decide(create(), &held, 2).unwrap();
        assert!(matches!(fact.change, TokenChange::Put(ref r) if r.tenant == "acme"));
        assert_eq!(fact.audit.action, "token.create");
        assert!(fact.audit.target.ends_with("(namespaces shop)"));
        assert_eq!(
            decide(create(), &held, 1).unwrap_err(),
            TokenRejection::TooMany {
                tenant: "acme".into(),
                cap: 1
            }
        );
    }

    #[test]
    fn a_revoke_finds_only_tokens_the_caller_may_manage_and_never_the_operators() {
        let admin = token("acme", &["shop"]);
        let wider = token("acme", &["*"]);
        let by = caller_of(&admin);
        let revoke = |record: &TokenRecord, by: &Caller| TokenCommand::Revoke {
            id: record.id.clone(),
            by: by.clone(),
        };
        let fact = decide(revoke(&admin, &by), std::slice::from_ref(&admin), 10).unwrap();
        assert_eq!(fact.change, TokenChange::Delete(admin.id.clone()));
        assert_eq!(
            (fact.audit.tenant.as_str(), fact.audit.action.as_str()),
            ("acme", "token.revoke")
        );
        let not_found = decide(revoke(&wider, &by), std::slice::from_ref(&wider), 10);
        assert_eq!(not_found.unwrap_err(), TokenRejection::NotFound);
        assert_eq!(
            decide(revoke(&wider, &by), &[], 10).unwrap_err(),
            TokenRejection::NotFound
        );
        let mut operator = token("acme", &["*"]);
        operator.operator = true;
        let by_operator = caller_of(&operator);
        let refused = decide(
            revoke(&operator, &by_operator),
            std::slice::from_ref(&operator),
            10,
        );
        assert_eq!(refused.unwrap_err(), TokenRejection::OperatorToken);
    }
}
