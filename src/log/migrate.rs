//! Rewriting a store's log and dead letters from format 1 into log format v2, in place.
//!
//! Every value is read with the frozen format-1 decoder ([`super::legacy`]) and written again
//! in v2 ([`super::format`]) under the same key. A value already in v2 is checked and kept, so
//! a rewrite cut short (crash, ^C) is simply run again. The caller then empties the
//! projections and records the new format version in one batch ([`finish`]).

use super::codec::CodecError;
use super::store::{CF_CHECKPOINTS, CF_DEAD_LETTER, CF_LOG, Store, StoreError};
use super::{LogEntry, format, keys, legacy};

/// Values rewritten per write batch.
const CHUNK: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{cf} row {key}: {source}; the rows before it are already rewritten (a v2 row is kept as it is), so `tally migrate` can be run again once that row is repaired or removed"
    )]
    Undecodable {
        cf: &'static str,
        key: String,
        source: CodecError,
    },
}

/// How many values a rewrite changed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub rewritten: u64,
    pub already_v2: u64,
    /// (seq, trigger seq) of every alert entry of the log (appended by format-1 projectors).
    pub alert_entries: Vec<(u64, u64)>,
}

/// Rewrites the log into v2; `progress` hears the number of entries seen so far.
pub fn rewrite_log(store: &Store, progress: &dyn Fn(u64)) -> Result<Rewritten, MigrateError> {
    let mut alert_entries = Vec::new();
    let mut counts = rewrite(
        store,
        CF_LOG,
        progress,
        |bytes| match bytes.first() {
            Some(&format::FORMAT_V2) => Ok((format::decode_entry(bytes)?, true)),
            _ => Ok((legacy::decode_entry(bytes)?, false)),
        },
        format::encode_entry,
        |key, entry| {
            if let (LogEntry::QuotaAlert { alert }, Some(seq)) = (entry, keys::decode_seq_key(key))
            {
                alert_entries.push((seq, alert.trigger_seq));
            }
        },
    )?;
    counts.alert_entries = alert_entries;
    Ok(counts)
}

/// Rewrites the dead letters into v2.
pub fn rewrite_dead_letters(store: &Store) -> Result<Rewritten, MigrateError> {
    rewrite(
        store,
        CF_DEAD_LETTER,
        &|_| {},
        |bytes| match bytes.first() {
            Some(&format::FORMAT_V2) => Ok((format::decode_dead_letter(bytes)?, true)),
            _ => Ok((legacy::decode_dead_letter(bytes)?, false)),
        },
        format::encode_dead_letter,
        |_, _| {},
    )
}

/// Decodes every value of `cf` (either format) and writes again in v2 those that were not.
fn rewrite<T>(
    store: &Store,
    cf: &'static str,
    progress: &dyn Fn(u64),
    decode: impl Fn(&[u8]) -> Result<(T, bool), CodecError>,
    encode: impl Fn(&T) -> Vec<u8>,
    mut visit: impl FnMut(&[u8], &T),
) -> Result<Rewritten, MigrateError> {
    let mut counts = Rewritten::default();
    let mut start: Vec<u8> = Vec::new();
    loop {
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(CHUNK);
        store.scan(cf, &start, None, |key, value| {
            rows.push((key.to_vec(), value.to_vec()));
            rows.len() < CHUNK
        })?;
        let Some((last_key, _)) = rows.last() else {
            return Ok(counts);
        };
        // The least key above the last one read.
        let mut next_start = last_key.clone();
        next_start.push(0);
        let mut batch = store.batch();
        for (key, value) in &rows {
            let (decoded, was_v2) = decode(value).map_err(|source| MigrateError::Undecodable {
                cf,
                key: hex(key),
                source,
            })?;
            visit(key, &decoded);
            if was_v2 {
                counts.already_v2 += 1;
            } else {
                batch.put(cf, key, encode(&decoded));
                counts.rewritten += 1;
            }
        }
        store.commit(batch, true)?;
        progress(counts.rewritten + counts.already_v2);
        if rows.len() < CHUNK {
            return Ok(counts);
        }
        start = next_start;
    }
}

/// Empties `projection_cfs` and the projector checkpoint, puts `rows` and records this build's
/// format version, in one batch: the next engine refolds every projection from the rewritten
/// log.
pub fn finish(
    store: &Store,
    projection_cfs: &[&'static str],
    rows: &[super::store::PutRow],
) -> Result<(), StoreError> {
    let mut batch = store.batch();
    for &cf in projection_cfs.iter().chain([&CF_CHECKPOINTS]) {
        batch.delete_all(cf);
    }
    for (cf, key, value) in rows {
        batch.put(cf, key, value);
    }
    store.put_format_version(&mut batch);
    store.commit(batch, true)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
