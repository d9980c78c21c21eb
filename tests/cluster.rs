//! Several engines in one Kafka consumer group (`--cluster`), as real processes on a real
//! Tansu broker: each owns the partitions the group assigns it, answers for the tenants of
//! those partitions only, and takes the others over when an engine leaves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::Server;
use common::kafka::Broker;
use serde_json::{Value, json};
use tally::ingest::produce::TenantProducer;
use tally::kafka::partition_of_tenant;

const TOPIC: &str = "usage";
const PARTITIONS: i32 = 6;
const GROUP: &str = "meters";

/// One test at a time: each runs a broker and up to three engines, and on two cores several
/// at once starve the group protocol's timers.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `per_tenant` events for each tenant, numbered from `first`; returns each tenant's sum.
fn produce(
    broker: &Broker,
    tenants: &[String],
    first: u64,
    per_tenant: u64,
) -> BTreeMap<String, u64> {
    let now = Utc::now().timestamp_micros();
    let mut producer = TenantProducer::new(&broker.address(), TOPIC).unwrap();
    let mut sums = BTreeMap::new();
    for (t, tenant) in tenants.iter().enumerate() {
        for n in first..first + per_tenant {
            let quantity = 1 + (n * 7 + t as u64) % 13;
            let event = json!({"id": format!("{tenant}-{n}"), "namespace": "shop",
                "metric_label": "http_lb_requests", "quantity": quantity,
                "timestamp": rfc3339(now - 60_000_000)});
            producer.send(tenant, event.to_string().as_bytes()).unwrap();
            *sums.entry(tenant.clone()).or_default() += quantity;
        }
    }
    let summary = producer.finish().unwrap();
    assert_eq!(summary.failed, 0);
    sums
}

fn start_engine(dir: &std::path::Path, name: &str, broker: &Broker) -> Server {
    Server::start_kafka_with(
        &dir.join(name),
        &broker.address(),
        TOPIC,
        &["--cluster", "--kafka-group", GROUP],
    )
}

/// The partitions an engine owns and has restored, once `/readyz` lists them.
fn ready_partitions(server: &Server) -> BTreeSet<i64> {
    server.owned_partitions(true)
}

fn owned_partitions(server: &Server) -> BTreeSet<i64> {
    server.owned_partitions(false)
}

/// Waits until the engines own every partition between them, each once, all restored.
fn await_split(engines: &[&Server], what: &str) -> Vec<BTreeSet<i64>> {
    await_split_of(engines, PARTITIONS, what)
}

/// As [`await_split`], for a topic of `partitions` partitions.
fn await_split_of(engines: &[&Server], partitions: i32, what: &str) -> Vec<BTreeSet<i64>> {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let owned: Vec<BTreeSet<i64>> = engines.iter().map(|e| owned_partitions(e)).collect();
        let ready: Vec<BTreeSet<i64>> = engines.iter().map(|e| ready_partitions(e)).collect();
        let all: Vec<i64> = owned.iter().flatten().copied().collect();
        let every: BTreeSet<i64> = (0..i64::from(partitions)).collect();
        if all.len() == every.len()
            && all.iter().copied().collect::<BTreeSet<_>>() == every
            && owned == ready
            && owned.iter().all(|o| !o.is_empty())
        {
            return owned;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: owned {owned:?}, ready {ready:?}\n{}",
            engines
                .iter()
                .map(|e| e.log_text())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A token of `tenant` with `role`, issued by the operator through `server` (the control
/// topic shares it with every engine).
fn token_of(server: &Server, tenant: &str, role: &str) -> String {
    let (status, answer) = server.post(
        "/api/tally/tokens",
        &json!({"tenant": tenant, "role": role, "namespaces": ["*"]}),
    );
    assert_eq!(status, 200, "{answer}");
    answer["token"].as_str().unwrap().to_owned()
}

fn read_token(server: &Server, tenant: &str) -> String {
    token_of(server, tenant, "read")
}

/// The range every usage question of these tests asks about.
fn usage_range() -> Value {
    let now = Utc::now().timestamp_micros();
    json!({"from": rfc3339(now - 3 * 3_600_000_000), "to": rfc3339(now + 3_600_000_000)})
}

/// The summed quantity of a `usage_details` answer.
fn total_of(answer: &Value) -> f64 {
    answer["usage_items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["quantity"].as_f64()).sum())
        .unwrap_or(0.0)
}

/// The tenant's `usage_details` on `server`: its status, and the summed quantity.
fn usage_of(server: &Server, token: &str) -> (u16, Value, f64) {
    let (status, answer) = server
        .post_raw(
            "/api/web/namespaces/system/usage_details",
            Some(token),
            serde_json::to_vec(&usage_range()).unwrap(),
        )
        .unwrap();
    let total = total_of(&answer);
    (status, answer, total)
}

/// Waits until `server` answers `tenant`'s exact total (once its owner has read what was
/// produced); fails with what it last answered.
fn await_total(server: &Server, token: &str, tenant: &str, sum: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let (status, answer, total) = loop {
        let (status, answer, total) = usage_of(server, token);
        if (status == 200 && total >= sum as f64) || Instant::now() > deadline {
            break (status, answer, total);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 200, "{tenant} {what}: {answer}");
    assert_eq!(total, sum as f64, "{tenant} {what}: {answer}");
}

/// Each tenant asked of each engine: every one answers the exact total, its owner itself and
/// the others by forwarding to it; a request already forwarded once is not forwarded again
/// (421 naming the partition on an engine that does not own it).
fn check_totals(engines: &[&Server], owned: &[BTreeSet<i64>], expected: &BTreeMap<String, u64>) {
    check_totals_of(engines, PARTITIONS, owned, expected)
}

/// As [`check_totals`], for a topic of `partitions` partitions.
fn check_totals_of(
    engines: &[&Server],
    partitions: i32,
    owned: &[BTreeSet<i64>],
    expected: &BTreeMap<String, u64>,
) {
    for (tenant, sum) in expected {
        let partition = i64::from(partition_of_tenant(tenant, partitions).unwrap());
        let token = read_token(engines[0], tenant);
        for (engine, owns) in engines.iter().zip(owned) {
            let what = if owns.contains(&partition) {
                "on its owner"
            } else {
                "forwarded"
            };
            await_total(engine, &token, tenant, *sum, what);
            if !owns.contains(&partition) {
                let (status, answer, _) = engine.post_with_headers(
                    "/api/web/namespaces/system/usage_details",
                    &token,
                    &usage_range(),
                    &[("x-tally-forwarded-by", "http://elsewhere")],
                );
                assert_eq!(status, 421, "{tenant} forwarded twice: {answer}");
                let message = answer["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(&format!("partition {partition}")),
                    "{message}"
                );
            }
        }
    }
}

#[test]
fn engines_of_one_group_split_the_partitions_and_answer_for_their_tenants_only() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let tenants: Vec<String> = (0..24).map(|i| format!("tenant-{i}")).collect();
    let spread: BTreeSet<i32> = tenants
        .iter()
        .filter_map(|t| partition_of_tenant(t, PARTITIONS))
        .collect();
    assert_eq!(
        spread.len(),
        PARTITIONS as usize,
        "the tenants cover every partition"
    );
    let mut expected = produce(&broker, &tenants, 0, 300);

    // One engine alone owns everything and restores it.
    let mut a = start_engine(dir.path(), "a", &broker);
    let owned = await_split(&[&a], "a alone");
    check_totals(&[&a], &owned, &expected);

    // A second one joins: the partitions split between them, each restored before it answers;
    // no event is counted twice by the engine that owned a partition before.
    let mut b = start_engine(dir.path(), "b", &broker);
    let owned = await_split(&[&a, &b], "a and b");
    for (tenant, sum) in produce(&broker, &tenants, 300, 200) {
        *expected.get_mut(&tenant).unwrap() += sum;
    }
    check_totals(&[&a, &b], &owned, &expected);

    // HTTP ingest through the operator is judged event by event: an event whose tenant A does
    // not own is refused naming the tenant (and kept as a dead letter), one A owns is taken.
    let a_owns = |tenant: &String| {
        owned[0].contains(&i64::from(partition_of_tenant(tenant, PARTITIONS).unwrap()))
    };
    let here = tenants.iter().find(|t| a_owns(t)).unwrap();
    let there = tenants.iter().find(|t| !a_owns(t)).unwrap();
    let now = rfc3339(Utc::now().timestamp_micros() - 60_000_000);
    let (status, answer) = a.post(
        "/api/tally/events",
        &json!([
            {"id": "http-1", "tenant": here, "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 5, "timestamp": now},
            {"id": "http-2", "tenant": there, "namespace": "shop", "metric_label": "http_lb_requests", "quantity": 5, "timestamp": now},
        ]),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["field"], "tenant", "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    *expected.get_mut(here).unwrap() += 5;
    // A tenant's own token sends its events through any engine: forwarded to the owner. Used
    // at once: B, not knowing the token yet, reads the control topic as far as A had.
    let writer = token_of(&a, there, "write");
    let (status, answer) = a
        .post_raw(
            "/api/tally/events",
            Some(&writer),
            serde_json::to_vec(&json!([{"id": "http-3", "namespace": "shop",
                "metric_label": "http_lb_requests", "quantity": 7, "timestamp": now}]))
            .unwrap(),
        )
        .unwrap();
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    *expected.get_mut(there).unwrap() += 7;
    check_totals(&[&a, &b], &owned, &expected);

    // B leaves: A takes its partitions back and catches up from its own stored offsets.
    b.stop();
    for (tenant, sum) in produce(&broker, &tenants, 500, 100) {
        *expected.get_mut(&tenant).unwrap() += sum;
    }
    let owned = await_split(&[&a], "a after b left");
    check_totals(&[&a], &owned, &expected);
    a.stop();
}

#[test]
fn a_killed_engine_partitions_move_to_the_survivor_and_come_back_exact() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let tenants: Vec<String> = (0..24).map(|i| format!("tenant-{i}")).collect();
    // A first, so that A leads the group: on Tansu 0.6 a group whose leader dies was seen to
    // hand the survivor nothing for minutes (see README, "Running several engines").
    let mut a = start_engine(dir.path(), "a", &broker);
    await_split(&[&a], "a alone");
    let mut b = start_engine(dir.path(), "b", &broker);
    await_split(&[&a, &b], "a and b");
    let mut expected = produce(&broker, &tenants, 0, 300);
    let owned = await_split(&[&a, &b], "a and b, loaded");
    check_totals(&[&a, &b], &owned, &expected);

    // SIGKILL: no leave, the group moves B's partitions once its session (30 s) times out. A folds
    // them from where its own store stands (nothing, here), so nothing is counted twice.
    b.kill();
    for (tenant, sum) in produce(&broker, &tenants, 300, 200) {
        *expected.get_mut(&tenant).unwrap() += sum;
    }
    let owned = await_split(&[&a], "a after b was killed");
    check_totals(&[&a], &owned, &expected);

    // B back on its own data directory: whatever it is assigned, it resumes from its stored
    // offsets and restores before answering.
    b.start_again();
    for (tenant, sum) in produce(&broker, &tenants, 500, 100) {
        *expected.get_mut(&tenant).unwrap() += sum;
    }
    let owned = await_split(&[&a, &b], "a and b again");
    check_totals(&[&a, &b], &owned, &expected);

    // A message in another partition than its tenant's is a dead letter, not a count.
    let home = partition_of_tenant("tenant-0", PARTITIONS).unwrap();
    let elsewhere = (home + 1) % PARTITIONS;
    send_to_partition(&broker, "tenant-0", elsewhere, 1_000);
    let receiver = if owned[0].contains(&i64::from(elsewhere)) {
        &a
    } else {
        &b
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while rejected_from_kafka(receiver) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    check_totals(&[&a, &b], &owned, &expected);
    let receiver_dir = receiver.data_dir.clone();
    a.stop();
    b.stop();
    let store = tally::log::store::Store::open_read_only(
        &receiver_dir,
        &tally::log::store::StoreOptions {
            dedup_horizon: Duration::from_secs(35 * 86_400),
            min_free_disk: 0,
        },
    )
    .unwrap();
    let dead = store.dead_letters(0, 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (_, letter) = &dead[0];
    assert_eq!(letter.rejection.field, "key");
    assert!(
        letter
            .rejection
            .reason
            .contains(&format!("belongs in partition {home}, not {elsewhere}")),
        "{}",
        letter.rejection.reason
    );
}

/// One event of `tenant` sent to `partition`, whatever the key's own partition is.
fn send_to_partition(broker: &Broker, tenant: &str, partition: i32, quantity: u64) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .create()
        .unwrap();
    let event =
        json!({"id": "misplaced-1", "namespace": "shop", "metric_label": "http_lb_requests",
        "quantity": quantity, "timestamp": rfc3339(Utc::now().timestamp_micros() - 60_000_000)})
        .to_string();
    producer
        .send(
            BaseRecord::to(TOPIC)
                .key(tenant)
                .payload(&event)
                .partition(partition),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Kafka messages the engine refused (each kept as a dead letter).
fn rejected_from_kafka(server: &Server) -> u64 {
    kafka_messages(server, Some("rejected"))
}

/// Messages of `server`'s Kafka consumer with `outcome` (any outcome for `None`).
fn kafka_messages(server: &Server, outcome: Option<&str>) -> u64 {
    let (_, metrics) = server.get("/metrics");
    let outcome = outcome.map(|o| format!(r#"outcome="{o}""#));
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("tally_events_total{")
                && line.contains(r#"source="kafka""#)
                && outcome.as_ref().is_none_or(|o| line.contains(o.as_str()))
        })
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn scaling_from_one_to_three_engines_moves_only_the_partitions_that_must_move() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let tenants: Vec<String> = (0..24).map(|i| format!("tenant-{i}")).collect();
    let mut expected = produce(&broker, &tenants, 0, 200);
    let mut a = start_engine(dir.path(), "a", &broker);
    let one = await_split(&[&a], "one engine");

    // Each engine joins while events keep arriving.
    let mut b = start_engine(dir.path(), "b", &broker);
    let add = |expected: &mut BTreeMap<String, u64>, first| {
        for (tenant, sum) in produce(&broker, &tenants, first, 100) {
            *expected.get_mut(&tenant).unwrap() += sum;
        }
    };
    add(&mut expected, 200);
    let two = await_split(&[&a, &b], "two engines");
    assert!(
        two[0].is_subset(&one[0]),
        "a only gave partitions away: {one:?} → {two:?}"
    );
    assert_eq!(two[0].len(), 3, "{two:?}");
    check_totals(&[&a, &b], &two, &expected);

    let mut c = start_engine(dir.path(), "c", &broker);
    add(&mut expected, 300);
    let three = await_split(&[&a, &b, &c], "three engines");
    // Cooperative and sticky: a and b each keep what they had but the share c takes.
    assert!(
        three[0].is_subset(&two[0]) && three[1].is_subset(&two[1]),
        "{two:?} → {three:?}"
    );
    assert!(three.iter().all(|owned| owned.len() == 2), "{three:?}");
    check_totals(&[&a, &b, &c], &three, &expected);

    // A quota created through A for a tenant B owns is decided by B and applies to the events
    // B folds; a check asked of C answers from B's state.
    let tenant = tenants
        .iter()
        .find(|t| three[1].contains(&i64::from(partition_of_tenant(t, PARTITIONS).unwrap())))
        .unwrap();
    let admin = token_of(&a, tenant, "admin");
    let quota = json!({"metadata": {"name": "tight", "namespace": "system"},
                       "spec": {"object_limits": {"http_loadbalancer": {"maximum": 4}}}});
    let (status, created) = a
        .post_raw(
            "/api/web/namespaces/system/quotas",
            Some(&admin),
            serde_json::to_vec(&quota).unwrap(),
        )
        .unwrap();
    assert_eq!(status, 200, "{created}");
    assert_eq!(
        created["system_metadata"]["tenant"],
        json!(tenant),
        "{created}"
    );
    let mut producer = TenantProducer::new(&broker.address(), TOPIC).unwrap();
    let gauge = json!({"id": "lb-1", "namespace": "shop", "metric_label": "http_loadbalancers",
        "quantity": 3, "timestamp": rfc3339(Utc::now().timestamp_micros() - 1_000_000)});
    producer.send(tenant, gauge.to_string().as_bytes()).unwrap();
    assert_eq!(producer.finish().unwrap().failed, 0);
    let check = |amount: u64| {
        c.post_raw(
            "/api/tally/namespaces/shop/quota/check",
            Some(&admin),
            serde_json::to_vec(&json!({"key": "http_loadbalancer", "amount": amount})).unwrap(),
        )
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let (status, answer) = check(1);
        if (status == 200 && answer["current"] == 3.0) || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        answer,
        json!({"key": "http_loadbalancer", "allowed": true, "limit": 4.0, "current": 3.0, "remaining": 1.0})
    );
    assert_eq!(check(2).1["allowed"], false);
    // B, the owner, holds the quota object and the level; neither A nor C decided anything.
    let (_, listed, _) = b.post_with_headers(
        "/api/tally/namespaces/shop/quota/check",
        &admin,
        &json!({"key": "http_loadbalancer", "amount": 1}),
        &[("x-tally-forwarded-by", "test")],
    );
    assert_eq!(listed["current"], 3.0, "{listed}");

    // The operator's views of that tenant, asked of C: its audit trail (on B, forwarded by the
    // query's tenant); a plan transition B holds, named only by its id (C and A do not know
    // it, so they ask the others until one does).
    let (status, audit) = c.call("GET", &format!("/api/tally/audit?tenant={tenant}"), None);
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "quota.create"),
        "{audit}"
    );
    let (status, waiting) = a
        .post_raw(
            "/api/web/namespaces/system/billing/plan_transition",
            Some(&admin),
            serde_json::to_vec(&json!({"new_plan": "organization-plan",
                "payload": {"domain": "example.com", "billing_address": {"city": "x"}}}))
            .unwrap(),
        )
        .unwrap();
    assert_eq!(status, 200, "{waiting}");
    assert_eq!(waiting["requires_manual_approval"], true, "{waiting}");
    let id = waiting["id"].as_str().unwrap();
    let (status, rejected) = c.call(
        "POST",
        &format!("/api/tally/plan_transitions/{id}/reject"),
        Some(&json!({"reason": "not now"})),
    );
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["state"], "STATE_FAILED", "{rejected}");
    let (status, state) = a.get(&format!(
        "/no_auth/namespaces/system/billing/plan_transition?id={id}"
    ));
    assert_eq!(status, 200, "{state}");
    assert!(state.contains("STATE_FAILED"), "{state}");
    for engine in [&mut a, &mut b, &mut c] {
        engine.stop();
    }
}

/// Messages of `server`'s Kafka consumer, whatever became of them.
fn read_from_kafka(server: &Server) -> u64 {
    kafka_messages(server, None)
}

#[test]
fn a_fresh_engine_replacing_a_killed_one_restores_from_the_changelog_and_every_engine_answers_exact()
 {
    const WIDE: &str = "wide";
    const WIDE_PARTITIONS: i32 = 12;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(WIDE, WIDE_PARTITIONS as u32);
    let start = |name: &str| {
        Server::start_kafka_with(
            &dir.path().join(name),
            &broker.address(),
            WIDE,
            &["--cluster", "--kafka-group", GROUP],
        )
    };
    let mut a = start("a");
    await_split_of(&[&a], WIDE_PARTITIONS, "a alone");
    let mut b = start("b");
    await_split_of(&[&a, &b], WIDE_PARTITIONS, "a and b");
    let mut c = start("c");
    await_split_of(&[&a, &b, &c], WIDE_PARTITIONS, "a, b and c");

    // 300,000 events for 200 tenants; C is killed (no leave, its disk gone with it) half way
    // and a fresh engine with an empty data directory starts in its place.
    let tenants: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_partition: BTreeMap<i64, u64> = BTreeMap::new();
    let now = Utc::now().timestamp_micros();
    let mut send_half = |first: u64| {
        let mut producer = TenantProducer::new(&broker.address(), WIDE).unwrap();
        for n in first..first + 750 {
            for (t, tenant) in tenants.iter().enumerate() {
                let quantity = 1 + (n * 7 + t as u64) % 13;
                let event = json!({"id": format!("{tenant}-{n}"), "namespace": "shop",
                    "metric_label": "http_lb_requests", "quantity": quantity,
                    "timestamp": rfc3339(now - 60_000_000)});
                producer.send(tenant, event.to_string().as_bytes()).unwrap();
                *expected.entry(tenant.clone()).or_default() += quantity;
                *per_partition
                    .entry(i64::from(
                        partition_of_tenant(tenant, WIDE_PARTITIONS).unwrap(),
                    ))
                    .or_default() += 1;
            }
        }
        assert_eq!(producer.finish().unwrap().failed, 0);
    };
    send_half(0);
    // C folds (and publishes) part of its share before it dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_from_kafka(&c) < 10_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    c.kill();
    let mut d = start("d");
    send_half(750);
    let owned = await_split_of(&[&a, &b, &d], WIDE_PARTITIONS, "a, b and the fresh d");

    // D restored its partitions from the changelog: it read from the source topic only what
    // the changelog did not hold, far less than those partitions' history.
    let readiness = d.readiness();
    let d_partitions = readiness["owned_partitions"].as_array().unwrap();
    let restored: u64 = d_partitions
        .iter()
        .filter_map(|p| p["restored_entries"].as_u64())
        .sum();
    let d_history: u64 = owned[2].iter().map(|p| per_partition[p]).sum();
    let d_read = read_from_kafka(&d);
    assert!(restored > 0, "{readiness}");
    assert!(
        d_partitions.iter().all(|p| p["phase"] == "ready"),
        "{readiness}"
    );
    assert!(
        d_read < d_history,
        "d read {d_read} messages of its partitions' {d_history}: {readiness}"
    );
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics.contains("tally_changelog_restored_entries_total{partition="),
        "{metrics}"
    );
    assert!(
        metrics.contains("tally_cluster_partition_owned{partition="),
        "{metrics}"
    );

    // Every tenant's total, asked of any engine, is exact: nothing lost, nothing twice.
    check_totals_of(&[&a, &b, &d], WIDE_PARTITIONS, &owned, &expected);
    for engine in [&mut a, &mut b, &mut d] {
        engine.stop();
    }
}

#[test]
fn a_static_member_restarted_within_its_session_gets_its_partitions_back() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_memory(dir.path());
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let tenants: Vec<String> = (0..24).map(|i| format!("tenant-{i}")).collect();
    let mut expected = produce(&broker, &tenants, 0, 100);
    let start = |name: &str| {
        Server::start_kafka_with(
            &dir.path().join(name),
            &broker.address(),
            TOPIC,
            &["--cluster", "--kafka-group", GROUP, "--instance-id", name],
        )
    };
    // Both at once: on Tansu 0.6 a static member joining a formed group was seen to get its
    // share revoked from the other member and never assigned.
    let mut a = start("a");
    let mut b = start("b");
    let before = await_split(&[&a, &b], "a and b");
    // Killed and back before its session ends: the group keeps its place, so nothing moves.
    b.kill();
    b.start_again();
    for (tenant, sum) in produce(&broker, &tenants, 100, 100) {
        *expected.get_mut(&tenant).unwrap() += sum;
    }
    let after = await_split(&[&a, &b], "b back");
    assert_eq!(before, after);
    check_totals(&[&a, &b], &after, &expected);
    a.stop();
    b.stop();
}
