//! API tokens: salted SHA-256 hashes at rest, constant-time checks, tenant/namespace/role scope.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::log::codec;
use crate::log::store::{CF_TOKENS, Store, StoreError};
use crate::time::UnixMicros;

/// Tenant of the operator token and of events that name none.
pub const DEFAULT_TENANT: &str = "default";
const OPERATOR_ID: &str = "operator";
/// File (in the data dir) that receives a generated operator token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// A stored token: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    pub role: Role,
    /// Namespaces in scope; `*` means every namespace, including `system`.
    pub namespaces: Vec<String>,
    /// The operator may act for any tenant (events naming a tenant, token management).
    pub operator: bool,
    pub salt: [u8; 16],
    pub hash: [u8; 32],
    pub created_at: UnixMicros,
    pub expires_at: Option<UnixMicros>,
}

/// Who is calling, once a token has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub tenant: String,
    pub role: Role,
    pub namespaces: Vec<String>,
    pub operator: bool,
}

impl Caller {
    pub fn may_read_namespace(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == namespace)
    }
}

fn hash_secret(salt: &[u8; 16], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret);
    hasher.finalize().into()
}

impl TokenRecord {
    fn new(
        id: &str,
        tenant: &str,
        role: Role,
        namespaces: Vec<String>,
        operator: bool,
        secret: &[u8],
        now: UnixMicros,
    ) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        TokenRecord {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            role,
            namespaces,
            operator,
            salt,
            hash: hash_secret(&salt, secret),
            created_at: now,
            expires_at: None,
        }
    }

    fn matches(&self, secret: &[u8], now: UnixMicros) -> bool {
        let hash = hash_secret(&self.salt, secret);
        bool::from(hash[..].ct_eq(&self.hash[..])) && self.expires_at.is_none_or(|at| now < at)
    }

    fn caller(&self) -> Caller {
        Caller {
            token_id: self.id.clone(),
            tenant: self.tenant.clone(),
            role: self.role,
            namespaces: self.namespaces.clone(),
            operator: self.operator,
        }
    }
}

/// The token set, cached in memory and written through to the store.
pub struct Tokens {
    store: Store,
    records: RwLock<HashMap<String, TokenRecord>>,
}

impl Tokens {
    pub fn load(store: Store) -> Result<Tokens, StoreError> {
        let mut records = HashMap::new();
        let mut failure = None;
        store.scan(
            CF_TOKENS,
            b"",
            None,
            |_, value| match codec::decode_record::<TokenRecord>(value, "token") {
                Ok(record) => {
                    records.insert(record.id.clone(), record);
                    true
                }
                Err(source) => {
                    failure = Some(StoreError::Corrupt {
                        cf: CF_TOKENS,
                        source,
                    });
                    false
                }
            },
        )?;
        if let Some(error) = failure {
            return Err(error);
        }
        Ok(Tokens {
            store,
            records: RwLock::new(records),
        })
    }

    fn save(&self, record: TokenRecord) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            &self.store.cf(CF_TOKENS),
            record.id.as_bytes(),
            codec::encode_record(&record),
        );
        self.store.write(batch, true)?;
        if let Ok(mut records) = self.records.write() {
            records.insert(record.id.clone(), record);
        }
        Ok(())
    }

    /// Installs the operator token: the given one, or (when none is given and none is stored)
    /// a generated one written to `<data_dir>/admin-token` with mode 0600. Returns the token
    /// when it was generated, so it can be shown once.
    pub fn ensure_operator(
        &self,
        given: Option<&str>,
        data_dir: &Path,
        now: UnixMicros,
    ) -> Result<Option<String>, OperatorTokenError> {
        let operator = |secret: &[u8]| {
            let all = vec!["*".to_owned()];
            TokenRecord::new(
                OPERATOR_ID,
                DEFAULT_TENANT,
                Role::Admin,
                all,
                true,
                secret,
                now,
            )
        };
        if let Some(token) = given {
            self.save(operator(token.as_bytes()))?;
            return Ok(None);
        }
        let exists = self
            .records
            .read()
            .map(|r| r.contains_key(OPERATOR_ID))
            .unwrap_or(false);
        if exists {
            return Ok(None);
        }
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("tly_{}", hex::encode(secret));
        write_private_file(&data_dir.join(ADMIN_TOKEN_FILE), &token)?;
        self.save(operator(token.as_bytes()))?;
        Ok(Some(token))
    }

    /// Issues a token for `tenant`: `tly_<id>_<secret>`, returned once; only its hash is kept.
    pub fn issue(
        &self,
        tenant: &str,
        role: Role,
        namespaces: Vec<String>,
        expires_at: Option<UnixMicros>,
        now: UnixMicros,
    ) -> Result<(String, String), StoreError> {
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = hex::encode(rand::random::<[u8; 24]>());
        let mut record =
            TokenRecord::new(&id, tenant, role, namespaces, false, secret.as_bytes(), now);
        record.expires_at = expires_at;
        self.save(record)?;
        Ok((id.clone(), format!("tly_{id}_{secret}")))
    }

    /// Metadata of the tokens of `tenant` (every tenant's for `None`), oldest first.
    pub fn list(&self, tenant: Option<&str>) -> Vec<TokenRecord> {
        let mut records: Vec<TokenRecord> = self
            .records
            .read()
            .map(|records| {
                records
                    .values()
                    .filter(|r| tenant.is_none_or(|t| r.tenant == t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        records
    }

    /// The record of a token id.
    pub fn get(&self, id: &str) -> Option<TokenRecord> {
        self.records.read().ok()?.get(id).cloned()
    }

    /// Revokes a token at once (its record is deleted; the operator token cannot be revoked).
    pub fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        if id == OPERATOR_ID {
            return Ok(false);
        }
        let exists = self.get(id).is_some();
        if exists {
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_cf(&self.store.cf(CF_TOKENS), id.as_bytes());
            self.store.write(batch, true)?;
            if let Ok(mut records) = self.records.write() {
                records.remove(id);
            }
        }
        Ok(exists)
    }

    /// The caller a presented token speaks for, if it is valid now.
    pub fn verify(&self, presented: &str, now: UnixMicros) -> Option<Caller> {
        let records = self.records.read().ok()?;
        // Issued tokens look like `tly_<id>_<secret>`; anything else can only be the operator's.
        if let Some((id, secret)) = presented
            .strip_prefix("tly_")
            .and_then(|rest| rest.split_once('_'))
            && let Some(record) = records.get(id).filter(|r| r.id != OPERATOR_ID)
        {
            return record
                .matches(secret.as_bytes(), now)
                .then(|| record.caller());
        }
        let operator = records.get(OPERATOR_ID)?;
        operator
            .matches(presented.as_bytes(), now)
            .then(|| operator.caller())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorTokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the admin token file: {0}")]
    File(#[from] std::io::Error),
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_their_secret_and_expire() {
        let mut record = TokenRecord::new(
            "abc",
            "acme",
            Role::Read,
            vec!["shop".into()],
            false,
            b"s3cret",
            0,
        );
        assert!(record.matches(b"s3cret", 10));
        assert!(!record.matches(b"s3cres", 10));
        record.expires_at = Some(5);
        assert!(!record.matches(b"s3cret", 10));
        let caller = record.caller();
        assert!(caller.may_read_namespace("shop"));
        assert!(!caller.may_read_namespace("system"));
    }
}
