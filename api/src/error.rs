//! The one error type of the api. Every failure leaves as `{"error": {"code", "message"}}`
//! with its status; server faults are logged and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("task not found")]
    TaskNotFound,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// 429 with `Retry-After`: a limit was reached; `code` says which.
    #[error("{message}")]
    Limited {
        code: &'static str,
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("the service is busy; try again shortly")]
    Unavailable,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TaskNotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Rejected { code, .. }
            | ApiError::Limited { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::TaskNotFound => "task_not_found",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<troupe_events::Error> for ApiError {
    fn from(e: troupe_events::Error) -> Self {
        match e {
            troupe_events::Error::AlreadyExists(what) => ApiError::Conflict {
                code: "already_exists",
                message: format!("{what} already exists"),
            },
            troupe_events::Error::IdempotencyMismatch => ApiError::invalid(
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            ),
            troupe_events::Error::TaskNotFound(_) => ApiError::TaskNotFound,
            troupe_events::Error::QueueFull => ApiError::Unavailable,
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                "something went wrong on our side; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Limited { retry_after, .. } = &self {
            let secs = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and meant for programs: branch on it. Each endpoint lists the codes it can
    /// answer with; a newer server may add codes, so treat an unknown one by its status.
    #[schema(example = "task_not_found")]
    pub code: &'static str,
    /// Meant for a person; its wording may change.
    #[schema(example = "task not found")]
    pub message: String,
}
