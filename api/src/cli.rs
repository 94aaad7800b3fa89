//! The api's flags and environment variables; the all-in-one binary uses them too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use troupe_events::Catalogue;

use crate::auth::SecureCookies;
use crate::auth::Tokens;
use crate::guard::RequestLimits;
use crate::state::HttpConfig;

#[derive(Clone, Args)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, env = "TROUPE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Secret that signs session tokens. Required when distributed, so that every api
    /// process accepts the same tokens; generated and kept in the data dir when embedded.
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Agent catalogue (TOML). Unset: the built-in catalogue.
    #[arg(long, env = "TROUPE_AGENTS_FILE")]
    pub agents_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TROUPE_MAX_BODY_BYTES", default_value_t = 65536)]
    pub max_body_bytes: usize,
    /// Event streams (SSE) one api process serves at once; past that, new ones get 503.
    #[arg(long, env = "TROUPE_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// How long a session token lives, in hours.
    #[arg(long, env = "TROUPE_SESSION_TTL_HOURS", default_value_t = 24)]
    pub session_ttl_hours: u64,
    /// How long a task's streamUrl token lives, in minutes.
    #[arg(long, env = "TROUPE_STREAM_TOKEN_TTL_MINUTES", default_value_t = 240)]
    pub stream_token_ttl_minutes: u64,
    /// Tasks one user may submit per minute (per api process); past it, 429.
    #[arg(long, env = "TROUPE_SUBMITS_PER_MINUTE", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    pub submits_per_minute: u32,
    /// Sign-ups and sign-ins per client address per minute (per api process).
    #[arg(long, env = "TROUPE_AUTH_PER_ADDRESS_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_per_address_per_minute: u32,
    /// Sign-ins per account per minute, from any address (per api process).
    #[arg(long, env = "TROUPE_AUTH_PER_ACCOUNT_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_per_account_per_minute: u32,
    /// Password hashes computed at once (argon2id takes 19 MiB each). Default: the cores.
    #[arg(long, env = "TROUPE_PASSWORD_HASHERS")]
    pub password_hashers: Option<usize>,
    /// The header in which the proxy in front gives the client's address (its last value
    /// is used), e.g. X-Forwarded-For. Unset: the connection's peer address. Set it only
    /// behind a proxy that writes it, or clients can pick their own address.
    #[arg(long, env = "TROUPE_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<axum::http::HeaderName>,
    /// The longest a task may take from submit, in seconds: past it the task is cancelled.
    /// A submit's `timeoutSecs` may ask for less; absent, it gets this.
    #[arg(long, env = "TROUPE_MAX_TASK_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub max_task_secs: u64,
    /// Agents one task may have, 1 to 20 (the API's ceiling); past it a submit is
    /// refused with 422 too_many_agents.
    #[arg(long, env = "TROUPE_MAX_AGENTS_PER_TASK", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub max_agents_per_task: u16,
    /// Seconds one simulated answer may take (latencyMs × tokens), 1 to 300: a submit
    /// asking for more is refused with 422 invalid_provider_options.
    #[arg(long, env = "TROUPE_SIMULATED_MAX_ANSWER_SECS", default_value_t = 300, value_parser = clap::value_parser!(u16).range(1..=300))]
    pub simulated_max_answer_secs: u16,
    /// When the web UI's session cookies are marked Secure: auto (when the proxy in front
    /// says the request came over TLS, X-Forwarded-Proto: https), always, never.
    #[arg(long, env = "TROUPE_SECURE_COOKIES", value_enum, default_value_t = SecureCookies::Auto)]
    pub secure_cookies: SecureCookies,
}

const MIN_SECRET: usize = 32;

impl ApiArgs {
    pub fn catalogue(&self) -> anyhow::Result<Catalogue> {
        Ok(match &self.agents_file {
            Some(path) => Catalogue::load(path)?,
            None => Catalogue::builtin(),
        })
    }

    pub fn http(&self) -> HttpConfig {
        let defaults = RequestLimits::default();
        HttpConfig {
            max_body_bytes: self.max_body_bytes.max(1024),
            max_streams: self.max_streams.max(1),
            limits: RequestLimits {
                submits_per_user_per_minute: self.submits_per_minute,
                per_address_per_minute: self.auth_per_address_per_minute,
                per_account_per_minute: self.auth_per_account_per_minute,
                hashers: self.password_hashers.unwrap_or(defaults.hashers).max(1),
                client_ip_header: self.client_ip_header.clone(),
                ..defaults
            },
            max_task_secs: self.max_task_secs,
            max_agents_per_task: usize::from(self.max_agents_per_task),
            simulated_max_answer_ms: i64::from(self.simulated_max_answer_secs) * 1000,
            secure_cookies: self.secure_cookies,
        }
    }

    /// The token signer. Distributed: the secret must be given. Embedded: a secret is
    /// generated once and kept in `data_dir` (or in memory when `ephemeral`).
    pub fn tokens(
        &self,
        distributed: bool,
        data_dir: &Path,
        ephemeral: bool,
    ) -> anyhow::Result<Tokens> {
        let secret = match self.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) if secret.len() < MIN_SECRET => {
                anyhow::bail!("TROUPE_JWT_SECRET must be at least {MIN_SECRET} characters")
            }
            Some(secret) => secret.to_string(),
            None if distributed => anyhow::bail!(
                "TROUPE_JWT_SECRET is required with DATABASE_URL/NATS_URL, so that every api \
                 process accepts the same tokens (e.g. `openssl rand -hex 32`)"
            ),
            None if ephemeral => Alphanumeric.sample_string(&mut rand::rng(), 48),
            None => stored_secret(data_dir)?,
        };
        Ok(Tokens::new(
            &SecretString::from(secret),
            Duration::from_secs(self.session_ttl_hours.max(1) * 3600),
            Duration::from_secs(self.stream_token_ttl_minutes.max(1) * 60),
        ))
    }
}

fn stored_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_string();
        if secret.len() >= MIN_SECRET {
            return Ok(secret);
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let secret = Alphanumeric.sample_string(&mut rand::rng(), 48);
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
