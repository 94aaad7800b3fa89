//! Accounts and tokens. Passwords are hashed with argon2id; sessions are HS256 JWTs that
//! name a session row in the store, so that logging out or changing the password ends
//! them everywhere at once. A second, narrower token reads one task's events, so that a
//! browser's `EventSource` (which cannot send headers) can follow and reconnect with a
//! plain URL; it names its session too, and ends with it.
//!
//! The web UI holds its session in an `HttpOnly` cookie instead, out of reach of scripts;
//! a request that changes something and is signed in by that cookie must carry the
//! session's CSRF token in `X-CSRF-Token`, which a page of another site cannot read.

use std::sync::Arc;

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use troupe_events::Session;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const SESSION: &str = "session";
const TASK_READ: &str = "task:read";
const CSRF: &str = "csrf";

/// The web UI's session cookie (`HttpOnly`) and its CSRF token's (readable by the page).
pub const SESSION_COOKIE: &str = "troupe_session";
pub const CSRF_COOKIE: &str = "troupe_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    /// The session row the token lives and dies with.
    sid: Uuid,
    exp: u64,
    iat: u64,
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<Uuid>,
}

/// Cloned with the app state for every request: the keys are shared, not copied.
#[derive(Clone)]
pub struct Tokens {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
    session_ttl: Duration,
    stream_ttl: Duration,
}

/// A new session: the row to store and the token that names it.
pub struct NewSession {
    pub row: Session,
    pub token: String,
}

impl Tokens {
    pub fn new(secret: &SecretString, session_ttl: Duration, stream_ttl: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        Tokens {
            encoding: Arc::new(EncodingKey::from_secret(bytes)),
            decoding: Arc::new(DecodingKey::from_secret(bytes)),
            session_ttl,
            stream_ttl,
        }
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    /// A session for `user_id`, not stored yet.
    pub fn session(&self, user_id: Uuid) -> NewSession {
        let id = Uuid::now_v7();
        let (token, exp) = self.sign(user_id, id, SESSION, None, self.session_ttl);
        NewSession {
            row: Session {
                id,
                user_id,
                expires_at: chrono::DateTime::from_timestamp(exp as i64, 0)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            },
            token,
        }
    }

    /// A token that reads one task's events and nothing else, for as long as `session`
    /// lives (and at most the stream tokens' lifetime).
    pub fn stream(&self, user: AuthUser, task_id: Uuid) -> String {
        self.sign(
            user.id,
            user.session_id,
            TASK_READ,
            Some(task_id),
            self.stream_ttl,
        )
        .0
    }

    /// The CSRF token of a session: what a cookie-signed request must send back.
    pub fn csrf(&self, user_id: Uuid, session_id: Uuid) -> String {
        self.sign(user_id, session_id, CSRF, None, self.session_ttl)
            .0
    }

    fn sign(
        &self,
        sub: Uuid,
        sid: Uuid,
        scope: &str,
        task: Option<Uuid>,
        ttl: Duration,
    ) -> (String, u64) {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub,
            sid,
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            scope: scope.into(),
            task,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail");
        (token, claims.exp)
    }

    fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized("the token has expired; log in again")
                }
                _ => ApiError::Unauthorized("the token is not valid"),
            })
    }

    /// A session token's claims, when it is one.
    fn verify_session(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.verify(token)?;
        if claims.scope != SESSION {
            return Err(ApiError::Unauthorized("this token cannot be used here"));
        }
        Ok(claims)
    }
}

/// Stores a new session for `user_id` and gives its token.
pub async fn start_session(state: &AppState, user_id: Uuid) -> ApiResult<NewSession> {
    let session = state.tokens.session(user_id);
    state.backends.store.create_session(&session.row).await?;
    Ok(session)
}

/// The claims' user, when their session is still live: ended, expired and deleted users'
/// sessions are refused however valid the token's signature.
async fn live(state: &AppState, claims: &Claims) -> ApiResult<AuthUser> {
    match state.backends.store.session_user(claims.sid).await? {
        Some(user_id) if user_id == claims.sub => Ok(AuthUser {
            id: claims.sub,
            session_id: claims.sid,
        }),
        _ => Err(ApiError::Unauthorized(
            "this session has ended (signed out, password changed, or expired); sign in again",
        )),
    }
}

pub async fn hash_password(password: String) -> anyhow::Result<String> {
    // Hashing is deliberately slow: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await?
}

pub async fn verify_password(password: String, hash: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed =
            PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash is invalid: {e}"))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// The caller, from `Authorization: Bearer <session token>` or the session cookie.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: Uuid,
    pub session_id: Uuid,
}

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not valid"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name && !value.is_empty()).then_some(value)
        })
}

/// A request signed in by cookie that may change something must prove it comes from our
/// page: the session's CSRF token in its header. Reads need no proof: a page of another
/// site cannot see what they answer.
fn check_csrf(state: &AppState, parts: &Parts, session: &Claims) -> Result<(), ApiError> {
    if parts.method.is_safe() {
        return Ok(());
    }
    let refused = || ApiError::Rejected {
        status: axum::http::StatusCode::FORBIDDEN,
        code: "csrf_token_invalid",
        message: format!(
            "a request signed in by the session cookie must send the session's CSRF token \
             in {CSRF_HEADER} (the {CSRF_COOKIE} cookie's value)"
        ),
    };
    let token = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    match state.tokens.verify(token) {
        Ok(csrf) if csrf.scope == CSRF && csrf.sid == session.sid => Ok(()),
        _ => Err(refused()),
    }
}

/// The session's claims from the bearer token or, failing that, the cookie (whose
/// changing requests are checked for their CSRF token).
fn session_claims(state: &AppState, parts: &Parts) -> Result<Option<Claims>, ApiError> {
    if let Some(token) = bearer(parts)? {
        return state.tokens.verify_session(token).map(Some);
    }
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let claims = state.tokens.verify_session(token)?;
    check_csrf(state, parts, &claims)?;
    Ok(Some(claims))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = session_claims(state, parts)?.ok_or(ApiError::Unauthorized(
            "sign in first: send Authorization: Bearer <token>",
        ))?;
        live(state, &claims).await
    }
}

/// Who may read a task's events: a session (header or cookie) or a task-scoped token
/// (`?token=`).
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    pub user_id: Uuid,
    /// Set for a task-scoped token: the only task it may read.
    pub only_task: Option<Uuid>,
}

impl Reader {
    pub fn may_read(&self, task_id: Uuid) -> bool {
        self.only_task.is_none_or(|t| t == task_id)
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(claims) = session_claims(state, parts)? {
            let user = live(state, &claims).await?;
            return Ok(Reader {
                user_id: user.id,
                only_task: None,
            });
        }
        let token = parts
            .uri
            .query()
            .and_then(|q| url_param(q, "token"))
            .ok_or(ApiError::Unauthorized(
                "sign in first: send Authorization: Bearer <token> or use the task's streamUrl",
            ))?;
        let claims = state.tokens.verify(&token)?;
        match (claims.scope.as_str(), claims.task) {
            (TASK_READ, Some(task)) => Ok(Reader {
                user_id: live(state, &claims).await?.id,
                only_task: Some(task),
            }),
            _ => Err(ApiError::Unauthorized("this token cannot be used here")),
        }
    }
}

fn url_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        // JWTs are URL-safe base64 and dots: nothing to percent-decode.
        (key == name && !value.is_empty()).then(|| value.to_string())
    })
}

/// How the session cookies are marked `Secure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecureCookies {
    /// When the request came over TLS to a proxy that says so (`X-Forwarded-Proto: https`).
    #[default]
    Auto,
    Always,
    Never,
}

/// The `Set-Cookie` values that sign the web UI in with `session` (or, with `None`, out).
pub fn session_cookies(
    state: &AppState,
    headers: &HeaderMap,
    session: Option<(&NewSession, Duration)>,
) -> [HeaderValue; 2] {
    let secure = match state.http.secure_cookies {
        SecureCookies::Always => true,
        SecureCookies::Never => false,
        SecureCookies::Auto => headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https")),
    };
    let secure = if secure { "; Secure" } else { "" };
    let (session_value, csrf_value, max_age) = match session {
        Some((session, ttl)) => (
            session.token.clone(),
            state.tokens.csrf(session.row.user_id, session.row.id),
            ttl.as_secs(),
        ),
        None => (String::new(), String::new(), 0),
    };
    let cookie = |name: &str, value: &str, http_only: &str| {
        HeaderValue::from_str(&format!(
            "{name}={value}; Path=/; Max-Age={max_age}; SameSite=Strict{http_only}{secure}"
        ))
        .expect("tokens are ASCII")
    };
    [
        cookie(SESSION_COOKIE, &session_value, "; HttpOnly"),
        cookie(CSRF_COOKIE, &csrf_value, ""),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            &SecretString::from("a-test-secret-that-is-long-enough-000"),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn session_and_stream_tokens_carry_their_scope() {
        let tokens = tokens();
        let user = Uuid::now_v7();
        let task = Uuid::now_v7();
        let started = tokens.session(user);
        let session = tokens.verify(&started.token).unwrap();
        assert_eq!((session.sub, session.scope.as_str()), (user, SESSION));
        assert_eq!(session.sid, started.row.id);
        let reader = AuthUser {
            id: user,
            session_id: started.row.id,
        };
        let stream = tokens.verify(&tokens.stream(reader, task)).unwrap();
        assert_eq!(stream.scope, TASK_READ);
        assert_eq!((stream.task, stream.sid), (Some(task), started.row.id));
        let csrf = tokens.verify(&tokens.csrf(user, started.row.id)).unwrap();
        assert_eq!((csrf.scope.as_str(), csrf.sid), (CSRF, started.row.id));
        assert!(
            tokens
                .verify_session(&tokens.csrf(user, started.row.id))
                .is_err()
        );
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let other = Tokens::new(
            &SecretString::from("another-secret-entirely-000000000000"),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let forged = other.session(Uuid::now_v7()).token;
        assert!(tokens().verify(&forged).is_err());
    }

    #[test]
    fn cookies_are_found_among_others_in_any_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; troupe_sessionx=no"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("b=2;  troupe_session=yes; c=3"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("yes"));
        assert_eq!(cookie(&headers, CSRF_COOKIE), None);
        headers.insert(COOKIE, HeaderValue::from_static("troupe_csrf="));
        assert_eq!(cookie(&headers, CSRF_COOKIE), None);
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(
            verify_password("correct horse".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong horse".into(), hash).await.unwrap());
    }
}
