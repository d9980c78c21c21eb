//! Rebuild rate: every projection folded from a log of `TALLY_BENCH_EVENTS` (default
//! 1,000,000) usage events into a shadow store, next to a raw scan of the same log CF in the
//! same run. `cargo bench --bench rebuild`; under `cargo test` it runs on 20,000 events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally::catalog::Catalog;
use tally::config::Config;
use tally::engine::Engine;
use tally::event::{EventSource, UsageEvent};
use tally::log::append::Candidate;
use tally::replay;
use tally::units::Micros;

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let events: u64 = if benching {
        std::env::var("TALLY_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        20_000
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        admin_token: Some("bench-operator".into()),
        rate_limit: 0,
        ..Config::with_defaults(
            dir.path().join("data"),
            Arc::new(Catalog::builtin().expect("catalog")),
        )
    };
    let engine = Engine::open(config, tally::time::system_clock()).expect("engine");
    let now = engine.now();
    let metrics = [
        "http_lb_requests",
        "data_transfer_bytes",
        "public_vip_hours",
        "waf_security_events",
    ];
    let loading = Instant::now();
    for start in (0..events).step_by(10_000) {
        let candidates = (start..(start + 10_000).min(events))
            .map(|n| Candidate::Event {
                event: UsageEvent {
                    tenant: format!("tenant-{}", n % 100),
                    id: format!("evt-{n}"),
                    namespace: format!("ns-{}", n % 1_000),
                    metric_label: metrics[(n % 4) as usize].into(),
                    quantity: Micros(((n % 1_000) as i64 + 1) * 1_000_000),
                    timestamp: now - ((n % 48) as i64) * 3_600_000_000,
                    object_name: format!("lb-{}", n % 7),
                    deployment: String::new(),
                    container: String::new(),
                    labels: Default::default(),
                },
                source: EventSource::Http { received_at: now },
            })
            .collect();
        engine
            .appender()
            .append_blocking(candidates, Vec::new())
            .expect("append");
    }
    let head = engine.head();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    assert!(runtime.block_on(engine.wait_projected(head, Duration::from_secs(3_600))));
    let loaded = loading.elapsed();
    let cfs = replay::projection_cfs("all").expect("projections");
    let report = replay::rebuild(&engine, &cfs, true, &|_, _| {}).expect("rebuild");
    assert!(
        report.identical,
        "a fold of the log equals the live projections"
    );
    assert_eq!(report.entries, events);
    println!("rebuild: {events} usage events (100 tenants, 1,000 namespaces, 4 meters, 48 hours)");
    println!(
        "  loaded through the writer and the projector in {:.1} s",
        loaded.as_secs_f64()
    );
    println!(
        "  rebuild (fold into a shadow store, every projection): {:.2} s = {:.0} events/s",
        report.seconds, report.entries_per_second
    );
    println!(
        "  raw RocksDB scan of the log CF, same run:            {:.0} entries/s",
        report.raw_scan_entries_per_second
    );
    println!(
        "  rebuild is {:.1} % of the raw scan rate",
        100.0 * report.entries_per_second / report.raw_scan_entries_per_second
    );
    runtime.block_on(engine.shutdown());
}
