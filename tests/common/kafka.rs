//! A real Kafka-protocol broker for tests: Tansu on a free loopback port.
//!
//! `scripts/test` installs Tansu when it is missing; a test that finds no `tansu` fails with
//! that instruction rather than skipping.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `tansu` binary: `$TALLY_TANSU`, then `PATH`, then `~/.cargo/bin`.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TALLY_TANSU") {
        return PathBuf::from(path);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("tansu"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("tansu is not installed; scripts/test installs it (cargo install tansu --locked --version 0.6.0 --features dynostore,libsql)")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running Tansu broker.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    log: PathBuf,
}

impl Broker {
    /// A broker keeping its data in memory.
    pub fn start_memory(dir: &Path) -> Broker {
        Self::start(dir, "memory://tansu/".to_owned())
    }

    /// A broker keeping its data in a SQLite file in `dir`, so it survives a restart.
    pub fn start_sqlite(dir: &Path) -> Broker {
        Self::start(dir, format!("sqlite://{}", dir.join("tansu.db").display()))
    }

    fn start(dir: &Path, storage: String) -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
            storage,
            log: dir.join("tansu.log"),
        };
        broker.spawn();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &self.storage,
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let output = Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .output()
            .expect("tansu topic create");
        assert!(
            output.status.success(),
            "topic create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
