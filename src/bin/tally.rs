//! The `tally` binary: flags → config → engine → server, and the operator commands.

#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

#[path = "tally/ops.rs"]
mod ops;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally::auth::ADMIN_TOKEN_FILE;
use tally::config::{Config, LogFormat, ServeArgs};
use tally::engine::Engine;
use tally::{server, time};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Event-sourced usage metering engine (F5 Billing & Usage API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: RocksDB in --data-dir, HTTP API and ingest on --listen, and a Kafka
    /// consumer with --kafka-brokers/--kafka-topic.
    Serve(ServeArgs),
    /// Send usage events to a Kafka topic, keyed by tenant: NDJSON from stdin, or synthetic load.
    Produce(ProduceArgs),
    /// Read a topic from the beginning with a bare consumer and print the rate (the ceiling to
    /// compare Kafka ingest with).
    Drain(DrainArgs),
    /// Rebuild projections from the log, re-read Kafka ranges, repair dead letters.
    Replay {
        #[command(subcommand)]
        command: ops::ReplayCommand,
    },
    /// What a data directory holds: sizes, positions, an event, dead letters, checksums.
    Inspect(ops::InspectArgs),
    /// A consistent copy of a (stopped) data directory.
    Backup(ops::BackupArgs),
    /// A data directory from a backup.
    Restore(ops::RestoreArgs),
    /// Upgrade a stopped data directory written by an older release: rewrite its log into this
    /// build's format and rebuild every projection from it.
    Migrate(ops::MigrateArgs),
}

#[derive(clap::Args)]
struct DrainArgs {
    /// Kafka bootstrap servers (HOST:PORT[,…]).
    #[arg(long, env = "TALLY_KAFKA_BROKERS")]
    brokers: String,
    /// Topic to read.
    #[arg(long, env = "TALLY_KAFKA_TOPIC")]
    topic: String,
}

#[derive(clap::Args)]
struct ProduceArgs {
    /// Kafka bootstrap servers (HOST:PORT[,…]).
    #[arg(long, env = "TALLY_KAFKA_BROKERS")]
    brokers: String,
    /// Topic to produce to.
    #[arg(long, env = "TALLY_KAFKA_TOPIC")]
    topic: String,
    /// Generate this many synthetic events instead of reading stdin.
    #[arg(long)]
    synthetic: Option<u64>,
    /// Events per second at most (synthetic load).
    #[arg(long, requires = "synthetic")]
    rate: Option<u64>,
    /// Distinct tenants of synthetic load (few hot, many cold).
    #[arg(long, default_value_t = 100)]
    tenants: u32,
    /// Distinct namespaces of synthetic load.
    #[arg(long, default_value_t = 1_000)]
    namespaces: u32,
    /// How many of the catalog's meters synthetic load uses.
    #[arg(long, default_value_t = 4)]
    meters: usize,
    /// Seed of synthetic load (also makes its event ids unique per seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Catalog whose meters synthetic load uses; the built-in one when absent.
    #[arg(long, env = "TALLY_CATALOG")]
    catalog: Option<std::path::PathBuf>,
    /// Synthetic load spread evenly over this many series (namespace × meter × object), each
    /// named once per namespace, instead of the skewed default: a realistic workload where
    /// every series receives many events an hour.
    #[arg(long, requires = "synthetic")]
    series: Option<u32>,
    /// Compression of produced batches.
    #[arg(long, default_value = "lz4", value_parser = clap::builder::PossibleValuesParser::new(tally::ingest::produce::COMPRESSIONS))]
    compression: String,
    /// How long a batch waits to fill before it is sent (milliseconds).
    #[arg(long, default_value_t = 20)]
    linger_ms: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Produce(args) => produce(args),
        Command::Replay { command } => ops::replay(command),
        Command::Inspect(args) => ops::inspect(args),
        Command::Backup(args) => ops::backup(args),
        Command::Restore(args) => ops::restore(args),
        Command::Migrate(args) => ops::migrate(args),
        Command::Drain(args) => {
            init_logging(LogFormat::Text);
            let summary = tally::ingest::drain::drain(&args.brokers, &args.topic)?;
            let seconds = summary.elapsed.as_secs_f64().max(1e-9);
            println!(
                "tally: drained {} messages ({} bytes) from {} in {seconds:.2} s: {:.0} messages/s",
                summary.messages,
                summary.bytes,
                args.topic,
                summary.messages as f64 / seconds
            );
            Ok(())
        }
    }
}

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tally::ingest::produce::{self, Synthetic, SyntheticSpec, TenantProducer};

    init_logging(LogFormat::Text);
    let settings = produce::ProducerSettings {
        compression: args.compression.clone(),
        linger_ms: args.linger_ms,
    };
    let mut producer = TenantProducer::with_settings(&args.brokers, &args.topic, &settings)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = args.synthetic.map_or_else(
            indicatif::ProgressBar::new_spinner,
            indicatif::ProgressBar::new,
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} events {per_sec} eta {eta} {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = |sent: u64| bar.set_position(sent);
    match args.synthetic {
        Some(events) => {
            let catalog = match &args.catalog {
                Some(path) => tally::catalog::Catalog::load(path)?,
                None => tally::catalog::Catalog::builtin()?,
            };
            let metric_labels = catalog
                .meters()
                .iter()
                .take(args.meters.max(1))
                .map(|m| m.metric_label.clone())
                .collect();
            let spec = SyntheticSpec {
                events,
                tenants: args.tenants.max(1),
                namespaces: args.namespaces.max(1),
                metric_labels,
                seed: args.seed,
                spread: std::time::Duration::from_secs(3_600),
                now: (time::system_clock())(),
                series: args.series,
            };
            produce::produce_synthetic(&mut producer, Synthetic::new(spec), args.rate, progress)?;
        }
        None => produce::produce_lines(&mut producer, std::io::stdin().lock(), progress)?,
    }
    let summary = producer.finish()?;
    bar.finish_and_clear();
    let seconds = summary.elapsed.as_secs_f64().max(1e-9);
    println!(
        "tally: produced {} events to {} ({} delivered, {} failed) in {:.2} s: {:.0} events/s",
        summary.sent,
        args.topic,
        summary.delivered,
        summary.failed,
        seconds,
        summary.delivered as f64 / seconds
    );
    anyhow::ensure!(
        summary.failed == 0,
        "{} events were not delivered",
        summary.failed
    );
    Ok(())
}

pub(crate) fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file, journald or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let config = Config::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        let data_dir = config.data_dir.clone();
        let token_from_env = config.admin_token.is_some();
        let reopen_config = config.clone();
        let engine = Arc::new(Engine::open(config, time::system_clock())?);
        let token_file = data_dir.join(ADMIN_TOKEN_FILE);
        let generated = engine.take_generated_admin_token();
        // Stdout is the user's: where to reach the engine and how to authenticate.
        println!("tally: listening on http://{address} (data in {})", data_dir.display());
        match generated {
            Some(token) => println!("tally: generated operator token (shown once, saved to {}): {token}", token_file.display()),
            None if token_from_env => println!("tally: operator token from TALLY_ADMIN_TOKEN / --admin-token"),
            None => println!("tally: operator token in {} (generated on first start)", token_file.display()),
        }
        let token_expr = if token_from_env { "$TALLY_ADMIN_TOKEN".to_owned() } else { format!("$(cat {})", token_file.display()) };
        println!(
            "tally: try  curl -s -H \"Authorization: APIToken {token_expr}\" -X POST http://{address}/api/web/namespaces/system/usage_details -d '{{}}'"
        );
        tracing::info!(%address, "serving");
        let reopen = move || Engine::open(reopen_config.clone(), time::system_clock());
        server::serve(engine, listener, server::shutdown_signal(), reopen).await.context("server failed")
    })
}
