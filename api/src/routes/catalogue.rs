use axum::extract::State;
use serde::Serialize;
use troupe_events::providers::ProviderInfo;
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::openapi::{SIGNED_IN, errors};
use crate::state::AppState;

/// An agent a team can have.
#[derive(Serialize, ToSchema)]
pub struct AgentInfo {
    /// What `selectedAgents` names, e.g. `tech-lead`.
    pub role: String,
    pub name: String,
    pub description: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderList {
    /// What a task that names no provider runs on: `openai` if served, else `anthropic`
    /// if served, else `simulated`.
    pub default: &'static str,
    /// Every provider this build knows; `configured` says which every live worker serves.
    pub providers: Vec<ProviderInfo>,
    /// Live workers, as their adverts in the store say: 0 means no task runs until one
    /// starts.
    pub workers: usize,
}

errors!(CatalogueErrors = SIGNED_IN);

/// The agent catalogue
///
/// The roles a user can put on a team, in catalogue order.
#[utoipa::path(
    get,
    path = "/agents",
    operation_id = "listAgents",
    tag = "catalogue",
    security(("session" = [])),
    responses((status = 200, description = "The catalogue.", body = Vec<AgentInfo>), CatalogueErrors),
)]
pub async fn agents(State(state): State<AppState>, _user: AuthUser) -> axum::Json<Vec<AgentInfo>> {
    axum::Json(
        state
            .catalogue
            .agents()
            .iter()
            .map(|a| AgentInfo {
                role: a.role.clone(),
                name: a.name.clone(),
                description: a.description.clone(),
            })
            .collect(),
    )
}

/// The LLM providers
///
/// The providers this build knows, which ones the live workers serve (as they advertise
/// in the store: the api holds no provider key), and which one is simulated.
#[utoipa::path(
    get,
    path = "/providers",
    operation_id = "listProviders",
    tag = "catalogue",
    security(("session" = [])),
    responses((status = 200, description = "The providers.", body = ProviderList), CatalogueErrors),
)]
pub async fn providers(
    State(state): State<AppState>,
    _user: AuthUser,
) -> ApiResult<axum::Json<ProviderList>> {
    let served = state.providers.current().await?;
    Ok(axum::Json(ProviderList {
        default: served.default_name(),
        providers: served.catalogue(),
        workers: served.workers(),
    }))
}
