use anyhow::Context;
use clap::{Parser, Subcommand};
use troupe::Settings;
use troupe_api::ApiArgs;
use troupe_events::runtime::shutdown_signal;
use troupe_events::runtime::{BackendArgs, init_tracing};
use troupe_worker::cli::{ProviderArgs, WorkerArgs};

/// An allocator that gives freed memory back to the system, from a background thread,
/// even while the process is idle: glibc kept what a burst of streams had used (75 MiB
/// after 1,000 watchers left; see BENCHMARKS.md). Its settings: `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Troupe: run a task through a team of AI agents and watch every step live.
///
/// With no DATABASE_URL and no NATS_URL everything runs in this one process (SQLite under
/// --data-dir, in-process bus and queue).
#[derive(Parser)]
#[command(name = "troupe", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    providers: ProviderArgs,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the api and run the worker (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Count agents' figures (GET /api/stats) from the EVENTS stream: a distributed
    /// deployment's stats consumer. Embedded, `troupe` does this itself.
    Stats(StatsArgs),
    #[command(flatten)]
    Client(troupe::client::ClientCommand),
}

#[derive(clap::Args)]
struct StatsArgs {
    /// Name of the durable JetStream consumer: one per independent reader of the stream.
    #[arg(long, env = "TROUPE_STATS_CONSUMER", default_value = troupe_stats::stream::DEFAULT_CONSUMER)]
    consumer: String,
    /// Seconds between scans of the store for tasks the stream did not bring in full (lost
    /// to its retention while this consumer was behind or away); one runs at start.
    #[arg(long, env = "TROUPE_STATS_CATCH_UP_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    catch_up_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Client(command)) = cli.command {
        std::process::exit(troupe::client::main(command).await);
    }
    let _telemetry = init_tracing("troupe");
    let backend = cli.backend.config();
    if let Some(Command::Migrate) = cli.command {
        let (_, description) = troupe_events::backend::connect_store(&backend).await?;
        tracing::info!(store = %description, "migrations applied");
        return Ok(());
    }
    if let Some(Command::Stats(args)) = cli.command {
        let config = troupe_stats::stream::StreamConfig {
            durable: args.consumer,
            catch_up_every: std::time::Duration::from_secs(args.catch_up_secs),
            ..Default::default()
        };
        return troupe::run_stats(backend, config, shutdown_signal()).await;
    }
    let listener = tokio::net::TcpListener::bind(cli.api.bind)
        .await
        .with_context(|| format!("binding {}", cli.api.bind))?;
    let url = format!("http://{}", listener.local_addr()?);
    let settings = Settings {
        backend,
        providers: cli.providers.settings()?,
        worker: cli.worker.config(),
        api: cli.api,
    };
    tracing::info!(%url, "Troupe is listening");
    println!("Troupe is running at {url}  (ctrl-c to stop)");
    troupe::run(settings, listener, shutdown_signal()).await
}
