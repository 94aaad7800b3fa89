//! The api's OpenAPI 3.1 document. Each handler describes itself with `#[utoipa::path]` and
//! `crate::endpoints` registers it with `routes!`, so no route is served undocumented; this
//! module holds what no single handler says: the overview, the security schemes, and every
//! error code with its status and meaning.

use std::collections::BTreeMap;
use std::fmt::Write;

use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, OpenApi, Ref, RefOr, Type};

/// Every code an error answer can carry: `(code, status, meaning)`. A code is answered
/// with one status only. The api's sources are checked against this list by a test, so a
/// new code fails the build until it is described here.
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    ("invalid_json", 400, "The body is not valid JSON."),
    (
        "invalid_text",
        400,
        "A string in the body holds the NUL character (`\\u0000`).",
    ),
    (
        "invalid_client_address",
        400,
        "The proxy in front did not give the client's address (`TROUPE_CLIENT_IP_HEADER`).",
    ),
    (
        "too_many_attempts_address",
        429,
        "Too many sign-ups or sign-ins from this address; see `Retry-After`.",
    ),
    (
        "too_many_attempts_account",
        429,
        "Too many sign-ins on this account; see `Retry-After`.",
    ),
    (
        "too_many_submits",
        429,
        "You submitted more tasks this minute than `TROUPE_SUBMITS_PER_MINUTE`; see `Retry-After`.",
    ),
    (
        "auth_busy",
        429,
        "Too many password checks at once; see `Retry-After`.",
    ),
    (
        "invalid_idempotency_key",
        400,
        "`Idempotency-Key` is empty or longer than 255 characters.",
    ),
    ("invalid_limit", 400, "`limit` is not between 1 and 100."),
    ("invalid_days", 400, "`days` is not between 1 and 90."),
    ("invalid_hours", 400, "`hours` is not between 1 and 720."),
    ("invalid_window", 400, "`hours` and `days` were both given."),
    (
        "invalid_query",
        400,
        "The query string does not parse, e.g. `before` is not a task id.",
    ),
    (
        "invalid_cursor",
        400,
        "`Last-Event-ID` or `after` is not a whole number.",
    ),
    (
        "cursor_out_of_range",
        400,
        "The cursor is beyond the task's last event.",
    ),
    ("invalid_path", 400, "A path segment is not valid text."),
    (
        "unauthorized",
        401,
        "No token, or a malformed, expired or wrong-scope one; or a wrong email or password.",
    ),
    (
        "task_not_found",
        404,
        "No such task: missing, a malformed id, another user's task, or a stream token for another task.",
    ),
    (
        "agent_not_found",
        404,
        "The task has no agent of that role.",
    ),
    ("not_found", 404, "No such endpoint."),
    (
        "method_not_allowed",
        405,
        "The endpoint does not accept that method.",
    ),
    (
        "email_taken",
        409,
        "An account with this email already exists; log in instead.",
    ),
    (
        "already_exists",
        409,
        "What the request would create exists already.",
    ),
    ("task_finished", 409, "The task has already ended."),
    (
        "agent_not_running",
        409,
        "Only a running agent can be cancelled.",
    ),
    ("task_not_paused", 409, "The task is not paused."),
    (
        "task_not_finished",
        409,
        "Only a failed or cancelled task can be retried; this one is queued, running or paused.",
    ),
    (
        "nothing_to_retry",
        409,
        "No agent of the task failed or was cancelled.",
    ),
    (
        "agent_succeeded",
        409,
        "A named agent completed; only failed or cancelled agents are retried.",
    ),
    (
        "agent_not_retryable",
        409,
        "A named agent has not run yet; it runs when the task is retried.",
    ),
    (
        "task_busy",
        409,
        "The task kept changing while the request was handled; try again.",
    ),
    (
        "body_too_large",
        413,
        "The body is larger than the server accepts (`TROUPE_MAX_BODY_BYTES`).",
    ),
    (
        "unsupported_media_type",
        415,
        "Send the body with `Content-Type: application/json`.",
    ),
    (
        "invalid_body",
        422,
        "A field of the body has the wrong JSON type, or the body has the wrong shape.",
    ),
    ("missing_description", 422, "`description` is required."),
    (
        "description_too_long",
        422,
        "`description` is longer than 20,000 characters.",
    ),
    (
        "title_too_long",
        422,
        "`title` is longer than 200 characters.",
    ),
    ("no_agents", 422, "`selectedAgents` names no agent."),
    ("too_many_agents", 422, "A team has at most 20 agents."),
    (
        "unknown_agent",
        422,
        "An agent role is not in the catalogue (submit) or not in the task (retry).",
    ),
    ("duplicate_agent", 422, "An agent is selected twice."),
    (
        "invalid_execution_mode",
        422,
        "`executionMode` is neither `sequential` nor `parallel`.",
    ),
    ("unknown_provider", 422, "No such provider."),
    (
        "provider_not_configured",
        422,
        "Not every live worker serves the provider, or no worker is running (see `GET /api/providers`).",
    ),
    (
        "invalid_model",
        422,
        "`model` is longer than 200 characters.",
    ),
    (
        "invalid_provider_options",
        422,
        "`providerOptions` is not a JSON object, or not what the provider (or the fallback) takes: a number `temperature` and a positive whole `maxTokens` for the HTTP providers; types, ranges and an answer of at most `TROUPE_SIMULATED_MAX_ANSWER_SECS` (5 minutes) for the simulated one.",
    ),
    (
        "invalid_timeout",
        422,
        "`timeoutSecs` is not between 1 and the server's `TROUPE_MAX_TASK_SECS`.",
    ),
    (
        "invalid_budget",
        422,
        "`budget` is not an object of a positive `maxTokens` and/or a positive `maxCostUsd`.",
    ),
    (
        "invalid_fallback",
        422,
        "`fallback` is not an object of a `provider` and an optional `model`, or names the task's own provider and model.",
    ),
    (
        "idempotency_key_reused",
        422,
        "This `Idempotency-Key` was already used for a different request.",
    ),
    (
        "invalid_email",
        422,
        "`email` is not an address like ada@example.com.",
    ),
    (
        "invalid_password",
        422,
        "`password` (or `newPassword`) is not 8 to 1024 characters long.",
    ),
    (
        "wrong_password",
        403,
        "The password given to confirm a change (`currentPassword`, or `password` to delete the account) is not the account's.",
    ),
    (
        "csrf_token_invalid",
        403,
        "A request signed in by the session cookie that changes something did not send the session's CSRF token in `X-CSRF-Token`.",
    ),
    (
        "internal",
        500,
        "Something failed on the server; the details are logged, never returned.",
    ),
    (
        "unavailable",
        503,
        "This process is busy (it serves `TROUPE_MAX_STREAMS` event streams, or its queue is full); try again or another replica.",
    ),
    (
        "shutting_down",
        503,
        "The server began to stop while `POST /api/agents/execute` waited; the task goes on (the message names it).",
    ),
];

/// Endpoints that need a session token.
pub const SIGNED_IN: &[&str] = &["unauthorized", "csrf_token_invalid"];
/// Endpoints that read a JSON body.
pub const JSON_BODY: &[&str] = &[
    "invalid_json",
    "invalid_body",
    "unsupported_media_type",
    "body_too_large",
    "invalid_text",
];
/// Endpoints under `/api/tasks/{id}`.
pub const ONE_TASK: &[&str] = &["task_not_found", "invalid_path"];
/// Endpoints that submit a task.
pub const SUBMIT: &[&str] = &[
    "too_many_submits",
    "invalid_idempotency_key",
    "missing_description",
    "description_too_long",
    "title_too_long",
    "no_agents",
    "too_many_agents",
    "unknown_agent",
    "duplicate_agent",
    "invalid_execution_mode",
    "unknown_provider",
    "provider_not_configured",
    "invalid_model",
    "invalid_provider_options",
    "invalid_budget",
    "invalid_timeout",
    "invalid_fallback",
    "idempotency_key_reused",
    "already_exists",
    "unavailable",
];

/// Declares a type whose `utoipa::IntoResponses` are an endpoint's error answers, for
/// `responses(...)` of its `#[utoipa::path]`: one response per status, listing the codes
/// of the given groups (from [`ERROR_CODES`]); `internal` is always added.
macro_rules! errors {
    ($(#[$meta:meta])* $name:ident = $($codes:expr),+ $(,)?) => {
        $(#[$meta])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::openapi::error_responses(&[$($codes),+])
            }
        }
    };
}
pub(crate) use errors;

fn describe(code: &str) -> (u16, &'static str) {
    ERROR_CODES
        .iter()
        .find(|(c, ..)| *c == code)
        .map(|&(_, status, meaning)| (status, meaning))
        .unwrap_or_else(|| panic!("error code {code:?} is not in openapi::ERROR_CODES"))
}

/// The error responses of an endpoint that can answer the codes of `groups`.
pub fn error_responses(groups: &[&[&str]]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for &code in groups
        .iter()
        .flat_map(|g| g.iter())
        .chain(["internal"].iter())
    {
        let codes = by_status.entry(describe(code).0).or_default();
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| (status.to_string(), RefOr::T(error_response(&codes))))
        .collect()
}

fn error_response(codes: &[&str]) -> Response {
    let mut description = String::new();
    for &code in codes {
        let _ = writeln!(description, "- `{code}`: {}", describe(code).1);
    }
    let examples = codes.iter().map(|&code| {
        let body = serde_json::json!({"error": {"code": code, "message": describe(code).1}});
        (code, ExampleBuilder::new().value(Some(body)).build())
    });
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .examples_from_iter(examples)
        .build();
    let mut response = ResponseBuilder::new()
        .description(description.trim_end())
        .content("application/json", content);
    if codes.contains(&"unauthorized") {
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(Object::with_type(Type::String))
                .description(Some("`Bearer`"))
                .build(),
        );
    }
    response.build()
}

/// The document's frame; `crate::endpoints` adds every path to it.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Troupe API", license(name = "Apache-2.0", identifier = "Apache-2.0")),
    modifiers(&Overview),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "auth", description = "Accounts and session tokens."),
        (name = "catalogue", description = "The agents a team can have and the LLM providers a task can run on."),
        (name = "tasks", description = "Submitting tasks and reading what they did."),
        (name = "events", description = "A task's event log: live over Server-Sent Events, or exported as NDJSON."),
        (name = "control", description = "Cancelling, pausing, resuming and retrying a task."),
        (name = "usage", description = "What your tasks used over the last days: the usage page's figures."),
        (name = "health", description = "Probes for load balancers and orchestrators, and Prometheus metrics."),
        (name = "reference", description = "This document and its rendered page."),
    )
)]
pub struct ApiDoc;

const OVERVIEW: &str = "\
Troupe runs a task through a team of AI agents and streams every step live. Every step \
(an agent starting, streamed text, an agent finishing or failing, the task ending) is an \
event appended to the task's ordered log; the log can be followed live, replayed from any \
point and exported.

## Signing in

`POST /api/auth/register` and `POST /api/auth/login` return a session token; send it as \
`Authorization: Bearer <token>`. A task's `streamUrl` carries a second, narrower token \
that reads that task's events and nothing else, so that a browser's `EventSource` (which \
cannot send headers) can follow the task and reconnect with a plain URL.

## Following a task

`GET /api/tasks/{id}/events` (and `POST /api/agents/execute/stream`) answer with \
Server-Sent Events, one per stored event:

```
id: 7
event: agent_complete
data: {\"seq\":7,\"taskId\":\"…\",\"at\":\"…\",\"type\":\"agent_complete\",…}
```

`id` is the event's `seq` (1, 2, 3… with no holes), `event` its `type`, `data` the event \
as JSON (the `Event` schema). A reconnect with `Last-Event-ID` (or `?after=`) resumes after \
that seq; nothing is lost or repeated. A comment line (`:`) is sent every 15 s. The stream \
ends after the task's terminal event (`task_complete`, `task_error` or `task_cancelled`); a \
reconnect to a finished task with nothing left is answered `204`, which makes an \
`EventSource` stop. A newer server may write event types this document does not list: \
pass them through.

## Idempotency

An `Idempotency-Key` header on a submit makes a repeated request return the task made the \
first time (`202` with `Idempotent-Replayed: true`); the same key with a different body \
is refused (`422 idempotency_key_reused`).

## Errors

Every error answer is `{\"error\": {\"code\", \"message\"}}` with its status. `code` is \
stable and meant for programs; `message` is meant for a person. A refused request stores \
nothing. Each operation lists the codes it can answer with; all of them:
";

/// The overview with the table of every error code, and the two ways to authenticate.
struct Overview;

impl utoipa::Modify for Overview {
    fn modify(&self, openapi: &mut OpenApi) {
        let mut description = OVERVIEW.to_string();
        description.push_str("\n| status | code | meaning |\n| --- | --- | --- |\n");
        let mut codes = ERROR_CODES.to_vec();
        codes.sort_by_key(|&(_, status, _)| status);
        for (code, status, meaning) in codes {
            let _ = writeln!(description, "| {status} | `{code}` | {meaning} |");
        }
        openapi.info.description = Some(description);

        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The session token from `POST /api/auth/login` or `/api/auth/register`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "streamToken",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The token in a task's `streamUrl`: reads that task's events only.",
            ))),
        );
    }
}

/// The document of a router whose every route is in: what needs all the schemas.
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    tagged_titles(&mut openapi);
    openapi
}

/// Redoc labels the variants of a `oneOf` by their titles: each variant of an internally
/// tagged enum (`EventBody`) gets its tag, e.g. `task_created`. utoipa titles only some of
/// them (not a variant with a flattened field), so the document does it for all.
fn tagged_titles(openapi: &mut OpenApi) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    for schema in components.schemas.values_mut() {
        let RefOr::T(Schema::OneOf(one_of)) = schema else {
            continue;
        };
        for variant in &mut one_of.items {
            if let RefOr::T(variant) = variant
                && let Some(tag) = tag(variant)
            {
                match variant {
                    Schema::Object(object) => object.title = Some(tag),
                    Schema::AllOf(all_of) => all_of.title = Some(tag),
                    _ => {}
                }
            }
        }
    }
}

/// The one value a variant's `type` property may have.
fn tag(variant: &Schema) -> Option<String> {
    match variant {
        Schema::Object(object) => match object.properties.get("type")? {
            RefOr::T(Schema::Object(property)) => match property.enum_values.as_deref()? {
                [serde_json::Value::String(tag)] => Some(tag.clone()),
                _ => None,
            },
            _ => None,
        },
        Schema::AllOf(all_of) => all_of.items.iter().find_map(|part| match part {
            RefOr::T(part) => tag(part),
            RefOr::Ref(_) => None,
        }),
        _ => None,
    }
}

/// The whole document, as `/api/openapi.json` serves it.
pub fn document() -> OpenApi {
    finish(crate::endpoints().into_openapi())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::*;

    const REGENERATE: &str = "TROUPE_UPDATE_OPENAPI=1 cargo nextest run -p troupe-api openapi";

    fn generated() -> String {
        format!("{}\n", document().to_pretty_json().unwrap())
    }

    fn json() -> Value {
        serde_json::from_str(&generated()).unwrap()
    }

    /// `docs/openapi.json` is the contract clients read and review: it must be what this
    /// code serves. `TROUPE_UPDATE_OPENAPI=1` writes it instead of comparing.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = generated();
        if std::env::var("TROUPE_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let (line, (ours, theirs)) = generated
                .lines()
                .chain(std::iter::repeat(""))
                .zip(committed.lines().chain(std::iter::repeat("")))
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .unwrap_or((0, ("", "")));
            panic!(
                "docs/openapi.json is not the document this code generates; first difference at line {}:\n  generated: {ours}\n  committed: {theirs}\nregenerate it with `{REGENERATE}` and commit it",
                line + 1
            );
        }
    }

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The string literal right after `at`, when it looks like an error code.
    fn code_at(text: &str) -> Option<&str> {
        let rest = text.trim_start().strip_prefix('"')?;
        let code = &rest[..rest.find('"')?];
        let well_formed =
            !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        well_formed.then_some(code)
    }

    /// Every error code written in the api's sources: the `code` of an `ApiError`, the
    /// first argument of `ApiError::invalid` / `bad_request` (and of `guard.rs`'s
    /// `limited`), and the codes that `error.rs` and `extract.rs` spell out in their matches.
    fn codes_in_sources() -> BTreeSet<String> {
        let mut files = vec![];
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut codes = BTreeSet::new();
        for file in files {
            if file.ends_with("openapi.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let name = file.file_name().unwrap().to_str().unwrap();
            let mut markers = vec!["code:", "invalid(", "bad_request("];
            match name {
                "error.rs" => markers.push("=>"),
                "extract.rs" => markers.push("("),
                "guard.rs" => markers.push("limited("),
                _ => {}
            }
            for marker in markers {
                for (i, _) in text.match_indices(marker) {
                    if let Some(code) = code_at(&text[i + marker.len()..]) {
                        codes.insert(code.to_string());
                    }
                }
            }
        }
        codes
    }

    #[test]
    fn every_error_code_of_the_api_is_described() {
        let in_sources = codes_in_sources();
        let described: BTreeSet<String> = ERROR_CODES.iter().map(|(c, ..)| c.to_string()).collect();
        assert!(
            in_sources.len() > 30,
            "the scan of api/src found only {in_sources:?}: has the way codes are written changed?"
        );
        let undescribed: Vec<_> = in_sources.difference(&described).collect();
        assert!(
            undescribed.is_empty(),
            "error codes answered by the api but missing from openapi::ERROR_CODES: {undescribed:?}"
        );
        let stale: Vec<_> = described.difference(&in_sources).collect();
        assert!(
            stale.is_empty(),
            "openapi::ERROR_CODES describes codes the api never answers: {stale:?}"
        );
        let document = generated();
        for (code, ..) in ERROR_CODES {
            assert!(
                document.contains(&format!("`{code}`")),
                "{code} is not in the document"
            );
        }
        let mut seen = BTreeSet::new();
        assert!(
            ERROR_CODES.iter().all(|(code, ..)| seen.insert(code)),
            "a code is described twice"
        );
    }

    /// Codes answered by one endpoint are listed in that endpoint's responses; only the
    /// router's own answers (no such route or method) are listed once, in the overview.
    #[test]
    fn every_error_code_belongs_to_an_operation() {
        let doc = json();
        let mut listed = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                let infallible =
                    ["health", "reference"].contains(&operation["tags"][0].as_str().unwrap());
                assert!(
                    infallible || responses.contains_key("500"),
                    "{method} {path} does not list its 500"
                );
                for (status, response) in responses {
                    let examples = &response["content"]["application/json"]["examples"];
                    for example in examples.as_object().into_iter().flat_map(|e| e.values()) {
                        let code = example["value"]["error"]["code"].as_str().unwrap();
                        let (expected, _) = describe(code);
                        assert_eq!(status, &expected.to_string(), "{method} {path}: {code}");
                        listed.insert(code.to_string());
                    }
                }
            }
        }
        let unlisted: Vec<_> = ERROR_CODES
            .iter()
            .map(|(code, ..)| *code)
            .filter(|code| !listed.contains(*code))
            .collect();
        assert_eq!(unlisted, ["not_found", "method_not_allowed"]);
    }

    #[test]
    fn every_operation_is_described() {
        let doc = json();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let name = format!("{method} {path}");
                assert!(operation["summary"].is_string(), "{name} has no summary");
                assert!(operation["tags"][0].is_string(), "{name} has no tag");
                let success = operation["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|status| status.starts_with('2'));
                assert!(success, "{name} has no successful response");
                let params: Vec<&str> = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                let in_template: Vec<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(params, in_template, "{name}: path parameters");
                let public = ["auth", "health", "reference"];
                if !public.contains(&operation["tags"][0].as_str().unwrap()) {
                    assert!(
                        operation["security"].is_array(),
                        "{name} states no security"
                    );
                }
            }
        }
    }

    /// The event schemas: every type a client can meet on the wire, each with its fields
    /// in their wire names.
    #[test]
    fn the_event_stream_is_described() {
        let doc = json();
        let events = &doc["paths"]["/api/tasks/{id}/events"]["get"]["responses"]["200"]["content"];
        for media in ["text/event-stream", "application/x-ndjson"] {
            assert_eq!(
                events[media]["schema"]["$ref"],
                "#/components/schemas/Event"
            );
        }
        let stream =
            &doc["paths"]["/api/agents/execute/stream"]["post"]["responses"]["200"]["content"];
        assert_eq!(
            stream["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/ExecuteFrame"
        );
        let body = &doc["components"]["schemas"]["EventBody"];
        let mut types = BTreeSet::new();
        for variant in body["oneOf"].as_array().unwrap() {
            let kind = variant_type(variant, &doc);
            // Redoc labels the variants by title.
            assert_eq!(variant["title"], kind.as_str(), "the title of {kind}");
            types.insert(kind);
        }
        let expected: BTreeSet<String> = [
            "task_created",
            "task_resumed",
            "agent_start",
            "agent_progress",
            "agent_token",
            "agent_complete",
            "agent_error",
            "agent_cancelled",
            "agent_usage",
            "agent_failover",
            "task_complete",
            "task_error",
            "task_cancelled",
            "task_paused",
            "task_unpaused",
            "task_retried",
            "task_released",
        ]
        .map(String::from)
        .into();
        assert_eq!(types, expected);
    }

    /// The `type` a variant of a tagged enum's schema fixes.
    fn variant_type(variant: &Value, doc: &Value) -> String {
        if let Some(kind) = variant["properties"]["type"]["enum"][0].as_str() {
            return kind.to_string();
        }
        for part in variant["allOf"].as_array().into_iter().flatten() {
            let part = match part["$ref"].as_str() {
                Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
                None => part,
            };
            if let Some(kind) = part["properties"]["type"]["enum"][0].as_str() {
                return kind.to_string();
            }
        }
        panic!("a variant of EventBody fixes no type: {variant}");
    }
}
