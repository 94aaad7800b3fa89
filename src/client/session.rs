//! Which server a command talks to and with which token: `--server`/`TROUPE_SERVER`, then
//! the server `troupe login` stored, then the default; `TROUPE_TOKEN`, then the stored token
//! (only for the server it was issued by). The session file is private to its user.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{ClientError, Result};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
const TOKEN_VAR: &str = "TROUPE_TOKEN";

/// What `troupe login` keeps: the server it signed in to and the session token it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    pub token: String,
}

/// A server and, when there is one for it, a token.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
}

/// `<config dir>/troupe/session.json` (`$XDG_CONFIG_HOME` or `~/.config` on Linux).
pub fn path() -> Result<PathBuf> {
    let dir = dirs::config_dir().ok_or_else(|| {
        ClientError::Local("no config directory: set HOME or XDG_CONFIG_HOME".into())
    })?;
    Ok(dir.join("troupe").join("session.json"))
}

pub fn load() -> Result<Option<Session>> {
    let path = path()?;
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ClientError::local(
                &format!("reading {}", path.display()),
                e,
            ));
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        ClientError::Local(format!(
            "{} is not a session file ({e}); `troupe logout`, then `troupe login`",
            path.display()
        ))
    })
}

/// Writes the session to a new file created with mode 0600 (the token is never readable
/// by others, not even for a moment), then moves it over the old one.
pub fn save(session: &Session) -> Result<PathBuf> {
    let path = path()?;
    let dir = path
        .parent()
        .expect("the session file is inside a directory");
    private_dir(dir).map_err(|e| ClientError::local(&format!("creating {}", dir.display()), e))?;
    let temporary = dir.join(format!("session.json.{}.tmp", std::process::id()));
    let written = write_private(&temporary, &serde_json::to_vec_pretty(session).unwrap())
        .and_then(|()| fs::rename(&temporary, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(ClientError::local(
            &format!("writing {}", path.display()),
            e,
        ));
    }
    Ok(path)
}

/// Deletes the session file; its path when there was one.
pub fn remove() -> Result<Option<PathBuf>> {
    let path = path()?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClientError::local(
            &format!("removing {}", path.display()),
            e,
        )),
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The server a command talks to, in a canonical form (no trailing slash), so that a stored
/// session is matched to it whatever way the URL was typed.
pub fn server_url(raw: &str) -> Result<String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| {
        ClientError::Usage(format!(
            "--server {raw:?} is not a URL ({e}); e.g. {DEFAULT_SERVER}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ClientError::Usage(format!(
            "--server {raw:?} must be an http:// or https:// URL"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Resolves `--server` (or `TROUPE_SERVER`, which clap reads into it) and the token.
pub fn target(server: Option<&str>) -> Result<Target> {
    let stored = load()?;
    let server = match server {
        Some(flag) => server_url(flag)?,
        None => match &stored {
            Some(session) => server_url(&session.server)?,
            None => DEFAULT_SERVER.to_string(),
        },
    };
    let from_env = std::env::var(TOKEN_VAR)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    // A stored token goes only to the server that issued it, never to one named on the
    // command line for this call.
    let from_file = stored
        .filter(|s| server_url(&s.server).is_ok_and(|stored| stored == server))
        .map(|s| s.token);
    Ok(Target {
        server,
        token: from_env.or(from_file),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_canonical_and_checked() {
        assert_eq!(
            server_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            server_url(" https://troupe.example.com ").unwrap(),
            "https://troupe.example.com"
        );
        assert!(matches!(
            server_url("127.0.0.1:8080"),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            server_url("ftp://example.com"),
            Err(ClientError::Usage(_))
        ));
    }
}
