//! Quota object rules: whether a tenant's create, replace or delete may happen, decided from
//! the tenant's own objects alone (pure: the write side hands in the state, the API appends
//! the fact).

use std::collections::BTreeMap;

use super::{QuotaObject, ValidQuota};
use crate::log::LogEntry;
use crate::time::UnixMicros;

/// Every quota object of one tenant, by (namespace, name): what quota commands are decided
/// against. At most `--max-quota-objects` of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantQuotas {
    pub objects: BTreeMap<(String, String), QuotaObject>,
}

impl TenantQuotas {
    pub fn from_objects(objects: impl IntoIterator<Item = QuotaObject>) -> TenantQuotas {
        TenantQuotas {
            objects: objects
                .into_iter()
                .map(|o| ((o.namespace.clone(), o.name.clone()), o))
                .collect(),
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&QuotaObject> {
        self.objects.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The state once `fact` (a quota fact of this tenant) is folded; other entries change
    /// nothing. The quota fold applies the same facts to the same rows.
    pub fn apply(&mut self, fact: &LogEntry) {
        match fact {
            LogEntry::QuotaObjectPut { object, .. } => {
                self.objects.insert(
                    (object.namespace.clone(), object.name.clone()),
                    object.clone(),
                );
            }
            LogEntry::QuotaObjectDeleted {
                namespace, name, ..
            } => {
                self.objects.remove(&(namespace.clone(), name.clone()));
            }
            _ => {}
        }
    }
}

/// A tenant's quota command, parsed and validated.
#[derive(Debug, Clone)]
pub enum QuotaCommand {
    /// Create `object` (its identity, times and creator already filled in).
    Create { object: QuotaObject, cap: usize },
    /// Replace the object's labels, description and spec, keeping its identity.
    Replace {
        namespace: String,
        valid: ValidQuota,
        at: UnixMicros,
    },
    Delete {
        tenant: String,
        namespace: String,
        name: String,
        at: UnixMicros,
    },
}

/// Why a quota command is refused; each variant says the HTTP status it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRejection {
    /// 409 ALREADY_EXISTS.
    #[error("metadata.name: quota `{name}` already exists in namespace `{namespace}`")]
    AlreadyExists { namespace: String, name: String },
    /// 404 NOT_FOUND.
    #[error("quota `{}` does not exist in namespace `{namespace}`", short(name))]
    NotFound { namespace: String, name: String },
    /// 409 RESOURCE_EXHAUSTED: the tenant holds `--max-quota-objects` already.
    #[error(
        "metadata.name: the tenant has {cap} quota objects, the most it may have (--max-quota-objects); replace or delete one instead"
    )]
    TooMany { cap: usize },
}

/// Names in messages are cut to 64 characters: they may come from the request path.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}

/// The fact `command` adds to the log, or why it may not happen.
pub fn decide(state: &TenantQuotas, command: QuotaCommand) -> Result<LogEntry, QuotaRejection> {
    match command {
        QuotaCommand::Create { object, cap } => {
            if state.get(&object.namespace, &object.name).is_some() {
                return Err(QuotaRejection::AlreadyExists {
                    namespace: object.namespace,
                    name: object.name,
                });
            }
            if state.objects.len() >= cap {
                return Err(QuotaRejection::TooMany { cap });
            }
            let at = object.creation_timestamp;
            Ok(LogEntry::QuotaObjectPut { object, at })
        }
        QuotaCommand::Replace {
            namespace,
            valid,
            at,
        } => {
            let Some(existing) = state.get(&namespace, &valid.name) else {
                return Err(QuotaRejection::NotFound {
                    namespace,
                    name: valid.name,
                });
            };
            let object = QuotaObject {
                labels: valid.labels,
                annotations: valid.annotations,
                description: valid.description,
                disable: valid.disable,
                spec: valid.spec,
                modification_timestamp: at,
                ..existing.clone()
            };
            Ok(LogEntry::QuotaObjectPut { object, at })
        }
        QuotaCommand::Delete {
            tenant,
            namespace,
            name,
            at,
        } => {
            if state.get(&namespace, &name).is_none() {
                return Err(QuotaRejection::NotFound { namespace, name });
            }
            Ok(LogEntry::QuotaObjectDeleted {
                tenant,
                namespace,
                name,
                at,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Limits;

    fn object(namespace: &str, name: &str, at: UnixMicros) -> QuotaObject {
        QuotaObject {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            description: String::new(),
            disable: false,
            spec: Limits::default(),
            uid: format!("uid-{name}"),
            tenant: "acme".into(),
            creation_timestamp: at,
            modification_timestamp: at,
            creator_id: "token-1".into(),
        }
    }

    fn valid(name: &str, description: &str) -> ValidQuota {
        ValidQuota {
            name: name.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            description: description.into(),
            disable: true,
            spec: Limits::default(),
        }
    }

    #[test]
    fn create_replace_and_delete_follow_the_objects_the_tenant_has() {
        let mut state = TenantQuotas::default();
        let created = decide(
            &state,
            QuotaCommand::Create {
                object: object("system", "tight", 5),
                cap: 2,
            },
        )
        .unwrap();
        assert_eq!(
            created,
            LogEntry::QuotaObjectPut {
                object: object("system", "tight", 5),
                at: 5
            }
        );
        state.apply(&created);
        assert_eq!(
            decide(
                &state,
                QuotaCommand::Create {
                    object: object("system", "tight", 6),
                    cap: 2,
                },
            ),
            Err(QuotaRejection::AlreadyExists {
                namespace: "system".into(),
                name: "tight".into()
            })
        );
        // A replace keeps identity, creation and creator; it changes the rest and the time.
        let replaced = decide(
            &state,
            QuotaCommand::Replace {
                namespace: "system".into(),
                valid: valid("tight", "now disabled"),
                at: 9,
            },
        )
        .unwrap();
        let LogEntry::QuotaObjectPut { object: new, at: 9 } = &replaced else {
            panic!("{replaced:?}");
        };
        assert_eq!(
            (new.uid.as_str(), new.creation_timestamp, new.disable),
            ("uid-tight", 5, true)
        );
        assert_eq!(
            (new.modification_timestamp, new.description.as_str()),
            (9, "now disabled")
        );
        state.apply(&replaced);
        let deleted = decide(
            &state,
            QuotaCommand::Delete {
                tenant: "acme".into(),
                namespace: "system".into(),
                name: "tight".into(),
                at: 10,
            },
        )
        .unwrap();
        state.apply(&deleted);
        assert!(state.objects.is_empty());
        let missing = decide(
            &state,
            QuotaCommand::Delete {
                tenant: "acme".into(),
                namespace: "system".into(),
                name: "tight".into(),
                at: 11,
            },
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "quota `tight` does not exist in namespace `system`"
        );
    }

    #[test]
    fn the_cap_counts_every_namespace_of_the_tenant() {
        let state = TenantQuotas::from_objects([object("shop", "a", 1), object("system", "b", 1)]);
        assert_eq!(
            decide(
                &state,
                QuotaCommand::Create {
                    object: object("other", "c", 2),
                    cap: 2,
                },
            ),
            Err(QuotaRejection::TooMany { cap: 2 })
        );
        assert!(
            decide(
                &state,
                QuotaCommand::Create {
                    object: object("other", "c", 2),
                    cap: 3,
                },
            )
            .is_ok()
        );
    }
}
