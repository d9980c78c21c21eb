//! Value encodings: log entries and dead letters in log format v2 ([`super::format`]); other
//! values a version byte, then either bincode (projection records) or a fixed hand-written
//! layout (hot, small records).

use serde::{Serialize, de::DeserializeOwned};

use super::{DeadLetter, DedupRecord, LogEntry};

/// Version byte of every value written by this build.
pub const VALUE_VERSION: u8 = 1;

/// A value that could not be decoded: a corrupt row or one written by an unknown version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

/// Largest value bincode may decode. A corrupt length prefix must be refused, not allocated:
/// without a limit a damaged row claiming 2^61 bytes aborts the process.
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    // Encoding our own plain data types into a Vec cannot fail.
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("bincode encodes plain data");
    out
}

fn decode_versioned<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    let body = versioned_body(bytes, what)?;
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError {
            what,
            reason: e.to_string(),
        })?;
    if used != body.len() {
        return Err(CodecError {
            what,
            reason: format!("{} trailing bytes", body.len() - used),
        });
    }
    Ok(value)
}

/// The bytes after the version byte, if the version is one this build reads.
pub fn versioned_body<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], CodecError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, body)) => Ok(body),
        Some((version, _)) => Err(CodecError {
            what,
            reason: format!("unknown value version {version}"),
        }),
        None => Err(CodecError {
            what,
            reason: "empty value".into(),
        }),
    }
}

pub fn encode_entry(entry: &LogEntry) -> Vec<u8> {
    super::format::encode_entry(entry)
}

pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, CodecError> {
    super::format::decode_entry(bytes)
}

pub fn encode_quota_object(object: &crate::quota::QuotaObject) -> Vec<u8> {
    encode_versioned(object)
}

pub fn decode_quota_object(bytes: &[u8]) -> Result<crate::quota::QuotaObject, CodecError> {
    decode_versioned(bytes, "quota object")
}

pub fn encode_audit(record: &crate::audit::AuditRecord) -> Vec<u8> {
    encode_versioned(record)
}

pub fn decode_audit(bytes: &[u8]) -> Result<crate::audit::AuditRecord, CodecError> {
    decode_versioned(bytes, "audit record")
}

pub fn encode_alert(alert: &crate::quota::Alert) -> Vec<u8> {
    encode_versioned(alert)
}

pub fn decode_alert(bytes: &[u8]) -> Result<crate::quota::Alert, CodecError> {
    decode_versioned(bytes, "alert")
}

pub fn encode_dead_letter(letter: &DeadLetter) -> Vec<u8> {
    super::format::encode_dead_letter(letter)
}

pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    super::format::decode_dead_letter(bytes)
}

pub fn encode_dedup(record: &DedupRecord) -> [u8; 25] {
    let mut out = [0u8; 25];
    out[0] = VALUE_VERSION;
    out[1..9].copy_from_slice(&record.seq.to_be_bytes());
    out[9..17].copy_from_slice(&record.event_time.to_be_bytes());
    out[17..25].copy_from_slice(&record.fingerprint.to_be_bytes());
    out
}

pub fn decode_dedup(bytes: &[u8]) -> Result<DedupRecord, CodecError> {
    let body: [u8; 24] = fixed_body(bytes, "dedup record")?;
    let word = |at| field::<8>(&body, at);
    Ok(DedupRecord {
        seq: u64::from_be_bytes(word(0)),
        event_time: i64::from_be_bytes(word(8)),
        fingerprint: u64::from_be_bytes(word(16)),
    })
}

/// The `N` bytes at `at` of a fixed-width body whose length was checked (zeros past its end,
/// which a checked body never reaches).
pub fn field<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
    body.get(at..at.saturating_add(N))
        .and_then(|bytes| bytes.try_into().ok())
        .unwrap_or([0; N])
}

/// The body of a versioned fixed-width value, checked for its length.
pub fn fixed_body<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], CodecError> {
    let body = versioned_body(bytes, what)?;
    body.try_into().map_err(|_| CodecError {
        what,
        reason: format!("{} bytes, expected {N}", body.len()),
    })
}

pub fn encode_u64(value: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&value.to_be_bytes());
    out
}

pub fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, CodecError> {
    fixed_body(bytes, what).map(u64::from_be_bytes)
}

pub fn encode_i64(value: i64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&value.to_be_bytes());
    out
}

pub fn decode_i64(bytes: &[u8], what: &'static str) -> Result<i64, CodecError> {
    fixed_body(bytes, what).map(i64::from_be_bytes)
}

pub fn encode_i128(value: i128) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&value.to_be_bytes());
    out
}

pub fn decode_i128(bytes: &[u8], what: &'static str) -> Result<i128, CodecError> {
    fixed_body(bytes, what).map(i128::from_be_bytes)
}

/// A stored record (tokens, the billing projection's storage structs in
/// [`crate::projection::billing`]): the version byte, then bincode.
pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    encode_versioned(value)
}

pub fn decode_record<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    decode_versioned(bytes, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventSource, UsageEvent};
    use crate::units::Micros;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(id in "[ -~]{1,40}", ns in "[a-z]{1,10}", quantity in 0i64..i64::MAX, ts: i64,
                              labels in proptest::collection::btree_map("[a-z]{1,5}", "[ -~]{0,8}", 0..4),
                              offset: i64, partition: i32) {
            let event = UsageEvent {
                tenant: "t".into(), id, namespace: ns, metric_label: "m".into(), quantity: Micros(quantity),
                timestamp: ts, object_name: "o".into(), deployment: String::new(), container: String::new(), labels,
            };
            for source in [EventSource::Http { received_at: ts }, EventSource::Kafka { topic: "usage".into(), partition, offset }] {
                let entry = LogEntry::UsageRecorded { event: event.clone(), source, recorded_at: ts };
                prop_assert_eq!(decode_entry(&encode_entry(&entry)).unwrap(), entry);
            }
        }

        #[test]
        fn dedup_records_round_trip(seq: u64, event_time: i64, fingerprint: u64) {
            let record = DedupRecord { seq, event_time, fingerprint };
            prop_assert_eq!(decode_dedup(&encode_dedup(&record)).unwrap(), record);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_entry(&bytes);
            let _ = decode_dedup(&bytes);
            let _ = decode_dead_letter(&bytes);
            let _ = decode_u64(&bytes, "x");
            let _ = decode_i128(&bytes, "x");
        }
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = encode_u64(5).to_vec();
        bytes[0] = 9;
        assert!(
            decode_u64(&bytes, "checkpoint")
                .unwrap_err()
                .reason
                .contains("version 9")
        );
    }
}
