//! The API reference tells the truth: `/api/openapi.json` is the generated document, the
//! page that renders it is served with its own policy, and real answers (bodies, errors,
//! every event of a run, SSE frames) validate against the document's schemas, with no
//! field the document does not name.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, collect_sse};

const TEAM: [&str; 2] = ["tech-lead", "qa"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_page_are_served() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let base = app.url(0);

    let r = app
        .client
        .get(format!("{base}/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.text().await.unwrap();
    assert_eq!(
        served,
        troupe_api::openapi::document().to_pretty_json().unwrap()
    );

    let r = app
        .client
        .get(format!("{base}/api/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "connect-src 'self'",
        "worker-src blob:",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("/api/docs/redoc.standalone.js")
    );

    let script = format!("{base}/api/docs/redoc.standalone.js");
    let r = app.client.get(&script).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = r.headers()["etag"].clone();
    assert!(r.bytes().await.unwrap().len() > 500_000);
    let again = app
        .client
        .get(&script)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304, "a browser downloads Redoc once");
}

/// Every answer of a task's life, checked against the schema the document gives for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_document() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let doc: Value =
        serde_json::from_str(&troupe_api::openapi::document().to_pretty_json().unwrap()).unwrap();
    let base = app.url(0).to_string();
    let check = Checker { doc: &doc };

    let r = app
        .client
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": format!("{}@example.com", Uuid::new_v4().simple()), "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    let token = check.answer("post", "/api/auth/register", r).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["/api/agents", "/api/providers", "/api/tasks"] {
        check.answer("get", path, app.get(path, &token).await).await;
    }
    for path in ["/healthz", "/readyz"] {
        check.answer("get", path, app.get(path, "-").await).await;
    }

    // A sequential run whose second agent fails: most event types appear.
    let task = json!({
        "description": "Build a todo app",
        "selectedAgents": TEAM,
        "provider": "simulated",
        "providerOptions": {"latencyMs": 0, "tokens": 4, "failAgents": ["qa"], "failAttempts": 1},
        "budget": {"maxTokens": 1_000_000},
    });
    let accepted = check
        .answer(
            "post",
            "/api/tasks",
            app.post("/api/tasks", &token, &task).await,
        )
        .await;
    let id: Uuid = accepted["taskId"].as_str().unwrap().parse().unwrap();
    app.wait_finished(&token, id).await;
    let task_path = format!("/api/tasks/{id}");
    check
        .answer("get", "/api/tasks/{id}", app.get(&task_path, &token).await)
        .await;
    check
        .answer(
            "get",
            "/api/tasks",
            app.get("/api/tasks?limit=1", &token).await,
        )
        .await;

    let retried = app
        .post(
            &format!("{task_path}/retry"),
            &token,
            &json!({"agents": ["qa"]}),
        )
        .await;
    check.answer("post", "/api/tasks/{id}/retry", retried).await;
    app.wait_finished(&token, id).await;

    let log = app.log(&token, id).await;
    let types: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "task_created",
        "agent_start",
        "agent_token",
        "agent_complete",
        "agent_error",
        "agent_usage",
        "task_error",
        "task_retried",
        "task_complete",
    ] {
        assert!(types.contains(&kind), "{kind} in {types:?}");
    }
    let event = check.response_schema(
        "get",
        "/api/tasks/{id}/events",
        "200",
        "application/x-ndjson",
    );
    for e in &log {
        check.valid(&event, e, &format!("event {}", e["type"]));
    }
    let frames = app.read_events(0, &token, id, None, None).await;
    let event = check.response_schema("get", "/api/tasks/{id}/events", "200", "text/event-stream");
    for frame in &frames {
        assert_eq!(frame.event, frame.data["type"]);
        check.valid(&event, &frame.data, &format!("SSE frame {}", frame.event));
    }

    // Errors: the body's schema, and the code listed for that status of that operation.
    check
        .answer(
            "post",
            "/api/tasks/{id}/cancel",
            app.post(&format!("{task_path}/cancel"), &token, &json!({}))
                .await,
        )
        .await;
    check
        .answer(
            "get",
            "/api/tasks/{id}",
            app.get(&format!("/api/tasks/{}", Uuid::now_v7()), &token)
                .await,
        )
        .await;
    check
        .answer(
            "post",
            "/api/tasks",
            app.post("/api/tasks", &token, &json!({"selectedAgents": ["qa"]}))
                .await,
        )
        .await;
    check
        .answer(
            "get",
            "/api/tasks",
            app.get("/api/tasks", "not-a-token").await,
        )
        .await;

    // The original streaming endpoint: its events, then the closing frame.
    let r = app.post("/api/agents/execute/stream", &token, &task).await;
    assert_eq!(r.status(), 200);
    let frames = collect_sse(r, None).await;
    let frame = check.response_schema(
        "post",
        "/api/agents/execute/stream",
        "200",
        "text/event-stream",
    );
    let closing = frames.last().unwrap();
    assert_eq!(closing.event, "error", "qa fails once");
    for f in &frames {
        check.valid(
            &frame,
            &f.data,
            &format!("execute/stream frame {}", f.event),
        );
    }
}

/// The checker itself finds what does not match, or the test above would prove nothing.
#[test]
fn the_checker_finds_mismatches() {
    let doc: Value =
        serde_json::from_str(&troupe_api::openapi::document().to_pretty_json().unwrap()).unwrap();
    let check = Checker { doc: &doc };
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let id = Uuid::now_v7();
    let event = json!({"seq": 2, "taskId": id, "at": "2026-11-25T10:00:00Z", "type": "agent_progress", "agentRole": "qa", "message": "hi"});
    assert_eq!(
        check.problems(&schema("Event"), &event),
        Vec::<String>::new()
    );
    let bad = [
        ("Session", json!({"token": 1})),
        ("Session", json!({"token": "t", "extra": true})),
        ("Session", json!({})),
        (
            "Event",
            json!({"seq": 2, "taskId": id, "at": "x", "type": "agent_thought"}),
        ),
        (
            "Event",
            json!({"seq": 2, "taskId": id, "at": "x", "type": "agent_progress", "agentRole": "qa"}),
        ),
        (
            "Event",
            json!({"seq": -1, "taskId": id, "at": "x", "type": "task_paused", "reason": "r"}),
        ),
        (
            "TaskList",
            json!({"tasks": [{"taskId": id}], "nextCursor": null}),
        ),
        ("ExecuteFrame", json!({"taskId": id, "colour": "blue"})),
    ];
    for (name, value) in bad {
        assert!(
            !check.problems(&schema(name), &value).is_empty(),
            "{value} passed as a {name}"
        );
    }
}

struct Checker<'d> {
    doc: &'d Value,
}

impl Checker<'_> {
    fn operation(&self, method: &str, path: &str) -> &Value {
        let operation = &self.doc["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} is not in the document"
        );
        operation
    }

    fn response_schema(&self, method: &str, path: &str, status: &str, media: &str) -> Value {
        let schema = &self.operation(method, path)["responses"][status]["content"][media]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path}: the document has no {media} body for {status}"
        );
        schema.clone()
    }

    /// Checks a JSON answer against the operation's response for its status; returns it.
    async fn answer(&self, method: &str, path: &str, response: reqwest::Response) -> Value {
        let status = response.status().as_u16().to_string();
        let body: Value = response.json().await.unwrap();
        let what = format!("{method} {path} {status}");
        let schema = self.response_schema(method, path, &status, "application/json");
        self.valid(&schema, &body, &what);
        if let Some(code) = body["error"]["code"].as_str() {
            let examples = &self.operation(method, path)["responses"][&status]["content"]["application/json"]
                ["examples"];
            assert!(
                examples.get(code).is_some(),
                "{what}: {code} is not listed for this status of this operation"
            );
        }
        body
    }

    /// Valid against `schema`, and every field of it named by the document.
    fn valid(&self, schema: &Value, value: &Value, what: &str) {
        let problems = self.problems(schema, value);
        assert!(
            problems.is_empty(),
            "{what} does not match the document:\n  {}\nvalue: {value}",
            problems.join("\n  ")
        );
    }

    fn problems(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut problems = vec![];
        self.errors(schema, value, "$", &mut problems);
        self.undocumented(schema, value, "$", &mut problems);
        problems
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .expect("a local $ref");
                let target = &self.doc["components"]["schemas"][name];
                assert!(target.is_object(), "{r} is not in the document");
                self.resolve(target)
            }
            None => schema,
        }
    }

    fn matches(&self, schema: &Value, value: &Value) -> bool {
        let mut problems = vec![];
        self.errors(schema, value, "$", &mut problems);
        problems.is_empty()
    }

    /// The subset of JSON Schema the document uses: `$ref`, `type`, `enum`, `minimum`,
    /// `properties`, `required`, `additionalProperties: false`, `items`, `allOf`, `oneOf`,
    /// `anyOf`.
    fn errors(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let fits = types.iter().any(|t| match *t {
                "null" => value.is_null(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "number" => value.is_number(),
                "integer" => value.is_i64() || value.is_u64(),
                _ => false,
            });
            if !fits {
                out.push(format!("{at}: {value} is not of type {types:?}"));
                return;
            }
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
            && n < min
        {
            out.push(format!("{at}: {n} is below {min}"));
        }
        if let Some(object) = value.as_object() {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                if !object.contains_key(name) {
                    out.push(format!("{at}: {name} is required"));
                }
            }
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                if let Some(field) = object.get(name) {
                    self.errors(property, field, &format!("{at}.{name}"), out);
                }
            }
            if schema["additionalProperties"] == false {
                for name in object.keys() {
                    if schema["properties"].get(name).is_none() {
                        out.push(format!("{at}.{name} is not allowed"));
                    }
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.errors(items, item, &format!("{at}[{i}]"), out);
            }
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.errors(part, value, at, out);
        }
        if let Some(variants) = schema["oneOf"].as_array() {
            let fitting = variants.iter().filter(|v| self.matches(v, value)).count();
            if fitting != 1 {
                out.push(format!("{at}: {fitting} variants of oneOf match {value}"));
            }
        }
        if let Some(variants) = schema["anyOf"].as_array()
            && !variants.iter().any(|v| self.matches(v, value))
        {
            out.push(format!("{at}: no variant of anyOf matches"));
        }
    }

    /// The properties `schema` declares for `value`, through `$ref`, `allOf` and the
    /// variant of a `oneOf` / `anyOf` that `value` matches.
    fn properties(&self, schema: &Value, value: &Value, out: &mut BTreeMap<String, Value>) {
        let schema = self.resolve(schema);
        for (name, property) in schema["properties"].as_object().into_iter().flatten() {
            out.insert(name.clone(), property.clone());
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.properties(part, value, out);
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(variant) = schema[key]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| self.matches(v, value)))
            {
                self.properties(variant, value, out);
            }
        }
    }

    /// Fields the server sent that the document does not name.
    fn undocumented(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                let mut declared = BTreeMap::new();
                self.properties(schema, value, &mut declared);
                let open = self.resolve(schema)["additionalProperties"].is_object()
                    || (declared.is_empty() && self.resolve(schema)["type"] == "object");
                if open {
                    return;
                }
                for (name, field) in object {
                    match declared.get(name) {
                        Some(property) => {
                            self.undocumented(property, field, &format!("{at}.{name}"), out)
                        }
                        None => out.push(format!("{at}.{name} is not in the document")),
                    }
                }
            }
            Value::Array(items) => {
                let schema = self.item_schema(schema, value);
                if let Some(items_schema) = schema {
                    for (i, item) in items.iter().enumerate() {
                        self.undocumented(&items_schema, item, &format!("{at}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }

    fn item_schema(&self, schema: &Value, value: &Value) -> Option<Value> {
        let schema = self.resolve(schema);
        if let Some(items) = schema.get("items") {
            return Some(items.clone());
        }
        ["oneOf", "anyOf", "allOf"].iter().find_map(|key| {
            schema[*key]
                .as_array()?
                .iter()
                .filter(|v| self.matches(v, value))
                .find_map(|v| self.item_schema(v, value))
        })
    }
}
