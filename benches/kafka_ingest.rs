//! End-to-end Kafka ingest against a real broker (Tansu), next to the raw drain rate of the same
//! topic by a bare rdkafka consumer in the same run.
//!
//! `cargo bench --bench kafka_ingest` produces `TALLY_BENCH_EVENTS` (default 1,000,000)
//! synthetic events to a 4-partition topic with `tally produce`, drains the topic once with
//! `tally drain`, then starts `tally serve` on it and times from the first event in the log to
//! every event recorded and projected. Under `cargo test` it runs the same path on 5,000 events.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use common::kafka::Broker;

const TOPIC: &str = "usage";
const PARTITIONS: u32 = 4;

/// Runs `tally` with `args`; its stdout (the summary line).
fn tally(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .expect("run tally");
    assert!(
        output.status.success(),
        "tally {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The number before `unit` in a summary line ("… 123456 events/s").
fn rate_in(summary: &str, unit: &str) -> f64 {
    summary
        .split(unit)
        .next()
        .and_then(|head| head.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let events: u64 = if benching {
        std::env::var("TALLY_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        5_000
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, PARTITIONS);
    let brokers = broker.address();
    let count = events.to_string();
    let produced = tally(&[
        "produce",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--synthetic",
        &count,
        "--tenants",
        "100",
        "--namespaces",
        "1000",
        "--seed",
        "1",
    ]);
    let drained = tally(&["drain", "--brokers", &brokers, "--topic", TOPIC]);
    assert!(
        drained.contains(&format!("drained {events} messages")),
        "{drained}"
    );

    let started = Instant::now();
    let mut server = Server::start_kafka(&dir.path().join("data"), &brokers, TOPIC);
    let deadline = started + Duration::from_secs(1_800);
    let mut first_entry: Option<Instant> = None;
    loop {
        let ready = server.readiness();
        let logged = ready["log_entries"].as_u64().unwrap_or(0);
        let projected = ready["projected_entries"].as_u64().unwrap_or(0);
        if logged > 0 {
            first_entry.get_or_insert_with(Instant::now);
        }
        if logged == events && projected == events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {ready} of {events} events"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let done = Instant::now();
    let (_, metrics) = server.get("/metrics");
    server.stop();
    let recorded = metrics
        .lines()
        .find(|l| l.starts_with("tally_events_total{outcome=\"recorded\",source=\"kafka\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(recorded, events, "every synthetic event is recorded once");

    let ingest = done - first_entry.unwrap_or(started);
    let ingest_rate = events as f64 / ingest.as_secs_f64().max(1e-9);
    let with_startup = events as f64 / (done - started).as_secs_f64().max(1e-9);
    println!("kafka_ingest: {events} synthetic events, {PARTITIONS} partitions, Tansu memory://");
    println!("  produce (tally produce, idempotent): {produced}");
    println!("  raw drain (bare rdkafka consumer):   {drained}");
    println!(
        "  tally serve, first event logged → all projected: {:.2} s = {ingest_rate:.0} events/s \
         ({with_startup:.0} events/s counting engine start-up)",
        ingest.as_secs_f64()
    );
    let drain_rate = rate_in(&drained, "messages/s");
    if drain_rate > 0.0 {
        println!(
            "  end-to-end ingest is {:.0} % of the raw drain rate (produce ran at {:.0} events/s)",
            100.0 * ingest_rate / drain_rate,
            rate_in(&produced, "events/s")
        );
    }
}
