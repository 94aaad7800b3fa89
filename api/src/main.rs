use anyhow::Context;
use clap::{Parser, Subcommand};
use troupe_api::ApiArgs;
use troupe_events::Backends;
use troupe_events::runtime::shutdown_signal;
use troupe_events::runtime::{BackendArgs, init_tracing};

/// An allocator that gives freed memory back to the system, from a background thread,
/// even while the process is idle: glibc kept what a burst of streams had used (75 MiB
/// after 1,000 watchers left; see BENCHMARKS.md). Its settings: `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Troupe api: REST and SSE in front of PostgreSQL and NATS. Run as many as you like.
#[derive(Parser)]
#[command(name = "api", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the api (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = init_tracing("troupe-api");
    let config = cli.backend.config();
    if let Some(Command::Migrate) = cli.command {
        let (_, description) = troupe_events::backend::connect_store(&config).await?;
        tracing::info!(store = %description, "migrations applied");
        return Ok(());
    }
    if config.nats_url.is_none() || config.database_url.is_none() {
        anyhow::bail!(
            "a separate api needs DATABASE_URL and NATS_URL to reach the workers; \
             for one process on one machine run `troupe` instead"
        );
    }
    warn_of_provider_keys();
    let tokens = cli.api.tokens(true, &config.data_dir, false)?;
    let backends = Backends::connect(&config)
        .await
        .context("connecting to the store and NATS")?;
    let state = troupe_api::state(backends, cli.api.catalogue()?, tokens, cli.api.http());
    let listener = tokio::net::TcpListener::bind(cli.api.bind)
        .await
        .with_context(|| format!("binding {}", cli.api.bind))?;
    tracing::info!(url = %format!("http://{}", listener.local_addr()?), "api listening");
    troupe_api::serve(listener, state, shutdown_signal()).await
}

/// Provider keys belong to the workers: the api never reads one, and says so when an
/// operator has left one in its environment from an older setup.
fn warn_of_provider_keys() {
    for name in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"] {
        if std::env::var_os(name).is_some() {
            tracing::warn!(
                variable = name,
                "the api does not use provider keys: give this one to the workers only"
            );
        }
    }
}
