//! How a client command ends: the error kinds it can meet and the exit code each gives, so
//! that scripts can tell a failed task from a refused request or an unreachable server.

/// The exit codes of the client subcommands (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The task completed, or the command did what it was asked.
    Ok = 0,
    /// The task failed.
    Failed = 1,
    /// Bad input: flags (clap uses 2 too), `--options` that is not a JSON object, no token.
    /// Nothing was sent.
    Usage = 2,
    /// The task was cancelled.
    Cancelled = 3,
    /// ctrl-c, then detach: the task goes on without this client.
    Detached = 4,
    /// The server refused the request; its error code and message were printed.
    Refused = 5,
    /// The server could not be reached (after the reconnects, when following), answered
    /// something unreadable, or a local file or the terminal failed.
    Trouble = 6,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    /// The server's own error body: `{"error": {"code", "message"}}`.
    #[error("{message} ({code}, HTTP {status})")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server answered, but not as a Troupe server does.
    #[error("unexpected answer from {server}: {reason}")]
    Protocol { server: String, reason: String },
    #[error("{0}")]
    Local(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Usage(_) => Exit::Usage,
            ClientError::Server { .. } => Exit::Refused,
            ClientError::Unreachable { .. }
            | ClientError::Protocol { .. }
            | ClientError::Local(_) => Exit::Trouble,
        }
    }

    /// Worth another try: the server is away (restarting, overloaded) rather than saying no.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub fn local(what: &str, error: impl std::fmt::Display) -> ClientError {
        ClientError::Local(format!("{what}: {error}"))
    }
}
