//! Golden bytes of the stored formats: every kind of log entry and a dead letter, in log
//! format v2 (what this build writes) and in format 1 (what the release before it wrote, read
//! only by `tally migrate`). An accidental change to either format fails here.
//!
//! The fixtures under `tests/fixtures/log_v2/` and `tests/fixtures/log_v1/` are the bytes of
//! [`tally::log::format::examples`]. They are written once, never regenerated: a deliberate
//! format change adds a payload version and new fixtures beside the old ones.

use std::path::PathBuf;

use tally::log::format::{self, Kind};
use tally::log::legacy;

fn fixture(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(format!("{name}.bin"))
}

fn read(path: &PathBuf) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_kind_decodes_from_its_golden_v2_bytes_and_encodes_to_them() {
    let examples = format::examples();
    assert_eq!(examples.len(), Kind::ALL.len(), "one example per kind");
    for (kind, entry) in examples {
        let path = fixture("log_v2", kind.name());
        let golden = read(&path);
        assert_eq!(
            format::decode_entry(&golden).unwrap(),
            entry,
            "{} decodes to its example",
            kind.name()
        );
        assert_eq!(
            format::encode_entry(&entry),
            golden,
            "{} encodes to the same bytes as before",
            kind.name()
        );
        let envelope = format::read_envelope(&golden).unwrap();
        assert_eq!(
            (
                envelope.kind,
                envelope.payload_version,
                envelope.tenant.as_str()
            ),
            (kind, 1, "acme")
        );
        // The kind number is the envelope's bytes 1–2, big-endian: stable across builds.
        assert_eq!(golden[0], 2);
        assert_eq!(u16::from_be_bytes([golden[1], golden[2]]), kind.number());
    }
    let letter = format::example_dead_letter();
    let golden = read(&fixture("log_v2", "dead_letter"));
    assert_eq!(format::decode_dead_letter(&golden).unwrap(), letter);
    assert_eq!(format::encode_dead_letter(&letter), golden);
}

#[test]
fn format_1_bytes_of_every_kind_upcast_to_the_current_entries() {
    for (kind, entry) in format::examples() {
        let golden = read(&fixture("log_v1", kind.name()));
        assert_eq!(golden[0], 1, "format 1 starts with its version byte");
        assert_eq!(
            legacy::decode_entry(&golden).unwrap(),
            entry,
            "{} in format 1",
            kind.name()
        );
        // This build's decoder refuses format 1 and names the way out.
        let refused = format::decode_entry(&golden).unwrap_err();
        assert!(refused.reason.contains("tally migrate"), "{refused}");
    }
    let golden = read(&fixture("log_v1", "dead_letter"));
    assert_eq!(
        legacy::decode_dead_letter(&golden).unwrap(),
        format::example_dead_letter()
    );
}

/// Writes the fixtures when `TALLY_WRITE_LOG_FIXTURES=1`; only for a new kind or payload
/// version, whose files do not exist yet. It never overwrites one.
#[test]
fn write_missing_v2_fixtures_when_asked() {
    if std::env::var_os("TALLY_WRITE_LOG_FIXTURES").is_none() {
        return;
    }
    let write = |name: &str, bytes: Vec<u8>| {
        let path = fixture("log_v2", name);
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
    };
    for (kind, entry) in format::examples() {
        write(kind.name(), format::encode_entry(&entry));
    }
    write(
        "dead_letter",
        format::encode_dead_letter(&format::example_dead_letter()),
    );
}
