//! Micro-benchmarks of the ingest path: decode + fold (pure), and durable log append.
//!
//! `cargo bench --bench ingest`; each reports events/s (criterion's "elements").

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tally::catalog::Catalog;
use tally::event::{self, DecodeContext, EventSource};
use tally::log::append::{Appender, Candidate, LogHead};
use tally::log::store::{Store, StoreOptions};
use tally::projection::UsageDeltas;
use tally::time;

const BATCH: usize = 1_000;

fn raw_events(now: i64, offset: usize) -> Vec<Vec<u8>> {
    let metrics = [
        "http_lb_requests",
        "data_transfer_bytes",
        "public_vip_hours",
        "waf_security_events",
    ];
    (0..BATCH)
        .map(|i| {
            let n = offset + i;
            format!(
                r#"{{"id":"evt-{n}","namespace":"ns-{}","metric_label":"{}","quantity":"{}.5","timestamp":"{}","object_name":"lb-{}"}}"#,
                n % 50,
                metrics[n % metrics.len()],
                n % 1000,
                time::format_rfc3339(now - (n as i64 % 48) * time::MICROS_PER_HOUR),
                n % 7
            )
            .into_bytes()
        })
        .collect()
}

fn decode_context(catalog: &Catalog, now: i64) -> DecodeContext<'_> {
    DecodeContext {
        catalog,
        now,
        late_window: 35 * 24 * time::MICROS_PER_HOUR,
        future_skew: 300 * time::MICROS_PER_SECOND,
        tenant: "default",
        may_name_any_tenant: false,
    }
}

fn decode_and_fold(c: &mut Criterion) {
    let catalog = Catalog::builtin().expect("catalog");
    let now = (time::system_clock())();
    let raws = raw_events(now, 0);
    let context = decode_context(&catalog, now);
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode_1000", |b| {
        b.iter(|| {
            raws.iter()
                .filter(|raw| event::decode(raw, &context).is_ok())
                .count()
        })
    });
    group.bench_function("decode_and_fold_1000", |b| {
        b.iter(|| {
            let mut deltas = UsageDeltas::default();
            for raw in &raws {
                if let Ok(event) = event::decode(raw, &context) {
                    let entry = tally::log::LogEntry::UsageRecorded {
                        event,
                        source: EventSource::Http { received_at: now },
                        recorded_at: now,
                    };
                    deltas.fold(&entry, &catalog);
                }
            }
            deltas.len()
        })
    });
    group.finish();
}

fn log_append(c: &mut Criterion) {
    let catalog = Catalog::builtin().expect("catalog");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        &StoreOptions {
            dedup_horizon: Duration::from_secs(35 * 86_400),
            min_free_disk: 0,
        },
    )
    .expect("store");
    let clock = time::system_clock();
    let now = clock();
    let (appender, writer) =
        Appender::start(store, LogHead::new(0), clock, Default::default(), false)
            .expect("appender");
    let context = decode_context(&catalog, now);
    let mut offset = 0;
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("append_1000_fsync", |b| {
        b.iter_batched(
            || {
                offset += BATCH;
                raw_events(now, offset)
                    .iter()
                    .filter_map(|raw| event::decode(raw, &context).ok())
                    .map(|event| Candidate::Event {
                        event,
                        source: EventSource::Http { received_at: now },
                    })
                    .collect::<Vec<_>>()
            },
            |candidates| {
                appender
                    .append_blocking(candidates, Vec::new())
                    .expect("append")
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    // The writer holds the store: let it close RocksDB before the directory goes and the
    // process exits (RocksDB aborts when its threads outlive the process's statics).
    drop(appender);
    writer.join().expect("writer thread");
}

criterion_group!(benches, decode_and_fold, log_append);
criterion_main!(benches);
