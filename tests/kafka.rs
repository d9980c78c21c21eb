//! Kafka ingestion against a real broker (Tansu): exactly-once totals, dead letters with
//! their offsets, partition order, crashes, a broker restart, stalled partitions, every
//! compression codec from a producer that is not Tally's, and `tally produce`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::kafka::Broker;
use common::{Rng, Server};
use serde_json::json;
use tally::ingest::produce::TenantProducer;
use tally::log::keys::Scope;
use tally::log::store::{CF_HOURLY, CF_MONTHLY, Store, StoreOptions};
use tally::log::{DeadLetter, LogEntry};
use tally::projection::read;

const TOPIC: &str = "usage";
const TENANTS: [&str; 12] = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "aperture",
];
const HOUR: i64 = 3_600_000_000;

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One produced message.
#[derive(Clone)]
struct Message {
    key: String,
    payload: Vec<u8>,
}

/// What the engine must end with.
#[derive(Default, Debug, PartialEq)]
struct Expected {
    /// tenant → (requests sum, security events count)
    totals: BTreeMap<String, (i128, i128)>,
    recorded: usize,
}

fn valid_event(n: u64, now: i64, rng: &mut Rng, expected: &mut Expected) -> Message {
    let tenant = TENANTS[(n % TENANTS.len() as u64) as usize];
    let late = n % 1_000 == 7;
    let at = if late {
        now - 5 * HOUR - (n as i64 % 600) * 1_000_000
    } else {
        now - rng.below(3_000) as i64 * 1_000_000
    };
    let namespace = if late {
        "late".to_owned()
    } else {
        format!("ns-{}", n % 20)
    };
    let totals = expected.totals.entry(tenant.to_owned()).or_default();
    let (metric, quantity) = if n.is_multiple_of(7) {
        totals.1 += 1;
        ("waf_security_events", 1)
    } else {
        let quantity = (n % 1_000 + 1) as i128;
        totals.0 += quantity;
        ("http_lb_requests", quantity)
    };
    expected.recorded += 1;
    let payload = json!({"id": format!("k-{n}"), "tenant": tenant, "namespace": namespace, "metric_label": metric,
                         "quantity": quantity as i64, "timestamp": rfc3339(at), "object_name": format!("lb-{}", n % 3)});
    Message {
        key: tenant.to_owned(),
        payload: payload.to_string().into_bytes(),
    }
}

fn malformed(i: u64, now: i64) -> Message {
    let base = json!({"id": format!("bad-{i}"), "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 1, "timestamp": rfc3339(now)});
    let (key, payload) = match i % 5 {
        0 => ("acme", format!("{{broken json {i}")),
        1 => ("acme", {
            let mut e = base.clone();
            e["metric_label"] = json!("bogus");
            e.to_string()
        }),
        2 => ("acme", {
            let mut e = base.clone();
            e["tenant"] = json!("globex");
            e.to_string()
        }),
        3 => ("globex", {
            let mut e = base.clone();
            e["quantity"] = json!(-1);
            e.to_string()
        }),
        _ => ("not a tenant!", base.to_string()),
    };
    Message {
        key: key.to_owned(),
        payload: payload.into_bytes(),
    }
}

/// `valid` events, 1 % of them sent twice, `valid / 200` malformed, shuffled.
fn workload(valid: u64, seed: u64) -> (Vec<Message>, Vec<Vec<u8>>, Expected) {
    let now = Utc::now().timestamp_micros();
    let mut rng = Rng(seed);
    let mut expected = Expected::default();
    let events: Vec<Message> = (0..valid)
        .map(|n| valid_event(n, now, &mut rng, &mut expected))
        .collect();
    let bad: Vec<Message> = (0..valid / 200).map(|i| malformed(i, now)).collect();
    let mut messages = events.clone();
    messages.extend(events.iter().step_by(100).cloned());
    messages.extend(bad.iter().cloned());
    rng.shuffle(&mut messages);
    (
        messages,
        bad.into_iter().map(|m| m.payload).collect(),
        expected,
    )
}

fn produce(broker: &Broker, messages: &[Message]) {
    let mut producer = TenantProducer::new(&broker.address(), TOPIC).unwrap();
    for message in messages {
        producer.send(&message.key, &message.payload).unwrap();
    }
    let summary = producer.finish().unwrap();
    assert_eq!(
        (summary.delivered, summary.failed),
        (messages.len() as u64, 0)
    );
}

/// Waits until the engine has recorded `entries` events and folded them all.
fn wait_for_entries(server: &Server, entries: u64, timeout: Duration) {
    await_readiness(server, timeout, &format!("{entries} entries"), |ready| {
        ready["log_entries"] == entries && ready["projected_entries"] == entries
    });
}

/// Polls `/readyz` until `accept` holds for it (and returns it); fails after `timeout`,
/// naming `what` was awaited.
fn await_readiness(
    server: &Server,
    timeout: Duration,
    what: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let ready = server.readiness();
        if accept(&ready) {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never showed {what}: {ready}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn open_store(server: &Server) -> Store {
    Store::open(
        &server.data_dir,
        &StoreOptions {
            dedup_horizon: Duration::from_secs(35 * 86_400),
            min_free_disk: 0,
        },
    )
    .unwrap()
}

/// Sums per metric of one tenant and scope over every month, from the stored monthly rows.
fn metric_sums(store: &Store, tenant: &str, scope: Scope<'_>) -> BTreeMap<String, i128> {
    let mut sums = BTreeMap::new();
    for (row, aggregate) in
        read::series_rows(store, CF_MONTHLY, tenant, scope, 0, u32::MAX).unwrap()
    {
        *sums.entry(row.series.metric_label).or_default() += aggregate.sum;
    }
    sums
}

/// Totals per tenant from the stored projections, over every month.
fn stored_totals(store: &Store) -> BTreeMap<String, (i128, i128)> {
    TENANTS
        .iter()
        .map(|tenant| {
            let totals = metric_sums(store, tenant, Scope::Tenant);
            let sum = |metric: &str| totals.get(metric).copied().unwrap_or(0) / 1_000_000;
            (
                tenant.to_string(),
                (sum("http_lb_requests"), sum("waf_security_events")),
            )
        })
        .filter(|(_, totals)| *totals != (0, 0))
        .collect()
}

fn metric_value(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_hundred_thousand_events_are_counted_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 4);
    let (messages, bad, expected) = workload(200_000, 11);
    produce(&broker, &messages);

    let mut server = Server::start_kafka(&dir.path().join("data"), &broker.address(), TOPIC);
    wait_for_entries(&server, expected.recorded as u64, Duration::from_secs(600));
    let (_, metrics) = server.get("/metrics");
    assert_eq!(
        metric_value(
            &metrics,
            "tally_events_total{outcome=\"rejected\",source=\"kafka\"}"
        ),
        bad.len() as u64
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tally_events_total{outcome=\"duplicate\",source=\"kafka\"}"
        ),
        2_000
    );
    assert!(
        metrics.contains("tally_kafka_consumer_lag_messages"),
        "{metrics}"
    );
    server.stop();

    let store = open_store(&server);
    assert_eq!(stored_totals(&store), expected.totals);

    // Every malformed message, and nothing else, is a dead letter with its offset.
    let letters: Vec<DeadLetter> = store
        .dead_letters(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let raw: BTreeSet<Vec<u8>> = letters.iter().map(|l| l.raw.clone()).collect();
    assert_eq!(raw, bad.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(letters.len(), bad.len());
    let fields: BTreeSet<&str> = letters.iter().map(|l| l.rejection.field.as_str()).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["event", "metric_label", "tenant", "quantity", "key"])
    );
    let mut seen_offsets = BTreeSet::new();
    for letter in &letters {
        let tally::event::EventSource::Kafka {
            topic,
            partition,
            offset,
        } = &letter.source
        else {
            panic!("{letter:?}")
        };
        assert_eq!(topic, TOPIC);
        assert!(
            seen_offsets.insert((*partition, *offset)),
            "one dead letter per message"
        );
    }

    // The stored offsets stand after the last message of every partition (keys spread the
    // tenants over the partitions by hash, so which partitions got messages is the
    // partitioner's choice).
    let offsets = store.source_offsets(TOPIC).unwrap();
    assert!(offsets.len() > 1, "{offsets:?}");
    assert_eq!(offsets.values().sum::<i64>(), messages.len() as i64);

    // Each tenant's events come from one partition and are in the log in partition order;
    // late events land in their own hour.
    let entries = store.read_log(0, 1_000_000).unwrap();
    assert_eq!(entries.len(), expected.recorded);
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    let mut late_hours: BTreeMap<(String, u32), i128> = BTreeMap::new();
    for (_, entry) in &entries {
        let LogEntry::UsageRecorded { event, source, .. } = entry else {
            panic!("only usage in this log: {entry:?}")
        };
        let tally::event::EventSource::Kafka {
            partition, offset, ..
        } = source
        else {
            panic!("{source:?}")
        };
        assert_eq!(
            *partition_of
                .entry(event.tenant.clone())
                .or_insert(*partition),
            *partition,
            "{}",
            event.tenant
        );
        let previous = last_offset.insert(*partition, *offset);
        assert!(
            previous.is_none_or(|p| p < *offset),
            "partition {partition} out of order"
        );
        if event.namespace == "late" && event.metric_label == "http_lb_requests" {
            *late_hours
                .entry((
                    event.tenant.clone(),
                    tally::time::hour_index(event.timestamp),
                ))
                .or_default() += i128::from(event.quantity.0);
        }
    }
    assert!(!late_hours.is_empty());
    for ((tenant, hour), sum) in late_hours {
        let rows = read::series_rows(
            &store,
            CF_HOURLY,
            &tenant,
            Scope::Namespace("late"),
            hour,
            hour + 1,
        )
        .unwrap();
        let stored: i128 = rows
            .iter()
            .filter(|(r, _)| r.series.metric_label == "http_lb_requests")
            .map(|(_, a)| a.sum)
            .sum();
        assert_eq!(stored, sum, "{tenant} hour {hour}");
    }
}

#[test]
fn sigkill_three_times_while_consuming_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 4);
    let (messages, _, expected) = workload(100_000, 23);
    produce(&broker, &messages);

    let seed = Utc::now().timestamp_micros() as u64;
    println!("kill-point seed: {seed}");
    let mut rng = Rng(seed);
    let mut server = Server::start_kafka(&dir.path().join("data"), &broker.address(), TOPIC);
    let total = expected.recorded as u64;
    for cycle in 0..3 {
        // Kill at a random point of this run's progress, while it is still consuming.
        let before = server.readiness()["log_entries"].as_u64().unwrap_or(0);
        let target = before + 2_000 + rng.below(((total - before) / 4).max(1));
        let deadline = Instant::now() + Duration::from_secs(300);
        while server.readiness()["log_entries"].as_u64().unwrap_or(0) < target {
            assert!(Instant::now() < deadline, "no progress towards {target}");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill();
        println!("cycle {cycle}: killed at ≥ {target} of {total} entries");
        server.start_again();
    }
    wait_for_entries(&server, total, Duration::from_secs(600));
    server.stop();
    let store = open_store(&server);
    assert_eq!(stored_totals(&store), expected.totals);
    assert_eq!(
        store.read_log(0, 1_000_000).unwrap().len(),
        expected.recorded
    );
}

#[test]
fn a_broker_restart_mid_stream_is_survived_and_shown_in_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_sqlite(dir.path());
    broker.create_topic(TOPIC, 2);
    let (messages, _, expected) = workload(20_000, 31);
    let (first, second) = messages.split_at(messages.len() / 2);
    produce(&broker, first);
    let mut server = Server::start_kafka(&dir.path().join("data"), &broker.address(), TOPIC);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.readiness()["log_entries"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "nothing consumed");
        std::thread::sleep(Duration::from_millis(50));
    }

    broker.stop();
    await_readiness(&server, Duration::from_secs(60), "the outage", |ready| {
        ready["http_status"] == 503 && ready["kafka_failing"] == true
    });

    broker.start_again();
    produce(&broker, second);
    wait_for_entries(&server, expected.recorded as u64, Duration::from_secs(300));
    await_readiness(&server, Duration::from_secs(60), "recovery", |ready| {
        ready["http_status"] == 200
    });
    server.stop();
    assert_eq!(stored_totals(&open_store(&server)), expected.totals);
}

#[test]
fn each_tenant_lands_on_the_partition_partition_of_tenant_names() {
    use rdkafka::Message as _;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use tally::kafka::partition_of_tenant;

    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    let topic = "owners";
    broker.create_topic(topic, 12);
    let tenants: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
    let mut producer = TenantProducer::new(&broker.address(), topic).unwrap();
    for tenant in &tenants {
        producer.send(tenant, tenant.as_bytes()).unwrap();
    }
    assert_eq!(producer.finish().unwrap().delivered, 200);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", "partition-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..12 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut landed = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while landed.len() < tenants.len() && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            landed.insert(key, message.partition());
        }
    }
    let expected: BTreeMap<String, i32> = tenants
        .iter()
        .map(|t| (t.clone(), partition_of_tenant(t, 12).unwrap()))
        .collect();
    assert_eq!(landed, expected);
    // 200 tenants spread over every partition, so the check covered them all.
    assert_eq!(landed.values().collect::<BTreeSet<_>>().len(), 12);
}

#[test]
fn tally_produce_sends_stdin_lines_and_synthetic_load() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 4);
    let run = |args: &[&str], stdin: &str| -> String {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["produce", "--brokers", &broker.address(), "--topic", TOPIC])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let now = rfc3339(Utc::now().timestamp_micros());
    let lines = format!(
        "{}\n\n{}\n",
        json!({"id": "p1", "tenant": "acme", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 5, "timestamp": now}),
        json!({"id": "p2", "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 7, "timestamp": now}),
    );
    let summary = run(&[], &lines);
    assert!(summary.contains("produced 2 events"), "{summary}");
    let summary = run(
        &[
            "--synthetic",
            "3000",
            "--tenants",
            "7",
            "--namespaces",
            "30",
            "--seed",
            "5",
        ],
        "",
    );
    assert!(
        summary.contains("produced 3000 events") && summary.contains("3000 delivered"),
        "{summary}"
    );
    // The even workload over a fixed set of series, with another codec and linger.
    let summary = run(
        &[
            "--synthetic",
            "500",
            "--series",
            "50",
            "--seed",
            "6",
            "--compression",
            "zstd",
            "--linger-ms",
            "5",
        ],
        "",
    );
    assert!(summary.contains("500 delivered"), "{summary}");
    // Bad flags are refused by name before anything is sent.
    let refused = |args: &[&str]| -> String {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["produce", "--brokers", &broker.address(), "--topic", TOPIC])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = refused(&["--synthetic", "10", "--compression", "brotli"]);
    assert!(
        error.contains("--compression") && error.contains("lz4"),
        "{error}"
    );
    let error = refused(&["--series", "10"]);
    assert!(error.contains("--synthetic"), "{error}");

    let mut server = Server::start_kafka(&dir.path().join("data"), &broker.address(), TOPIC);
    wait_for_entries(&server, 3_502, Duration::from_secs(300));
    server.stop();
    let store = open_store(&server);
    let tenants: BTreeSet<String> = store
        .read_log(0, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|(_, entry)| match entry {
            LogEntry::UsageRecorded { event, .. } => Some(event.tenant),
            _ => None,
        })
        .collect();
    assert!(
        tenants.contains("acme") && tenants.contains("default") && tenants.contains("tenant-0"),
        "{tenants:?}"
    );
}

/// How many distinct valid events `messages` carry (what consuming them records).
fn unique_valid(messages: &[Message]) -> u64 {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("k-"))
        .collect::<BTreeSet<_>>()
        .len() as u64
}

#[test]
fn a_full_disk_pauses_consumption_and_writing_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = common::Tmpfs::mount(&data, "256m");
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 2);
    let (messages, _, expected) = workload(20_000, 43);
    let (first, second) = messages.split_at(messages.len() / 2);
    produce(&broker, first);
    let mut server = Server::start_kafka_with(
        &data,
        &broker.address(),
        TOPIC,
        &["--min-free-disk", "16MiB"],
    );
    // The first half is consumed while there is room.
    let consumed_first = unique_valid(first);
    wait_for_entries(&server, consumed_first, Duration::from_secs(120));

    // The disk fills up: the consumer stops advancing, /readyz says why, HTTP ingest is
    // refused with 503 and nothing of it is recorded.
    let filler = disk.fill_leaving(8 << 20);
    produce(&broker, second);
    let ready = await_readiness(&server, Duration::from_secs(60), "the full disk", |ready| {
        ready["http_status"] == 503 && ready["log_writer_failing"] == true
    });
    let reasons = ready["reasons"].to_string();
    assert!(
        reasons.contains("log writer") && reasons.contains("below the reserve of 16.0 MiB"),
        "{ready}"
    );
    let now = rfc3339(Utc::now().timestamp_micros());
    let (status, body) = server.post(
        "/api/tally/events",
        &json!([{"id": "while-full", "tenant": "acme", "namespace": "shop",
                 "metric_label": "http_lb_requests", "quantity": 1, "timestamp": now}]),
    );
    assert_eq!(status, 503, "{body}");
    // Lag shows every message of the second half waiting (the high watermarks come from
    // fetch responses, refreshed every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, metrics) = server.get("/metrics");
        let lag: u64 = (0..2)
            .map(|p| {
                metric_value(
                    &metrics,
                    &format!("tally_kafka_consumer_lag_messages{{partition=\"{p}\"}}"),
                )
            })
            .sum();
        if lag == second.len() as u64 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "lag {lag}: {metrics}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let stalled = server.readiness();
    assert_eq!(stalled["log_entries"], consumed_first, "{stalled}");
    assert!(
        metric_value(&metrics, "tally_disk_available_bytes") < 16 << 20,
        "{metrics}"
    );

    // Space is freed: writing resumes by itself and every message is counted exactly once.
    std::fs::remove_file(filler).unwrap();
    wait_for_entries(&server, expected.recorded as u64, Duration::from_secs(300));
    await_readiness(&server, Duration::from_secs(30), "recovery", |ready| {
        ready["http_status"] == 200
    });
    server.stop();
    assert_eq!(stored_totals(&open_store(&server)), expected.totals);
}

#[test]
fn replaying_a_consumed_range_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 2);
    let (messages, bad, expected) = workload(2_000, 53);
    produce(&broker, &messages);
    let data = dir.path().join("data");
    let mut server = Server::start_kafka(&data, &broker.address(), TOPIC);
    wait_for_entries(&server, expected.recorded as u64, Duration::from_secs(120));
    server.stop();
    let letters_before = open_store(&server).dead_letters(0, 10_000).unwrap().len();
    drop(open_store(&server));

    let address = broker.address();
    let base = [
        "replay",
        "kafka",
        "--data-dir",
        data.to_str().unwrap(),
        "--kafka-brokers",
        &address,
        "--kafka-topic",
        TOPIC,
    ];
    let from_time = rfc3339(Utc::now().timestamp_micros() - 3_600_000_000);
    for start in [
        ["--from-offset", "0:0,1:0"],
        ["--from-time", from_time.as_str()],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(base)
            .args(start)
            .env("TALLY_ADMIN_TOKEN", common::OPERATOR_TOKEN)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let valid = messages.len() - bad.len();
        assert!(
            stdout.contains(&format!(
                "replayed {} messages of {TOPIC}: 0 new, {valid} duplicate, 0 conflicting, {} rejected",
                messages.len(),
                bad.len()
            )),
            "{stdout}"
        );
    }
    let store = open_store(&server);
    assert_eq!(
        store.read_log(0, 1_000_000).unwrap().len(),
        expected.recorded
    );
    assert_eq!(
        store.dead_letters(0, 10_000).unwrap().len(),
        letters_before,
        "no new dead letters"
    );
    assert_eq!(stored_totals(&store), expected.totals);
    // The consumer's own offsets did not move.
    assert_eq!(
        store.source_offsets(TOPIC).unwrap().values().sum::<i64>(),
        messages.len() as i64
    );
}

/// Totals of `http_lb_requests` per namespace of `tenant`, from the stored projections.
fn namespace_totals(store: &Store, tenant: &str, namespaces: &[&str]) -> BTreeMap<String, i128> {
    namespaces
        .iter()
        .map(|namespace| {
            let totals = metric_sums(store, tenant, Scope::Namespace(namespace));
            let sum = totals.get("http_lb_requests").copied().unwrap_or(0) / 1_000_000;
            (namespace.to_string(), sum)
        })
        .collect()
}

#[test]
fn every_compression_codec_of_a_foreign_producer_is_consumed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, 3);
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    let count = 2_000u64;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/produce_codec.py");
    for codec in codecs {
        // Each codec writes its own namespace, so a codec that is not decoded shows as a
        // missing total rather than hiding in a sum.
        let output = std::process::Command::new(common::tools_python())
            .args([script, &broker.address(), TOPIC, codec, "acme", codec])
            .arg(count.to_string())
            .output()
            .expect("run the confluent-kafka producer");
        assert!(
            output.status.success(),
            "{codec}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut server = Server::start_kafka(&dir.path().join("data"), &broker.address(), TOPIC);
    let total = count * codecs.len() as u64;
    wait_for_entries(&server, total, Duration::from_secs(180));
    let ready = server.readiness();
    assert_eq!(ready["http_status"], 200, "{ready}");
    server.stop();
    let expected: BTreeMap<String, i128> = codecs
        .iter()
        .map(|codec| (codec.to_string(), i128::from(count * (count + 1) / 2)))
        .collect();
    assert_eq!(
        namespace_totals(&open_store(&server), "acme", &codecs),
        expected
    );
    // No message became a dead letter: every one decoded.
    let dead = open_store(&server).dead_letters(0, 10).unwrap();
    assert!(dead.is_empty(), "{} dead letters", dead.len());
}

#[test]
fn a_partition_that_stops_advancing_is_not_ready_until_it_moves_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_sqlite(dir.path());
    broker.create_topic(TOPIC, 2);
    let (messages, _, expected) = workload(4_000, 47);
    let (first, second) = messages.split_at(messages.len() / 2);
    produce(&broker, first);
    let mut server = Server::start_kafka_with(
        &dir.path().join("data"),
        &broker.address(),
        TOPIC,
        &["--kafka-stall-time", "3s"],
    );
    await_readiness(
        &server,
        Duration::from_secs(120),
        "the first half",
        |ready| ready["log_entries"].as_u64().unwrap_or(0) > 0 && ready["http_status"] == 200,
    );

    // Consumption cannot advance: both partitions are reported, by number and with why.
    broker.stop();
    let ready = await_readiness(
        &server,
        Duration::from_secs(60),
        "stalled partitions",
        |ready| {
            ready["kafka_stalled_partitions"]["0"].is_string()
                && ready["kafka_stalled_partitions"]["1"].is_string()
        },
    );
    assert_eq!(ready["http_status"], 503, "{ready}");
    let reason = ready["kafka_stalled_partitions"]["0"].as_str().unwrap();
    assert!(reason.starts_with("no progress for "), "{reason}");
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("kafka partition 0 stalled"), "{reasons}");
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("tally_kafka_partition_stalled{partition=\"1\"} 1"),
        "{metrics}"
    );

    // It recovers by itself once the partitions advance.
    broker.start_again();
    produce(&broker, second);
    wait_for_entries(&server, expected.recorded as u64, Duration::from_secs(300));
    let ready = await_readiness(&server, Duration::from_secs(60), "recovery", |ready| {
        ready["http_status"] == 200
    });
    assert!(ready.get("kafka_stalled_partitions").is_none(), "{ready}");
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("tally_kafka_partition_stalled{partition=\"1\"} 0"),
        "{metrics}"
    );
    server.stop();
    assert_eq!(stored_totals(&open_store(&server)), expected.totals);
}
