//! `GET /api/stats`: what the stats consumer counted for the caller's tasks, per hour,
//! agent role and model. The consumer (`troupe stats`, in-process when embedded) counts
//! each event once, a moment after it is stored.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use troupe_events::stats::{StatsKey, StatsPeriod, StatsReport};
use utoipa::IntoParams;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::openapi::{SIGNED_IN, errors};
use crate::routes::usage;
use crate::state::AppState;

/// The longest window, in hours: 30 days.
pub const MAX_HOURS: u32 = 720;
const DEFAULT_HOURS: u32 = 24;

/// `?hours=N` or `?days=N`: the window, and what its rows are summed by.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Hours ending with the current one, 1 to 720, summed by hour; the default is 24.
    #[param(minimum = 1, maximum = 720)]
    hours: Option<u32>,
    /// UTC days ending today, 1 to 90, summed by day (not with `hours`).
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
}

impl StatsQuery {
    /// The window's first instant at `now`, and the period its rows are summed by.
    fn window(&self, now: DateTime<Utc>) -> ApiResult<(DateTime<Utc>, StatsPeriod)> {
        match (self.hours, self.days) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "invalid_window",
                "give hours or days, not both",
            )),
            (None, Some(days)) => Ok((
                usage::window_start(now, usage::checked_days(days)?),
                StatsPeriod::Day,
            )),
            (hours, None) => Ok((
                hours_start(now, checked_hours(hours.unwrap_or(DEFAULT_HOURS))?),
                StatsPeriod::Hour,
            )),
        }
    }
}

fn checked_hours(hours: u32) -> ApiResult<u32> {
    match hours {
        1..=MAX_HOURS => Ok(hours),
        _ => Err(ApiError::bad_request(
            "invalid_hours",
            format!("hours must be a whole number from 1 to {MAX_HOURS}"),
        )),
    }
}

/// The first hour of the window of `hours` hours that ends with `now`'s hour.
fn hours_start(now: DateTime<Utc>, hours: u32) -> DateTime<Utc> {
    StatsKey::hour_of(now) - Duration::hours(i64::from(hours) - 1)
}

errors!(
    StatsErrors = SIGNED_IN,
    &[
        "invalid_hours",
        "invalid_days",
        "invalid_window",
        "invalid_query"
    ]
);

/// Your agents' figures, by hour or by day
///
/// Per agent role and model, and per role: attempts and how they ended, duration and
/// time-to-first-token percentiles, calls, tokens and cost, over the window, and per hour
/// (`hours`) or per UTC day (`days`). Attempts count under the model the task asked for
/// ('' for the provider's default), calls, tokens and cost under the model that answered;
/// they differ only after a failover. The stats consumer counts events a moment after
/// they are stored.
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
    let (since, period) = query.window(Utc::now())?;
    let rows = state
        .backends
        .store
        .stats_rows(user.id, since, period)
        .await?;
    Ok(axum::Json(rows.report(since)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(hours: Option<u32>, days: Option<u32>) -> ApiResult<(String, StatsPeriod)> {
        let now: DateTime<Utc> = "2026-11-24T15:30:00Z".parse().unwrap();
        let (since, period) = StatsQuery { hours, days }.window(now)?;
        Ok((since.to_rfc3339(), period))
    }

    fn since(hours: Option<u32>, days: Option<u32>) -> Option<(String, StatsPeriod)> {
        window(hours, days).ok()
    }

    #[test]
    fn an_hours_window_starts_on_the_hour() {
        let hour = |since: &str| Some((since.to_string(), StatsPeriod::Hour));
        assert_eq!(since(Some(1), None), hour("2026-11-24T15:00:00+00:00"));
        assert_eq!(since(Some(24), None), hour("2026-11-23T16:00:00+00:00"));
        assert_eq!(since(None, None), hour("2026-11-23T16:00:00+00:00"));
    }

    #[test]
    fn a_days_window_starts_at_midnight_utc() {
        let day = |since: &str| Some((since.to_string(), StatsPeriod::Day));
        assert_eq!(since(None, Some(1)), day("2026-11-24T00:00:00+00:00"));
        assert_eq!(since(None, Some(7)), day("2026-11-18T00:00:00+00:00"));
    }

    #[test]
    fn a_window_outside_the_ranges_or_given_twice_is_refused() {
        let code = |hours, days| window(hours, days).unwrap_err().code().to_string();
        assert_eq!(code(Some(0), None), "invalid_hours");
        assert_eq!(code(Some(MAX_HOURS + 1), None), "invalid_hours");
        assert_eq!(code(None, Some(0)), "invalid_days");
        assert_eq!(code(None, Some(91)), "invalid_days");
        assert_eq!(code(Some(1), Some(1)), "invalid_window");
    }
}
