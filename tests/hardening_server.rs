//! The HTTP server against clients that do not play along, through the real binary: idle,
//! slow-header and slow-body connections are closed in bounded time, the connection cap holds,
//! SIGTERM finishes while a client holds a half-sent request, an ingest answer says when its
//! events are not yet readable, and `/readyz` is not ready while the projector catches up after
//! a start or while the disk is below the reserve. Every wait here is bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{OPERATOR_TOKEN, Server};
use serde_json::{Value, json};

fn connect(server: &Server) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

/// Reads until the server closes the connection; returns what it sent, or `None` when it kept
/// the connection open past the read timeout.
fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&answer).into_owned());
            }
            Err(_) => return None,
        }
    }
}

fn events(first: usize, count: usize) -> Value {
    let now = Utc::now().to_rfc3339();
    Value::Array(
        (first..first + count)
            .map(|i| {
                json!({"id": format!("e{i}"), "namespace": "shop", "metric_label": "http_lb_requests",
                       "quantity": "1", "timestamp": now})
            })
            .collect(),
    )
}

fn ingest(server: &Server, body: &Value) -> Value {
    let (status, answer) = server.post("/api/tally/events", body);
    assert_eq!(status, 200, "{answer}");
    answer
}

#[test]
fn idle_slow_and_surplus_connections_are_closed_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_args(
        &dir.path().join("data"),
        &[
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
            "--max-connections",
            "20",
        ],
    );
    let started = Instant::now();
    // Half-sent headers.
    let mut slow_header = connect(&server);
    slow_header
        .write_all(b"POST /api/tally/events HTTP/1.1\r\nHost: tally\r\nContent-")
        .unwrap();
    // Idle connections (never a byte), more than the cap: each is closed, the surplus at once.
    let mut idle: Vec<TcpStream> = (0..40).map(|_| connect(&server)).collect();
    for stream in &mut idle {
        assert!(
            read_until_closed(stream).is_some(),
            "an idle connection was kept open"
        );
    }
    assert!(
        read_until_closed(&mut slow_header).is_some(),
        "a half-sent header was waited for indefinitely"
    );

    // A body that never completes: 408, and the connection closes.
    let mut slow_body = connect(&server);
    write!(
        slow_body,
        "POST /api/tally/events HTTP/1.1\r\nHost: tally\r\nAuthorization: APIToken {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"id\":"
    )
    .unwrap();
    let answer = read_until_closed(&mut slow_body).expect("a slow body was waited for");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // The engine still serves, and nothing of the slow body was recorded.
    let answer = ingest(&server, &events(0, 3));
    assert_eq!(answer["accepted"], 3);
    let (_, ready) = server.get("/readyz");
    assert!(ready.contains("\"log_entries\":3"), "{ready}");
}

#[test]
fn sigterm_finishes_while_a_client_holds_a_half_sent_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_args(
        &data,
        &[
            "--shutdown-timeout",
            "2s",
            "--header-timeout",
            "120s",
            "--body-timeout",
            "120s",
        ],
    );
    assert_eq!(ingest(&server, &events(0, 5))["accepted"], 5);
    let mut endless_body = connect(&server);
    write!(
        endless_body,
        "POST /api/tally/events HTTP/1.1\r\nHost: tally\r\nAuthorization: APIToken {OPERATOR_TOKEN}\r\nContent-Length: 100000\r\n\r\n["
    )
    .unwrap();
    let mut half_header = connect(&server);
    half_header
        .write_all(b"GET /readyz HTTP/1.1\r\nHo")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let status = server
        .terminate_within(Duration::from_secs(20))
        .expect("tally did not exit after SIGTERM while clients held requests");
    assert!(status.success(), "{status}");
    // The store was closed cleanly and holds what was acknowledged.
    server.start_again();
    server.wait_caught_up();
    let (_, ready) = server.get("/readyz");
    assert!(ready.contains("\"log_entries\":5"), "{ready}");
    server.stop();
}

#[test]
fn an_ingest_answer_says_whether_reads_include_its_events() {
    let dir = tempfile::tempdir().unwrap();
    // A wait far shorter than folding 10,000 events takes.
    let mut hurried = Server::start_args(&dir.path().join("hurried"), &["--ingest-wait", "1ms"]);
    let answer = ingest(&hurried, &events(0, 10_000));
    assert_eq!(
        (answer["accepted"].clone(), answer["projected"].clone()),
        (json!(10_000), json!(false)),
        "{answer}"
    );
    hurried.wait_caught_up();
    hurried.stop();

    let mut patient = Server::start(&dir.path().join("patient"), None);
    let answer = ingest(&patient, &events(0, 100));
    assert_eq!(answer["projected"], true, "{answer}");
    // Read-your-writes: the answer came after the projections included the events.
    let (status, report) = patient.post("/api/web/namespaces/shop/usage_details", &json!({}));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["usage_items"][0]["quantity"], 100.0, "{report}");
    patient.stop();
}

#[test]
fn readiness_waits_for_the_refold_after_a_start_and_for_disk_above_the_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    for batch in 0..10 {
        ingest(&server, &events(batch * 10_000, 10_000));
    }
    server.stop();
    // The next start folds the whole log again: not ready until it has.
    common::drop_projections(&data);
    server.start_again();
    let ready = server.readiness();
    assert_eq!(ready["http_status"], 503, "{ready}");
    assert!(
        ready["reasons"]
            .to_string()
            .contains("catching up after start"),
        "{ready}"
    );
    server.wait_caught_up();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.readiness()["http_status"] != 200 {
        assert!(Instant::now() < deadline, "{}", server.readiness());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();

    // Below the free-space reserve, nothing needs to have failed yet to be not ready.
    let mut starved = Server::start_args(
        &dir.path().join("starved"),
        &["--min-free-disk", "9000000000000000000"],
    );
    let ready = starved.readiness();
    assert_eq!(ready["http_status"], 503, "{ready}");
    assert!(
        ready["reasons"].to_string().contains("disk: only"),
        "{ready}"
    );
    starved.stop();
}

#[test]
fn a_store_that_latches_a_write_error_is_reopened_once_the_cause_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::Tmpfs::mount(&dir.path().join("disk"), "48m");
    // No reserve: let RocksDB itself run out of space, which it then latches.
    let mut server = Server::start_args(&dir.path().join("disk/data"), &["--min-free-disk", "0"]);
    let mut accepted = ingest(&server, &events(0, 100))["accepted"]
        .as_u64()
        .unwrap();
    let filler = disk.fill_leaving(0);
    let mut refused = false;
    for batch in 1..50 {
        let (status, answer) = server.post("/api/tally/events", &events(batch * 2_000, 2_000));
        if status == 503 {
            refused = true;
            break;
        }
        assert_eq!(status, 200, "{answer}");
        accepted += answer["accepted"].as_u64().unwrap();
    }
    assert!(refused, "a full disk never refused an append");
    let ready = server.readiness();
    assert_eq!(ready["log_writer_failing"], true, "{ready}");

    // Space is back: the engine reopens its store by itself and writes again, without a restart.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = server.post("/api/tally/events", &events(1_000_000, 10));
        if status == 200 {
            accepted += answer["accepted"].as_u64().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.wait_caught_up();
    let ready = server.readiness();
    assert_eq!(ready["log_entries"], accepted, "{ready}");
    let (_, report) = server.post("/api/web/namespaces/shop/usage_details", &json!({}));
    assert_eq!(
        report["usage_items"][0]["quantity"], accepted as f64,
        "every acknowledged event is readable: {report}"
    );
    assert!(server.log_text().contains("reopening the engine"));
    server.stop();
}
