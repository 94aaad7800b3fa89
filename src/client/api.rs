//! The server's HTTP API as the client uses it: one reqwest client, the session token, and
//! the server's error body turned into `ClientError::Server`.

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ClientError, Result};
use super::session::Target;

/// A request that is not a stream: an api answers in milliseconds, so a minute is a server
/// that is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The events endpoint sends a comment every 15 s: this long without a byte is a dead
/// connection, which the follower replaces.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

pub struct Api {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

/// `202` of `POST /api/tasks`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub task_id: Uuid,
}

/// What `GET /api/tasks/{id}/events` opened.
pub enum Opened {
    /// An SSE response: the events after the cursor, then live ones.
    Stream(Response),
    /// `204`: the task has ended and nothing follows the cursor.
    Ended,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl Api {
    pub fn new(target: Target) -> Result<Api> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(STREAM_READ_TIMEOUT)
            .user_agent(concat!("troupe-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::local("starting the HTTP client", e))?;
        Ok(Api {
            http,
            server: target.server,
            token: target.token,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Fails before anything is sent when there is no token to send.
    pub fn require_token(&self) -> Result<&str> {
        self.token.as_deref().ok_or_else(|| {
            ClientError::Usage(format!(
                "not logged in to {}: run `troupe login` (or set TROUPE_TOKEN)",
                self.server
            ))
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> Result<RequestBuilder> {
        let token = self.require_token()?;
        Ok(self
            .http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(token))
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<String> {
        #[derive(Deserialize)]
        struct Session {
            token: String,
        }
        let request = self
            .http
            .post(format!("{}/api/auth/login", self.server))
            .json(&json!({"email": email, "password": password}));
        let session: Session = self.json(request).await?;
        Ok(session.token)
    }

    /// Submits a task. The same `Idempotency-Key` on every try, so a try whose answer was
    /// lost cannot make a second task.
    pub async fn submit(&self, body: &Value) -> Result<Accepted> {
        let key = Uuid::new_v4().to_string();
        let mut tries = 0;
        loop {
            tries += 1;
            let request = self
                .request(reqwest::Method::POST, "/api/tasks")?
                .header("Idempotency-Key", &key)
                .json(body);
            match self.json(request).await {
                Err(e) if e.is_transient() && tries < 3 => {
                    tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                }
                answer => return answer,
            }
        }
    }

    /// `GET` of a JSON resource: its body as sent (to print with `--json`) and parsed.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(String, T)> {
        let request = self.request(reqwest::Method::GET, path)?;
        let text = self.text(request).await?;
        let parsed = serde_json::from_str(&text).map_err(|e| self.protocol(e))?;
        Ok((text, parsed))
    }

    /// `POST` of a control request with an optional JSON body; the answer's JSON.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut request = self.request(reqwest::Method::POST, path)?;
        if let Some(body) = body {
            request = request.json(body);
        }
        self.json(request).await
    }

    /// Ends the session on the server: its token, and the stream URLs minted from it,
    /// are refused from now on.
    pub async fn logout(&self) -> Result<()> {
        let request = self.request(reqwest::Method::POST, "/api/auth/logout")?;
        self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        Ok(())
    }

    /// Deletes a task; `true` when it was running and goes once its worker has stopped it.
    pub async fn delete_task(&self, task_id: Uuid) -> Result<bool> {
        let request = self.request(reqwest::Method::DELETE, &format!("/api/tasks/{task_id}"))?;
        let response = self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        Ok(response.status() == reqwest::StatusCode::ACCEPTED)
    }

    /// The task's log as it is now (`Accept: application/x-ndjson`), for streaming out.
    pub async fn export(&self, task_id: Uuid) -> Result<Response> {
        let request = self
            .request(
                reqwest::Method::GET,
                &format!("/api/tasks/{task_id}/events"),
            )?
            .header("Accept", "application/x-ndjson");
        self.send(request).await
    }

    /// Opens the task's SSE stream after `after` (the seq of the last event received).
    pub async fn open_events(&self, task_id: Uuid, after: u64) -> Result<Opened> {
        let request = self
            .request(
                reqwest::Method::GET,
                &format!("/api/tasks/{task_id}/events"),
            )?
            .header("Accept", "text/event-stream")
            .header("Last-Event-ID", after.to_string());
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Opened::Ended);
        }
        Ok(Opened::Stream(response))
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let text = self.text(request).await?;
        serde_json::from_str(&text).map_err(|e| self.protocol(e))
    }

    async fn text(&self, request: RequestBuilder) -> Result<String> {
        let response = self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        response.text().await.map_err(|e| self.unreachable(&e))
    }

    /// Sends the request; a non-2xx answer becomes the server's error.
    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Server {
                status,
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => ClientError::Server {
                status,
                code: "http_error".into(),
                message: format!(
                    "{} answered HTTP {status} without a Troupe error body",
                    self.server
                ),
            },
        })
    }

    pub fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            server: self.server.clone(),
            reason: describe(error),
        }
    }

    fn protocol(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            server: self.server.clone(),
            reason: error.to_string(),
        }
    }
}

/// The error and its causes on one line: reqwest's own text alone ("error sending request")
/// does not say that the connection was refused.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
