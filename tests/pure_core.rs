//! The domain is a pure core: the modules that define events, units, time, the catalog,
//! billing, quotas, the projection folds' types and the report shapes import no storage,
//! runtime, HTTP or Kafka crate. This test reads their sources and fails, naming the file and
//! line, on any such import, so the boundary cannot erode unnoticed.

use std::path::{Path, PathBuf};

/// Crates the domain must not name: I/O belongs to the adapters around it.
const FORBIDDEN: &[&str] = &["rocksdb", "tokio", "axum", "rdkafka", "reqwest", "hyper"];

/// The domain's files and folders, below `src/`. (The projection runner and the projection
/// reads and writes are adapters today; they join this list as they become pure folds.)
const DOMAIN: &[&str] = &[
    "event.rs",
    "units.rs",
    "time.rs",
    "catalog.rs",
    "report.rs",
    "ids.rs",
    "audit.rs",
    "billing",
    "quota",
    "projection/mod.rs",
    // The log's formats: bytes ↔ entries, no storage.
    "log/format.rs",
    "log/legacy.rs",
    "log/codec.rs",
    "log/keys.rs",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("read a domain folder")
            .map(|entry| entry.expect("a folder entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// Whether `line` names `krate` as a path root (`rocksdb::…`, `use tokio…`, `tokio::{…}`).
fn names_crate(line: &str, krate: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    code.match_indices(krate).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + krate.len()..];
        let starts_path = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        starts_path
            && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as "))
    })
}

#[test]
fn the_domain_imports_no_storage_runtime_http_or_kafka_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in DOMAIN {
        let path = src.join(part);
        assert!(path.exists(), "{} is listed but missing", path.display());
        rust_files(&path, &mut files);
    }
    assert!(files.len() >= DOMAIN.len());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a domain file");
        for (number, line) in text.lines().enumerate() {
            for krate in FORBIDDEN {
                if names_crate(line, krate) {
                    found.push(format!(
                        "{}:{}: names `{krate}`: {}",
                        file.strip_prefix(&src).unwrap_or(file).display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the pure core imports I/O crates:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_recognises_an_import() {
    assert!(names_crate("use rocksdb::WriteBatch;", "rocksdb"));
    assert!(names_crate(
        "    let b = rocksdb::WriteBatch::default();",
        "rocksdb"
    ));
    assert!(names_crate("use tokio;", "tokio"));
    assert!(!names_crate(
        "// rocksdb::WriteBatch in a comment",
        "rocksdb"
    ));
    assert!(!names_crate("let my_tokio_thing = 1;", "tokio"));
    assert!(!names_crate("crate::hyperlink::x", "hyper"));
}

/// Every `.rs` file below `src/`, as (path relative to `src/`, text).
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .map(|file| {
            (
                file.strip_prefix(&src)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
                std::fs::read_to_string(file).expect("read a source file"),
            )
        })
        .collect()
}

/// The storage seam: only the store names RocksDB; every other module writes through its
/// typed batches and reads through its scans.
#[test]
fn only_the_store_imports_rocksdb() {
    let mut found = Vec::new();
    for (path, text) in sources() {
        if path == "log/store.rs" {
            continue;
        }
        for (number, line) in text.lines().enumerate() {
            if names_crate(line, "rocksdb") {
                found.push(format!("{path}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "RocksDB outside the store:\n{}",
        found.join("\n")
    );
}

/// HTTP handlers call read functions; none names a column family.
#[test]
fn no_handler_names_a_column_family() {
    let mut found = Vec::new();
    for (path, text) in sources() {
        if !path.starts_with("api/") {
            continue;
        }
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains("CF_") {
                found.push(format!("{path}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "handlers naming column families:\n{}",
        found.join("\n")
    );
}
