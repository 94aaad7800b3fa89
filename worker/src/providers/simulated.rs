//! A provider that calls no LLM: it writes plausible, deterministic Markdown for the agent's
//! role, so Troupe can be tried, demoed and tested offline. Same request, same text.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::{Chunk, CompletionRequest, Provider, ProviderError, TextStream, TokenCounts, options};
use troupe_events::UsageSource;
use troupe_events::providers::simulated::{
    DEFAULT_LATENCY_MS, DEFAULT_TOKENS, LATENCY_MS, MAX_ANSWER_MS, TOKENS,
};

/// Options it reads from `providerOptions`: `tokens` (chunks to stream, 1..=2000, default
/// 24), `latencyMs` (pause between chunks, 0..=10000, default 40), `failAgents` (roles
/// whose answer breaks off halfway, to try error handling) and `failAttempts` (how many
/// attempts of those roles fail, default all: 1 lets a retry succeed).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatedProvider;

#[derive(Debug, PartialEq, Eq)]
struct Settings {
    chunks: usize,
    latency: Duration,
    fail: bool,
}

impl Settings {
    fn read(request: &CompletionRequest) -> Result<Settings, ProviderError> {
        let chunks = options::integer(&request.options, "tokens")?
            .unwrap_or(DEFAULT_TOKENS)
            .clamp(*TOKENS.start(), *TOKENS.end()) as usize;
        let latency_ms = options::integer(&request.options, "latencyMs")?
            .unwrap_or(DEFAULT_LATENCY_MS)
            .clamp(*LATENCY_MS.start(), *LATENCY_MS.end())
            .min(MAX_ANSWER_MS / chunks as i64) as u64;
        let failing_attempts = options::positive_integer(&request.options, "failAttempts")?;
        let fail = options::string_list(&request.options, "failAgents")?
            .unwrap_or_default()
            .iter()
            .any(|role| role == &request.agent_role)
            && failing_attempts.is_none_or(|n| u64::from(request.attempt) <= n);
        Ok(Settings {
            chunks,
            latency: Duration::from_millis(latency_ms),
            fail,
        })
    }
}

impl SimulatedProvider {
    /// The whole answer the stream spells out.
    pub fn text(request: &CompletionRequest) -> String {
        let topic = topic(&request.prompt);
        let title = title(&request.agent_role);
        let (intro, bullets) = role_content(&request.agent_role, &topic);
        let mut out = String::new();
        out.push_str("> Simulated output (no LLM was called).\n\n");
        out.push_str(&format!("## {title}: {topic}\n\n"));
        out.push_str(&intro);
        out.push_str("\n\n");
        for bullet in bullets {
            out.push_str(&format!("- {bullet}\n"));
        }
        if let Some((info, code)) = code_block(request, &topic) {
            out.push_str(&format!("\n```{info}\n{code}```\n"));
        }
        out.push_str(&format!(
            "\nThis is placeholder text from the simulated provider; configure a real provider \
             to get an actual answer from the {} agent.\n",
            request.agent_role
        ));
        out
    }
}

#[async_trait]
impl Provider for SimulatedProvider {
    async fn stream(&self, request: &CompletionRequest) -> Result<TextStream, ProviderError> {
        let settings = Settings::read(request)?;
        let mut chunks = split(&SimulatedProvider::text(request), settings.chunks);
        let failure = settings.fail.then(|| {
            chunks.truncate(chunks.len() / 2);
            ProviderError::permanent(format!(
                "simulated failure for agent {} (requested by providerOptions.failAgents)",
                request.agent_role
            ))
        });
        if let (Some(failure), true) = (&failure, chunks.is_empty()) {
            return Err(failure.clone());
        }
        let usage = TokenCounts {
            source: UsageSource::Simulated,
            input_tokens: Some(
                estimated_tokens(&request.system) + estimated_tokens(&request.prompt),
            ),
            output_tokens: Some(estimated_tokens(&chunks.concat())),
        };
        let latency = settings.latency;
        let items = chunks
            .into_iter()
            .map(|text| Ok(Chunk::Text(text)))
            .chain(std::iter::once(Ok(Chunk::Usage(usage))))
            .chain(failure.map(Err));
        Ok(futures::stream::iter(items.enumerate())
            .then(move |(i, item)| async move {
                // A pause before each piece of text after the first, as a model streams.
                let text = matches!(item, Ok(Chunk::Text(_)));
                if i > 0 && text && !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                item
            })
            .boxed())
    }

    fn model(&self, requested: Option<&str>) -> String {
        requested.unwrap_or("simulated").to_string()
    }
}

/// About four characters a token, as for English text with common tokenizers: plausible
/// figures for a demo, labelled `simulated` wherever they appear.
fn estimated_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// `n` pieces of nearly equal length (fewer when the text is shorter), cut on characters.
fn split(text: &str, n: usize) -> Vec<String> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let chars = bounds.len() - 1;
    let n = n.clamp(1, chars.max(1));
    (0..n)
        .map(|k| text[bounds[k * chars / n]..bounds[(k + 1) * chars / n]].to_string())
        .filter(|piece| !piece.is_empty())
        .collect()
}

/// The task in one line: the prompt's first non-empty line without Markdown markers.
fn topic(prompt: &str) -> String {
    let line = prompt
        .lines()
        .map(|l| l.trim().trim_start_matches(['#', '>', '-', '*']).trim())
        // The worker's prompt opens with "# Task: <title>": the title is the topic.
        .map(|l| l.strip_prefix("Task:").map_or(l, str::trim))
        .find(|l| !l.is_empty())
        .unwrap_or("the task");
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", line[..cut].trim_end()),
        None => line.to_string(),
    }
}

fn title(role: &str) -> String {
    let words: Vec<String> = role
        .split(['-', '_', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        })
        .collect();
    if words.is_empty() {
        "Agent".into()
    } else {
        words.join(" ")
    }
}

fn role_content(role: &str, topic: &str) -> (String, Vec<String>) {
    let (intro, bullets): (String, &[&str]) = match role {
        "tech-lead" => (
            format!("Plan for \"{topic}\": a small, boring architecture first, then iterate."),
            &[
                "**Architecture:** a web client talking to one HTTP API backed by a relational database.",
                "**Order of work:** data model, API, UI, then tests and deployment.",
                "**Risk:** unclear requirements; settle them with the product manager before building.",
                "**Risk:** scope creep; ship the smallest useful version first.",
            ],
        ),
        "product-manager" => (
            format!("User stories for \"{topic}\"."),
            &[
                "As a user I can create an item, so that I can keep track of it. *Accepted when* it appears in the list at once.",
                "As a user I can edit and delete my items. *Accepted when* changes survive a reload.",
                "As a user I only see my own data. *Accepted when* another account cannot read it.",
                "**Out of scope:** sharing, notifications and offline mode.",
            ],
        ),
        "frontend" => (
            format!(
                "The interface for \"{topic}\": one page, a form and a list, state kept local."
            ),
            &[
                "`App` owns the list and the draft; children only receive props.",
                "Inputs are labelled and the form works with the keyboard alone.",
                "Loading and error states are shown, never a blank screen.",
            ],
        ),
        "backend" => (
            format!("The service for \"{topic}\": a small JSON API over a single store."),
            &[
                "`POST /items` creates, `GET /items` lists, `PATCH /items/{id}` updates.",
                "Input is validated at the edge; errors come back as `{\"error\": \"…\"}`.",
                "The store sits behind one type so it can move to a database later.",
            ],
        ),
        "qa" => (
            format!("Test plan for \"{topic}\"."),
            &[
                "**Happy path:** create, list, update and delete an item.",
                "**Edge cases:** empty input, very long input, Unicode, duplicate submits.",
                "**Failure modes:** the API is down, slow, or answers with an error.",
                "**Automate first:** the create-and-list flow, end to end.",
            ],
        ),
        "devops" => (
            format!("Delivery plan for \"{topic}\"."),
            &[
                "**Build:** one container image per service, built in CI on every push.",
                "**Deploy:** rolling update behind a health check.",
                "**Monitor:** request rate, error rate and latency, with an alert on errors.",
                "**Roll back:** redeploy the previous image tag.",
            ],
        ),
        "security" => (
            format!("Threats to \"{topic}\" and their mitigations."),
            &[
                "**Authentication:** sessions expire; passwords are hashed with a slow hash.",
                "**Input handling:** validate on the server; escape everything rendered.",
                "**Data exposure:** every query is scoped to the signed-in user.",
                "**Supply chain:** pin and audit dependencies in CI.",
            ],
        ),
        "technical-writer" => (
            format!("Documentation for \"{topic}\"."),
            &[
                "**README:** what it does, how to install it, and a first example.",
                "**Release notes:** what is new, what changed, and how to upgrade.",
                "**Troubleshooting:** the three errors users will meet first.",
            ],
        ),
        _ => (
            format!("Notes on \"{topic}\"."),
            &[
                "Restate the goal and the constraints.",
                "Propose the smallest approach that meets them.",
                "List what is still unknown.",
            ],
        ),
    };
    (intro, bullets.iter().map(|b| b.to_string()).collect())
}

/// `(info string, code)` for roles that write code, so the output carries an artifact.
fn code_block(request: &CompletionRequest, topic: &str) -> Option<(String, String)> {
    let json_literal = serde_json::Value::String(topic.to_string()).to_string();
    match request.agent_role.as_str() {
        "frontend" => Some((
            "tsx src/App.tsx".into(),
            FRONTEND.replace("__TASK__", &json_literal),
        )),
        "backend" => Some((
            "rust src/main.rs".into(),
            BACKEND.replace("__TASK__", &format!("{topic:?}")),
        )),
        role if request.system.to_lowercase().contains("code") => {
            let stem: String = role
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let stem = if stem.trim_matches('_').is_empty() {
                "main".to_string()
            } else {
                stem
            };
            Some((
                format!("python src/{stem}.py"),
                GENERIC.replace("__TASK__", &json_literal),
            ))
        }
        _ => None,
    }
}

const FRONTEND: &str = r#"import { useState } from "react";

const TASK = __TASK__;

export default function App() {
  const [items, setItems] = useState<string[]>([]);
  const [draft, setDraft] = useState("");

  function add(event: React.FormEvent) {
    event.preventDefault();
    const title = draft.trim();
    if (!title) return;
    setItems([...items, title]);
    setDraft("");
  }

  return (
    <main>
      <h1>{TASK}</h1>
      <form onSubmit={add}>
        <input aria-label="New item" value={draft} onChange={(e) => setDraft(e.target.value)} />
        <button type="submit">Add</button>
      </form>
      <ul>
        {items.map((item, i) => (
          <li key={i}>{item}</li>
        ))}
      </ul>
    </main>
  );
}
"#;

const BACKEND: &str = r#"use std::collections::BTreeMap;

const TASK: &str = __TASK__;

#[derive(Debug, Clone)]
struct Item {
    id: u64,
    title: String,
    done: bool,
}

#[derive(Default)]
struct Store {
    next_id: u64,
    items: BTreeMap<u64, Item>,
}

impl Store {
    fn create(&mut self, title: &str) -> Item {
        self.next_id += 1;
        let item = Item { id: self.next_id, title: title.to_string(), done: false };
        self.items.insert(item.id, item.clone());
        item
    }

    fn list(&self) -> Vec<Item> {
        self.items.values().cloned().collect()
    }
}

fn main() {
    let mut store = Store::default();
    store.create(TASK);
    for item in store.list() {
        println!("{} {} {}", item.id, item.title, item.done);
    }
}
"#;

const GENERIC: &str = r#"TASK = __TASK__


def plan(task: str) -> list[str]:
    return [f"Understand: {task}", "Build the smallest working version", "Test it", "Ship it"]


if __name__ == "__main__":
    for step in plan(TASK):
        print("-", step)
"#;

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tokio::time::Instant;

    use super::*;

    fn request(role: &str, options: Value) -> CompletionRequest {
        CompletionRequest {
            agent_role: role.into(),
            attempt: 1,
            system: "You are helpful.".into(),
            prompt: "# Build a todo app\n\nWith accounts.".into(),
            model: None,
            options: options.as_object().unwrap().clone(),
        }
    }

    /// The text pieces and the error of a call; its usage report is checked to come once,
    /// after the text.
    async fn run(request: &CompletionRequest) -> (Vec<String>, Option<ProviderError>) {
        let (chunks, usage, error) = run_with_usage(request).await;
        let usage = usage.expect("a usage report");
        assert_eq!(usage.source, UsageSource::Simulated);
        assert!(usage.input_tokens.unwrap() > 0);
        (chunks, error)
    }

    async fn run_with_usage(
        request: &CompletionRequest,
    ) -> (Vec<String>, Option<TokenCounts>, Option<ProviderError>) {
        let mut stream = SimulatedProvider.stream(request).await.unwrap();
        let (mut chunks, mut usage) = (Vec::new(), None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Chunk::Text(text)) => {
                    assert!(usage.is_none(), "text after the usage report");
                    chunks.push(text)
                }
                Ok(Chunk::Usage(reported)) => {
                    assert!(usage.replace(reported).is_none(), "two usage reports")
                }
                Err(e) => return (chunks, usage, Some(e)),
            }
        }
        (chunks, usage, None)
    }

    #[tokio::test]
    async fn usage_is_labelled_simulated_and_grows_with_the_text() {
        let short = request("qa", json!({"tokens": 2, "latencyMs": 0}));
        let (text, usage, _) = run_with_usage(&short).await;
        let usage = usage.unwrap();
        let chars = text.concat().chars().count() as u64;
        assert_eq!(usage.output_tokens, Some(chars.div_ceil(4)));
        assert_eq!(SimulatedProvider.model(None), "simulated");
        assert_eq!(SimulatedProvider.model(Some("big")), "big");
    }

    #[test]
    fn text_is_deterministic_and_says_it_is_simulated() {
        let a = SimulatedProvider::text(&request("qa", json!({})));
        let b = SimulatedProvider::text(&request("qa", json!({})));
        assert_eq!(a, b);
        assert_eq!(
            a.lines().next(),
            Some("> Simulated output (no LLM was called).")
        );
        assert!(a.contains("## Qa: Build a todo app"), "{a}");
        assert_ne!(a, SimulatedProvider::text(&request("security", json!({}))));
    }

    #[test]
    fn coding_roles_produce_an_artifact() {
        let frontend = SimulatedProvider::text(&request("frontend", json!({})));
        let artifacts = crate::artifacts::extract_artifacts(&frontend);
        assert_eq!(artifacts.len(), 1, "{frontend}");
        assert_eq!(artifacts[0].filename, "src/App.tsx");
        assert!(
            artifacts[0]
                .content
                .contains("const TASK = \"Build a todo app\";")
        );

        let backend = SimulatedProvider::text(&request("backend", json!({})));
        let artifacts = crate::artifacts::extract_artifacts(&backend);
        assert_eq!(artifacts[0].filename, "src/main.rs");

        let mut coder = request("data-eng", json!({}));
        coder.system = "Write the code for the pipeline.".into();
        let artifacts = crate::artifacts::extract_artifacts(&SimulatedProvider::text(&coder));
        assert_eq!(artifacts[0].filename, "src/data_eng.py");

        let qa = SimulatedProvider::text(&request("qa", json!({})));
        assert!(crate::artifacts::extract_artifacts(&qa).is_empty());
    }

    #[test]
    fn hostile_prompts_stay_inside_string_literals() {
        let mut r = request("frontend", json!({}));
        r.prompt = "say \"hi\" ``` and \\ end".into();
        let artifacts = crate::artifacts::extract_artifacts(&SimulatedProvider::text(&r));
        assert!(
            artifacts[0]
                .content
                .contains(r#"const TASK = "say \"hi\" ``` and \\ end";"#)
        );
    }

    #[test]
    fn split_keeps_every_character_and_counts_chunks() {
        let text = "héllo wörld, this is a test";
        for n in [1, 2, 5, 27, 500] {
            let pieces = split(text, n);
            assert_eq!(pieces.concat(), text);
            assert_eq!(pieces.len(), n.min(text.chars().count()));
        }
        assert!(split("", 3).is_empty());
    }

    #[test]
    fn options_are_read_and_clamped() {
        let s = Settings::read(&request("qa", json!({}))).unwrap();
        assert_eq!(
            s,
            Settings {
                chunks: 24,
                latency: Duration::from_millis(40),
                fail: false
            }
        );
        let s = Settings::read(&request(
            "qa",
            json!({"tokens": 99999, "latencyMs": -5, "failAgents": ["dev", "qa"]}),
        ))
        .unwrap();
        assert_eq!(
            s,
            Settings {
                chunks: 2000,
                latency: Duration::ZERO,
                fail: true
            }
        );
        assert_eq!(
            Settings::read(&request("qa", json!({"tokens": 0})))
                .unwrap()
                .chunks,
            1
        );
    }

    #[tokio::test]
    async fn wrong_option_types_are_permanent_errors_naming_the_option() {
        for (options, name) in [
            (json!({"tokens": "many"}), "tokens"),
            (json!({"latencyMs": true}), "latencyMs"),
            (json!({"failAgents": "qa"}), "failAgents"),
        ] {
            let error = SimulatedProvider
                .stream(&request("qa", options))
                .await
                .err()
                .unwrap();
            assert!(!error.transient);
            assert!(
                error.message.contains(&format!("providerOptions.{name}")),
                "{}",
                error.message
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn streams_the_text_in_chunks_with_pauses_between() {
        let r = request("frontend", json!({"tokens": 10, "latencyMs": 100}));
        let started = Instant::now();
        let (chunks, error) = run(&r).await;
        assert_eq!(error, None);
        assert_eq!(chunks.len(), 10);
        assert_eq!(chunks.concat(), SimulatedProvider::text(&r));
        assert_eq!(started.elapsed(), Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn listed_agents_fail_halfway_with_a_permanent_error() {
        let r = request(
            "qa",
            json!({"tokens": 10, "latencyMs": 0, "failAgents": ["qa"]}),
        );
        let (chunks, error) = run(&r).await;
        assert_eq!(chunks.len(), 5);
        assert!(SimulatedProvider::text(&r).starts_with(&chunks.concat()));
        let error = error.expect("an error after half the chunks");
        assert!(!error.transient);
        assert_eq!(
            error.message,
            "simulated failure for agent qa (requested by providerOptions.failAgents)"
        );

        let others = request("tech-lead", json!({"tokens": 10, "failAgents": ["qa"]}));
        assert_eq!(run(&others).await.1, None);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_attempts_lets_a_later_attempt_succeed() {
        let mut r = request(
            "qa",
            json!({"tokens": 4, "latencyMs": 0, "failAgents": ["qa"], "failAttempts": 1}),
        );
        assert!(run(&r).await.1.is_some(), "the first attempt fails");
        r.attempt = 2;
        assert_eq!(run(&r).await.1, None, "the retry succeeds");
    }

    #[tokio::test]
    async fn a_single_chunk_failure_fails_at_the_start() {
        let r = request("qa", json!({"tokens": 1, "failAgents": ["qa"]}));
        assert!(SimulatedProvider.stream(&r).await.is_err());
    }
}
