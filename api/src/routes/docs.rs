//! The API reference: the OpenAPI document at `/api/openapi.json`.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// The OpenAPI document of the router that serves it, serialised once.
#[derive(Clone)]
pub struct Document(Arc<Bytes>);

impl Document {
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Self {
        let json = openapi
            .to_pretty_json()
            .expect("the OpenAPI document always serialises");
        Document(Arc::new(Bytes::from(json)))
    }
}

/// This document
///
/// OpenAPI 3.1, generated from the server's handlers and types.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "reference",
    responses((status = 200, description = "The OpenAPI 3.1 document of this server.", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json(Extension(Document(json)): Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::clone(&json),
    )
        .into_response()
}
