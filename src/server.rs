//! Serving: bind, answer until shutdown is asked for, drain, stop the engine.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::engine::Engine;
use crate::ingest::kafka::KafkaConsumer;
use crate::webhook::WebhookDeliverer;

/// Serves the API on `listener` (and consumes Kafka when configured) until `shutdown` completes;
/// then lets in-flight requests finish, stops the consumer after its batch, and stops the engine
/// (the writer drains, the projector folds what was written, RocksDB flushes).
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let consumer = match engine.config.kafka.clone() {
        Some(settings) => {
            let topic = settings.topic.clone();
            let consumer = KafkaConsumer::start(engine.clone(), settings).map_err(|e| {
                std::io::Error::other(format!("cannot start the Kafka consumer: {e}"))
            })?;
            tracing::info!(%topic, "consuming from kafka");
            Some(consumer)
        }
        None => None,
    };
    let webhook = match engine.config.webhook.clone() {
        Some(settings) => {
            tracing::info!(url = %settings.url, "delivering alerts to the webhook");
            Some(WebhookDeliverer::start(engine.clone(), settings)?)
        }
        None => None,
    };
    let billing_clock = tokio::spawn(billing_clock(engine.clone()));
    let app = api::router(AppState::new(engine.clone()));
    // The peer address is what failed authentications are counted by.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(consumer) = consumer {
        // The consumer finishes its batch first, so the writer sees it before it closes.
        tokio::task::spawn_blocking(move || consumer.stop())
            .await
            .ok();
    }
    billing_clock.abort();
    if let Some(webhook) = webhook {
        tokio::task::spawn_blocking(move || webhook.stop())
            .await
            .ok();
    }
    engine.shutdown().await;
    served
}

/// Closes due billing periods every second (their invoices are issued by the projector).
async fn billing_clock(engine: Arc<Engine>) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticks.tick().await;
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
