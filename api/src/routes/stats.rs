//! `GET /api/stats`: what the stats consumer counted for the caller's tasks, per hour,
//! agent role and model. The consumer (`troupe stats`, in-process when embedded) counts
//! each event once, a moment after it is stored.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use troupe_events::stats::{StatsKey, StatsReport};
use utoipa::IntoParams;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::openapi::{SIGNED_IN, errors};
use crate::state::AppState;

/// The longest window, in hours: 30 days.
pub const MAX_HOURS: u32 = 720;
const DEFAULT_HOURS: u32 = 24;

/// `?hours=N`: the window, the last 1 to [`MAX_HOURS`] hours (default 24).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Hours ending with the current one, 1 to 720; default 24.
    #[param(minimum = 1, maximum = 720)]
    hours: Option<u32>,
}

impl StatsQuery {
    fn hours(&self) -> ApiResult<u32> {
        match self.hours.unwrap_or(DEFAULT_HOURS) {
            hours @ 1..=MAX_HOURS => Ok(hours),
            _ => Err(ApiError::bad_request(
                "invalid_hours",
                format!("hours must be a whole number from 1 to {MAX_HOURS}"),
            )),
        }
    }
}

/// The first hour of the window of `hours` hours that ends with `now`'s hour.
fn window_start(now: DateTime<Utc>, hours: u32) -> DateTime<Utc> {
    StatsKey::hour_of(now) - Duration::hours(i64::from(hours) - 1)
}

errors!(StatsErrors = SIGNED_IN, &["invalid_hours", "invalid_query"]);

/// Your agents' figures, by hour
///
/// Per agent role and model: attempts and how they ended, duration percentiles, calls,
/// tokens and cost, over the window and per hour. Attempts count under the model the task
/// asked for ('' for the provider's default), calls, tokens and cost under the model that
/// answered; they differ only after a failover.
#[utoipa::path(
    get,
    path = "/stats",
    operation_id = "stats",
    tag = "usage",
    security(("session" = [])),
    params(StatsQuery),
    responses((status = 200, description = "The window's figures.", body = StatsReport), StatsErrors),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub async fn stats(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<StatsQuery>,
) -> ApiResult<axum::Json<StatsReport>> {
    let since = window_start(Utc::now(), query.hours()?);
    let rows = state.backends.store.stats_rows(user.id, since).await?;
    Ok(axum::Json(rows.report(since)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_starts_on_the_hour() {
        let now: DateTime<Utc> = "2026-11-24T15:30:00Z".parse().unwrap();
        assert_eq!(
            window_start(now, 1).to_rfc3339(),
            "2026-11-24T15:00:00+00:00"
        );
        assert_eq!(
            window_start(now, 24).to_rfc3339(),
            "2026-11-23T16:00:00+00:00"
        );
    }

    #[test]
    fn hours_outside_the_range_are_refused() {
        for hours in [Some(0), Some(MAX_HOURS + 1)] {
            assert!(StatsQuery { hours }.hours().is_err(), "{hours:?}");
        }
        assert_eq!(StatsQuery { hours: None }.hours().unwrap(), DEFAULT_HOURS);
    }
}
