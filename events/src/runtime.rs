//! Process plumbing every Troupe binary shares: the backend flags and environment
//! variables, and tracing (with OpenTelemetry export when configured).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::backend::BackendConfig;
use crate::bus::EventStreamLimits;
use crate::queue::NatsQueueConfig;

/// Where events, tasks and jobs live. Both URLs unset: embedded (SQLite file, in-process
/// bus and queue); both set: distributed.
#[derive(Clone, Args)]
pub struct BackendArgs {
    /// PostgreSQL URL, e.g. postgres://user@host/db. Unset: embedded SQLite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// NATS URL, e.g. nats://127.0.0.1:4222 (JetStream enabled). Unset: in-process bus and queue.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Directory of the embedded SQLite database (and generated secrets).
    #[arg(long, env = "TROUPE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Keep the embedded database in memory: nothing survives the process.
    #[arg(long, env = "TROUPE_EPHEMERAL")]
    pub ephemeral: bool,
    /// Prefix of NATS subjects and JetStream stream names.
    #[arg(long, env = "TROUPE_NATS_PREFIX", default_value = "troupe")]
    pub nats_prefix: String,
    /// Most PostgreSQL connections this process opens.
    #[arg(long, env = "TROUPE_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
    /// Seconds a task may go without a worker heartbeat before another worker takes it.
    #[arg(long, env = "TROUPE_QUEUE_ACK_WAIT_SECS", default_value_t = 30)]
    pub queue_ack_wait_secs: u64,
    /// How long the EVENTS stream keeps events for analytics consumers, in hours.
    #[arg(long, env = "TROUPE_EVENT_STREAM_MAX_AGE_HOURS", default_value_t = 168)]
    pub event_stream_max_age_hours: u64,
    /// Size cap of the EVENTS stream, in MiB; the oldest events go first.
    #[arg(long, env = "TROUPE_EVENT_STREAM_MAX_MB", default_value_t = 1024)]
    pub event_stream_max_mb: i64,
    /// How long the EVENTS stream drops a second publish of an event, in seconds: the
    /// longest a publish that was never acknowledged may take to reach NATS and still not
    /// be stored twice (a worker cut off from NATS sends what it buffered on reconnecting).
    #[arg(long, env = "TROUPE_EVENT_STREAM_DEDUPE_SECS", default_value_t = 120)]
    pub event_stream_dedupe_secs: u64,
    /// Tasks one user may have queued for a worker or running at once; the rest wait, in
    /// submit order, until one of those ends. 0: no limit. Give every api and worker
    /// process the same value.
    #[arg(long, env = "TROUPE_ACTIVE_TASKS_PER_USER", default_value_t = 8)]
    pub active_tasks_per_user: u32,
}

impl BackendArgs {
    pub fn config(&self) -> BackendConfig {
        BackendConfig {
            database_url: self.database_url.clone().filter(|u| !u.is_empty()),
            nats_url: self.nats_url.clone().filter(|u| !u.is_empty()),
            data_dir: self.data_dir.clone(),
            ephemeral: self.ephemeral,
            nats_prefix: self.nats_prefix.clone(),
            db_max_connections: self.db_max_connections,
            queue: NatsQueueConfig {
                ack_wait: Duration::from_secs(self.queue_ack_wait_secs.max(1)),
                ..NatsQueueConfig::default()
            },
            event_stream: EventStreamLimits {
                max_age: Duration::from_secs(self.event_stream_max_age_hours * 3600),
                max_bytes: self.event_stream_max_mb.saturating_mul(1 << 20),
                duplicate_window: Duration::from_secs(self.event_stream_dedupe_secs.max(1)),
            },
            active_tasks_per_user: (self.active_tasks_per_user > 0)
                .then_some(self.active_tasks_per_user),
            ..BackendConfig::default()
        }
    }
}

/// Keeps the OpenTelemetry pipeline alive; dropping it exports the spans still pending.
/// Drop it on the runtime's thread before the runtime goes (the end of `main`): the
/// export runs on the runtime.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// How long a process that is exiting waits for its last spans to be exported.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The shutdown blocks until the batch task on the runtime has exported what is
        // pending, without a bound of its own: wait from another thread, boundedly, so that
        // a collector that does not answer cannot hold up the exit.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(provider.shutdown());
        });
        match finished.recv_timeout(FLUSH_AT_EXIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("exporting the last spans failed: {e}"),
            Err(_) => eprintln!(
                "exporting the last spans took over {} s; they are dropped",
                FLUSH_AT_EXIT.as_secs()
            ),
        }
    }
}

/// Logs to stderr (`TROUPE_LOG_FORMAT=json` for JSON lines, filtered by `RUST_LOG`), and
/// exports spans over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call it on the
/// tokio runtime: spans are exported from a task on it.
pub fn init_tracing(service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn,tower_http=info"));
    let json = std::env::var("TROUPE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .and_then(|_| {
            tracer_provider(service)
                .map_err(|e| eprintln!("OpenTelemetry export disabled: {e}"))
                .ok()
        });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

/// Spans batched and exported over OTLP/HTTP by a task on the tokio runtime. The SDK's
/// default batch processor exports from a thread of its own, where the HTTP client, which
/// needs a tokio reactor, panics. The `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_*` variables
/// apply.
fn tracer_provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("tracing was set up outside the tokio runtime".into());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let batch = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}

/// Runs `beat` every `every` (the first time at once) until `shutdown`; a beat that
/// overruns delays the next instead of bunching them.
pub async fn each_tick<F, Fut>(
    every: std::time::Duration,
    shutdown: &tokio_util::sync::CancellationToken,
    mut beat: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        beat().await;
    }
}

/// A token cancelled on ctrl-c or SIGTERM: the root of every process's shutdown.
pub fn shutdown_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate => {}
        }
        tracing::info!("shutting down; press ctrl-c again to stop at once");
        cancel.cancel();
        // A second ctrl-c is an operator who will not wait for the grace period.
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping at once");
            std::process::exit(130);
        }
    });
    token
}
