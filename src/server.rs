//! Serving: bind, accept within the connection cap, answer until shutdown is asked for, drain
//! for a bounded time, stop the engine.
//!
//! The accept loop is Tally's own (hyper directly, as axum's `serve` does underneath) so that a
//! client cannot hold the engine: request headers and idle keep-alive connections are bounded
//! by `--header-timeout`, bodies by `--body-timeout` (a router layer), connections by
//! `--max-connections`, and the drain on SIGTERM by `--shutdown-timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::cluster::changelog::{Publisher, PublisherSettings};
use crate::cluster::control::{Control, ControlSettings};
use crate::config::ServerLimits;
use crate::engine::{Engine, EngineError};
use crate::ingest::kafka::KafkaConsumer;
use crate::log::store::MAX_OPEN_TABLE_FILES;
use crate::stop::SignalledThread;
use crate::stop::StopSignal;
use crate::webhook::WebhookDeliverer;

/// File descriptors kept for everything but client connections and table files: WAL and
/// MANIFEST files, RocksDB's and Kafka's sockets and threads, the webhook client.
const OTHER_DESCRIPTORS: u64 = 256;

/// Serves the API on `listener` (and consumes Kafka when configured) until `shutdown` completes;
/// then lets in-flight requests finish for at most `--shutdown-timeout`, closes what is left,
/// stops the consumer after its batch, and stops the engine (the writer drains, the projector
/// folds what was written, RocksDB flushes).
///
/// When the log writer or the projector fails in a way only reopening the store clears (RocksDB
/// latches an I/O error, such as a WAL file it could not create), for longer than
/// [`REOPEN_AFTER`], the engine is stopped the same way and opened again with `reopen`, retried
/// until it opens (the cause is gone); connections wait in the listen queue meanwhile.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reopen: impl Fn() -> Result<Engine, EngineError> + Send + Sync + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let reopen = Arc::new(reopen);
    let mut engine = engine;
    loop {
        let background = Background::start(&engine, listener.local_addr().ok())?;
        let app = api::router(AppState::new(engine.clone()));
        let limits = engine.config().server.clone();
        let ended = accept_until(
            &listener,
            app,
            &limits,
            shutdown.as_mut(),
            latched_failure(engine.clone()),
        )
        .await;
        background.stop().await;
        engine.shutdown().await;
        let Ended::Broken(reason) = ended else {
            return Ok(());
        };
        tracing::error!(%reason, "the store keeps failing until it is reopened; reopening the engine");
        match reopen_when_possible(engine, reopen.clone(), shutdown.as_mut()).await {
            Some(reopened) => {
                tracing::info!("engine reopened; serving again");
                engine = reopened;
            }
            None => return Ok(()),
        }
    }
}

/// How long a failure that only reopening clears must last before the engine is reopened.
pub const REOPEN_AFTER: Duration = Duration::from_secs(3);

/// Why [`accept_until`] returned.
enum Ended {
    Shutdown,
    /// The store must be reopened; the reason is logged.
    Broken(String),
}

/// Completes once the writer or the projector has needed a reopened store for
/// [`REOPEN_AFTER`]; returns why.
async fn latched_failure(engine: Arc<Engine>) -> String {
    let mut since: Option<std::time::Instant> = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticks.tick().await;
        let failing = [
            ("log writer", &engine.status().writer),
            ("projector", &engine.status().projector),
        ]
        .into_iter()
        .find(|(_, health)| health.needs_reopen());
        match failing {
            Some((component, health)) => {
                let first = *since.get_or_insert_with(std::time::Instant::now);
                if first.elapsed() >= REOPEN_AFTER {
                    return format!("{component}: {}", health.reason().unwrap_or_default());
                }
            }
            None => since = None,
        }
    }
}

/// Waits for the stopped engine's last handles to go (so RocksDB closes and releases its
/// lock), then opens it again, retrying every two seconds while that fails; `None` when
/// shutdown is asked for meanwhile.
async fn reopen_when_possible(
    engine: Arc<Engine>,
    reopen: Arc<dyn Fn() -> Result<Engine, EngineError> + Send + Sync>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Arc<Engine>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&engine) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(engine);
    loop {
        let attempt = reopen.clone();
        match tokio::task::spawn_blocking(move || attempt()).await {
            Ok(Ok(engine)) => return Some(Arc::new(engine)),
            Ok(Err(error)) => tracing::warn!(%error, "cannot reopen the engine yet; retrying"),
            Err(error) => tracing::warn!(%error, "reopen task failed; retrying"),
        }
        tokio::select! {
            () = &mut shutdown => return None,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The engine's background work beside the API: the Kafka consumer, the alert webhook and the
/// billing clock.
struct Background {
    /// The one signal all of them obey.
    stop: StopSignal,
    consumer: Option<KafkaConsumer>,
    /// In a cluster: publishes to the changelog. Stopped after the consumer, with a signal of
    /// its own, so a partition the consumer gives up on the way out is published first.
    changelog: Option<(Publisher, StopSignal)>,
    /// In a cluster: reads and writes the control topic.
    control: Option<SignalledThread>,
    webhook: Option<WebhookDeliverer>,
    billing_clock: tokio::task::JoinHandle<()>,
}

impl Background {
    /// `listening`: where the API is bound, the URL other engines of a cluster forward to
    /// when `--advertise` does not name one.
    fn start(
        engine: &Arc<Engine>,
        listening: Option<std::net::SocketAddr>,
    ) -> std::io::Result<Background> {
        let stop = StopSignal::default();
        if let Some(settings) = engine
            .config()
            .kafka
            .as_ref()
            .filter(|k| k.cluster.is_some())
            && let Err(reason) = crate::cluster::ensure_topics(&settings.brokers, &settings.topic)
        {
            tracing::warn!(%reason, "the cluster's changelog and control topics are not checked");
        }
        let changelog = match (
            engine.config().kafka.clone(),
            engine.ingest().changelog.clone(),
        ) {
            (Some(settings), Some(handle)) if settings.cluster.is_some() => {
                let publisher_stop = StopSignal::default();
                let publisher = Publisher::start(
                    engine.store().clone(),
                    engine.status().head.clone(),
                    engine.ingest().ownership.clone(),
                    handle.published,
                    PublisherSettings {
                        brokers: settings.brokers.clone(),
                        source_topic: settings.topic.clone(),
                        origin: handle.origin,
                        metrics: engine.ingest().metrics.clone(),
                    },
                    publisher_stop.clone(),
                )
                .map_err(|e| std::io::Error::other(format!("cannot start the changelog: {e}")))?;
                Some((publisher, publisher_stop))
            }
            _ => None,
        };
        let control = match engine.config().kafka.clone() {
            Some(settings) if settings.cluster.is_some() => {
                let cluster = settings.cluster.clone().unwrap_or_default();
                let applier = engine.clone();
                let (control, thread) = Control::start(
                    ControlSettings {
                        brokers: settings.brokers.clone(),
                        source_topic: settings.topic.clone(),
                        instance: cluster
                            .instance_id
                            .clone()
                            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
                        url: cluster.advertise.clone().or_else(|| {
                            listening
                                .filter(|at| !at.ip().is_unspecified())
                                .map(|at| format!("http://{at}"))
                        }),
                    },
                    Arc::new(move |change| {
                        if let Err(error) = applier.tokens().apply_replicated(change) {
                            tracing::error!(%error, "cannot store a token change of the cluster");
                        }
                    }),
                    engine.ingest().ownership.clone(),
                    stop.clone(),
                )
                .map_err(|e| {
                    std::io::Error::other(format!("cannot start the control topic: {e}"))
                })?;
                engine.set_control(control);
                Some(thread)
            }
            _ => None,
        };
        let consumer = match engine.config().kafka.clone() {
            Some(settings) => {
                let topic = settings.topic.clone();
                let consumer = KafkaConsumer::start(engine.ingest_handle(), settings, stop.clone())
                    .map_err(|e| {
                        std::io::Error::other(format!("cannot start the Kafka consumer: {e}"))
                    })?;
                tracing::info!(%topic, "consuming from kafka");
                Some(consumer)
            }
            None => None,
        };
        let webhook = match engine.config().webhook.clone() {
            Some(settings) => {
                tracing::info!(url = %settings.url, "delivering alerts to the webhook");
                Some(WebhookDeliverer::start(
                    engine.webhook_handle(),
                    settings,
                    stop.clone(),
                )?)
            }
            None => None,
        };
        let billing_clock = tokio::spawn(billing_clock(engine.clone(), stop.clone()));
        Ok(Background {
            stop,
            consumer,
            changelog,
            control,
            webhook,
            billing_clock,
        })
    }

    /// Signals all of them at once and waits for each: the consumer after its batch (so the
    /// writer sees it before it closes), the billing clock after its round, the webhook after
    /// the delivery in hand.
    async fn stop(self) {
        self.stop.stop();
        if let Some(consumer) = self.consumer {
            tokio::task::spawn_blocking(move || consumer.stop())
                .await
                .ok();
        }
        if let Some(control) = self.control {
            tokio::task::spawn_blocking(move || control.stop())
                .await
                .ok();
        }
        if let Some((publisher, _)) = self.changelog {
            tokio::task::spawn_blocking(move || publisher.stop())
                .await
                .ok();
        }
        let _ = self.billing_clock.await;
        if let Some(webhook) = self.webhook {
            tokio::task::spawn_blocking(move || webhook.stop())
                .await
                .ok();
        }
    }
}

/// Accepts connections within the cap and serves each with `app` until `shutdown`; then asks
/// every connection to finish its request and close, and after `shutdown_timeout` closes the
/// ones still open (a half-sent header, an endless body).
async fn accept_until(
    listener: &TcpListener,
    app: axum::Router,
    limits: &ServerLimits,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    broken: impl Future<Output = String>,
) -> Ended {
    let max_connections = connection_cap(limits.max_connections);
    let permits = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(broken);
    let ended = loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break Ended::Shutdown,
            reason = &mut broken => break Ended::Broken(reason),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The router, with the peer's address (failed authentications are counted by it).
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request.map(axum::body::Body::new))
            },
        );
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async { let _ = stop.wait_for(|&stop| stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    };
    tracing::info!(
        open = connections.len(),
        "stopped accepting; draining connections"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            timeout = ?limits.shutdown_timeout,
            "connections still open after the shutdown timeout; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    ended
}

/// The connection cap, lowered when the process's descriptor limit could not hold that many
/// connections beside the store's table files and everything else.
fn connection_cap(configured: usize) -> usize {
    let available = raise_descriptor_limit();
    let cap = cap_within(configured, available);
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            descriptor_limit = available,
            "--max-connections lowered to leave file descriptors for the store"
        );
    }
    cap
}

/// At most `configured` connections, and no more than the descriptors left by the store's table
/// files and [`OTHER_DESCRIPTORS`] (but at least 16, so a tiny limit still serves).
fn cap_within(configured: usize, descriptor_limit: u64) -> usize {
    let reserved = u64::try_from(MAX_OPEN_TABLE_FILES).unwrap_or(1_024) + OTHER_DESCRIPTORS;
    let room = usize::try_from(descriptor_limit.saturating_sub(reserved)).unwrap_or(usize::MAX);
    configured.min(room).max(16)
}

/// Raises the soft limit of open files to the hard one and returns the limit in force.
fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), Some(hard)) = (limit.current, limit.maximum) else {
        return limit.current.unwrap_or(u64::MAX);
    };
    if current < hard {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    current
}

/// Closes due billing periods every second (their invoices are issued by the projector).
async fn billing_clock(engine: Arc<Engine>, stop: StopSignal) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.stopped() => return,
        }
        if let Err(error) = engine.close_due_periods().await {
            tracing::warn!(%error, "cannot close due billing periods; retrying");
        }
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; draining");
}

#[cfg(test)]
mod tests {
    use super::cap_within;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_store() {
        // A container's usual limit leaves the configured cap alone.
        assert_eq!(cap_within(1_024, 1_048_576), 1_024);
        // 1,024 table files and 256 others come first.
        assert_eq!(cap_within(1_024, 1_400), 120);
        assert_eq!(cap_within(1_024, 1_024), 16);
        assert_eq!(cap_within(50, 1_400), 50);
    }
}
