//! Identity: roles, callers, token records (salted SHA-256 hashes, never the secret) and their
//! stored form. Pure: the token set that caches and stores them is the shell's (`tally::auth`).

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::log::codec;
use crate::time::UnixMicros;

/// Tenant of the operator token and of events that name none.
pub const DEFAULT_TENANT: &str = "default";
pub const OPERATOR_ID: &str = "operator";
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

/// A token as stored (version 1): frozen apart from [`TokenRecord`], so changing that type
/// never changes stored bytes. Its layout is the one every release so far wrote.
#[derive(Serialize, Deserialize)]
struct StoredTokenV1 {
    id: String,
    tenant: String,
    role: StoredRoleV1,
    namespaces: Vec<String>,
    operator: bool,
    salt: [u8; 16],
    hash: [u8; 32],
    created_at: i64,
    expires_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
enum StoredRoleV1 {
    Read,
    Write,
    Admin,
}

pub fn encode_token(record: &TokenRecord) -> Vec<u8> {
    codec::encode_record(&StoredTokenV1 {
        id: record.id.clone(),
        tenant: record.tenant.clone(),
        role: match record.role {
            Role::Read => StoredRoleV1::Read,
            Role::Write => StoredRoleV1::Write,
            Role::Admin => StoredRoleV1::Admin,
        },
        namespaces: record.namespaces.clone(),
        operator: record.operator,
        salt: record.salt,
        hash: record.hash,
        created_at: record.created_at,
        expires_at: record.expires_at,
    })
}

pub fn decode_token(bytes: &[u8]) -> Result<TokenRecord, codec::CodecError> {
    let stored: StoredTokenV1 = codec::decode_record(bytes, "token")?;
    Ok(TokenRecord {
        id: stored.id,
        tenant: stored.tenant,
        role: match stored.role {
            StoredRoleV1::Read => Role::Read,
            StoredRoleV1::Write => Role::Write,
            StoredRoleV1::Admin => Role::Admin,
        },
        namespaces: stored.namespaces,
        operator: stored.operator,
        salt: stored.salt,
        hash: stored.hash,
        created_at: stored.created_at,
        expires_at: stored.expires_at,
    })
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

    /// Whether every namespace of `namespaces` is within this caller's scope (`*` only for a
    /// caller scoped to `*`).
    pub fn covers(&self, namespaces: &[impl AsRef<str>]) -> bool {
        !namespaces.is_empty()
            && namespaces
                .iter()
                .all(|n| self.may_read_namespace(n.as_ref()))
    }

    /// Whether this caller may see and revoke `token`: the operator any; a tenant's admin the
    /// tokens of its own tenant whose namespaces are all within its own scope, and never the
    /// operator token.
    pub fn may_manage(&self, token: &TokenRecord) -> bool {
        self.operator
            || (!token.operator && token.tenant == self.tenant && self.covers(&token.namespaces))
    }
}

pub fn hash_secret(salt: &[u8; 16], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret);
    hasher.finalize().into()
}

impl TokenRecord {
    pub fn new(
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

    pub fn matches(&self, secret: &[u8], now: UnixMicros) -> bool {
        let hash = hash_secret(&self.salt, secret);
        bool::from(hash[..].ct_eq(&self.hash[..])) && self.expires_at.is_none_or(|at| now < at)
    }

    pub fn caller(&self) -> Caller {
        Caller {
            token_id: self.id.clone(),
            tenant: self.tenant.clone(),
            role: self.role,
            namespaces: self.namespaces.clone(),
            operator: self.operator,
        }
    }
}

/// A token issued or revoked, as the engines of a cluster share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    Put(TokenRecord),
    Delete(String),
}
