//! The all-in-one process: api and worker side by side on one set of backends. With no
//! DATABASE_URL and no NATS_URL that is SQLite and in-process channels: a whole Troupe on
//! one machine with nothing else installed.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use troupe_api::ApiArgs;
use troupe_events::{BackendConfig, Backends};
use troupe_worker::providers::{ProviderSettings, Providers};
use troupe_worker::{Worker, WorkerConfig};

pub struct Settings {
    pub backend: BackendConfig,
    pub api: ApiArgs,
    pub providers: ProviderSettings,
    pub worker: WorkerConfig,
}

/// Runs api and worker until `shutdown`. Both stop together: the worker hands unfinished
/// tasks back to the queue (resumed at the next start), the api ends its open streams.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let backends = Backends::connect(&settings.backend)
        .await
        .context("opening the store and the bus")?;
    tracing::info!(backends = %backends.description, "troupe starting");
    let tokens = settings.api.tokens(
        backends.is_distributed(),
        &settings.backend.data_dir,
        settings.backend.ephemeral,
    )?;
    let state = troupe_api::state(
        backends.clone(),
        settings.api.catalogue()?,
        tokens,
        settings.api.http(),
    );
    // One recorder, one /metrics: the api's port serves the worker's series too.
    troupe_worker::metrics::install();
    let mut worker_config = settings.worker;
    if backends.volatile_queue {
        // Polling the in-process queue costs nothing; short polls make ctrl-c prompt.
        worker_config.poll_wait = worker_config.poll_wait.min(Duration::from_secs(1));
    }
    let worker = Arc::new(Worker::new(
        backends.clone(),
        Providers::from_settings(&settings.providers),
        worker_config,
    ));
    // Before the api serves, so that the first submit finds the worker's providers.
    worker
        .advertise()
        .await
        .context("advertising the worker's providers")?;
    let requeued = backends.recover().await?;
    if requeued > 0 {
        tracing::info!(
            tasks = requeued,
            "resuming tasks left unfinished by the last run"
        );
    }
    let worker_task = tokio::spawn(worker.run(shutdown.child_token()));
    let stats_task = (!backends.is_distributed()).then(|| {
        // Embedded, the stats consumer follows the in-process bus here; distributed, it is
        // `troupe stats`, a process of its own on the EVENTS stream.
        tokio::spawn(troupe_stats::local::run(
            troupe_stats::StatsConsumer::new(backends.store.clone()),
            backends.bus.clone(),
            shutdown.child_token(),
        ))
    });
    let served = troupe_api::serve(listener, state, shutdown.clone()).await;
    shutdown.cancel();
    worker_task.await?;
    if let Some(stats_task) = stats_task {
        stats_task.await?;
    }
    served
}

/// `troupe stats`: the stats consumer on the EVENTS stream until `shutdown`. Distributed
/// only: embedded, `troupe` runs it in-process (the SQLite file has one process).
pub async fn run_stats(
    backend: BackendConfig,
    config: troupe_stats::stream::StreamConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(nats_url) = backend.nats_url.clone() else {
        anyhow::bail!(
            "troupe stats reads the EVENTS stream of a distributed Troupe (set DATABASE_URL and \
             NATS_URL); embedded, `troupe` itself keeps the stats"
        );
    };
    // Makes sure the store is migrated and the EVENTS stream exists.
    let backends = Backends::connect(&backend)
        .await
        .context("opening the store and the bus")?;
    let client = troupe_events::backend::connect_nats(&nats_url).await?;
    let subjects = troupe_events::Subjects::new(&backend.nats_prefix);
    let consumer = troupe_stats::StatsConsumer::new(backends.store.clone());
    let feed = troupe_stats::stream::StreamFeed::attach(client, &subjects, &config, consumer)
        .await
        .with_context(|| format!("attaching the durable consumer {}", config.durable))?;
    tracing::info!(consumer = %config.durable, "counting the EVENTS stream");
    feed.run(shutdown).await;
    Ok(())
}
