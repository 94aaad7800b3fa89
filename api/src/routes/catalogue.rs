use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::AuthUser;
use crate::state::AppState;

/// The roles a user can put on a team.
pub async fn agents(State(state): State<AppState>, _user: AuthUser) -> axum::Json<Value> {
    axum::Json(
        state
            .catalogue
            .agents()
            .iter()
            .map(|a| json!({"role": a.role, "name": a.name, "description": a.description}))
            .collect(),
    )
}

/// The providers this server knows, which are configured, and which one is simulated.
pub async fn providers(State(state): State<AppState>, _user: AuthUser) -> axum::Json<Value> {
    axum::Json(json!({
        "default": state.providers.default_name(),
        "providers": state.providers.catalogue(),
    }))
}
