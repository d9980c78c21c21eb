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
    dir: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// A broker keeping its data in memory.
    pub fn start_memory(dir: &Path) -> Broker {
        Self::start(dir, "memory://tansu/".to_owned())
    }

    /// A broker keeping its data in a SQLite file in `dir`, so it survives a restart. (Tansu
    /// resolves the file against its working directory, which is `dir`.)
    pub fn start_sqlite(dir: &Path) -> Broker {
        Self::start(dir, "sqlite://tansu.db".to_owned())
    }

    fn start(dir: &Path, storage: String) -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
            storage,
            dir: dir.to_owned(),
            log: dir.join("tansu.log"),
        };
        broker.spawn();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts Tansu and waits until it listens. A broker killed with clients connected leaves
    /// its port in TIME_WAIT for up to a minute, and Tansu does not bind with SO_REUSEADDR, so
    /// a restart is retried until the port is free again.
    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("broker log");
            let mut child = Command::new(tansu_binary())
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
                .current_dir(&self.dir)
                .spawn()
                .expect("start tansu");
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs(1));
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
