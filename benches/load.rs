//! The load harness: every stage of Tally next to the physical limit of the same machine,
//! measured in the same run, printed as a table and written to `bench-results.json`.
//!
//! `scripts/bench [--quick]` runs it (`cargo bench --bench load -- [--quick]`); under
//! `cargo test` it runs every stage on a few thousand events and writes nothing.
//!
//! Stages: Kafka ingest vs a bare consumer draining the topic; Kafka ingest by 1, 2 and 3
//! engines of one consumer group, with each engine's CPU per event; HTTP ingest (batches of 1,000
//! from concurrent clients) with latency percentiles; the append path vs raw RocksDB write
//! batches with the same WAL settings; rebuild vs a raw scan of the log; queries at 1, 8 and
//! 64 clients over 10,000 namespaces; bytes on disk per event after compaction; peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::kafka::Broker;
use common::{OPERATOR_TOKEN, Server};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tally::log::store::{COLUMN_FAMILIES, Store, StoreOptions};

const TOPIC: &str = "usage";
const NAMESPACES: u64 = 10_000;

/// How big each stage runs.
struct Plan {
    kafka: Vec<u64>,
    http: u64,
    query_logs: Vec<u64>,
    append: u64,
    /// Events of the cluster stage (ingest with 1, 2 and 3 engines).
    cluster: u64,
    /// Events of the partition the cluster stage moves to a fresh engine (`--restore-events N`;
    /// by default as many as `cluster`).
    restore: Option<u64>,
    query_seconds: f64,
    write_results: bool,
    /// `--only kafka|http|queries|append|cluster|restore`: run that stage alone (nothing is
    /// written; `cluster` includes the restore).
    only: Option<String>,
}

impl Plan {
    fn runs(&self, stage: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == stage)
    }
}

fn plan() -> Plan {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|at| args.get(at + 1).cloned());
    let restore = args
        .iter()
        .position(|a| a == "--restore-events")
        .and_then(|at| args.get(at + 1)?.parse().ok());
    if !benching {
        return Plan {
            kafka: vec![3_000],
            http: 4_000,
            query_logs: vec![4_000],
            append: 4_000,
            cluster: 3_000,
            restore: None,
            query_seconds: 0.2,
            write_results: false,
            only: None,
        };
    }
    if quick {
        Plan {
            kafka: vec![200_000],
            http: 200_000,
            query_logs: vec![200_000],
            append: 200_000,
            cluster: 200_000,
            restore,
            query_seconds: 1.0,
            write_results: only.is_none(),
            only,
        }
    } else {
        Plan {
            kafka: vec![1_000_000, 10_000_000],
            http: 1_000_000,
            query_logs: vec![1_000_000, 10_000_000],
            append: 1_000_000,
            cluster: 1_000_000,
            restore,
            query_seconds: 4.0,
            write_results: only.is_none(),
            only,
        }
    }
}

fn tally(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .expect("run tally");
    assert!(
        output.status.success(),
        "tally {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The number before `unit` in a summary line.
fn number_before(text: &str, unit: &str) -> f64 {
    text.split(unit)
        .next()
        .and_then(|head| head.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time, user and system, that process `pid` has used so far over all its threads, in
/// seconds (`/proc/PID/stat`): a figure that another process on the same cores barely moves.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks_per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8(out.stdout)
                .ok()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces; the fields after it are fixed: utime is the
            // 14th field, stime the 15th (the 12th and 13th after the name).
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .unwrap_or(0.0)
}

fn store_options() -> StoreOptions {
    StoreOptions {
        dedup_horizon: Duration::from_secs(35 * 86_400),
        min_free_disk: 0,
    }
}

/// The synthetic load of a Kafka run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Skewed tenants and namespaces with a long cold tail (100 tenants, 1,000 namespaces, 8
    /// objects): most events open a row of their own.
    HighCardinality,
    /// Events spread evenly over a fixed set of series, 100 events per series in the run
    /// (10,000 series across 1,000 namespaces from 1,000,000 events on; all within an hour).
    Realistic,
}

impl Workload {
    /// The suffix of its result keys (the high-cardinality keys have none, as before).
    fn suffix(self) -> &'static str {
        match self {
            Workload::HighCardinality => "",
            Workload::Realistic => "_realistic",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::HighCardinality => "high-cardinality",
            Workload::Realistic => "realistic",
        }
    }

    fn series(self, events: u64) -> Option<u64> {
        match self {
            Workload::HighCardinality => None,
            Workload::Realistic => Some((events / 100).clamp(1, 10_000)),
        }
    }
}

/// A log size in result keys: `200k`, `1m`, `10m`, or the number.
fn size_name(events: u64) -> String {
    match events {
        n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n.is_multiple_of(1_000) => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// `tally produce` of `events` synthetic events of `workload` to `topic`, with extra flags.
fn produce(brokers: &str, topic: &str, events: u64, workload: Workload, extra: &[&str]) {
    let count = events.to_string();
    let series = workload.series(events).map(|n| n.to_string());
    let namespaces = match workload.series(events) {
        Some(series) => (series / 10).max(1).to_string(),
        None => "1000".to_owned(),
    };
    let mut args = vec![
        "produce",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--synthetic",
        &count,
        "--tenants",
        "100",
        "--namespaces",
        &namespaces,
        "--seed",
        "1",
    ];
    if let Some(series) = &series {
        args.extend(["--series", series.as_str()]);
    }
    args.extend(extra);
    tally(&args);
}

/// Kafka: produce `events`, drain them with a bare consumer, ingest them with the engine. The
/// topic is produced as a tuned producer would (`tally produce`'s defaults: lz4, 20 ms
/// linger, large batches); for the high-cardinality load the same events also go to a topic
/// without compression and a 5 ms linger, drained alone, to show what the topic kind costs.
fn kafka_stage(
    events: u64,
    workload: Workload,
    results: &mut BTreeMap<String, f64>,
    rss: &mut f64,
) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 4);
    let brokers = broker.address();
    let suffix = workload.suffix();
    produce(&brokers, TOPIC, events, workload, &[]);
    let drained = tally(&["drain", "--brokers", &brokers, "--topic", TOPIC]);
    let drain_rate = number_before(&drained, "messages/s");
    if workload == Workload::HighCardinality {
        const PLAIN: &str = "usage-plain";
        broker.create_topic(PLAIN, 4);
        produce(
            &brokers,
            PLAIN,
            events,
            workload,
            &["--compression", "none", "--linger-ms", "5"],
        );
        let drained = tally(&["drain", "--brokers", &brokers, "--topic", PLAIN]);
        results.insert(
            format!("kafka_drain_eps_plain_{events}"),
            number_before(&drained, "messages/s"),
        );
    }
    let mut server = Server::start_args(
        &dir.path().join("data"),
        &[
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            TOPIC,
            "--rate-limit",
            "0",
        ],
    );
    let mut first: Option<Instant> = None;
    let mut cpu_at_first = 0.0;
    let deadline = Instant::now() + Duration::from_secs(7_200);
    // While the projector folds the backlog, a quota command every 100 ms: its latency is
    // what a tenant sees with thousands of other tenants' events still to fold.
    let mut commands = Histogram::<u64>::new(3).expect("histogram");
    let mut command_entries = 0;
    let mut polls = 0u64;
    loop {
        let ready = server.readiness();
        let logged = ready["log_entries"].as_u64().unwrap_or(0);
        let projected = ready["projected_entries"].as_u64().unwrap_or(0);
        if logged > 0 && first.is_none() {
            first = Some(Instant::now());
            cpu_at_first = cpu_seconds(server.pid());
        }
        if logged >= events + command_entries && projected == logged {
            break;
        }
        polls += 1;
        if logged > 0 && projected < events && polls.is_multiple_of(5) {
            let sent = Instant::now();
            let status = quota_command(&server, commands.len());
            commands.record(sent.elapsed().as_micros() as u64).ok();
            assert_eq!(status, 200, "quota command during the backlog");
            // The quota fact and its audit record.
            command_entries += 2;
        }
        assert!(Instant::now() < deadline, "kafka ingest stuck at {ready}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ingest_rate = events as f64 / first.map_or(1e-9, |f| f.elapsed().as_secs_f64().max(1e-9));
    // The engine's CPU from its first logged event to all projected, per event (the quota
    // commands of the same window are in it: a few dozen, against thousands of events).
    let cpu_us_per_event = (cpu_seconds(server.pid()) - cpu_at_first) * 1e6 / events.max(1) as f64;
    let run_rss = peak_rss_mb(server.pid());
    *rss = rss.max(run_rss);
    server.stop();
    results.insert(
        format!("peak_rss_mb_kafka{suffix}_{}", size_name(events)),
        run_rss,
    );
    results.insert(format!("kafka_ingest_eps{suffix}_{events}"), ingest_rate);
    results.insert(
        format!("engine_cpu_us_per_event{suffix}_{events}"),
        cpu_us_per_event,
    );
    results.insert(format!("kafka_drain_eps{suffix}_{events}"), drain_rate);
    results.insert(
        format!("command_during_backlog_p50_ms{suffix}_{events}"),
        ms(&commands, 0.5),
    );
    results.insert(
        format!("command_during_backlog_p99_ms{suffix}_{events}"),
        ms(&commands, 0.99),
    );
    results.insert(
        format!("commands_during_backlog{suffix}_{events}"),
        commands.len() as f64,
    );
    (ingest_rate, drain_rate)
}

/// The `n`th quota command of the load harness: the first creates its object, the rest
/// replace it with another maximum. Returns the HTTP status.
fn quota_command(server: &Server, n: u64) -> u16 {
    let body = json!({"metadata": {"name": "bench-quota", "namespace": "system"},
        "spec": {"object_limits": {"http_loadbalancer": {"maximum": 1_000 + n}}}});
    if n == 0 {
        server.post("/api/web/namespaces/system/quotas", &body).0
    } else {
        server
            .call(
                "PUT",
                "/api/web/namespaces/system/quotas/bench-quota",
                Some(&body),
            )
            .0
    }
}

/// NDJSON events of `workload`; the realistic one spreads `total` events evenly over
/// `total / 100` series (a tenth as many namespaces, 4 meters), all within the last hour.
fn ndjson_of(start: u64, count: u64, now: i64, workload: Workload, total: u64) -> String {
    let metrics = [
        "http_lb_requests",
        "data_transfer_bytes",
        "waf_security_events",
        "http_loadbalancers",
    ];
    let mut body = String::with_capacity(count as usize * 180);
    for n in start..start + count {
        let (namespace, metric, object, ago) = match workload.series(total) {
            None => (
                n % NAMESPACES,
                n % 4,
                n % 7,
                ((n % 48) as i64) * 3_600_000_000,
            ),
            Some(series) => {
                let s = n % series;
                let namespaces = (series / 10).max(1);
                let ago = ((n * 7_919) % 3_600_000) as i64 * 1_000;
                (
                    s % namespaces,
                    (s / namespaces) % 4,
                    s / (namespaces * 4),
                    ago,
                )
            }
        };
        let at = tally::time::format_rfc3339(now - ago);
        body.push_str(&format!(
            "{{\"id\":\"h-{n}\",\"namespace\":\"ns-{namespace}\",\"metric_label\":\"{}\",\"quantity\":\"{}\",\"timestamp\":\"{at}\",\"object_name\":\"lb-{object}\"}}\n",
            metrics[metric as usize],
            n % 1000 + 1,
        ));
    }
    body
}

/// HTTP ingest with `clients` concurrent posters of 1,000-event batches; events/s and the
/// request latency histogram (µs).
fn http_ingest(server: &Server, events: u64, clients: u64) -> (f64, Histogram<u64>) {
    http_ingest_of(server, events, clients, Workload::HighCardinality)
}

fn http_ingest_of(
    server: &Server,
    events: u64,
    clients: u64,
    workload: Workload,
) -> (f64, Histogram<u64>) {
    let now = chrono::Utc::now().timestamp_micros();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (next, base) = (next.clone(), server.base.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .expect("client");
                let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                loop {
                    let start = next.fetch_add(1_000, Ordering::SeqCst);
                    if start >= events {
                        break;
                    }
                    let body = ndjson_of(start, 1_000.min(events - start), now, workload, events);
                    let sent = Instant::now();
                    let response = client
                        .post(format!("{base}/api/tally/events"))
                        .header("Authorization", format!("APIToken {OPERATOR_TOKEN}"))
                        .header("Content-Type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .expect("post");
                    assert!(
                        response.status().is_success(),
                        "{}",
                        response.text().unwrap_or_default()
                    );
                    histogram.record(sent.elapsed().as_micros() as u64).ok();
                }
                histogram
            })
        })
        .collect();
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    for thread in threads {
        histogram.add(thread.join().expect("client thread")).ok();
    }
    (events as f64 / started.elapsed().as_secs_f64(), histogram)
}

/// One query endpoint at `clients` concurrent clients for `seconds`: requests/s and latency.
fn query_load(
    server: &Server,
    clients: u64,
    seconds: f64,
    request: &(dyn Fn(u64) -> (String, String, Option<String>) + Sync),
) -> (f64, Histogram<u64>) {
    let stop_at = Instant::now() + Duration::from_secs_f64(seconds);
    let total = AtomicU64::new(0);
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let total = &total;
                let base = server.base.clone();
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                    let mut n = c * 7_919;
                    while Instant::now() < stop_at {
                        let (method, path, body) = request(n);
                        n += 1;
                        let mut call = client
                            .request(
                                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                                format!("{base}{path}"),
                            )
                            .header("Authorization", format!("APIToken {OPERATOR_TOKEN}"));
                        if let Some(body) = body {
                            call = call.body(body);
                        }
                        let sent = Instant::now();
                        let response = call.send().expect("query");
                        let status = response.status();
                        let _ = response.bytes();
                        assert!(status.is_success(), "{method} {path}: {status}");
                        histogram.record(sent.elapsed().as_micros() as u64).ok();
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                    histogram
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("query thread"))
            .collect()
    });
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    for h in histograms {
        histogram.add(h).ok();
    }
    (total.load(Ordering::Relaxed) as f64 / seconds, histogram)
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

/// The append path (decode → log batch → fold) in-process, against raw write batches of the
/// same encoded entries with the same WAL settings; then a rebuild against a raw log scan.
fn append_stage(
    events: u64,
    workload: Workload,
    results: &mut BTreeMap<String, f64>,
) -> (f64, f64, f64, f64) {
    use tally::event::{self, EventSource};
    use tally::log::append::Candidate;
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Arc::new(tally::catalog::Catalog::builtin().expect("catalog"));
    let config = tally::config::Config {
        admin_token: Some("bench".into()),
        rate_limit: 0,
        ..tally::config::Config::with_defaults(dir.path().join("data"), catalog.clone())
    };
    let engine = tally::engine::Engine::open(config, tally::time::system_clock()).expect("engine");
    let now = engine.now();
    let raw: Vec<Vec<u8>> = ndjson_of(0, events, now, workload, events)
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let started = Instant::now();
    for chunk in raw.chunks(1_000) {
        let context = engine
            .ingest()
            .decode_context(engine.now(), "default", false);
        let candidates = chunk
            .iter()
            .map(|bytes| match event::decode(bytes, &context) {
                Ok(event) => Candidate::Event {
                    event,
                    source: EventSource::Http { received_at: now },
                },
                Err(rejection) => panic!("{rejection:?}"),
            })
            .collect();
        engine
            .appender()
            .append_blocking(candidates, Vec::new())
            .expect("append");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    assert!(runtime.block_on(engine.wait_projected(engine.head(), Duration::from_secs(7_200))));
    let append_rate = events as f64 / started.elapsed().as_secs_f64();

    // Raw: the same entries, encoded once, put in write batches of 1,000 and fsync'd.
    let entries: Vec<Vec<u8>> = engine
        .store()
        .read_log(0, events as usize)
        .expect("log")
        .iter()
        .map(|(_, e)| tally::log::values::encode_entry(e))
        .collect();
    let raw_dir = tempfile::tempdir().expect("tempdir");
    let raw_store = Store::open(raw_dir.path(), &store_options()).expect("raw store");
    let started = Instant::now();
    for (i, chunk) in entries.chunks(1_000).enumerate() {
        let mut batch = raw_store.batch();
        for (j, value) in chunk.iter().enumerate() {
            batch.put(
                tally::log::store::CF_LOG,
                ((i * 1_000 + j) as u64).to_be_bytes(),
                value,
            );
        }
        raw_store.commit(batch, true).expect("raw write");
    }
    let raw_rate = events as f64 / started.elapsed().as_secs_f64();

    let cfs = tally::replay::projection_cfs("all").expect("projections");
    let report = tally::replay::rebuild(&engine, &cfs, true, &|_, _| {}).expect("rebuild");
    runtime.block_on(engine.shutdown());
    let suffix = workload.suffix();
    results.insert(format!("append_eps{suffix}"), append_rate);
    results.insert(format!("rocksdb_put_eps{suffix}"), raw_rate);
    results.insert(format!("rebuild_eps{suffix}"), report.entries_per_second);
    results.insert(
        format!("rocksdb_scan_eps{suffix}"),
        report.raw_scan_entries_per_second,
    );
    (
        append_rate,
        raw_rate,
        report.entries_per_second,
        report.raw_scan_entries_per_second,
    )
}

/// Partitions of the cluster stage's topic: 1, 2 and 3 engines each own a whole share.
const CLUSTER_PARTITIONS: u32 = 6;

/// Kafka ingest of `events` (realistic load) by `engines` engines of one group (`--cluster`):
/// the engines split the topic first, then the events are produced. Returns the rate (start
/// of producing to all folded on every engine) and each engine's CPU-seconds per million
/// events of the topic.
fn cluster_stage(events: u64, engines: usize) -> (f64, Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, CLUSTER_PARTITIONS);
    let brokers = broker.address();
    let mut servers: Vec<Server> = (0..engines)
        .map(|n| {
            Server::start_args(
                &dir.path().join(format!("engine-{n}")),
                &[
                    "--kafka-brokers",
                    &brokers,
                    "--kafka-topic",
                    TOPIC,
                    "--kafka-group",
                    "bench",
                    "--cluster",
                    "--rate-limit",
                    "0",
                ],
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let shares: Vec<_> = servers.iter().map(|s| s.owned_partitions(true)).collect();
        let total: usize = shares.iter().map(|share| share.len()).sum();
        if total == CLUSTER_PARTITIONS as usize && shares.iter().all(|s| !s.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group never split: {shares:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu_before: Vec<f64> = servers.iter().map(|s| cpu_seconds(s.pid())).collect();
    // The engines consume while the events are produced: the rate runs from the start of
    // producing (which alone is faster than one engine's ingest) to all folded everywhere.
    let started = Instant::now();
    produce(&brokers, TOPIC, events, Workload::Realistic, &[]);
    loop {
        let ready: Vec<Value> = servers.iter().map(Server::readiness).collect();
        let logged: u64 = ready
            .iter()
            .map(|r| r["log_entries"].as_u64().unwrap_or(0))
            .sum();
        let folded = ready
            .iter()
            .all(|r| r["log_entries"] == r["projected_entries"]);
        if logged >= events && folded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cluster ingest stuck at {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = events as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let per_million: Vec<f64> = servers
        .iter()
        .zip(&cpu_before)
        .map(|(s, before)| (cpu_seconds(s.pid()) - before) * 1e6 / events.max(1) as f64)
        .collect();
    for server in &mut servers {
        server.stop();
    }
    (rate, per_million)
}

/// The value of the first sample of `name` in a `/metrics` exposition whose labels contain
/// `labels` (0 when there is none).
fn metric_value(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

/// A partition of `events` events (realistic load) moved to a fresh engine: one engine of a
/// cluster ingests them (publishing the changelog) and stops; a second one with an empty data
/// directory joins and restores the partition. Returns the restore's own time (as the engine
/// measures it), the time from starting the fresh engine to its partition being ready (process
/// start, group join, restore, folding), and the source-topic messages the fresh engine read.
fn restore_stage(events: u64) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 1);
    let brokers = broker.address();
    let start = |name: &str| {
        Server::start_args(
            &dir.path().join(name),
            &[
                "--kafka-brokers",
                &brokers,
                "--kafka-topic",
                TOPIC,
                "--kafka-group",
                "bench-restore",
                "--cluster",
                "--rate-limit",
                "0",
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first = start("first");
    while first.owned_partitions(true).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first engine got no partition"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    produce(&brokers, TOPIC, events, Workload::Realistic, &[]);
    loop {
        let (_, metrics) = first.get("/metrics");
        let published = metric_value(&metrics, "tally_changelog_published_entries_total", "");
        if published >= events as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "changelog stuck at {published}");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.stop();
    let started = Instant::now();
    let mut fresh = start("fresh");
    while fresh.owned_partitions(true).is_empty() {
        assert!(Instant::now() < deadline, "the fresh engine never restored");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = started.elapsed().as_secs_f64();
    let (_, metrics) = fresh.get("/metrics");
    let restore = metric_value(
        &metrics,
        "tally_changelog_last_restore_milliseconds",
        r#"partition="0""#,
    ) / 1e3;
    let restored = metric_value(
        &metrics,
        "tally_changelog_restored_entries_total",
        r#"partition="0""#,
    );
    // What the changelog did not hold yet when the partition moved is read from the source.
    assert!(
        restored > 0.9 * events as f64,
        "restored only {restored} entries"
    );
    let read: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("tally_events_total{") && line.contains(r#"source="kafka""#)
        })
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0;
    fresh.stop();
    (restore, ready, read)
}

fn main() {
    let plan = plan();
    let mut results: BTreeMap<String, f64> = BTreeMap::new();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut rss: f64 = 0.0;
    let machine = format!(
        "{} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if plan.runs("kafka") {
        for &events in &plan.kafka {
            for workload in [Workload::Realistic, Workload::HighCardinality] {
                let suffix = workload.suffix();
                let (ingest, drain) = kafka_stage(events, workload, &mut results, &mut rss);
                let plain = results
                    .get(&format!("kafka_drain_eps_plain_{events}"))
                    .filter(|_| workload == Workload::HighCardinality)
                    .map(|plain| {
                        format!("; topic without compression, 5 ms linger: {plain:.0} msg/s")
                    })
                    .unwrap_or_default();
                rows.push((
                    format!(
                        "Kafka ingest, {events} events, {}, 4 partitions",
                        workload.name()
                    ),
                    format!("{ingest:.0} events/s"),
                    format!(
                        "raw drain {drain:.0} msg/s (lz4 topic): {:.0} %; target ≥ 80 %{plain}",
                        100.0 * ingest / drain.max(1e-9)
                    ),
                ));
                rows.push((
                    format!("Quota command while those {events} events are folded"),
                    format!(
                        "{:.0} commands; p50 {:.1} / p99 {:.1} ms",
                        results[&format!("commands_during_backlog{suffix}_{events}")],
                        results[&format!("command_during_backlog_p50_ms{suffix}_{events}")],
                        results[&format!("command_during_backlog_p99_ms{suffix}_{events}")],
                    ),
                    "no wait for the backlog".into(),
                ));
                rows.push((
                    format!("Engine CPU per event of that Kafka ingest, {events} events"),
                    format!(
                        "{:.1} µs (user + system, first logged event to all projected)",
                        results[&format!("engine_cpu_us_per_event{suffix}_{events}")]
                    ),
                    "target ≤ 8 µs".into(),
                ));
            }
        }
        if let Some(&events) = plan.kafka.first() {
            for key in [
                "kafka_ingest_eps",
                "kafka_drain_eps",
                "engine_cpu_us_per_event",
                "kafka_ingest_eps_realistic",
                "kafka_drain_eps_realistic",
                "engine_cpu_us_per_event_realistic",
                "kafka_drain_eps_plain",
            ] {
                results.insert(key.into(), results[&format!("{key}_{events}")]);
            }
        }
    }
    if plan.runs("cluster") {
        for engines in 1..=3usize {
            let (rate, per_million) = cluster_stage(plan.cluster, engines);
            results.insert(format!("cluster_ingest_eps_{engines}_engines"), rate);
            let busiest = per_million.iter().copied().fold(0.0, f64::max);
            results.insert(
                format!("cluster_cpu_s_per_million_busiest_engine_{engines}_engines"),
                busiest,
            );
            results.insert(
                format!("cluster_cpu_s_per_million_all_engines_{engines}_engines"),
                per_million.iter().sum(),
            );
            rows.push((
                format!(
                    "Kafka ingest by {engines} engine(s) of one group, {} events, realistic, {CLUSTER_PARTITIONS} partitions",
                    plan.cluster
                ),
                format!(
                    "{rate:.0} events/s; CPU-seconds per million events: {} (all: {:.1})",
                    per_million
                        .iter()
                        .map(|cpu| format!("{cpu:.1}"))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    per_million.iter().sum::<f64>()
                ),
                "each engine's share falls as engines join".into(),
            ));
        }
    }
    if plan.runs("cluster") || plan.runs("restore") {
        let moved = plan.restore.unwrap_or(plan.cluster);
        let (restore, ready, read) = restore_stage(moved);
        results.insert("cluster_restore_seconds".into(), restore);
        results.insert("cluster_restore_ready_seconds".into(), ready);
        results.insert(
            "cluster_restore_eps".into(),
            moved as f64 / restore.max(1e-9),
        );
        rows.push((
            format!(
                "Restore of one partition of {moved} events on a fresh engine, from the changelog"
            ),
            format!(
                "{restore:.1} s ({:.0} entries/s); {ready:.1} s from start to ready; {read:.0} source messages read",
                moved as f64 / restore.max(1e-9)
            ),
            "the source topic's history is not read again".into(),
        ));
    }
    if plan.runs("http") {
        // HTTP ingest of the realistic load on an engine of its own.
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut server = Server::start_args(&dir.path().join("data"), &["--rate-limit", "0"]);
            let (rate, latency) = http_ingest_of(&server, plan.http, 4, Workload::Realistic);
            results.insert("http_ingest_eps_realistic".into(), rate);
            results.insert("http_ingest_p99_ms_realistic".into(), ms(&latency, 0.99));
            rows.push((
                format!(
                    "HTTP ingest, {} events, realistic, 4 clients × 1,000-event batches",
                    plan.http
                ),
                format!(
                    "{rate:.0} events/s; batch p50 {:.1} / p99 {:.1} / p999 {:.1} ms",
                    ms(&latency, 0.5),
                    ms(&latency, 0.99),
                    ms(&latency, 0.999)
                ),
                "target 300,000 events/s, p99 ≤ 50 ms".into(),
            ));
            rss = rss.max(peak_rss_mb(server.pid()));
            server.stop();
        }
    }
    if plan.runs("queries") {
        // HTTP ingest, then queries against the same engine and log; then storage per event.
        for (index, &log_events) in plan.query_logs.iter().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let data = dir.path().join("data");
            let mut server = Server::start_args(&data, &["--rate-limit", "0"]);
            let (rate, latency) = http_ingest(&server, log_events.max(plan.http), 4);
            if index == 0 {
                results.insert("http_ingest_eps".into(), rate);
                results.insert("http_batch_p99_ms".into(), ms(&latency, 0.99));
                results.insert("http_ingest_p99_ms".into(), ms(&latency, 0.99));
                rows.push((
                    format!(
                        "HTTP ingest, {} events, high-cardinality, 4 clients × 1,000-event batches",
                        log_events.max(plan.http)
                    ),
                    format!(
                        "{rate:.0} events/s; batch p50 {:.1} / p99 {:.1} / p999 {:.1} ms",
                        ms(&latency, 0.5),
                        ms(&latency, 0.99),
                        ms(&latency, 0.999)
                    ),
                    "target 300,000 events/s, p99 ≤ 50 ms".into(),
                ));
            }
            server.wait_caught_up();
            // An hourly query token of one namespace, for hourly_usage_details. The window covers
            // the 48 hours the events span: the default (the open billing period) may begin after
            // some of them, early in a month.
            let now = chrono::Utc::now().timestamp_micros();
            let window = json!({
                "from": tally::time::format_rfc3339(now - 49 * 3_600_000_000),
                "to": tally::time::format_rfc3339(now + 3_600_000_000),
            });
            let (_, details) = server.post("/api/web/namespaces/ns-1/usage_details", &window);
            let hourly_query = details["usage_items"][0]["hourly_breakdown_query"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            type Request = Box<dyn Fn(u64) -> (String, String, Option<String>) + Sync>;
            let queries: Vec<(&str, Request)> = vec![
                (
                    "usage_details",
                    Box::new(|n| {
                        (
                            "POST".into(),
                            format!("/api/web/namespaces/ns-{}/usage_details", n % NAMESPACES),
                            Some("{}".into()),
                        )
                    }),
                ),
                (
                    "hourly_usage_details",
                    Box::new(move |_| {
                        (
                            "POST".into(),
                            "/api/web/namespaces/ns-1/hourly_usage_details".into(),
                            Some(json!({"query": hourly_query}).to_string()),
                        )
                    }),
                ),
                (
                    "current_usage",
                    Box::new(|n| {
                        (
                            "POST".into(),
                            format!("/api/web/namespaces/ns-{}/current_usage", n % NAMESPACES),
                            Some("{}".into()),
                        )
                    }),
                ),
                (
                    "quota/usage",
                    Box::new(|n| {
                        (
                            "GET".into(),
                            format!("/api/web/namespaces/ns-{}/quota/usage", n % NAMESPACES),
                            None,
                        )
                    }),
                ),
                (
                    "quota/check",
                    Box::new(|n| {
                        (
                            "POST".into(),
                            format!("/api/tally/namespaces/ns-{}/quota/check", n % NAMESPACES),
                            Some(r#"{"key":"http_loadbalancer","amount":1}"#.into()),
                        )
                    }),
                ),
            ];
            for (name, request) in &queries {
                for clients in [1u64, 8, 64] {
                    let (per_second, latency) =
                        query_load(&server, clients, plan.query_seconds, request.as_ref());
                    if clients == 8 {
                        // The worst endpoint, of the first log and of each log size.
                        let p99 = ms(&latency, 0.99);
                        let per_log = format!("query_p99_ms_8_clients_{}", size_name(log_events));
                        let mut keys = vec![per_log];
                        if index == 0 {
                            keys.push("query_p99_ms_8_clients".into());
                        }
                        for key in keys {
                            let worst = results.get(&key).copied().unwrap_or(0.0).max(p99);
                            results.insert(key, worst);
                        }
                    }
                    results.insert(
                        format!(
                            "query_{}_{clients}_clients_{log_events}_rps",
                            name.replace('/', "_")
                        ),
                        per_second,
                    );
                    rows.push((
                        format!("{name}, {clients} clients, {log_events} events in the log"),
                        format!(
                            "{per_second:.0} req/s; p50 {:.2} / p99 {:.2} / p999 {:.2} ms",
                            ms(&latency, 0.5),
                            ms(&latency, 0.99),
                            ms(&latency, 0.999)
                        ),
                        if clients == 8 {
                            "target p99 ≤ 1 ms".into()
                        } else {
                            String::new()
                        },
                    ));
                }
            }
            let run_rss = peak_rss_mb(server.pid());
            rss = rss.max(run_rss);
            results.insert(
                format!("peak_rss_mb_http_{}", size_name(log_events)),
                run_rss,
            );
            let events_in_log = server.readiness()["log_entries"]
                .as_u64()
                .unwrap_or(1)
                .max(1);
            server.stop();
            if index == 0 {
                let store = Store::open(&data, &store_options()).expect("store");
                store.compact_all().expect("compact");
                let sizes: Vec<(&str, u64)> = COLUMN_FAMILIES
                    .iter()
                    .map(|&cf| (cf, store.cf_size(cf)))
                    .collect();
                let bytes: u64 = sizes.iter().map(|(_, size)| size).sum();
                let per_event = bytes as f64 / events_in_log as f64;
                results.insert("bytes_per_event".into(), per_event);
                // Where the bytes are: each family's share, largest first.
                let mut shares: Vec<(&str, f64)> = sizes
                    .iter()
                    .filter(|(_, size)| *size > 0)
                    .map(|&(cf, size)| (cf, size as f64 / events_in_log as f64))
                    .collect();
                shares.sort_by(|a, b| b.1.total_cmp(&a.1));
                for (cf, share) in &shares {
                    results.insert(format!("bytes_per_event_{cf}"), *share);
                }
                let breakdown = shares
                    .iter()
                    .map(|(cf, share)| format!("{cf} {share:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                rows.push((
                    format!("Storage after compaction, {events_in_log} events"),
                    format!("{per_event:.1} bytes/event ({breakdown})"),
                    "target ≤ 48 bytes/event".into(),
                ));
            }
        }
    }
    if plan.runs("append") {
        for workload in [Workload::Realistic, Workload::HighCardinality] {
            let (append, put, rebuild, scan) = append_stage(plan.append, workload, &mut results);
            let name = workload.name();
            rows.push((
                format!(
                    "Append path (decode → log batch → fold), {} events, {name}",
                    plan.append
                ),
                format!("{append:.0} events/s"),
                format!(
                    "raw RocksDB batches {put:.0}/s: {:.0} %",
                    100.0 * append / put.max(1e-9)
                ),
            ));
            rows.push((
                format!(
                    "Rebuild of every projection, {} events, {name}",
                    plan.append
                ),
                format!("{rebuild:.0} events/s"),
                format!(
                    "raw log scan {scan:.0}/s: {:.1} %; target 1,000,000/s",
                    100.0 * rebuild / scan.max(1e-9)
                ),
            ));
        }
    }
    results.insert("peak_rss_mb".into(), rss);
    // Of every run that held 10,000,000 events (the full bench only).
    let rss_10m = results
        .iter()
        .filter(|(key, _)| key.starts_with("peak_rss_mb_") && key.ends_with("_10m"))
        .map(|(_, &mb)| mb)
        .fold(None, |worst: Option<f64>, mb| {
            Some(worst.map_or(mb, |w| w.max(mb)))
        });
    if let Some(mb) = rss_10m {
        results.insert("peak_rss_mb_10m".into(), mb);
        rows.push((
            "Peak RSS of the engine, 10,000,000 events".into(),
            format!("{mb:.0} MB"),
            "target ≤ 512 MB".into(),
        ));
    }
    // The cluster and restore stages do not measure it.
    if rss > 0.0 {
        rows.push((
            "Peak RSS of the engine (any run)".into(),
            format!("{rss:.0} MB"),
            String::new(),
        ));
    }

    println!("Tally load harness ({machine})");
    println!("| stage | figure | limit / target |");
    println!("|---|---|---|");
    for (stage, figure, limit) in &rows {
        println!("| {stage} | {figure} | {limit} |");
    }
    if plan.write_results {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench-results.json");
        let mut document = json!({"machine": machine, "rows": rows.iter().map(|(s, f, l)| json!({"stage": s, "figure": f, "limit": l})).collect::<Vec<Value>>()});
        for (key, value) in &results {
            document[key] = json!(value);
        }
        std::fs::write(
            path,
            serde_json::to_string_pretty(&document).unwrap_or_default(),
        )
        .expect("write bench-results.json");
        println!("wrote {path}");
    }
}
