use axum::extract::State;
use serde::Serialize;
use troupe_worker::providers::ProviderInfo;
use utoipa::ToSchema;

use crate::auth::AuthUser;
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
    /// What a task that names no provider runs on: `openai` if configured, else
    /// `anthropic` if configured, else `simulated`.
    pub default: &'static str,
    /// Every provider this build knows, configured or not.
    pub providers: Vec<ProviderInfo>,
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
/// The providers this server knows, which are configured, and which one is simulated.
#[utoipa::path(
    get,
    path = "/providers",
    operation_id = "listProviders",
    tag = "catalogue",
    security(("session" = [])),
    responses((status = 200, description = "The providers.", body = ProviderList), CatalogueErrors),
)]
pub async fn providers(State(state): State<AppState>, _user: AuthUser) -> axum::Json<ProviderList> {
    axum::Json(ProviderList {
        default: state.providers.default_name(),
        providers: state.providers.catalogue(),
    })
}
