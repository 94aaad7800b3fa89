//! The API reference: the OpenAPI document at `/api/openapi.json`, and a page at `/api/docs`
//! that renders it with Redoc. Redoc's bundle is vendored from npm (`scripts/fetch-redoc`) and
//! compiled into the binary, so the page needs no CDN and works offline.

use std::sync::{Arc, LazyLock};

use axum::Extension;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("../../docs-assets/index.html");
const REDOC: &[u8] = include_bytes!("../../docs-assets/redoc/redoc.standalone.js");
/// `sha256sum` of the bundle as `scripts/fetch-redoc` recorded it (checked by a test).
#[cfg(test)]
const REDOC_SHA256SUMS: &str = include_str!("../../docs-assets/redoc/SHA256SUMS");

/// Redoc's footer shows Redocly's logo from their CDN, whatever the options. The page
/// loads nothing from elsewhere (its policy would refuse it anyway, with an error in the
/// console), so the bundle is served with a `data:` URL there instead: it is no image, and
/// Redoc hides an image that fails. The vendored file itself stays as npm has it.
const REDOC_LOGO: &str = "https://cdn.redoc.ly/redoc/logo-mini.svg";

static SERVED_REDOC: LazyLock<Bytes> = LazyLock::new(|| {
    let bundle = std::str::from_utf8(REDOC).expect("Redoc's bundle is UTF-8");
    Bytes::from(bundle.replacen(REDOC_LOGO, "data:,", 1))
});

/// Validates a browser's copy, so that it downloads the bundle once per version.
static REDOC_ETAG: LazyLock<String> =
    LazyLock::new(|| format!("\"{:x}\"", Sha256::digest(&*SERVED_REDOC)));

/// Only this origin, as for the web UI, with what Redoc needs besides: styles it injects
/// into the page (styled-components) and its search index in a worker made from a blob.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src blob:; \
                   object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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

/// The API reference page
///
/// This document rendered by Redoc; the page loads everything it needs from this server.
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs",
    tag = "reference",
    responses((status = 200, description = "An HTML page.", content_type = "text/html", body = String)),
)]
pub async fn page() -> Response {
    secured(
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Bytes::from_static(PAGE.as_bytes()),
    )
}

/// Redoc's bundle.
pub async fn redoc(headers: HeaderMap) -> Response {
    let etag = REDOC_ETAG.as_str();
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    secured(
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::ETAG, etag),
        ],
        Bytes::clone(&SERVED_REDOC),
    )
}

fn secured<const N: usize>(headers: [(header::HeaderName, &str); N], body: Bytes) -> Response {
    super::ui::with_page_headers((headers, body).into_response(), CSP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_redoc_is_the_one_fetched() {
        let actual = format!("{:x}", Sha256::digest(REDOC));
        let recorded = REDOC_SHA256SUMS.split_whitespace().next().unwrap();
        assert_eq!(
            actual, recorded,
            "api/docs-assets/redoc/redoc.standalone.js differs from SHA256SUMS: run scripts/fetch-redoc"
        );
        assert!(
            REDOC_SHA256SUMS
                .trim_end()
                .ends_with("  redoc.standalone.js")
        );
    }

    #[test]
    fn the_served_bundle_names_no_cdn() {
        assert_eq!(
            std::str::from_utf8(REDOC)
                .unwrap()
                .matches(REDOC_LOGO)
                .count(),
            1,
            "Redoc's footer logo moved: check what the page loads from elsewhere"
        );
        let served = std::str::from_utf8(&SERVED_REDOC).unwrap();
        assert!(!served.contains("cdn.redoc.ly"));
        assert_eq!(
            served.len(),
            REDOC.len() - REDOC_LOGO.len() + "data:,".len()
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        assert!(PAGE.contains(r#"<script src="/api/docs/redoc.standalone.js">"#));
        assert!(PAGE.contains(r#"spec-url="/api/openapi.json""#));
        for attr in ["src=\"", "href=\"", "spec-url=\""] {
            for (i, _) in PAGE.match_indices(attr) {
                let url = &PAGE[i + attr.len()..];
                assert!(
                    url.starts_with('/'),
                    "{attr}{} is not on this server",
                    &url[..20.min(url.len())]
                );
                assert!(!url.starts_with("//"));
            }
        }
    }
}
