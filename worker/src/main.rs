use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use troupe_events::Backends;
use troupe_events::runtime::shutdown_signal;
use troupe_events::runtime::{BackendArgs, init_tracing};
use troupe_worker::Worker;
use troupe_worker::cli::{ProviderArgs, WorkerArgs};
use troupe_worker::providers::Providers;

/// An allocator that gives freed memory back to the system, from a background thread,
/// even while the process is idle: glibc kept what a burst of streams had used (75 MiB
/// after 1,000 watchers left; see BENCHMARKS.md). Its settings: `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Troupe worker: takes tasks from NATS and runs their agents. Run as many as you like.
#[derive(Parser)]
#[command(name = "worker", version)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    providers: ProviderArgs,
    #[command(flatten)]
    worker: WorkerArgs,
    /// Address of the worker's own HTTP port: /healthz, /readyz and /metrics (e.g.
    /// 0.0.0.0:9465). Unset: no port, so that several workers can share a host.
    #[arg(long, env = "TROUPE_WORKER_BIND")]
    worker_bind: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = init_tracing("troupe-worker");
    let config = cli.backend.config();
    if config.nats_url.is_none() || config.database_url.is_none() {
        anyhow::bail!(
            "a separate worker needs DATABASE_URL and NATS_URL to reach the api's tasks; \
             for one process on one machine run `troupe` instead"
        );
    }
    let backends = Backends::connect(&config)
        .await
        .context("connecting to the store and NATS")?;
    tracing::info!(backends = %backends.description, "worker starting");
    // The port answers until the worker has drained, so probes see it stopping, not gone.
    let status_stop = CancellationToken::new();
    let status = match cli.worker_bind {
        Some(bind) => {
            // Before the first delivery, so that nothing goes uncounted.
            troupe_worker::metrics::install();
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("binding {bind}"))?;
            tracing::info!(url = %format!("http://{}", listener.local_addr()?), "worker port listening: /healthz, /readyz, /metrics");
            Some(tokio::spawn(troupe_worker::status::serve(
                listener,
                backends.clone(),
                status_stop.clone(),
            )))
        }
        None => None,
    };
    let providers = Providers::from_settings(&cli.providers.settings()?);
    let worker = Arc::new(Worker::new(backends, providers, cli.worker.config()));
    let shutdown = shutdown_signal();
    worker.run(shutdown).await;
    status_stop.cancel();
    if let Some(status) = status {
        status.await?.context("serving the worker port")?;
    }
    tracing::info!("worker stopped");
    Ok(())
}
