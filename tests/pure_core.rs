//! The domain is a pure core: the `tally-core` crate (`src/core/`) holds events, units, time,
//! the catalog, identity, quota and billing rules, the folds, the log's facts and bytes and
//! the report shapes, and depends on no storage, runtime, HTTP or Kafka crate. The compiler
//! enforces that for its own source (it cannot name a crate it does not depend on); this test
//! keeps the crates it does depend on, however deep, free of them, reading `Cargo.lock`. The
//! other tests below guard the seams of the shell.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates the core must not reach: I/O belongs to the shell around it.
const FORBIDDEN: &[&str] = &[
    "rocksdb",
    "librocksdb-sys",
    "tokio",
    "mio",
    "axum",
    "rdkafka",
    "rdkafka-sys",
    "reqwest",
    "hyper",
];

/// Each package of `Cargo.lock` → the names of the packages it depends on (dev-dependencies
/// of workspace members included).
fn locked_dependencies(lock: &str) -> BTreeMap<String, Vec<String>> {
    let mut graph = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines() {
            let line = line.trim();
            if let Some(value) = line.strip_prefix("name = ") {
                name = Some(value.trim_matches('"').to_owned());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line.starts_with(']') {
                in_deps = false;
            } else if in_deps {
                // `"name"` or `"name version"` (when several versions are locked).
                let entry = line.trim_end_matches(',').trim_matches('"');
                deps.push(entry.split(' ').next().unwrap_or_default().to_owned());
            }
        }
        let name = name.expect("a package with a name");
        graph.entry(name).or_insert_with(Vec::new).extend(deps);
    }
    graph
}

/// Every package `root` reaches through `graph`, itself included.
fn closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next = vec![root.to_owned()];
    while let Some(name) = next.pop() {
        if seen.insert(name.clone()) {
            next.extend(graph.get(&name).into_iter().flatten().cloned());
        }
    }
    seen
}

#[test]
fn the_core_crate_reaches_no_storage_runtime_http_or_kafka_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("read Cargo.lock");
    let graph = locked_dependencies(&lock);
    let core = closure(&graph, "tally-core");
    assert!(core.len() > 10, "tally-core reaches {core:?}");
    assert!(core.contains("serde") && !core.contains("tally"));
    let found: Vec<&str> = FORBIDDEN
        .iter()
        .copied()
        .filter(|krate| core.contains(*krate))
        .collect();
    assert!(
        found.is_empty(),
        "the pure core reaches I/O crates: {found:?}"
    );
    // The check sees them where they are: the shell reaches every one.
    let shell = closure(&graph, "tally");
    for krate in ["rocksdb", "tokio", "axum", "rdkafka", "hyper", "tally-core"] {
        assert!(shell.contains(krate), "tally does not reach {krate}");
    }
}

/// The core's manifest names no path dependency but itself: nothing of the shell comes in.
#[test]
fn the_core_manifest_depends_on_no_other_workspace_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest =
        std::fs::read_to_string(root.join("src/core/Cargo.toml")).expect("read the core manifest");
    assert!(manifest.contains("name = \"tally-core\""));
    assert!(!manifest.contains("path = \"../"), "{manifest}");
    for krate in FORBIDDEN {
        assert!(
            !manifest
                .lines()
                .any(|l| l.starts_with(&format!("{krate} "))),
            "src/core/Cargo.toml depends on {krate}"
        );
    }
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("read a source folder")
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
