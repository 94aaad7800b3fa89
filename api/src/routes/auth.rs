use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{hash_password, verify_password};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct Credentials {
    email: Option<String>,
    password: Option<String>,
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
        if password.chars().count() < 8 || password.len() > 1024 {
            return Err(ApiError::invalid(
                "invalid_password",
                "password must be 8 to 1024 characters long",
            ));
        }
        Ok((email, password))
    }
}

pub async fn register(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let (email, password) = body.validate()?;
    let hash = hash_password(password).await?;
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
    Ok((StatusCode::CREATED, axum::Json(json!({"token": token}))))
}

pub async fn login(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> ApiResult<axum::Json<Value>> {
    let wrong = ApiError::Unauthorized("wrong email or password");
    let email = body.email.unwrap_or_default();
    let password = body.password.unwrap_or_default();
    if email.trim().is_empty() || password.is_empty() || password.len() > 1024 {
        return Err(wrong);
    }
    let Some(user) = state.backends.store.user_by_email(email.trim()).await? else {
        return Err(wrong);
    };
    if !verify_password(password, user.password_hash).await? {
        return Err(wrong);
    }
    Ok(axum::Json(json!({"token": state.tokens.session(user.id)})))
}
