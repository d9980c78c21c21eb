//! Shared harness of the integration suites: a real `tally serve` process on a free loopback
//! port, a blocking HTTP client, test catalogs and event generators.

#![allow(dead_code)]

pub mod kafka;
pub mod openapi;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const OPERATOR_TOKEN: &str = "test-operator-token";

/// A test catalog: the built-in one with a priced default plan, so cost lines carry cents.
pub fn priced_catalog(dir: &Path) -> PathBuf {
    catalog_with(dir, "catalog.json", |catalog| {
        catalog["default_plan"] = Value::from("individual-plan");
    })
}

/// The built-in catalog changed by `edit`, written to `dir/name`.
pub fn catalog_with(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut catalog: Value =
        serde_json::from_str(tally::catalog::DEFAULT_CATALOG_JSON).expect("catalog json");
    edit(&mut catalog);
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(&catalog).expect("encode"))
        .expect("write catalog");
    path
}

/// Empties every projection and the projector checkpoint of a stopped data directory: the
/// next start refolds the whole log.
pub fn drop_projections(data_dir: &Path) {
    let store = tally::log::store::Store::open(
        data_dir,
        &tally::log::store::StoreOptions {
            dedup_horizon: Duration::from_secs(35 * 86_400),
            min_free_disk: 0,
        },
    )
    .expect("store");
    let mut batch = store.batch();
    let cfs = tally::replay::PROJECTIONS
        .iter()
        .flat_map(|(_, cfs)| cfs.iter().copied())
        .chain([tally::log::store::CF_CHECKPOINTS]);
    for cf in cfs {
        batch.delete_all(cf);
    }
    store.commit(batch, true).expect("write");
}

/// The suite's tools venv (`scripts/test` installs schemathesis and confluent-kafka there):
/// `$TALLY_SCHEMATHESIS_VENV`, default `~/.cache/tally-schemathesis`.
pub fn tools_venv() -> PathBuf {
    std::env::var_os("TALLY_SCHEMATHESIS_VENV").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/tally-schemathesis")
        },
        PathBuf::from,
    )
}

/// The Python of the tools venv.
pub fn tools_python() -> PathBuf {
    let venv = tools_venv();
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "the tools venv is missing at {}; scripts/test installs it",
        venv.display()
    );
    python
}

/// A running `tally serve`.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    catalog: Option<PathBuf>,
    admin_token: Option<String>,
    /// More `tally serve` arguments (e.g. the Kafka flags).
    extra_args: Vec<String>,
    log: PathBuf,
    /// Every line the server printed on stdout, across restarts.
    pub stdout: Arc<Mutex<Vec<String>>>,
    client: reqwest::blocking::Client,
}

impl Server {
    pub fn start(data_dir: &Path, catalog: Option<&Path>) -> Server {
        Self::start_with(data_dir, catalog, Some(OPERATOR_TOKEN))
    }

    /// `admin_token: None` starts without TALLY_ADMIN_TOKEN, as a new user would.
    pub fn start_with(
        data_dir: &Path,
        catalog: Option<&Path>,
        admin_token: Option<&str>,
    ) -> Server {
        Self::launch(data_dir, catalog, admin_token, Vec::new())
    }

    /// An engine started with more flags.
    pub fn start_args(data_dir: &Path, extra: &[&str]) -> Server {
        let args = extra.iter().map(|arg| arg.to_string()).collect();
        Self::launch(data_dir, None, Some(OPERATOR_TOKEN), args)
    }

    /// An engine that also consumes `topic` from `brokers`.
    pub fn start_kafka(data_dir: &Path, brokers: &str, topic: &str) -> Server {
        Self::start_kafka_with(data_dir, brokers, topic, &[])
    }

    /// As [`start_kafka`](Self::start_kafka), with more flags.
    pub fn start_kafka_with(data_dir: &Path, brokers: &str, topic: &str, extra: &[&str]) -> Server {
        let args = ["--kafka-brokers", brokers, "--kafka-topic", topic]
            .iter()
            .chain(extra)
            .map(|arg| arg.to_string())
            .collect();
        Self::launch(data_dir, None, Some(OPERATOR_TOKEN), args)
    }

    fn launch(
        data_dir: &Path,
        catalog: Option<&Path>,
        admin_token: Option<&str>,
        extra_args: Vec<String>,
    ) -> Server {
        let mut server = Server {
            child: None,
            base: String::new(),
            data_dir: data_dir.to_owned(),
            catalog: catalog.map(Path::to_owned),
            admin_token: admin_token.map(str::to_owned),
            extra_args,
            log: data_dir.with_extension("log"),
            stdout: Arc::default(),
            // No idle connections: a restarted engine may get the old port back, and a pooled
            // connection to the stopped one would be reset.
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        };
        server.spawn();
        server
    }

    /// Everything the server wrote to stderr (its log), across restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// In a cluster, the partitions `/readyz` lists as owned here (`ready_only`: only those
    /// restored).
    pub fn owned_partitions(&self, ready_only: bool) -> std::collections::BTreeSet<i64> {
        self.readiness()["owned_partitions"]
            .as_array()
            .map(|owned| {
                owned
                    .iter()
                    .filter(|p| !ready_only || p["ready"] == true)
                    .filter_map(|p| p["partition"].as_i64())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `/readyz` as JSON (status code included as `http_status`).
    pub fn readiness(&self) -> Value {
        let (status, body) = self.get("/readyz");
        let mut ready: Value = serde_json::from_str(&body).unwrap_or_default();
        ready["http_status"] = Value::from(status);
        ready
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .env_remove("TALLY_ADMIN_TOKEN")
            .env("TALLY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(catalog) = &self.catalog {
            command.arg("--catalog").arg(catalog);
        }
        if let Some(token) = &self.admin_token {
            command.env("TALLY_ADMIN_TOKEN", token);
        }
        command.args(&self.extra_args);
        let mut child = command.spawn().expect("spawn tally");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = self.stdout.clone();
        std::thread::spawn(move || {
            let mut address = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("stdout lines").push(line.clone());
                if let Some(rest) = line.strip_prefix("tally: listening on ") {
                    address = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                }
                // `tally: try …` ends the start-up banner.
                if line.starts_with("tally: try") {
                    let _ = tx.send(address.clone());
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "tally did not start; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            });
        self.base = address;
        self.child = Some(child);
    }

    /// Graceful stop (SIGTERM) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let status = child.wait().expect("wait");
            assert!(status.success(), "tally exited with {status} after SIGTERM");
        }
    }

    /// SIGTERM, then waits at most `limit` for the process to exit; a process still running
    /// then is killed and `None` returned.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL: no chance to flush or drain.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(token) = token {
            request = request.header("Authorization", format!("APIToken {token}"));
        }
        let response = request.send()?;
        let status = response.status().as_u16();
        let text = response.text()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A POST with `token` and more headers; the status, the answer as JSON, and the
    /// answer's headers.
    pub fn post_with_headers(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("APIToken {token}"))
            .body(serde_json::to_vec(body).expect("json"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        let answered = response.headers().clone();
        let text = response.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            answered,
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(
            path,
            Some(OPERATOR_TOKEN),
            serde_json::to_vec(body).expect("json"),
        )
        .expect("request")
    }

    /// Any method, as the operator, with an optional JSON body; the answer parsed as JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("APIToken {OPERATOR_TOKEN}"));
        if let Some(body) = body {
            request = request.body(serde_json::to_vec(body).expect("json"));
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .expect("request");
        (response.status().as_u16(), response.text().expect("body"))
    }

    /// Waits until the projections include every log entry.
    pub fn wait_caught_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get("/readyz");
            let ready: Value = serde_json::from_str(&body).unwrap_or_default();
            if status == 200 && ready["log_entries"] == ready["projected_entries"] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "projections never caught up: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small deterministic PRNG (SplitMix64), so every run generates the same workload.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Decimal text of micro-units, written independently of the engine's formatter.
pub fn micros_text(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

/// A size-limited tmpfs mounted for one test (a disk that can really fill up), unmounted on
/// drop. Mounting needs root, as the README's test command runs.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the disk-full test needs root, as CI runs it)",
            at.display()
        );
        Tmpfs(at.to_owned())
    }

    /// Writes a file that leaves `leave` bytes free on the mount.
    pub fn fill_leaving(&self, leave: u64) -> std::path::PathBuf {
        let stat = rustix::fs::statvfs(&self.0).unwrap();
        let available = stat.f_bavail * stat.f_frsize;
        assert!(available > leave, "only {available} bytes free");
        let filler = self.0.join("filler");
        let file = std::fs::File::create(&filler).unwrap();
        // tmpfs allocates pages as they are written: write zeros, a sparse file would not fill.
        let mut writer = std::io::BufWriter::new(file);
        let chunk = vec![0u8; 1 << 20];
        let mut left = available - leave;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut writer, &chunk[..n]).unwrap();
            left -= n as u64;
        }
        std::io::Write::flush(&mut writer).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
