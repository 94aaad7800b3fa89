use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::AppendHeaders;
use serde::{Deserialize, Serialize};
use troupe_events::User;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{
    AuthUser, NewSession, hash_password, session_cookies, start_session, verify_password,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::guard::ClientIp;
use crate::openapi::{JSON_BODY, SIGNED_IN, errors};
use crate::state::AppState;

/// The session cookies a response sets (or clears).
type Cookies = AppendHeaders<[(axum::http::HeaderName, HeaderValue); 2]>;

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

/// A new session. It is also set as the web UI's cookies: `troupe_session` (`HttpOnly`)
/// and `troupe_csrf`, whose value a cookie-signed request that changes something sends
/// back in `X-CSRF-Token`.
#[derive(Serialize, ToSchema)]
pub struct Session {
    /// A session token: send it as `Authorization: Bearer <token>`. It lives
    /// `TROUPE_SESSION_TTL_HOURS` (24 h by default), until signed out, or until the
    /// password changes.
    pub token: String,
}

/// The signed-in account, for a page that holds its session in a cookie.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub user_id: Uuid,
    pub email: String,
    /// What a cookie-signed request that changes something sends in `X-CSRF-Token`.
    pub csrf_token: String,
}

/// A password change: the current password, and the new one (8 to 1024 characters).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordChange {
    #[schema(value_type = String, format = Password)]
    current_password: Option<String>,
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 1024)]
    new_password: Option<String>,
}

fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    session: NewSession,
) -> (Cookies, axum::Json<Session>) {
    let [session_cookie, csrf_cookie] =
        session_cookies(state, headers, Some((&session, state.tokens.session_ttl())));
    (
        AppendHeaders([(SET_COOKIE, session_cookie), (SET_COOKIE, csrf_cookie)]),
        axum::Json(Session {
            token: session.token,
        }),
    )
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
    PasswordErrors = SIGNED_IN,
    JSON_BODY,
    &[
        "wrong_password",
        "invalid_password",
        "too_many_attempts_account",
        "auth_busy",
    ]
);
errors!(LogoutErrors = SIGNED_IN);
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

fn checked_password(password: String) -> ApiResult<String> {
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(ApiError::invalid(
            "invalid_password",
            "password must be 8 to 1024 characters long",
        ));
    }
    Ok(password)
}

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
        Ok((email, checked_password(password)?))
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
    headers: HeaderMap,
    Json(body): Json<Credentials>,
) -> ApiResult<(StatusCode, Cookies, axum::Json<Session>)> {
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
    let session = start_session(&state, user.id).await?;
    let (cookies, body) = signed_in(&state, &headers, session);
    Ok((StatusCode::CREATED, cookies, body))
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
    headers: HeaderMap,
    Json(body): Json<Credentials>,
) -> ApiResult<(Cookies, axum::Json<Session>)> {
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
        (true, Some(user_id)) => {
            let session = start_session(&state, user_id).await?;
            Ok(signed_in(&state, &headers, session))
        }
        _ => Err(wrong),
    }
}

/// Sign out
///
/// Ends the session: its token, its cookie and every stream URL minted from it are
/// refused from now on, by every api process. Clears the session cookies.
#[utoipa::path(
    post,
    path = "/auth/logout",
    operation_id = "logout",
    tag = "auth",
    security(("session" = [])),
    responses(
        (status = 204, description = "Signed out."),
        LogoutErrors,
    ),
)]
pub async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Cookies)> {
    state.backends.store.end_session(user.session_id).await?;
    let [session_cookie, csrf_cookie] = session_cookies(&state, &headers, None);
    Ok((
        StatusCode::NO_CONTENT,
        AppendHeaders([(SET_COOKIE, session_cookie), (SET_COOKIE, csrf_cookie)]),
    ))
}

/// Change the password
///
/// Ends every session of the account, this one included, and returns a new one: a
/// token taken before the change is refused from now on. Limited per account, as sign-in.
#[utoipa::path(
    post,
    path = "/auth/password",
    operation_id = "changePassword",
    tag = "auth",
    security(("session" = [])),
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; here is the new session.", body = Session),
        PasswordErrors,
    ),
)]
pub async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<PasswordChange>,
) -> ApiResult<(Cookies, axum::Json<Session>)> {
    let account = account_of(&state, user).await?;
    let new_password = checked_password(body.new_password.unwrap_or_default())?;
    confirm_password(&state, &account, body.current_password.unwrap_or_default()).await?;
    let hash = {
        let _hasher = state.guard.hasher().await?;
        hash_password(new_password).await?
    };
    let session = state.tokens.session(user.id);
    state
        .backends
        .store
        .replace_password(user.id, &hash, &session.row)
        .await?;
    Ok(signed_in(&state, &headers, session))
}

/// An account deletion: the account's password, asked again.
#[derive(Deserialize, ToSchema)]
pub struct AccountDeletion {
    #[schema(value_type = String, format = Password)]
    password: Option<String>,
}

errors!(
    DeleteAccountErrors = SIGNED_IN,
    JSON_BODY,
    &["wrong_password", "too_many_attempts_account", "auth_busy"]
);

/// Checks `password` against the account's, under the per-account limit and the hashers'
/// bound.
async fn confirm_password(state: &AppState, account: &User, password: String) -> ApiResult<()> {
    state.guard.attempt_on(&account.email)?;
    let _hasher = state.guard.hasher().await?;
    if password.len() > 1024 || !verify_password(password, account.password_hash.clone()).await? {
        return Err(ApiError::Rejected {
            status: StatusCode::FORBIDDEN,
            code: "wrong_password",
            message: "the password is wrong".into(),
        });
    }
    Ok(())
}

async fn account_of(state: &AppState, user: AuthUser) -> ApiResult<User> {
    state
        .backends
        .store
        .user(user.id)
        .await?
        .ok_or(ApiError::Unauthorized("this account no longer exists"))
}

/// Delete the account
///
/// Signs out every session at once and frees the email for a new account. Every task of
/// the account is deleted: those that run are cancelled first. Its usage figures go with
/// it. Asks for the password again.
#[utoipa::path(
    delete,
    path = "/auth/account",
    operation_id = "deleteAccount",
    tag = "auth",
    security(("session" = [])),
    request_body = AccountDeletion,
    responses(
        (status = 204, description = "Deleted; its tasks go as they stop."),
        DeleteAccountErrors,
    ),
)]
pub async fn delete_account(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<AccountDeletion>,
) -> ApiResult<(StatusCode, Cookies)> {
    let account = account_of(&state, user).await?;
    confirm_password(&state, &account, body.password.unwrap_or_default()).await?;
    state.backends.store.delete_account(user.id).await?;
    tracing::info!(user_id = %user.id, "account deleted");
    let [session_cookie, csrf_cookie] = session_cookies(&state, &headers, None);
    Ok((
        StatusCode::NO_CONTENT,
        AppendHeaders([(SET_COOKIE, session_cookie), (SET_COOKIE, csrf_cookie)]),
    ))
}

/// The signed-in account
///
/// Who the session belongs to, and its CSRF token: what the web UI asks at start, since
/// its session cookie is out of its scripts' reach.
#[utoipa::path(
    get,
    path = "/auth/session",
    operation_id = "currentSession",
    tag = "auth",
    security(("session" = [])),
    responses(
        (status = 200, description = "The session's account.", body = Me),
        LogoutErrors,
    ),
)]
pub async fn current(State(state): State<AppState>, user: AuthUser) -> ApiResult<axum::Json<Me>> {
    let account = account_of(&state, user).await?;
    Ok(axum::Json(Me {
        user_id: user.id,
        email: account.email,
        csrf_token: state.tokens.csrf(user.id, user.session_id),
    }))
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
