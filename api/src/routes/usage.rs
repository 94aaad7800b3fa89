//! `GET /api/usage`: what the caller's tasks used over the last days, aggregated by the
//! store, for the usage page's charts.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use troupe_events::UsageReport;
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::openapi::{SIGNED_IN, errors};
use crate::state::AppState;

/// The longest window a report covers, in days: with the store's caps, it bounds what one
/// request can make the database read.
pub const MAX_DAYS: u32 = 90;
const DEFAULT_DAYS: u32 = 30;

/// `?days=N`: the window, 1 to [`MAX_DAYS`] UTC days ending today (default 30).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// UTC days ending today, 1 to 90; default 30.
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
}

/// The answer: the window and the report of the tasks submitted in it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageResponse {
    pub days: u32,
    /// Midnight UTC of the window's first day.
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    #[serde(flatten)]
    pub report: UsageReport,
}

impl UsageQuery {
    fn days(&self) -> ApiResult<u32> {
        checked_days(self.days.unwrap_or(DEFAULT_DAYS))
    }
}

/// A window of `days` UTC days, 1 to [`MAX_DAYS`] (also `GET /api/stats?days=`).
pub(crate) fn checked_days(days: u32) -> ApiResult<u32> {
    match days {
        1..=MAX_DAYS => Ok(days),
        _ => Err(ApiError::bad_request(
            "invalid_days",
            format!("days must be a whole number from 1 to {MAX_DAYS}"),
        )),
    }
}

/// The first instant of the window of `days` UTC days that ends with `now`'s day.
pub(crate) fn window_start(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    let today = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists");
    today.and_utc() - Duration::days(i64::from(days) - 1)
}

errors!(UsageErrors = SIGNED_IN, &["invalid_days", "invalid_query"]);

/// Your usage over the last days
///
/// Tokens and cost by UTC day, agent role and model, and how each role's attempts ended
/// and how long they took, over the tasks you submitted in the window (the newest
/// 10,000; `truncated` says when the window held more).
#[utoipa::path(
    get,
    path = "/usage",
    operation_id = "usage",
    tag = "usage",
    security(("session" = [])),
    params(UsageQuery),
    responses((status = 200, description = "The window and its report.", body = UsageResponse), UsageErrors),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub async fn usage(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<UsageQuery>,
) -> ApiResult<axum::Json<UsageResponse>> {
    let days = query.days()?;
    let until = Utc::now();
    let since = window_start(until, days);
    let report = state.backends.store.usage_report(user.id, since).await?;
    Ok(axum::Json(UsageResponse {
        days,
        since,
        until,
        report,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_starts_at_midnight_utc_of_its_first_day() {
        let now: DateTime<Utc> = "2026-11-24T15:30:00Z".parse().unwrap();
        assert_eq!(
            window_start(now, 1).to_rfc3339(),
            "2026-11-24T00:00:00+00:00"
        );
        assert_eq!(
            window_start(now, 7).to_rfc3339(),
            "2026-11-18T00:00:00+00:00"
        );
    }

    #[test]
    fn days_outside_the_range_are_refused() {
        for days in [Some(0), Some(MAX_DAYS + 1)] {
            assert!(UsageQuery { days }.days().is_err(), "{days:?}");
        }
        assert_eq!(UsageQuery { days: None }.days().unwrap(), DEFAULT_DAYS);
        assert_eq!(
            UsageQuery {
                days: Some(MAX_DAYS)
            }
            .days()
            .unwrap(),
            MAX_DAYS
        );
    }
}
