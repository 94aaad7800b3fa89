//! One delivery at a time through `Worker::process_one`, on the embedded backends: what a
//! panic in an agent does to its task and to the worker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use troupe_events::{
    AgentDef, BackendConfig, Backends, Dispatch, ExecutionMode, NewTask, TaskSpec,
};
use troupe_worker::providers::{
    Chunk, CompletionRequest, Provider, ProviderError, ProviderSettings, Providers, TextStream,
};
use troupe_worker::{Outcome, Worker, WorkerConfig};
use uuid::Uuid;

/// Answers like an LLM, except for `qa`, whose call panics (a bug in a provider adapter),
/// and `backend`, whose stream panics after its first words.
struct Buggy;

#[async_trait]
impl Provider for Buggy {
    async fn stream(&self, request: &CompletionRequest) -> Result<TextStream, ProviderError> {
        match request.agent_role.as_str() {
            "qa" => panic!("index out of bounds in the qa adapter"),
            "backend" => Ok(futures::stream::iter(0..3)
                .map(|i| {
                    assert!(i < 1, "the stream broke an invariant");
                    Ok(Chunk::Text("words ".to_string()))
                })
                .boxed()),
            _ => Ok(futures::stream::iter([Ok(Chunk::Text("fine".to_string()))]).boxed()),
        }
    }

    fn model(&self, _: Option<&str>) -> String {
        "buggy".into()
    }
}

async fn backends() -> Backends {
    Backends::connect(&BackendConfig {
        ephemeral: true,
        ..BackendConfig::default()
    })
    .await
    .unwrap()
}

async fn submit(backends: &Backends, roles: &[&str], mode: ExecutionMode) -> Uuid {
    let store = &backends.store;
    let owner = match store.user_by_email("p@example.com").await.unwrap() {
        Some(user) => user,
        None => store.create_user("p@example.com", "x").await.unwrap(),
    };
    let task = NewTask {
        id: Uuid::now_v7(),
        owner_id: owner.id,
        spec: TaskSpec {
            budget: None,
            fallback: None,
            timeout_secs: None,
            title: "t".into(),
            description: "d".into(),
            agents: roles
                .iter()
                .map(|r| AgentDef {
                    role: r.to_string(),
                    name: r.to_string(),
                    description: String::new(),
                    prompt: String::new(),
                })
                .collect(),
            execution_mode: mode,
            provider: "simulated".into(),
            model: None,
            provider_options: Default::default(),
        },
        idempotency_key: None,
        request_hash: "h".into(),
        active_limit: None,
    };
    let id = store.create_task(&task).await.unwrap().task().id;
    backends
        .queue
        .enqueue(Dispatch {
            task_id: id,
            seq: 1,
        })
        .await
        .unwrap();
    id
}

async fn kinds(backends: &Backends, task_id: Uuid) -> Vec<(String, String)> {
    backends
        .store
        .events_after(task_id, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap();
            let detail = v["agentRole"].as_str().unwrap_or_default().to_string()
                + v["error"].as_str().unwrap_or_default();
            (e.kind.clone(), detail)
        })
        .collect()
}

#[tokio::test]
async fn a_panicking_agent_fails_alone_and_the_worker_carries_on() {
    let backends = backends().await;
    let providers = Providers::from_settings(&ProviderSettings::default())
        .replacing("simulated", Arc::new(Buggy));
    let worker = Worker::new(backends.clone(), providers, WorkerConfig::default());

    let parallel = submit(
        &backends,
        &["tech-lead", "qa", "backend"],
        ExecutionMode::Parallel,
    )
    .await;
    let delivery = backends
        .queue
        .next(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let outcome = worker.process_one(delivery, CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Finished { failed: true });
    let log = kinds(&backends, parallel).await;
    let errors: Vec<&(String, String)> = log.iter().filter(|(k, _)| k == "agent_error").collect();
    assert_eq!(errors.len(), 2, "{log:?}");
    assert!(
        errors
            .iter()
            .all(|(_, d)| d.contains("stopped unexpectedly")),
        "{errors:?}"
    );
    assert!(log.contains(&("agent_complete".into(), "tech-lead".into())));
    assert_eq!(log.last().unwrap().0, "task_error");

    // The slot is whole again: the next task runs as usual.
    let next = submit(&backends, &["tech-lead"], ExecutionMode::Sequential).await;
    let delivery = backends
        .queue
        .next(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        worker.process_one(delivery, CancellationToken::new()).await,
        Outcome::Finished { failed: false }
    );
    assert_eq!(
        kinds(&backends, next).await.last().unwrap().0,
        "task_complete"
    );
}
