//! The stored value of each kind of row: log entries and dead letters in log format v2
//! ([`super::format`]), dedup records in their compact layout, quota objects, alerts and audit
//! records as versioned bincode records ([`super::codec`]).

use super::codec::{CodecError, decode_record, encode_record, field, fixed_body};
use super::{DeadLetter, DedupRecord, LogEntry};

pub fn encode_entry(entry: &LogEntry) -> Vec<u8> {
    super::format::encode_entry(entry)
}

pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, CodecError> {
    super::format::decode_entry(bytes)
}

pub fn encode_quota_object(object: &crate::quota::QuotaObject) -> Vec<u8> {
    encode_record(object)
}

pub fn decode_quota_object(bytes: &[u8]) -> Result<crate::quota::QuotaObject, CodecError> {
    decode_record(bytes, "quota object")
}

pub fn encode_audit(record: &crate::audit::AuditRecord) -> Vec<u8> {
    encode_record(record)
}

pub fn decode_audit(bytes: &[u8]) -> Result<crate::audit::AuditRecord, CodecError> {
    decode_record(bytes, "audit record")
}

pub fn encode_alert(alert: &crate::quota::Alert) -> Vec<u8> {
    encode_record(alert)
}

pub fn decode_alert(bytes: &[u8]) -> Result<crate::quota::Alert, CodecError> {
    decode_record(bytes, "alert")
}

pub fn encode_dead_letter(letter: &DeadLetter) -> Vec<u8> {
    super::format::encode_dead_letter(letter)
}

pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    super::format::decode_dead_letter(bytes)
}

/// Version byte of the compact dedup value this build writes; version 1 (25 fixed bytes)
/// is still read, so a store written before needs no migration.
const DEDUP_COMPACT: u8 = 2;

const SECOND_MICROS: i64 = 1_000_000;

/// The largest second a 40-bit field holds (about 17,000 years after 1970); it stands for a
/// record kept for good (`event_time` of `i64::MAX`).
const FOREVER_SECONDS: i64 = (1 << 39) - 1;
const EARLIEST_SECONDS: i64 = -(1 << 39);

/// An encoded dedup value: at most 24 bytes, on the stack (one is written per event).
pub struct DedupValue {
    bytes: [u8; 24],
    len: usize,
}

impl AsRef<[u8]> for DedupValue {
    fn as_ref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&self.bytes)
    }
}

/// Version 2: the fingerprint (8 bytes), the event time in seconds rounded *up* (40 bits, so
/// the compaction filter forgets a record at most a second after the exact time would, never
/// before), then the seq as a LEB128 varint: 15–24 bytes instead of 25. The dedup family is
/// the largest share of the store, one record per event under a random key.
pub fn encode_dedup(record: &DedupRecord) -> DedupValue {
    let mut bytes = [0u8; 24];
    bytes[0] = DEDUP_COMPACT;
    bytes[1..9].copy_from_slice(&record.fingerprint.to_be_bytes());
    let seconds = seconds_rounded_up(record.event_time).to_be_bytes();
    bytes[9..14].copy_from_slice(&seconds[3..]);
    let mut len = 14;
    let mut seq = record.seq;
    loop {
        let low = (seq & 0x7f) as u8;
        seq >>= 7;
        if let Some(byte) = bytes.get_mut(len) {
            *byte = if seq == 0 { low } else { low | 0x80 };
        }
        len += 1;
        if seq == 0 {
            break;
        }
    }
    DedupValue { bytes, len }
}

fn seconds_rounded_up(event_time: i64) -> i64 {
    if event_time == i64::MAX {
        return FOREVER_SECONDS;
    }
    let seconds =
        event_time.div_euclid(SECOND_MICROS) + i64::from(event_time.rem_euclid(SECOND_MICROS) != 0);
    // Past the field's range later times become "for good" (forgotten later, never earlier);
    // earlier ones than 17,000 years before 1970 are refused by the writer long before.
    seconds.clamp(EARLIEST_SECONDS, FOREVER_SECONDS)
}

pub fn decode_dedup(bytes: &[u8]) -> Result<DedupRecord, CodecError> {
    const WHAT: &str = "dedup record";
    match bytes.split_first() {
        Some((&DEDUP_COMPACT, body)) => {
            let corrupt = |reason: &str| CodecError {
                what: WHAT,
                reason: reason.into(),
            };
            let (fixed, mut varint) = body
                .split_at_checked(13)
                .ok_or_else(|| corrupt("shorter than 14 bytes"))?;
            // The 40-bit seconds, sign-extended.
            let mut word = [0u8; 8];
            word[3..].copy_from_slice(&field::<5>(fixed, 8));
            let seconds = (i64::from_be_bytes(word) << 24) >> 24;
            let mut seq: u64 = 0;
            let mut shift = 0u32;
            loop {
                let (&byte, rest) = varint
                    .split_first()
                    .ok_or_else(|| corrupt("seq cut short"))?;
                varint = rest;
                let low = u64::from(byte & 0x7f);
                if shift > 63 || (shift == 63 && low > 1) {
                    return Err(corrupt("seq longer than 64 bits"));
                }
                seq |= low << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if !varint.is_empty() {
                return Err(corrupt("trailing bytes"));
            }
            Ok(DedupRecord {
                seq,
                event_time: if seconds == FOREVER_SECONDS {
                    i64::MAX
                } else {
                    seconds.saturating_mul(SECOND_MICROS)
                },
                fingerprint: u64::from_be_bytes(field::<8>(fixed, 0)),
            })
        }
        // Version 1, written by earlier builds: three fixed 8-byte words.
        _ => {
            let body: [u8; 24] = fixed_body(bytes, WHAT)?;
            let word = |at| field::<8>(&body, at);
            Ok(DedupRecord {
                seq: u64::from_be_bytes(word(0)),
                event_time: i64::from_be_bytes(word(8)),
                fingerprint: u64::from_be_bytes(word(16)),
            })
        }
    }
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
        fn dedup_records_round_trip_with_time_rounded_up_to_the_second(seq: u64, event_time: i64, fingerprint: u64) {
            let record = DedupRecord { seq, event_time, fingerprint };
            let decoded = decode_dedup(encode_dedup(&record).as_ref()).unwrap();
            prop_assert_eq!((decoded.seq, decoded.fingerprint), (seq, fingerprint));
            // Never earlier (the compaction filter must not forget a record too soon), and
            // within the second wherever 40 bits of seconds hold it.
            prop_assert!(decoded.event_time >= event_time);
            if (-500_000_000_000_000_000..500_000_000_000_000_000).contains(&event_time) {
                prop_assert!(decoded.event_time - event_time < SECOND_MICROS);
                prop_assert_eq!(decoded.event_time.rem_euclid(SECOND_MICROS), 0);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_entry(&bytes);
            let _ = decode_dedup(&bytes);
            let _ = decode_dead_letter(&bytes);
            let _ = super::super::codec::decode_u64(&bytes, "x");
            let _ = super::super::codec::decode_i128(&bytes, "x");
        }
    }

    #[test]
    fn dedup_values_are_compact_and_version_1_is_still_read() {
        let record = DedupRecord {
            seq: 1_000_000,
            event_time: 1_764_547_200_000_001,
            fingerprint: 0x0102_0304_0506_0708,
        };
        let compact = encode_dedup(&record);
        assert_eq!(
            compact.as_ref().len(),
            17,
            "version, fingerprint, second, 3-byte seq"
        );
        assert_eq!(
            decode_dedup(compact.as_ref()).unwrap().event_time,
            1_764_547_201_000_000,
            "the next second"
        );
        let before_1970 = DedupRecord {
            event_time: -1_500_000,
            ..record
        };
        let decoded = decode_dedup(encode_dedup(&before_1970).as_ref()).unwrap();
        assert_eq!(decoded.event_time, -1_000_000);
        let forever = DedupRecord {
            event_time: i64::MAX,
            ..record
        };
        assert_eq!(
            decode_dedup(encode_dedup(&forever).as_ref()).unwrap(),
            forever
        );
        // The 25-byte layout of earlier builds.
        let mut version_1 = vec![1u8];
        version_1.extend_from_slice(&7u64.to_be_bytes());
        version_1.extend_from_slice(&(-5i64).to_be_bytes());
        version_1.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            decode_dedup(&version_1).unwrap(),
            DedupRecord {
                seq: 7,
                event_time: -5,
                fingerprint: 9
            }
        );
        // Cut short, or a seq that never ends: refused with a reason, no panic.
        let bytes = compact.as_ref();
        let reason = |bytes: &[u8]| decode_dedup(bytes).unwrap_err().reason;
        assert!(reason(&bytes[..16]).contains("cut short"));
        assert!(reason(&bytes[..13]).contains("14 bytes"));
        let mut endless = bytes[..14].to_vec();
        endless.extend_from_slice(&[0xff; 11]);
        assert!(reason(&endless).contains("64 bits"));
        let mut trailing = bytes.to_vec();
        trailing.push(0);
        assert!(reason(&trailing).contains("trailing"));
    }
}
