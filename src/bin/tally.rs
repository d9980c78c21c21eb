//! The `tally` binary: flags → config → engine → server.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally::auth::ADMIN_TOKEN_FILE;
use tally::config::{Config, LogFormat, ServeArgs};
use tally::engine::Engine;
use tally::{server, time};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Event-sourced usage metering engine (F5 Billing & Usage API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: RocksDB in --data-dir, HTTP API and ingest on --listen.
    Serve(ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let config = Config::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        let data_dir = config.data_dir.clone();
        let token_from_env = config.admin_token.is_some();
        let engine = Arc::new(Engine::open(config, time::system_clock())?);
        let token_file = data_dir.join(ADMIN_TOKEN_FILE);
        let generated = engine.generated_admin_token.lock().ok().and_then(|mut t| t.take());
        // Stdout is the user's: where to reach the engine and how to authenticate.
        println!("tally: listening on http://{address} (data in {})", data_dir.display());
        match generated {
            Some(token) => println!("tally: generated operator token (shown once, saved to {}): {token}", token_file.display()),
            None if token_from_env => println!("tally: operator token from TALLY_ADMIN_TOKEN / --admin-token"),
            None => println!("tally: operator token in {} (generated on first start)", token_file.display()),
        }
        let token_expr = if token_from_env { "$TALLY_ADMIN_TOKEN".to_owned() } else { format!("$(cat {})", token_file.display()) };
        println!(
            "tally: try  curl -s -H \"Authorization: APIToken {token_expr}\" -X POST http://{address}/api/web/namespaces/system/usage_details -d '{{}}'"
        );
        tracing::info!(%address, "serving");
        server::serve(engine, listener, server::shutdown_signal()).await.context("server failed")
    })
}
