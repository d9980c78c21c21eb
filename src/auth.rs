//! API tokens: salted SHA-256 hashes at rest, constant-time checks, tenant/namespace/role scope;
//! and the limit on failed authentications per client address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::log::append::RowWrite;
use crate::log::store::{CF_TOKENS, Store, StoreError};
use crate::time::UnixMicros;
pub use tally_core::identity::*;

/// The token set, cached in memory and written through to the store.
pub struct Tokens {
    store: Store,
    records: RwLock<HashMap<String, TokenRecord>>,
}

impl Tokens {
    pub fn load(store: Store) -> Result<Tokens, StoreError> {
        let mut records = HashMap::new();
        store.scan_decoding(CF_TOKENS, b"", None, |_, value| {
            let record = decode_token(value)?;
            records.insert(record.id.clone(), record);
            Ok(true)
        })?;
        Ok(Tokens {
            store,
            records: RwLock::new(records),
        })
    }

    /// Writes a token at start-up (the operator's), before the log writer runs; changes made
    /// through the API go through the writer with their audit record instead.
    fn save(&self, record: TokenRecord) -> Result<(), StoreError> {
        let mut batch = self.store.batch();
        batch.put(CF_TOKENS, record.id.as_bytes(), encode_token(&record));
        self.store.commit(batch, true)?;
        self.remember(record);
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

    /// A new token for `tenant`, not stored yet: its record, and `tly_<id>_<secret>` to show
    /// once (only the hash is kept).
    pub fn mint(
        tenant: &str,
        role: Role,
        namespaces: Vec<String>,
        expires_at: Option<UnixMicros>,
        now: UnixMicros,
    ) -> (TokenRecord, String) {
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = hex::encode(rand::random::<[u8; 24]>());
        let mut record =
            TokenRecord::new(&id, tenant, role, namespaces, false, secret.as_bytes(), now);
        record.expires_at = expires_at;
        (record, format!("tly_{id}_{secret}"))
    }

    /// The store write that keeps `record`, for the batch that also holds its audit record.
    pub fn put_row(record: &TokenRecord) -> RowWrite {
        RowWrite::Put {
            cf: CF_TOKENS,
            key: record.id.as_bytes().to_vec(),
            value: encode_token(record),
        }
    }

    /// The store write that revokes token `id`.
    pub fn delete_row(id: &str) -> RowWrite {
        RowWrite::Delete {
            cf: CF_TOKENS,
            key: id.as_bytes().to_vec(),
        }
    }

    /// Serves `record` from now on; call once its [`put_row`](Self::put_row) is written.
    pub fn remember(&self, record: TokenRecord) {
        if let Ok(mut records) = self.records.write() {
            records.insert(record.id.clone(), record);
        }
    }

    /// Stops serving token `id`; call once its [`delete_row`](Self::delete_row) is written.
    pub fn forget(&self, id: &str) {
        if let Ok(mut records) = self.records.write() {
            records.remove(id);
        }
    }

    /// Applies a token change another engine of the cluster made (or this one, read back from
    /// the control topic): stored and in force at once. The operator token is never replaced
    /// this way: each engine takes its own from its flags.
    pub fn apply_replicated(&self, change: &TokenChange) -> Result<(), StoreError> {
        let mut batch = self.store.batch();
        match change {
            TokenChange::Put(record) if record.id != OPERATOR_ID => {
                batch.put(CF_TOKENS, record.id.as_bytes(), encode_token(record));
                self.store.commit(batch, true)?;
                self.remember(record.clone());
            }
            TokenChange::Delete(id) if id != OPERATOR_ID => {
                batch.delete(CF_TOKENS, id.as_bytes());
                self.store.commit(batch, true)?;
                self.forget(id);
            }
            _ => {}
        }
        Ok(())
    }

    /// How many tokens `tenant` holds (the operator token not counted).
    pub fn count(&self, tenant: &str) -> usize {
        self.records.read().map_or(0, |records| {
            records
                .values()
                .filter(|r| !r.operator && r.tenant == tenant)
                .count()
        })
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

/// Most client addresses whose failures are tracked at once; bounds the memory an attacker
/// with many addresses can make the server hold.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// Failed authentications per client address, counted in fixed windows: once a client has
/// failed `max` times within `window` of its first failure, every authentication it attempts
/// (with a valid token too, so guessing learns nothing) is refused until the window ends.
pub struct FailureLimit {
    max: u32,
    window: Duration,
    clients: Mutex<Clients>,
}

#[derive(Default)]
struct Clients {
    windows: HashMap<IpAddr, FailureWindow>,
    /// When ended windows were last dropped: at most once a window, so a full table does not
    /// make every failure scan it under the lock.
    swept: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl FailureLimit {
    /// `None` when `max` is 0 (no limit).
    pub fn new(max: u32, window: Duration) -> Option<FailureLimit> {
        (max > 0).then(|| FailureLimit {
            max,
            window,
            clients: Mutex::default(),
        })
    }

    /// How long `client` must wait before it may try to authenticate again, if it has used
    /// up its failures.
    pub fn blocked(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().ok()?;
        let window = clients.windows.get(&client_key(client))?;
        self.wait(window, now)
    }

    /// Counts one failed authentication of `client`.
    pub fn record_failure(&self, client: IpAddr, now: Instant) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        let key = client_key(client);
        let clients = &mut *clients;
        if clients.windows.len() >= MAX_TRACKED_CLIENTS && !clients.windows.contains_key(&key) {
            if clients
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= self.window)
            {
                let window = self.window;
                clients
                    .windows
                    .retain(|_, w| now.saturating_duration_since(w.started) < window);
                clients.swept = Some(now);
            }
            if clients.windows.len() >= MAX_TRACKED_CLIENTS {
                // Full of live windows: this client goes uncounted rather than evicting one
                // that is being limited (the README says so).
                return;
            }
        }
        let window = clients.windows.entry(key).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.started) >= self.window {
            *window = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    fn wait(&self, window: &FailureWindow, now: Instant) -> Option<Duration> {
        let ends = window.started + self.window;
        (window.failures >= self.max && now < ends).then(|| ends - now)
    }
}

/// The address failures are counted under: IPv6 clients by their /64 (one host usually holds
/// a whole /64), IPv4-mapped IPv6 as IPv4.
fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
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

    fn token(tenant: &str, namespaces: &[&str], operator: bool) -> TokenRecord {
        let namespaces = namespaces.iter().map(|n| n.to_string()).collect();
        TokenRecord::new("t", tenant, Role::Admin, namespaces, operator, b"s", 0)
    }

    #[test]
    fn a_scoped_admin_manages_only_tokens_within_its_scope() {
        let shop = token("acme", &["shop"], false).caller();
        assert!(shop.may_manage(&token("acme", &["shop"], false)));
        assert!(!shop.may_manage(&token("acme", &["*"], false)));
        assert!(!shop.may_manage(&token("acme", &["shop", "blog"], false)));
        assert!(!shop.may_manage(&token("globex", &["shop"], false)));
        let all = token("acme", &["*"], false).caller();
        assert!(all.may_manage(&token("acme", &["*"], false)));
        assert!(all.may_manage(&token("acme", &["shop", "blog"], false)));
        assert!(!all.may_manage(&token("globex", &["*"], false)));
        assert!(
            !all.may_manage(&token("acme", &["*"], true)),
            "the operator token"
        );
        let operator = token("default", &["*"], true).caller();
        assert!(operator.may_manage(&token("globex", &["shop"], false)));
    }

    #[test]
    fn failures_block_a_client_for_the_rest_of_its_window() {
        let limit = FailureLimit::new(3, Duration::from_secs(60)).unwrap();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for s in 0..3 {
            assert_eq!(limit.blocked(client, at(s)), None, "failure {s} is allowed");
            limit.record_failure(client, at(s));
        }
        assert_eq!(limit.blocked(client, at(10)), Some(Duration::from_secs(50)));
        assert_eq!(
            limit.blocked(other, at(10)),
            None,
            "other clients are not affected"
        );
        assert_eq!(limit.blocked(client, at(60)), None, "a new window");
        limit.record_failure(client, at(60));
        assert_eq!(
            limit.blocked(client, at(61)),
            None,
            "one failure in the new window"
        );
        assert!(FailureLimit::new(0, Duration::from_secs(60)).is_none());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let limit = FailureLimit::new(2, Duration::from_secs(60)).unwrap();
        let now = Instant::now();
        limit.record_failure("2001:db8:1:2::1".parse().unwrap(), now);
        limit.record_failure("2001:db8:1:2::ffff".parse().unwrap(), now);
        assert!(
            limit
                .blocked("2001:db8:1:2::3".parse().unwrap(), now)
                .is_some()
        );
        assert!(
            limit
                .blocked("2001:db8:1:3::1".parse().unwrap(), now)
                .is_none()
        );
        limit.record_failure("::ffff:192.0.2.9".parse().unwrap(), now);
        limit.record_failure("192.0.2.9".parse().unwrap(), now);
        assert!(limit.blocked("192.0.2.9".parse().unwrap(), now).is_some());
    }
}
