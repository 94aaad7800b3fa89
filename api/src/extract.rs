//! Extractors whose rejections are [`ApiError`]s, so a clumsy request gets our error shape.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::Json`, answering a bad body with our error shape, and refusing a NUL character
/// in any string of it.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::Rejected {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                message: "send the body as JSON with Content-Type: application/json".into(),
            });
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        if has_nul(&body) {
            return Err(ApiError::bad_request(
                "invalid_text",
                "text may not contain the NUL character (\\u0000)",
            ));
        }
        match axum::Json::<T>::from_bytes(&body) {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `application/json`, or any `application/…+json`, parameters aside.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(Ok(value)) = headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether a JSON text has a string with a NUL character in it (`\u0000`; a raw one is
/// not JSON). PostgreSQL stores none in `text` or `jsonb`, SQLite would keep it, and no
/// field means anything by one: refused on both backends, before anything is stored.
fn has_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = json[i..].iter().position(|b| *b == b'\\') {
        let escape = i + at;
        if json.get(escape + 1..escape + 6) == Some(b"u0000") {
            return true;
        }
        // Past the backslash and the character it escapes, so `\\u0000` is no NUL.
        i = escape + 2;
        if i >= json.len() {
            return false;
        }
    }
    false
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let (code, message) = if status == StatusCode::PAYLOAD_TOO_LARGE {
        (
            "body_too_large",
            "the request body is larger than this server accepts".to_string(),
        )
    } else {
        ("invalid_body", rejection.body_text())
    };
    ApiError::Rejected {
        status,
        code,
        message,
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let (code, message) = match &rejection {
        JsonRejection::JsonSyntaxError(e) => (
            "invalid_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ("invalid_body", e.body_text()),
        other => ("invalid_body", other.body_text()),
    };
    ApiError::Rejected {
        status,
        code,
        message,
    }
}

/// `axum::extract::Path`, answering a malformed id with our error shape.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            // A malformed id names no task: the same answer as a missing one.
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::TaskNotFound),
            Err(other) => Err(ApiError::bad_request("invalid_path", other.body_text())),
        }
    }
}

/// `axum::extract::Query`, answering a bad query string with our error shape.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request("invalid_query", e.body_text()))
            }
            Err(other) => Err(ApiError::bad_request("invalid_query", other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_escape_is_found_and_an_escaped_backslash_is_not_one() {
        assert!(has_nul(br#"{"a":"x\u0000y"}"#));
        assert!(has_nul(br#"{"a\u0000":1}"#));
        assert!(has_nul(br#"["\\", "\u0000"]"#));
        assert!(!has_nul(br#"{"a":"x\\u0000y"}"#), "a backslash, then u0000");
        assert!(!has_nul(br#"{"a":"\u0001 \n"}"#));
        assert!(!has_nul(b"\\"));
    }

    #[test]
    fn json_content_types() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
