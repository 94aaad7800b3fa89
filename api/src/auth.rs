//! Accounts and tokens. Passwords are hashed with argon2id; sessions are HS256 JWTs.
//! A second, narrower token reads one task's events, so that a browser's `EventSource`
//! (which cannot send headers) can follow and reconnect with a plain URL.

use std::sync::Arc;

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

const SESSION: &str = "session";
const TASK_READ: &str = "task:read";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
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

    pub fn session(&self, user_id: Uuid) -> String {
        self.sign(user_id, SESSION, None, self.session_ttl)
    }

    /// A token that reads one task's events and nothing else.
    pub fn stream(&self, user_id: Uuid, task_id: Uuid) -> String {
        self.sign(user_id, TASK_READ, Some(task_id), self.stream_ttl)
    }

    fn sign(&self, sub: Uuid, scope: &str, task: Option<Uuid>, ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub,
            iat: now,
            exp: now + ttl.as_secs(),
            scope: scope.into(),
            task,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail")
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

/// The caller, from `Authorization: Bearer <session token>`.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub id: Uuid,
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

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?.ok_or(ApiError::Unauthorized(
            "sign in first: send Authorization: Bearer <token>",
        ))?;
        let claims = state.tokens.verify(token)?;
        if claims.scope != SESSION {
            return Err(ApiError::Unauthorized("this token cannot be used here"));
        }
        Ok(AuthUser { id: claims.sub })
    }
}

/// Who may read a task's events: a session (header) or a task-scoped token (`?token=`).
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
        if let Some(token) = bearer(parts)? {
            let claims = state.tokens.verify(token)?;
            if claims.scope != SESSION {
                return Err(ApiError::Unauthorized("this token cannot be used here"));
            }
            return Ok(Reader {
                user_id: claims.sub,
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
                user_id: claims.sub,
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
        let session = tokens.verify(&tokens.session(user)).unwrap();
        assert_eq!((session.sub, session.scope.as_str()), (user, SESSION));
        let stream = tokens.verify(&tokens.stream(user, task)).unwrap();
        assert_eq!(stream.scope, TASK_READ);
        assert_eq!(stream.task, Some(task));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let other = Tokens::new(
            &SecretString::from("another-secret-entirely-000000000000"),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let forged = other.session(Uuid::now_v7());
        assert!(tokens().verify(&forged).is_err());
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
