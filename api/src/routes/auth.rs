use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{hash_password, verify_password};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::guard::ClientIp;
use crate::openapi::{JSON_BODY, errors};
use crate::state::AppState;

/// An account's email and password.
// Optional here so that a missing field gets our message rather than serde's; the schema
// says what a valid body holds.
#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    #[schema(value_type = String, format = Email, max_length = 254, example = "ada@example.com")]
    email: Option<String>,
    /// 8 to 1024 characters.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 1024)]
    password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Session {
    /// A session token: send it as `Authorization: Bearer <token>`. It lives
    /// `TROUPE_SESSION_TTL_HOURS` (24 h by default).
    pub token: String,
}

errors!(
    RegisterErrors = JSON_BODY,
    &[
        "invalid_email",
        "invalid_password",
        "email_taken",
        "too_many_attempts_address",
        "auth_busy",
        "invalid_client_address",
    ]
);
errors!(
    LoginErrors = JSON_BODY,
    &[
        "unauthorized",
        "too_many_attempts_address",
        "too_many_attempts_account",
        "auth_busy",
        "invalid_client_address",
    ]
);

impl Credentials {
    fn validate(self) -> ApiResult<(String, String)> {
        let email = self.email.unwrap_or_default().trim().to_string();
        let password = self.password.unwrap_or_default();
        let well_formed = email.len() <= 254
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.ends_with('.')
            })
            && !email.chars().any(char::is_whitespace);
        if !well_formed {
            return Err(ApiError::invalid(
                "invalid_email",
                "email must be an address like ada@example.com",
            ));
        }
        if password.chars().count() < 8 || password.len() > 1024 {
            return Err(ApiError::invalid(
                "invalid_password",
                "password must be 8 to 1024 characters long",
            ));
        }
        Ok((email, password))
    }
}

/// Create an account
///
/// Returns a session token for the new account. Limited per client address
/// (`TROUPE_AUTH_PER_ADDRESS_PER_MINUTE`): past it, 429 with `Retry-After`.
#[utoipa::path(
    post,
    path = "/auth/register",
    operation_id = "register",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "The account exists; here is its session.", body = Session),
        RegisterErrors,
    ),
)]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(address): ClientIp,
    Json(body): Json<Credentials>,
) -> ApiResult<(StatusCode, axum::Json<Session>)> {
    state.guard.attempt_from(address)?;
    let (email, password) = body.validate()?;
    let hash = {
        let _hasher = state.guard.hasher().await?;
        hash_password(password).await?
    };
    let user = state
        .backends
        .store
        .create_user(&email, &hash)
        .await
        .map_err(|e| match e {
            troupe_events::Error::AlreadyExists(_) => ApiError::Conflict {
                code: "email_taken",
                message: "an account with this email already exists; log in instead".into(),
            },
            other => other.into(),
        })?;
    let token = state.tokens.session(user.id);
    Ok((StatusCode::CREATED, axum::Json(Session { token })))
}

/// Sign in
///
/// A wrong email and a wrong password get the same answer, in the same time. Limited per
/// client address and per account (`TROUPE_AUTH_PER_ACCOUNT_PER_MINUTE`, from any
/// address): past either, 429 with `Retry-After`.
#[utoipa::path(
    post,
    path = "/auth/login",
    operation_id = "login",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "A new session.", body = Session),
        LoginErrors,
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(address): ClientIp,
    Json(body): Json<Credentials>,
) -> ApiResult<axum::Json<Session>> {
    let wrong = ApiError::Unauthorized("wrong email or password");
    state.guard.attempt_from(address)?;
    let email = body.email.unwrap_or_default();
    let password = body.password.unwrap_or_default();
    if email.trim().is_empty() || password.is_empty() || password.len() > 1024 {
        return Err(wrong);
    }
    state.guard.attempt_on(email.trim())?;
    let user = state.backends.store.user_by_email(email.trim()).await?;
    let _hasher = state.guard.hasher().await?;
    // An unknown email is checked against a hash of nothing, so that it takes as long as a
    // wrong password: the time of the answer does not tell which emails have accounts.
    let (hash, user_id) = match user {
        Some(user) => (user.password_hash, Some(user.id)),
        None => (unknown_account_hash().await?, None),
    };
    match (verify_password(password, hash).await?, user_id) {
        (true, Some(user_id)) => Ok(axum::Json(Session {
            token: state.tokens.session(user_id),
        })),
        _ => Err(wrong),
    }
}

/// A hash no password is known to match, made once per process.
async fn unknown_account_hash() -> anyhow::Result<String> {
    static HASH: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    HASH.get_or_try_init(|| {
        let nobody = rand::distr::SampleString::sample_string(
            &rand::distr::Alphanumeric,
            &mut rand::rng(),
            32,
        );
        hash_password(nobody)
    })
    .await
    .cloned()
}
