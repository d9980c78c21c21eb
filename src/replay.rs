//! Replay tooling: rebuilding projections from the log into a shadow store, comparing them
//! with the live ones (checksums, first differing keys) and swapping them in atomically.
//!
//! A rebuild folds the whole log with the same code as the projector, into a fresh store
//! beside the data directory. It then takes the projector's gate, brings the shadow to the
//! live checkpoint, compares, and swaps what differs in one write batch, so readers see the
//! old projections until that instant and the new ones after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::sibling_dir;
use crate::engine::Engine;
use crate::log::keys;
use crate::log::store::{
    CF_ALERTS, CF_AUDIT, CF_BILLING, CF_CHECKPOINTS, CF_HOURLY, CF_LOG, CF_MONTHLY, CF_QUOTA,
    Store, StoreError, StoreOptions,
};
use crate::projection::USAGE_PROJECTION;
use crate::projection::runner::{FOLD_BATCH, GatherLimits, fold_range_gathering};

/// Projections by name, with the column families each is made of.
pub const PROJECTIONS: &[(&str, &[&str])] = &[
    ("usage", &[CF_HOURLY, CF_MONTHLY]),
    ("quota", &[CF_QUOTA, CF_ALERTS]),
    ("billing", &[CF_BILLING]),
    ("audit", &[CF_AUDIT]),
];

/// Why a replay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown projection `{0}`: one of usage, quota, billing, audit, all")]
    UnknownProjection(String),
    #[error("cannot prepare the shadow store in {dir}: {source}")]
    ShadowDir { dir: String, source: std::io::Error },
    #[error(
        "the catalog changes meters {meters}, which shape the {affected} projections; rebuilding only {requested} would leave {missing} folded under the old definitions: rebuild them together (--projection all), or use --dry-run to compare only"
    )]
    PartialCatalogRebuild {
        meters: String,
        affected: String,
        requested: String,
        missing: String,
    },
}

/// The projections folded by the meter definitions (aggregation, division factor, quota
/// binding): usage rows, quota levels and invoice lines all read them. The audit trail does
/// not.
pub const CATALOG_PROJECTIONS: &[&str] = &["usage", "quota", "billing"];

/// The projections a catalog change affects that `cfs` does not rebuild.
pub fn left_under_old_catalog(cfs: &[&str]) -> Vec<&'static str> {
    PROJECTIONS
        .iter()
        .filter(|(name, projection_cfs)| {
            CATALOG_PROJECTIONS.contains(name) && !projection_cfs.iter().all(|cf| cfs.contains(cf))
        })
        .map(|(name, _)| *name)
        .collect()
}

/// Refuses to swap in part of the projections under a changed catalog: the catalog can be
/// recorded only once every projection it affects was folded under it, and until then the
/// others would disagree with it. `changed_meters` empty: nothing to check.
pub fn check_catalog_rebuild(
    changed_meters: &[String],
    projection: &str,
    cfs: &[&str],
) -> Result<(), ReplayError> {
    let missing = left_under_old_catalog(cfs);
    if changed_meters.is_empty() || missing.is_empty() {
        return Ok(());
    }
    Err(ReplayError::PartialCatalogRebuild {
        meters: changed_meters.join(", "),
        affected: CATALOG_PROJECTIONS.join(", "),
        requested: projection.chars().take(64).collect(),
        missing: missing.join(", "),
    })
}

/// The column families of `name` (`all` for every projection).
pub fn projection_cfs(name: &str) -> Result<Vec<&'static str>, ReplayError> {
    let cfs: Vec<&'static str> = PROJECTIONS
        .iter()
        .filter(|(projection, _)| name == "all" || *projection == name)
        .flat_map(|(_, cfs)| cfs.iter().copied())
        .collect();
    if cfs.is_empty() {
        return Err(ReplayError::UnknownProjection(
            name.chars().take(64).collect(),
        ));
    }
    Ok(cfs)
}

/// A column family's content in one number: xxh3-128 over every (key, value) in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Checksum {
    pub rows: u64,
    #[serde(serialize_with = "hex_u128")]
    pub hash: u128,
}

fn hex_u128<S: serde::Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{value:032x}"))
}

pub fn checksum(store: &Store, cf: &'static str) -> Result<Checksum, StoreError> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut rows = 0u64;
    store.scan(cf, &[], None, |key, value| {
        // Lengths first, so (ab, c) and (a, bc) hash differently.
        hasher.update(&(key.len() as u64).to_be_bytes());
        hasher.update(key);
        hasher.update(&(value.len() as u64).to_be_bytes());
        hasher.update(value);
        rows += 1;
        true
    })?;
    Ok(Checksum {
        rows,
        hash: hasher.digest128(),
    })
}

/// The first keys (hex) at which two stores' column family differ, at most `limit`.
pub fn first_differences(
    live: &Store,
    rebuilt: &Store,
    cf: &'static str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut a = live.rows(cf).peekable();
    let mut b = rebuilt.rows(cf).peekable();
    let mut differences = Vec::new();
    while differences.len() < limit {
        let (left, right) = (a.peek(), b.peek());
        let step = match (left, right) {
            (None, None) => break,
            (Some(Err(_)), _) | (_, Some(Err(_))) => {
                // Surface the read error.
                if let Some(Err(e)) = a.next() {
                    return Err(e);
                }
                if let Some(Err(e)) = b.next() {
                    return Err(e);
                }
                continue;
            }
            (Some(Ok((ka, va))), Some(Ok((kb, vb)))) => match ka.cmp(kb) {
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        differences.push(hex::encode(ka));
                    }
                    (true, true)
                }
                std::cmp::Ordering::Less => {
                    differences.push(hex::encode(ka));
                    (true, false)
                }
                std::cmp::Ordering::Greater => {
                    differences.push(hex::encode(kb));
                    (false, true)
                }
            },
            (Some(Ok((ka, _))), None) => {
                differences.push(hex::encode(ka));
                (true, false)
            }
            (None, Some(Ok((kb, _)))) => {
                differences.push(hex::encode(kb));
                (false, true)
            }
        };
        if step.0 {
            a.next();
        }
        if step.1 {
            b.next();
        }
    }
    Ok(differences)
}

/// One column family compared.
#[derive(Debug, Clone, Serialize)]
pub struct CfReport {
    pub cf: &'static str,
    pub live: Checksum,
    pub rebuilt: Checksum,
    /// First differing keys (hex), when they differ.
    pub differences: Vec<String>,
}

/// What a rebuild found and did.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    pub entries: u64,
    pub seconds: f64,
    pub entries_per_second: f64,
    /// The raw scan of the same log, for comparison (entries/s).
    pub raw_scan_entries_per_second: f64,
    pub column_families: Vec<CfReport>,
    pub identical: bool,
    /// Whether the rebuilt projections were swapped in (only when something differed).
    pub swapped: bool,
}

/// Where a rebuild folds into (`<data-dir>.rebuild`); deleted at the start and end of each.
pub fn shadow_dir(data_dir: &Path) -> PathBuf {
    sibling_dir(data_dir, ".rebuild")
}

/// Times a plain scan of the log column family (no decoding): the ceiling of any fold.
pub fn raw_scan_rate(store: &Store) -> Result<(u64, f64), StoreError> {
    let started = Instant::now();
    let mut rows = 0u64;
    let mut bytes = 0usize;
    store.scan(CF_LOG, &[], None, |_, value| {
        rows += 1;
        bytes += value.len();
        true
    })?;
    std::hint::black_box(bytes);
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok((rows, rows as f64 / seconds))
}

/// Rebuilds `cfs` of the engine's store from its log (while it serves, or alone), compares
/// and swaps what differs; `dry_run` only compares. `progress` hears (folded, head).
///
/// The fold writes only to the shadow store (alerts are rows of it like any other): nothing
/// reaches the live directory before the swap, and a dry run never swaps.
pub fn rebuild(
    engine: &Engine,
    cfs: &[&'static str],
    dry_run: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<RebuildReport, ReplayError> {
    let live = engine.store();
    let (_, raw_rate) = raw_scan_rate(live)?;
    with_shadow(engine.config(), |shadow| {
        let context = engine.fold_context();
        let started = Instant::now();
        let mut next = 0u64;
        // Most of the log without holding anything; then, under the gate, up to the live
        // checkpoint (the projector may be behind the head, never ahead of it).
        fold_range(live, shadow, &context, &mut next, engine.head(), progress)?;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        // The rate of the timed fold; the catch-up under the gate is not in it.
        let rate = next as f64 / seconds;
        let gate = engine.projector_gate();
        loop {
            let held = gate.lock().map_err(|_| StoreError::Closed)?;
            let checkpoint = live.checkpoint(USAGE_PROJECTION)?.unwrap_or(0);
            if next > checkpoint {
                drop(held);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            fold_range(live, shadow, &context, &mut next, checkpoint, progress)?;
            let mut report = compare(live, shadow, cfs, next, seconds, rate, raw_rate)?;
            if !report.identical && !dry_run {
                let checkpoint_row = (
                    CF_CHECKPOINTS,
                    USAGE_PROJECTION.as_bytes().to_vec(),
                    crate::log::codec::encode_u64(checkpoint).to_vec(),
                );
                live.replace_from(shadow, cfs, &[checkpoint_row])?;
                report.swapped = true;
            }
            drop(held);
            return Ok(report);
        }
    })
}

/// A dry run on a stopped data directory: it is opened read-only (RocksDB's own log file goes
/// elsewhere too), folded into a shadow beside it under `config`'s catalog and compared, so
/// not one byte of the directory changes.
pub fn dry_run_stopped(
    config: &crate::config::Config,
    cfs: &[&'static str],
    progress: &dyn Fn(u64, u64),
) -> Result<RebuildReport, ReplayError> {
    let live = Store::open_read_only(
        &config.data_dir,
        &StoreOptions {
            dedup_horizon: config.dedup_horizon,
            min_free_disk: 0,
        },
    )?;
    let (_, raw_rate) = raw_scan_rate(&live)?;
    with_shadow(config, |shadow| {
        let context = crate::engine::fold_context(config);
        let started = Instant::now();
        let checkpoint = live.checkpoint(USAGE_PROJECTION)?.unwrap_or(0);
        let mut next = 0u64;
        fold_range(&live, shadow, &context, &mut next, checkpoint, progress)?;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        compare(
            &live,
            shadow,
            cfs,
            next,
            seconds,
            next as f64 / seconds,
            raw_rate,
        )
    })
}

/// Runs `work` on a fresh shadow store beside the data directory, removed afterwards.
fn with_shadow(
    config: &crate::config::Config,
    work: impl FnOnce(&Store) -> Result<RebuildReport, ReplayError>,
) -> Result<RebuildReport, ReplayError> {
    let dir = shadow_dir(&config.data_dir);
    let shadow_error = |source| ReplayError::ShadowDir {
        dir: dir.display().to_string(),
        source,
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(shadow_error)?;
    }
    let result = Store::open_scratch(
        &dir,
        &StoreOptions {
            dedup_horizon: config.dedup_horizon,
            min_free_disk: 0,
        },
    )
    .map_err(ReplayError::from)
    .and_then(|shadow| work(&shadow));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Rows a rebuild gathers in memory before it writes them as table files: finest usage rows
/// (one namespace's series in one hour) and billing usage rows, about 200 bytes each, plus
/// about 300 per finest row while one family's rolled-up rows are sorted, so a gathering
/// stays near 125 MB.
const COLLECTED_ROWS: usize = 250_000;

/// Folds `log`'s entries from `next` up to `until` into `shadow` ([`fold_range_gathering`]:
/// the shadow starts empty, so hourly and monthly rows go in as sorted table files).
fn fold_range(
    log: &Store,
    shadow: &Store,
    context: &crate::projection::runner::FoldContext,
    next: &mut u64,
    until: u64,
    progress: &dyn Fn(u64, u64),
) -> Result<(), StoreError> {
    let limits = GatherLimits {
        rows: COLLECTED_ROWS,
        batch_entries: FOLD_BATCH as u64,
    };
    fold_range_gathering(log, shadow, context, next, until, limits, progress)
}

/// Compares `cfs` of the live and the shadow store, into a report of a fold of `entries` at
/// `rate` entries/s.
fn compare(
    live: &Store,
    shadow: &Store,
    cfs: &[&'static str],
    entries: u64,
    seconds: f64,
    rate: f64,
    raw_rate: f64,
) -> Result<RebuildReport, ReplayError> {
    let mut reports = Vec::new();
    for &cf in cfs {
        let (live_sum, rebuilt_sum) = (checksum(live, cf)?, checksum(shadow, cf)?);
        let differences = if live_sum == rebuilt_sum {
            Vec::new()
        } else {
            first_differences(live, shadow, cf, 10)?
        };
        reports.push(CfReport {
            cf,
            live: live_sum,
            rebuilt: rebuilt_sum,
            differences,
        });
    }
    let identical = reports.iter().all(|r| r.live == r.rebuilt);
    Ok(RebuildReport {
        entries,
        seconds,
        entries_per_second: rate,
        raw_scan_entries_per_second: raw_rate,
        column_families: reports,
        identical,
        swapped: false,
    })
}

/// The seq key of a log position, for inspection output.
pub fn seq_hex(seq: u64) -> String {
    hex::encode(keys::seq_key(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_catalog_needs_every_projection_it_shapes() {
        let changed = vec!["http_lb_requests".to_owned()];
        let usage = projection_cfs("usage").unwrap();
        assert_eq!(left_under_old_catalog(&usage), ["quota", "billing"]);
        let error = check_catalog_rebuild(&changed, "usage", &usage).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("http_lb_requests")
                && message.contains("would leave quota, billing")
                && message.contains("--projection all"),
            "{message}"
        );
        // Nothing changed: any projection may be rebuilt alone.
        assert!(check_catalog_rebuild(&[], "usage", &usage).is_ok());
        let all = projection_cfs("all").unwrap();
        assert!(left_under_old_catalog(&all).is_empty());
        assert!(check_catalog_rebuild(&changed, "all", &all).is_ok());
        // The audit trail does not depend on the catalog.
        let audit = projection_cfs("audit").unwrap();
        assert_eq!(left_under_old_catalog(&audit).len(), 3);
    }

    #[test]
    fn sibling_directories_sit_beside_even_with_a_trailing_slash() {
        assert_eq!(
            shadow_dir(Path::new("/srv/data")),
            Path::new("/srv/data.rebuild")
        );
        assert_eq!(
            shadow_dir(Path::new("/srv/data/")),
            Path::new("/srv/data.rebuild")
        );
        assert_eq!(shadow_dir(Path::new("data")), Path::new("data.rebuild"));
        assert_eq!(
            sibling_dir(Path::new("./data/"), ".restoring"),
            Path::new("./data.restoring")
        );
        // `.` is the directory it stands for: its sibling is outside it.
        let here = std::fs::canonicalize(".").unwrap();
        let beside = sibling_dir(Path::new("."), ".backups");
        assert_eq!(beside.parent(), here.parent());
        assert!(!beside.starts_with(&here), "{}", beside.display());
    }
}

/// What `tally migrate` did to a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// The format version the directory held before.
    pub from_version: u32,
    pub to_version: u32,
    pub entries_rewritten: u64,
    pub entries_already_current: u64,
    pub dead_letters_rewritten: u64,
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Rewrite(#[from] crate::log::migrate::MigrateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{dir} holds format version {found}, newer than this build's {expected}: run the release that wrote it"
    )]
    Newer {
        dir: String,
        found: u32,
        expected: u32,
    },
}

/// Upgrades a stopped data directory to this build's format: the log and dead letters are
/// rewritten in log format v2 (entries already in it are kept), then every projection and
/// the projector checkpoint are emptied and the new version recorded in one batch, so the
/// next engine to open it refolds the projections from the rewritten log. Safe to run again
/// after an interruption; a directory already at this build's format is left alone.
pub fn migrate(
    data_dir: &Path,
    options: &StoreOptions,
    progress: &dyn Fn(u64),
) -> Result<MigrationReport, MigrationError> {
    use crate::log::migrate;
    use crate::log::store::FORMAT_VERSION;
    let (store, found) = Store::open_for_migration(data_dir, options)?;
    let mut report = MigrationReport {
        from_version: found,
        to_version: FORMAT_VERSION,
        entries_rewritten: 0,
        entries_already_current: 0,
        dead_letters_rewritten: 0,
    };
    if found == FORMAT_VERSION {
        return Ok(report);
    }
    if found > FORMAT_VERSION {
        return Err(MigrationError::Newer {
            dir: data_dir.display().to_string(),
            found,
            expected: FORMAT_VERSION,
        });
    }
    let log = migrate::rewrite_log(&store, progress)?;
    let letters = migrate::rewrite_dead_letters(&store)?;
    let projection_cfs: Vec<&'static str> = PROJECTIONS
        .iter()
        .flat_map(|(_, cfs)| cfs.iter().copied())
        .chain(crate::log::store::RETIRED_COLUMN_FAMILIES.iter().copied())
        .collect();
    // Alerts are filed at deterministic positions since format 2: the refold files them
    // where they were, so the webhook's cursor stays; before, it moves to those positions.
    let cursor = if found < 2 {
        crate::webhook::migrated_cursor_row(&store, &log.alert_entries)?
    } else {
        None
    };
    migrate::finish(&store, &projection_cfs, cursor.as_slice())?;
    store.flush()?;
    report.entries_rewritten = log.rewritten;
    report.entries_already_current = log.already_v2;
    report.dead_letters_rewritten = letters.rewritten;
    Ok(report)
}
