//! Flags and environment parsed once into a validated [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{Catalog, CatalogError};

/// Where and how the Kafka consumer reads.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Most messages in one append batch.
    pub batch_max: usize,
    /// Longest a batch waits to fill once it has its first message.
    pub batch_linger: Duration,
    /// How long a partition may stand still while behind before it is reported stalled.
    pub stall_after: Duration,
    /// `Some` with `--cluster`: the engine joins the consumer group and owns only the
    /// partitions it is assigned; `None`: it assigns itself every partition.
    pub cluster: Option<ClusterSettings>,
}

/// How an engine joins its cluster (`--cluster`).
#[derive(Debug, Clone, Default)]
pub struct ClusterSettings {
    /// `--instance-id`: static group membership, so a restart within the session timeout
    /// gets its partitions back without a rebalance.
    pub instance_id: Option<String>,
    /// `--advertise`: the URL other engines forward this engine's tenants' requests to.
    pub advertise: Option<String>,
}

/// Where alerts go and the key that signs them.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
}

/// Flags of `tally serve`; each also reads an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory of the RocksDB store (created when missing).
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Operator token (admin of tenant `default`, may record events for any tenant). Without
    /// it, and with no token stored yet, one is generated into <data-dir>/admin-token.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Catalog JSON file; the built-in catalog (schemas/catalog.default.json) when absent.
    #[arg(long, env = "TALLY_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// How old an event time may be when it arrives (e.g. 35d, 12h).
    #[arg(long, env = "TALLY_LATE_WINDOW", default_value = "35d", value_parser = humantime::parse_duration)]
    pub late_window: Duration,
    /// How far in the future an event time may be (producer clock skew).
    #[arg(long, env = "TALLY_FUTURE_SKEW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub future_skew: Duration,
    /// How long event ids are remembered for dedup; at least the late window (its default).
    #[arg(long, env = "TALLY_DEDUP_HORIZON", value_parser = humantime::parse_duration)]
    pub dedup_horizon: Option<Duration>,
    /// Appends pause (503, the Kafka consumer stops advancing) while the data directory's file
    /// system has less free space than this, and resume when space is freed (e.g. 512MiB, 2GB;
    /// 0 turns the check off).
    #[arg(long, env = "TALLY_MIN_FREE_DISK", default_value = "256MiB")]
    pub min_free_disk: bytesize::ByteSize,
    /// URL that receives every quota alert (POST, JSON, HMAC-SHA256 signed); http or https.
    #[arg(long, env = "TALLY_ALERT_WEBHOOK", requires = "alert_webhook_secret")]
    pub alert_webhook: Option<String>,
    /// Key of the webhook signature (`X-Tally-Signature`).
    #[arg(long, env = "TALLY_ALERT_WEBHOOK_SECRET", hide_env_values = true)]
    pub alert_webhook_secret: Option<String>,
    /// How long after issue an unpaid invoice becomes OVERDUE (e.g. 30d).
    #[arg(long, env = "TALLY_INVOICE_DUE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub invoice_due: Duration,
    /// Requests per second each token may make (bursts of twice that); 0 turns the limit off.
    #[arg(long, env = "TALLY_RATE_LIMIT", default_value_t = 1_000)]
    pub rate_limit: u32,
    /// Failed authentications a client address may make per minute; past that it gets 429
    /// until the minute is over; 0 turns the limit off.
    #[arg(long, env = "TALLY_AUTH_FAILURE_LIMIT", default_value_t = 30)]
    pub auth_failure_limit: u32,
    /// Most API tokens one tenant may hold (the operator token not counted).
    #[arg(long, env = "TALLY_MAX_TOKENS_PER_TENANT", default_value_t = 1_000)]
    pub max_tokens_per_tenant: usize,
    /// Directory under which `POST /api/tally/admin/backup` may write (created on the first
    /// backup); `<data-dir>.backups` beside the data directory when absent.
    #[arg(long, env = "TALLY_BACKUP_ROOT")]
    pub backup_root: Option<PathBuf>,
    /// Most items one F5 list answer carries (usage_details, hourly_usage_details, the quota
    /// list); a longer one is cut there and says so in `X-Tally-Truncated: true`.
    #[arg(long, env = "TALLY_MAX_LIST_ITEMS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_list_items: u64,
    /// Most quota objects one tenant may have; creating one more is refused (409).
    #[arg(long, env = "TALLY_MAX_QUOTA_OBJECTS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_quota_objects: u64,
    /// Log format on stderr.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Kafka bootstrap servers (HOST:PORT[,…]); with --kafka-topic, usage is consumed from Kafka
    /// as well as HTTP.
    #[arg(long, env = "TALLY_KAFKA_BROKERS", requires = "kafka_topic")]
    pub kafka_brokers: Option<String>,
    /// Topic of usage events (keyed by tenant).
    #[arg(long, env = "TALLY_KAFKA_TOPIC", requires = "kafka_brokers")]
    pub kafka_topic: Option<String>,
    /// Group id the consumed offsets are committed under (a hint for lag tools; the engine's
    /// own offsets live in RocksDB).
    #[arg(long, env = "TALLY_KAFKA_GROUP", default_value = "tally")]
    pub kafka_group: String,
    /// Run as one engine of a cluster: engines with the same --kafka-group share the topic's
    /// partitions through Kafka's consumer group, each owning the tenants of the partitions it
    /// is assigned (see "Running several engines" in the README).
    #[arg(long, env = "TALLY_CLUSTER", requires = "kafka_topic")]
    pub cluster: bool,
    /// This engine's stable name in the group (static membership): a restart within the
    /// session timeout keeps its partitions.
    #[arg(long, env = "TALLY_INSTANCE_ID", requires = "cluster")]
    pub instance_id: Option<String>,
    /// The URL the other engines of the cluster reach this one's API at (e.g.
    /// http://10.0.0.5:8080): requests for its tenants that arrive elsewhere are forwarded
    /// there. Defaults to http://<the address the API is bound to> unless that is 0.0.0.0 or
    /// [::] (then requests for other engines' tenants answer 421).
    #[arg(long, env = "TALLY_ADVERTISE", requires = "cluster")]
    pub advertise: Option<String>,
    /// Most messages appended in one batch.
    #[arg(long, env = "TALLY_KAFKA_BATCH", default_value_t = 5_000)]
    pub kafka_batch: usize,
    /// Longest a batch waits to fill once it has a message (e.g. 20ms).
    #[arg(long, env = "TALLY_KAFKA_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub kafka_linger: Duration,
    /// A partition that is behind (or whose high watermark cannot be read) and has not
    /// advanced for this long is reported stalled: `/readyz` answers 503 naming it.
    #[arg(long, env = "TALLY_KAFKA_STALL_TIME", default_value = "60s", value_parser = humantime::parse_duration)]
    pub kafka_stall_time: Duration,
    /// Request headers must arrive within this; an idle keep-alive connection is closed after it.
    #[arg(long, env = "TALLY_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this (408 otherwise).
    #[arg(long, env = "TALLY_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Most client connections open at once; more are closed as they arrive. Lowered to leave
    /// file descriptors for the store when the process's limit is small.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = 1_024)]
    pub max_connections: usize,
    /// On SIGTERM, longest in-flight requests may take before their connections are closed.
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Longest an ingest answer waits for the projections to include its events
    /// (read-your-writes); past it the answer says `"projected": false`.
    #[arg(long, env = "TALLY_INGEST_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ingest_wait: Duration,
}

/// How the HTTP server protects itself from slow, idle and too many clients.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub ingest_wait: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1_024,
            shutdown_timeout: Duration::from_secs(30),
            ingest_wait: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Configuration that cannot be used; start-up stops with its message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "--dedup-horizon ({horizon}) is shorter than --late-window ({window}); a late duplicate would be counted twice"
    )]
    HorizonTooShort { horizon: String, window: String },
    #[error("--late-window must be positive")]
    NoLateWindow,
    #[error("--kafka-batch must be at least 1")]
    NoKafkaBatch,
    #[error("--alert-webhook: `{0}` is not an http:// or https:// URL")]
    WebhookUrl(String),
    #[error("--alert-webhook-secret must not be empty")]
    NoWebhookSecret,
}

/// The validated configuration of one engine.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
    pub catalog: Arc<Catalog>,
    pub late_window: Duration,
    pub future_skew: Duration,
    pub dedup_horizon: Duration,
    /// Bytes of free disk below which appends pause.
    pub min_free_disk: u64,
    pub kafka: Option<KafkaSettings>,
    pub webhook: Option<WebhookSettings>,
    pub invoice_due: Duration,
    /// Open even when the catalog's meter definitions differ from the ones the projections
    /// were folded with (only `tally replay rebuild`, which then records the new ones).
    pub accept_catalog_change: bool,
    /// Requests per second per token (0: unlimited).
    pub rate_limit: u32,
    pub server: ServerLimits,
    /// Failed authentications per minute per client address (0: unlimited).
    pub auth_failure_limit: u32,
    /// Most tokens per tenant.
    pub max_tokens_per_tenant: usize,
    /// Where API backups may be written (`--backup-root`).
    pub backup_root: PathBuf,
    /// Most items one F5 list answer carries (at least 1).
    pub max_list_items: usize,
    /// Most quota objects per tenant (at least 1).
    pub max_quota_objects: usize,
}

/// `dir` with `suffix` added to its last component: a directory beside it (`data/` gives
/// `data.rebuild`, not `data/.rebuild`).
pub fn sibling_dir(dir: &std::path::Path, suffix: &str) -> PathBuf {
    // `.` or `x/..` has no last component of its own: name the directory it stands for.
    let absolute;
    let dir = if dir.file_name().is_none() {
        absolute = std::path::absolute(dir)
            .ok()
            .and_then(|d| std::fs::canonicalize(&d).ok().or(Some(d)))
            .unwrap_or_else(|| dir.to_path_buf());
        absolute.as_path()
    } else {
        dir
    };
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => {
            let mut name = name.to_owned();
            name.push(suffix);
            parent.join(name)
        }
        // `/`: no last component to extend.
        _ => {
            let mut name = dir.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        }
    }
}

/// The backup root when `--backup-root` is absent: beside the data directory, outside it.
pub fn default_backup_root(data_dir: &std::path::Path) -> PathBuf {
    sibling_dir(data_dir, ".backups")
}

impl Config {
    /// The configuration `tally serve` has with no flags but `--data-dir` (and a catalog),
    /// for embedding the engine (tests, benchmarks, tools).
    pub fn with_defaults(data_dir: PathBuf, catalog: Arc<Catalog>) -> Config {
        let days = |n: u64| Duration::from_secs(n * 86_400);
        Config {
            backup_root: default_backup_root(&data_dir),
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            catalog,
            late_window: days(35),
            future_skew: Duration::from_secs(300),
            dedup_horizon: days(35),
            min_free_disk: 256 * 1024 * 1024,
            kafka: None,
            webhook: None,
            invoice_due: days(30),
            accept_catalog_change: false,
            rate_limit: 1_000,
            server: ServerLimits::default(),
            auth_failure_limit: 30,
            max_tokens_per_tenant: 1_000,
            max_list_items: 10_000,
            max_quota_objects: 1_000,
        }
    }

    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let catalog = match &args.catalog {
            Some(path) => Catalog::load(path)?,
            None => Catalog::builtin()?,
        };
        if args.late_window.is_zero() {
            return Err(ConfigError::NoLateWindow);
        }
        let dedup_horizon = args.dedup_horizon.unwrap_or(args.late_window);
        if dedup_horizon < args.late_window {
            return Err(ConfigError::HorizonTooShort {
                horizon: humantime::format_duration(dedup_horizon).to_string(),
                window: humantime::format_duration(args.late_window).to_string(),
            });
        }
        if args.kafka_batch == 0 {
            return Err(ConfigError::NoKafkaBatch);
        }
        let kafka = match (&args.kafka_brokers, &args.kafka_topic) {
            (Some(brokers), Some(topic)) => Some(KafkaSettings {
                brokers: brokers.clone(),
                topic: topic.clone(),
                group: args.kafka_group.clone(),
                batch_max: args.kafka_batch,
                batch_linger: args.kafka_linger,
                stall_after: args.kafka_stall_time,
                cluster: args.cluster.then(|| ClusterSettings {
                    instance_id: args.instance_id.clone(),
                    advertise: args.advertise.clone(),
                }),
            }),
            _ => None,
        };
        let webhook = match (&args.alert_webhook, &args.alert_webhook_secret) {
            (Some(url), secret) => {
                let parsed =
                    reqwest::Url::parse(url).map_err(|_| ConfigError::WebhookUrl(url.clone()))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(ConfigError::WebhookUrl(url.clone()));
                }
                let secret = secret
                    .clone()
                    .filter(|s| !s.is_empty())
                    .ok_or(ConfigError::NoWebhookSecret)?;
                Some(WebhookSettings {
                    url: url.clone(),
                    secret,
                })
            }
            (None, _) => None,
        };
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Config {
            server: ServerLimits {
                header_timeout: args.header_timeout,
                body_timeout: args.body_timeout,
                max_connections: args.max_connections.max(1),
                shutdown_timeout: args.shutdown_timeout,
                ingest_wait: args.ingest_wait,
            },
            backup_root: args
                .backup_root
                .clone()
                .unwrap_or_else(|| default_backup_root(&args.data_dir)),
            rate_limit: args.rate_limit,
            auth_failure_limit: args.auth_failure_limit,
            max_tokens_per_tenant: args.max_tokens_per_tenant,
            max_list_items: count(args.max_list_items),
            max_quota_objects: count(args.max_quota_objects),
            accept_catalog_change: false,
            invoice_due: args.invoice_due,
            webhook,
            kafka,
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
            catalog: Arc::new(catalog),
            late_window: args.late_window,
            future_skew: args.future_skew,
            dedup_horizon,
            min_free_disk: args.min_free_disk.as_u64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn refuses_a_dedup_horizon_shorter_than_the_late_window() {
        let cli = Cli::parse_from(["tally", "--late-window", "10d", "--dedup-horizon", "2d"]);
        let err = Config::from_args(&cli.serve).unwrap_err();
        assert!(
            err.to_string().contains("shorter than --late-window"),
            "{err}"
        );
        let cli = Cli::parse_from(["tally", "--late-window", "2d"]);
        assert_eq!(
            Config::from_args(&cli.serve).unwrap().dedup_horizon,
            Duration::from_secs(2 * 86_400)
        );
    }

    #[test]
    fn list_and_quota_object_caps_are_at_least_one() {
        for flag in ["--max-list-items", "--max-quota-objects"] {
            assert!(
                Cli::try_parse_from(["tally", flag, "0"]).is_err(),
                "{flag} 0"
            );
        }
        let cli = Cli::parse_from(["tally", "--max-list-items", "7", "--max-quota-objects", "3"]);
        let config = Config::from_args(&cli.serve).unwrap();
        assert_eq!((config.max_list_items, config.max_quota_objects), (7, 3));
        let defaults = Config::from_args(&Cli::parse_from(["tally"]).serve).unwrap();
        assert_eq!(
            (defaults.max_list_items, defaults.max_quota_objects),
            (10_000, 1_000)
        );
    }

    #[test]
    fn an_alert_webhook_needs_an_http_url_and_a_secret() {
        let parse = |args: &[&str]| {
            let mut all = vec!["tally"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|cli| Config::from_args(&cli.serve))
        };
        assert!(
            parse(&["--alert-webhook", "http://h/x"]).is_err(),
            "secret required"
        );
        let err = parse(&[
            "--alert-webhook",
            "ftp://h/x",
            "--alert-webhook-secret",
            "k",
        ])
        .unwrap()
        .unwrap_err();
        assert!(err.to_string().contains("not an http"), "{err}");
        let err = parse(&[
            "--alert-webhook",
            "http://h/x",
            "--alert-webhook-secret",
            "",
        ])
        .unwrap()
        .unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        let config = parse(&[
            "--alert-webhook",
            "https://h/x",
            "--alert-webhook-secret",
            "k",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.webhook.unwrap().url, "https://h/x");
    }

    #[test]
    fn embedding_defaults_equal_the_flags_defaults() {
        let cli = Cli::parse_from(["tally", "--data-dir", "/d"]);
        let from_flags = Config::from_args(&cli.serve).unwrap();
        let defaults = Config::with_defaults("/d".into(), from_flags.catalog.clone());
        assert_eq!(format!("{from_flags:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn the_backup_root_defaults_to_beside_the_data_directory() {
        let cli = Cli::parse_from(["tally", "--data-dir", "/srv/tally/"]);
        assert_eq!(
            Config::from_args(&cli.serve).unwrap().backup_root,
            PathBuf::from("/srv/tally.backups")
        );
        let cli = Cli::parse_from(["tally", "--backup-root", "/backups"]);
        assert_eq!(
            Config::from_args(&cli.serve).unwrap().backup_root,
            PathBuf::from("/backups")
        );
    }

    #[test]
    fn reads_the_free_disk_reserve_in_human_units() {
        let cli = Cli::parse_from(["tally"]);
        assert_eq!(
            Config::from_args(&cli.serve).unwrap().min_free_disk,
            256 * 1024 * 1024
        );
        let cli = Cli::parse_from(["tally", "--min-free-disk", "2GB"]);
        assert_eq!(
            Config::from_args(&cli.serve).unwrap().min_free_disk,
            2_000_000_000
        );
        assert!(Cli::try_parse_from(["tally", "--min-free-disk", "lots"]).is_err());
    }
}
