//! The operator commands: `tally replay …`, `tally inspect`, `tally backup`, `tally restore`,
//! `tally migrate`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::json;
use tally::config::{Config, LogFormat, ServeArgs, sibling_dir};
use tally::engine::Engine;
use tally::ingest::replay::{ReplayStart, repair_dead_letters, replay_kafka};
use tally::log::store::{COLUMN_FAMILIES, Store, StoreOptions};
use tally::replay::{self, PROJECTIONS};
use tally::time;

#[derive(clap::Subcommand)]
pub enum ReplayCommand {
    /// Fold the log into fresh projections, compare them with the live ones (checksums, first
    /// differing keys) and swap them in atomically when they differ. With the server stopped;
    /// while it runs, use `POST /api/tally/admin/rebuild`.
    Rebuild(RebuildArgs),
    /// Read a range of a Kafka topic into the log again; dedup makes overlap harmless.
    Kafka(ReplayKafkaArgs),
    /// Re-validate dead letters with the current catalog and append the events that now pass.
    DeadLetters(DeadLetterArgs),
}

#[derive(clap::Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    engine: ServeArgs,
    /// usage, quota, billing or all.
    #[arg(long, default_value = "all")]
    projection: String,
    /// Compare only; never swap.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ReplayKafkaArgs {
    #[command(flatten)]
    engine: ServeArgs,
    /// Where to start, per partition: `P:O[,P:O…]`.
    #[arg(
        long,
        conflicts_with = "from_time",
        required_unless_present = "from_time"
    )]
    from_offset: Option<String>,
    /// Start every partition at the first message at or after this RFC 3339 time.
    #[arg(long)]
    from_time: Option<String>,
}

#[derive(clap::Args)]
pub struct DeadLetterArgs {
    #[command(flatten)]
    engine: ServeArgs,
    /// Only dead letters whose reason or field contains this.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Directory of the RocksDB store (opened read-only: works beside a running engine).
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: Option<InspectCommand>,
}

#[derive(clap::Subcommand)]
pub enum InspectCommand {
    /// Log length and size, column family sizes, projector checkpoint and lag (the default).
    Summary,
    /// One log entry, by seq or by tenant and event id.
    Event {
        #[arg(long, conflicts_with_all = ["tenant", "id"])]
        seq: Option<u64>,
        #[arg(long, requires = "id")]
        tenant: Option<String>,
        #[arg(long, requires = "tenant")]
        id: Option<String>,
    },
    /// Dead letters as NDJSON, filtered by reason and receive time.
    DeadLetters {
        #[arg(long)]
        reason: Option<String>,
        /// RFC 3339: received at or after.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339: received before.
        #[arg(long)]
        until: Option<String>,
    },
    /// A checksum of every projection column family.
    Checksums,
    /// Which partitions of which topics the store holds, and up to which offset (in a
    /// cluster: its source topic and changelog), with what is not yet published.
    Partitions,
}

#[derive(clap::Args)]
pub struct BackupArgs {
    /// Directory of the RocksDB store (the server stopped; while it runs, use
    /// `POST /api/tally/admin/backup`).
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// New directory for the copy.
    #[arg(long)]
    to: PathBuf,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// A backup made by `tally backup` or the admin endpoint.
    #[arg(long)]
    from: PathBuf,
    /// Where to restore it (must not exist or be empty).
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The engine settings the projections are rebuilt with (the catalog above all); only
    /// --data-dir is needed when the catalog is the built-in one.
    #[command(flatten)]
    engine: ServeArgs,
}

/// For commands that open the store without its log writer: they never move the stored
/// forgetting horizon, so the horizon given here changes nothing.
fn store_options() -> StoreOptions {
    StoreOptions {
        dedup_horizon: std::time::Duration::from_secs(35 * 86_400),
        min_free_disk: 0,
    }
}

/// Opens a stopped data directory's store (RocksDB's lock refuses one `tally serve` holds).
fn open_stopped(data_dir: &Path) -> anyhow::Result<Store> {
    Store::open(data_dir, &store_options()).with_context(|| {
        format!(
            "cannot open {}; if `tally serve` runs on it, use its /api/tally/admin endpoints",
            data_dir.display()
        )
    })
}

/// Opens an engine on a stopped data directory, runs `work`, and stops it cleanly.
fn with_engine<T>(
    args: &ServeArgs,
    accept_catalog_change: bool,
    work: impl FnOnce(&Engine) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut config = Config::from_args(args)?;
    config.accept_catalog_change = accept_catalog_change;
    // Tools must not consume on their own: replay reads Kafka itself.
    config.kafka = None;
    let dir = config.data_dir.display().to_string();
    let engine = Arc::new(Engine::open(config, time::system_clock()).with_context(|| {
        format!(
            "cannot open {dir}; if `tally serve` runs on it, use its /api/tally/admin endpoints"
        )
    })?);
    let result = work(&engine);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(engine.shutdown());
    result
}

pub fn replay(command: ReplayCommand) -> anyhow::Result<()> {
    crate::init_logging(LogFormat::Text);
    match command {
        ReplayCommand::Rebuild(args) => {
            let cfs = replay::projection_cfs(&args.projection)?;
            if !args.dry_run {
                // Before the engine starts: its projector would fold under the new catalog.
                let config = Config::from_args(&args.engine)?;
                let changed = {
                    let store = open_stopped(&config.data_dir)?;
                    tally::engine::catalog_changes(&store, &config.catalog)?
                };
                replay::check_catalog_rebuild(&changed, &args.projection, &cfs)?;
            }
            let bar = progress_bar();
            let terminal = std::io::stderr().is_terminal();
            let started = std::time::Instant::now();
            let last_line = std::cell::Cell::new(std::time::Instant::now());
            let progress = |done: u64, head: u64| {
                bar.set_length(head);
                bar.set_position(done);
                // Off a terminal: a plain line every five seconds and at the end.
                if !terminal && (last_line.get().elapsed().as_secs() >= 5 || done == head) {
                    last_line.set(std::time::Instant::now());
                    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    eprintln!("tally: rebuilding: {done}/{head} entries, {rate:.0} entries/s");
                }
            };
            let report = if args.dry_run {
                // No engine: the directory is only read, so not one byte of it changes.
                let config = Config::from_args(&args.engine)?;
                let report = replay::dry_run_stopped(&config, &cfs, &progress)?;
                bar.finish_and_clear();
                report
            } else {
                with_engine(&args.engine, true, |engine| {
                    let report = replay::rebuild(engine, &cfs, false, &progress)?;
                    bar.finish_and_clear();
                    // The catalog is recorded only when every projection it shapes now equals a
                    // fold under it; a partial dry run records nothing.
                    if (report.identical || report.swapped)
                        && replay::left_under_old_catalog(&cfs).is_empty()
                    {
                        engine.record_catalog()?;
                    }
                    Ok(report)
                })?
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "tally: rebuilt {} log entries in {:.2} s: {:.0} entries/s (raw scan of the log: {:.0} entries/s)",
                    report.entries,
                    report.seconds,
                    report.entries_per_second,
                    report.raw_scan_entries_per_second
                );
                for cf in &report.column_families {
                    let verdict = if cf.live == cf.rebuilt {
                        "identical"
                    } else {
                        "DIFFERS"
                    };
                    println!(
                        "tally:   {:<8} {verdict:<9} live {:032x} ({} rows)  rebuilt {:032x} ({} rows)",
                        cf.cf, cf.live.hash, cf.live.rows, cf.rebuilt.hash, cf.rebuilt.rows
                    );
                    for key in &cf.differences {
                        println!("tally:            first differing key {key}");
                    }
                }
                println!(
                    "tally: {}",
                    match (report.identical, report.swapped) {
                        (true, _) => "the live projections equal a fold of the log",
                        (false, true) => "the rebuilt projections were swapped in",
                        (false, false) => "dry run: nothing was changed",
                    }
                );
            }
            Ok(())
        }
        ReplayCommand::Kafka(args) => {
            let (Some(brokers), Some(topic)) =
                (&args.engine.kafka_brokers, &args.engine.kafka_topic)
            else {
                bail!("--kafka-brokers and --kafka-topic name what to read");
            };
            let start = match (&args.from_offset, &args.from_time) {
                (Some(text), _) => ReplayStart::Offsets(parse_offsets(text)?),
                (None, Some(text)) => {
                    ReplayStart::Time(time::parse_rfc3339(text).with_context(|| {
                        format!("--from-time: `{text}` is not an RFC 3339 time")
                    })?)
                }
                (None, None) => bail!("--from-offset or --from-time says where to start"),
            };
            let counts = with_engine(&args.engine, false, |engine| {
                Ok(replay_kafka(engine.ingest(), brokers, topic, &start)?)
            })?;
            println!(
                "tally: replayed {} messages of {topic}: {} new, {} duplicate, {} conflicting, {} rejected",
                counts.read, counts.new, counts.duplicate, counts.conflict, counts.rejected
            );
            Ok(())
        }
        ReplayCommand::DeadLetters(args) => {
            let counts = with_engine(&args.engine, false, |engine| {
                Ok(repair_dead_letters(
                    engine.ingest(),
                    args.reason.as_deref(),
                )?)
            })?;
            println!(
                "tally: re-validated {} dead letters: {} appended, {} already recorded, {} conflicting, {} still refused",
                counts.read, counts.new, counts.duplicate, counts.conflict, counts.rejected
            );
            Ok(())
        }
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} rebuilding {pos}/{len} entries {per_sec} eta {eta} {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// `P:O[,P:O…]` → partition → offset.
fn parse_offsets(text: &str) -> anyhow::Result<std::collections::BTreeMap<i32, i64>> {
    text.split(',')
        .map(|pair| {
            let (partition, offset) = pair
                .split_once(':')
                .with_context(|| format!("--from-offset: `{pair}` is not PARTITION:OFFSET"))?;
            Ok((
                partition
                    .trim()
                    .parse()
                    .with_context(|| format!("--from-offset: bad partition in `{pair}`"))?,
                offset
                    .trim()
                    .parse()
                    .with_context(|| format!("--from-offset: bad offset in `{pair}`"))?,
            ))
        })
        .collect()
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    crate::init_logging(LogFormat::Text);
    let store = Store::open_read_only(&args.data_dir, &store_options())
        .with_context(|| format!("cannot open {} for reading", args.data_dir.display()))?;
    let mut out = std::io::stdout().lock();
    match args.what.unwrap_or(InspectCommand::Summary) {
        InspectCommand::Summary => {
            let entries = store
                .last_seq(tally::log::store::CF_LOG)?
                .map_or(0, |s| s + 1);
            let dead_letters = store
                .last_seq(tally::log::store::CF_DEAD_LETTER)?
                .map_or(0, |s| s + 1);
            let checkpoint = store
                .checkpoint(tally::projection::USAGE_PROJECTION)?
                .unwrap_or(0);
            let forgotten_before = Some(store.horizon().ids_forgotten_before())
                .filter(|&at| at != i64::MIN)
                .map(time::format_rfc3339);
            let sizes: serde_json::Map<String, serde_json::Value> = COLUMN_FAMILIES
                .iter()
                .map(|&cf| (cf.to_owned(), json!(store.cf_size(cf))))
                .collect();
            let summary = json!({
                "log_entries": entries,
                "log_bytes": store.cf_size(tally::log::store::CF_LOG),
                "dead_letters": dead_letters,
                "projector_checkpoint": checkpoint,
                "projector_lag": entries.saturating_sub(checkpoint),
                "ids_forgotten_before": forgotten_before,
                "column_family_bytes": sizes,
            });
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
            } else {
                writeln!(
                    out,
                    "log entries        {entries} ({} bytes in SST files)",
                    store.cf_size(tally::log::store::CF_LOG)
                )?;
                writeln!(out, "dead letters       {dead_letters}")?;
                writeln!(
                    out,
                    "projected up to    {checkpoint} (lag {})",
                    entries.saturating_sub(checkpoint)
                )?;
                writeln!(
                    out,
                    "ids forgotten for  events before {}",
                    forgotten_before.as_deref().unwrap_or("(none yet)")
                )?;
                for (cf, bytes) in &sizes {
                    writeln!(out, "  {cf:<12} {bytes} bytes")?;
                }
            }
        }
        InspectCommand::Partitions => {
            let held = tally::cluster::changelog::held(&store)?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&held)?)?;
            } else {
                for (topic, partitions) in &held.topics {
                    writeln!(out, "{topic}")?;
                    for (partition, next) in partitions {
                        writeln!(out, "  partition {partition:<4} read below offset {next}")?;
                    }
                }
                if held.topics.is_empty() {
                    writeln!(out, "no partition of any topic (HTTP ingest only)")?;
                }
                if let Some(origin) = &held.changelog_origin {
                    writeln!(out, "changelog origin   {origin}")?;
                    writeln!(
                        out,
                        "unpublished        {} entries",
                        held.unpublished_entries
                    )?;
                }
            }
        }
        InspectCommand::Event { seq, tenant, id } => {
            let seq = match (seq, tenant, id) {
                (Some(seq), _, _) => seq,
                (None, Some(tenant), Some(id)) => {
                    let key = tally::log::keys::dedup_key(&tenant, &id);
                    match store.dedup_lookup(&[key])?.into_iter().next().flatten() {
                        Some(record) => record.seq,
                        None => bail!("no event `{id}` of tenant `{tenant}` is remembered"),
                    }
                }
                _ => bail!("--seq, or --tenant with --id, names the entry"),
            };
            let Some((_, entry)) = store.read_log(seq, 1)?.into_iter().find(|(s, _)| *s == seq)
            else {
                bail!("the log has no entry {seq}");
            };
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&json!({"seq": seq, "entry": entry}))?
            )?;
        }
        InspectCommand::DeadLetters {
            reason,
            since,
            until,
        } => {
            let parse = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<i64>> {
                text.as_deref()
                    .map(|t| {
                        time::parse_rfc3339(t)
                            .with_context(|| format!("{flag}: `{t}` is not an RFC 3339 time"))
                    })
                    .transpose()
            };
            let (since, until) = (parse("--since", &since)?, parse("--until", &until)?);
            let mut from = 0;
            loop {
                let letters = store.dead_letters(from, 1_000)?;
                let Some(&(last, _)) = letters.last() else {
                    break;
                };
                from = last + 1;
                for (n, letter) in letters {
                    let matches = reason.as_deref().is_none_or(|r| {
                        letter.rejection.reason.contains(r) || letter.rejection.field.contains(r)
                    }) && since.is_none_or(|s| letter.received_at >= s)
                        && until.is_none_or(|u| letter.received_at < u);
                    if matches {
                        let line = json!({
                            "number": n,
                            "received_at": time::format_rfc3339(letter.received_at),
                            "tenant": letter.tenant,
                            "source": letter.source,
                            "field": letter.rejection.field,
                            "reason": letter.rejection.reason,
                            "raw": String::from_utf8_lossy(&letter.raw),
                            "raw_truncated": letter.raw_truncated,
                        });
                        writeln!(out, "{line}")?;
                    }
                }
            }
        }
        InspectCommand::Checksums => {
            let mut all = serde_json::Map::new();
            for (projection, cfs) in PROJECTIONS {
                for &cf in *cfs {
                    let sum = replay::checksum(&store, cf)?;
                    if !args.json {
                        writeln!(
                            out,
                            "{projection:<8} {cf:<8} {:032x} {} rows",
                            sum.hash, sum.rows
                        )?;
                    }
                    all.insert(cf.to_owned(), serde_json::to_value(sum)?);
                }
            }
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
            }
        }
    }
    Ok(())
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    crate::init_logging(LogFormat::Text);
    let to = if args.to.is_absolute() {
        args.to.clone()
    } else {
        std::env::current_dir()?.join(&args.to)
    };
    // The operator on the host may write anywhere but into the store's own directories.
    let to = tally::backup::backup_target(None, &args.data_dir, &to)
        .map_err(|error| anyhow::anyhow!("--to: {error}"))?;
    let store = open_stopped(&args.data_dir)?;
    store.checkpoint_to(&to)?;
    println!(
        "tally: backed up {} to {}",
        args.data_dir.display(),
        to.display()
    );
    Ok(())
}

/// Copies `from` into `to` (created), each file synced to the disk.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            bytes += copy_dir(&entry.path(), &target)?;
        } else {
            bytes += std::fs::copy(entry.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    sync_dir(to)?;
    Ok(bytes)
}

/// Copies a checked store into the existing, empty `to`: every file but `CURRENT` first, then
/// `CURRENT` (written beside it and renamed), so a copy cut short holds table files and no
/// `CURRENT`, which every command refuses to open rather than taking it for a new store.
fn copy_current_last(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "CURRENT" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    sync_dir(to)?;
    let pending = to.join("CURRENT.restoring");
    std::fs::copy(from.join("CURRENT"), &pending)?;
    std::fs::File::open(&pending)?.sync_all()?;
    std::fs::rename(&pending, to.join("CURRENT"))?;
    sync_dir(to)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Copies the backup into `<data-dir>.restoring`, opens it there to check it, and only then
/// renames it to the data directory: a restore cut short leaves no data directory that
/// `tally serve` could take for a new, empty store.
pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    crate::init_logging(LogFormat::Text);
    let data_dir = &args.data_dir;
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!(
            "--data-dir: {} is not empty; restore into a new directory",
            data_dir.display()
        );
    }
    if !args.from.join("CURRENT").is_file() {
        bail!(
            "--from: {} is not a backup (no CURRENT file)",
            args.from.display()
        );
    }
    let staging = sibling_dir(data_dir, ".restoring");
    if staging.exists() {
        // Left by a restore that was cut short; nothing refers to it.
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove the stale {}", staging.display()))?;
    }
    let staged = (|| -> anyhow::Result<u64> {
        let bytes = copy_dir(&args.from, &staging)
            .with_context(|| format!("cannot copy the backup into {}", staging.display()))?;
        // Opening proves the copy is a store of this format.
        Store::open(&staging, &store_options())
            .with_context(|| format!("the restored copy does not open ({})", staging.display()))?
            .flush()?;
        Ok(bytes)
    })();
    let bytes = match staged {
        Ok(bytes) => bytes,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    // rename(2) replaces an empty directory, atomically. A data directory that is a mount
    // point, or on another file system, cannot be replaced: the copy goes into it instead.
    match std::fs::rename(&staging, data_dir) {
        Ok(()) => {}
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::CrossesDevices | std::io::ErrorKind::ResourceBusy
            ) && data_dir.is_dir() =>
        {
            copy_current_last(&staging, data_dir).with_context(|| {
                format!(
                    "cannot copy {} into {} (the copy is complete and kept there)",
                    staging.display(),
                    data_dir.display()
                )
            })?;
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "cannot move {} to {} (the copy is complete and kept there)",
                    staging.display(),
                    data_dir.display()
                )
            });
        }
    }
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    println!(
        "tally: restored {} ({bytes} bytes) into {}",
        args.from.display(),
        data_dir.display()
    );
    Ok(())
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    crate::init_logging(LogFormat::Text);
    let data_dir = args.engine.data_dir.clone();
    if !data_dir.join("CURRENT").exists() {
        bail!(
            "{} holds no store to migrate (no CURRENT file)",
            data_dir.display()
        );
    }
    let bar = progress_bar();
    let report = replay::migrate(&data_dir, &store_options(), &|seen| bar.set_position(seen))
        .with_context(|| format!("cannot migrate {}", data_dir.display()))?;
    bar.finish_and_clear();
    if report.from_version == report.to_version {
        println!(
            "tally: {} is already at format version {}; nothing to do",
            data_dir.display(),
            report.to_version
        );
        return Ok(());
    }
    println!(
        "tally: rewrote {} log entries and {} dead letters of {} from format {} to {} ({} entries were already rewritten)",
        report.entries_rewritten,
        report.dead_letters_rewritten,
        data_dir.display(),
        report.from_version,
        report.to_version,
        report.entries_already_current
    );
    // The projections were emptied with the version change: fold them again now, so the
    // first `tally serve` answers at once.
    let folded = with_engine(&args.engine, false, |engine| {
        let head = engine.head();
        let bar = progress_bar();
        bar.set_length(head);
        loop {
            let checkpoint = engine
                .store()
                .checkpoint(tally::projection::USAGE_PROJECTION)?
                .unwrap_or(0);
            bar.set_position(checkpoint);
            if checkpoint >= head {
                bar.finish_and_clear();
                return Ok(checkpoint);
            }
            if let Some(reason) = engine.status().projector.reason() {
                bail!("the projector stopped at entry {checkpoint}: {reason}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    })?;
    println!(
        "tally: rebuilt every projection from the {folded} log entries; `tally serve` can start on it"
    );
    Ok(())
}
