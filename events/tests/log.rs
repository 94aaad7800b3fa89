//! The store's and the catch-up subscription's contracts, on both backends: PostgreSQL with
//! NATS (a schema and a subject prefix per test) and SQLite with the in-process bus.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use troupe_events::event::{ErrorStatus, SuccessStatus};
use troupe_events::store::is_last_page;
use troupe_events::task::{AgentDef, TaskSpec};
use troupe_events::{
    AttemptUsage, Bus, Dispatch, Error, Event, EventBody, ExecutionMode, FeedConfig, Feeds,
    MemoryBus, NatsBus, NewTask, PgStore, RawEvent, SqliteStore, Store, Subjects, TokenCounts,
    UsageSource, UsageTotals,
};
use uuid::Uuid;

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Distributed,
}

struct Log {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    memory_bus: Option<MemoryBus>,
    /// The PostgreSQL store's own pool, in the test's schema.
    pg: Option<sqlx::PgPool>,
    _dir: Option<TempDir>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn log(backend: Backend) -> Log {
    let id = Uuid::new_v4().simple().to_string();
    match backend {
        Backend::Embedded => {
            let dir = std::env::temp_dir().join(format!("troupe-log-{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            let store = SqliteStore::open(&dir.join("t.db")).await.unwrap();
            store.migrate().await.unwrap();
            let bus = MemoryBus::new(8);
            Log {
                store: Arc::new(store),
                bus: Arc::new(bus.clone()),
                memory_bus: Some(bus),
                pg: None,
                _dir: Some(TempDir(dir)),
            }
        }
        Backend::Distributed => {
            let url = std::env::var("TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let nats =
                std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
            let schema = format!("it_{id}");
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&admin)
                .await
                .unwrap();
            let options: sqlx::postgres::PgConnectOptions =
                format!("{url}?options[search_path]={schema}")
                    .parse()
                    .unwrap();
            let store = PgStore::connect(options, 5).await.unwrap();
            store.migrate().await.unwrap();
            let client = async_nats::connect(nats).await.unwrap();
            let bus = NatsBus::new(
                client,
                Subjects::new(&format!("it_{id}")),
                troupe_events::bus::EventStreamLimits {
                    max_age: Duration::from_secs(600),
                    max_bytes: 16 << 20,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            Log {
                pg: Some(store.pool().clone()),
                store: Arc::new(store),
                bus: Arc::new(bus),
                memory_bus: None,
                _dir: None,
            }
        }
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() { super::$name(super::Backend::Embedded).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() { super::$name(super::Backend::Distributed).await }
        }
    )*};
}

both_backends!(
    appends_continue_the_log_exactly_and_fence_other_writers,
    nothing_is_appended_after_the_terminal_event,
    unfinished_tasks_go_back_to_the_outbox,
    a_slow_follower_gets_every_event_once_through_a_tiny_buffer,
    an_event_whose_publish_was_lost_still_arrives,
    followers_of_one_task_share_one_subscription,
    a_page_of_large_events_stays_small,
    large_events_reach_followers_through_the_store,
    a_lease_tells_a_redelivery_from_a_duplicate_job,
    a_run_that_ends_settles_the_pending_requests,
    control_requests_wait_for_the_worker_and_transitions_race_it_safely,
    appends_sum_usage_on_the_task_row_and_a_report_reads_the_owners_window,
    a_workers_advert_is_replaced_by_its_next_and_lapses,
);

async fn new_task(log: &Log) -> Uuid {
    let user = log
        .store
        .create_user(&format!("{}@example.com", Uuid::new_v4().simple()), "hash")
        .await
        .unwrap();
    let task = NewTask {
        id: Uuid::now_v7(),
        owner_id: user.id,
        spec: TaskSpec {
            budget: None,
            fallback: None,
            timeout_secs: None,
            title: "t".into(),
            description: "d".into(),
            agents: vec![AgentDef {
                role: "qa".into(),
                name: "QA".into(),
                description: "tests".into(),
                prompt: String::new(),
            }],
            execution_mode: ExecutionMode::Sequential,
            provider: "simulated".into(),
            model: None,
            provider_options: Default::default(),
        },
        idempotency_key: None,
        request_hash: "h".into(),
        active_limit: None,
    };
    log.store.create_task(&task).await.unwrap().task().id
}

fn token(task_id: Uuid, seq: u64) -> RawEvent {
    Event::new(
        task_id,
        seq,
        EventBody::AgentToken {
            agent_role: "qa".into(),
            delta: format!("t{seq}"),
            attempt: 1,
        },
    )
    .to_raw()
}

fn complete(task_id: Uuid, seq: u64) -> RawEvent {
    Event::new(
        task_id,
        seq,
        EventBody::TaskComplete {
            usage: None,
            total_execution_time: 1,
            outputs: vec![],
        },
    )
    .to_raw()
}

fn tokens(task_id: Uuid, seqs: std::ops::RangeInclusive<u64>) -> Vec<RawEvent> {
    seqs.map(|s| token(task_id, s)).collect()
}

async fn all_seqs(store: &dyn Store, task_id: Uuid) -> Vec<u64> {
    let mut seqs: Vec<u64> = vec![];
    loop {
        let after = seqs.last().copied().unwrap_or(0);
        let page = store.events_after(task_id, after, 10_000).await.unwrap();
        if page.is_empty() {
            return seqs;
        }
        seqs.extend(page.iter().map(|e| e.seq));
    }
}

async fn appends_continue_the_log_exactly_and_fence_other_writers(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    let first = tokens(task_id, 2..=4);
    log.store.append(task_id, &first).await.unwrap();

    // A second writer that read the log before that append tries to write seq 2 again.
    let stale = log.store.append(task_id, &tokens(task_id, 2..=3)).await;
    assert!(matches!(stale, Err(Error::SeqConflict { .. })), "{stale:?}");
    // A writer that skips a seq would leave a hole.
    let hole = log.store.append(task_id, &tokens(task_id, 6..=6)).await;
    assert!(matches!(hole, Err(Error::SeqConflict { .. })), "{hole:?}");
    // A batch that is not one consecutive run is refused before it reaches the database.
    let jumbled = vec![token(task_id, 5), token(task_id, 7)];
    assert!(matches!(
        log.store.append(task_id, &jumbled).await,
        Err(Error::Corrupt(_))
    ));

    assert_eq!(
        all_seqs(log.store.as_ref(), task_id).await,
        vec![1, 2, 3, 4]
    );
    let stored = log.store.events_after(task_id, 1, 10).await.unwrap();
    assert_eq!(stored, first, "events come back byte for byte");
    assert_eq!(log.store.task(task_id).await.unwrap().unwrap().last_seq, 4);
}

async fn nothing_is_appended_after_the_terminal_event(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    log.store
        .append(task_id, &[complete(task_id, 2)])
        .await
        .unwrap();
    let task = log.store.task(task_id).await.unwrap().unwrap();
    assert!(task.status.is_terminal());
    let late = log.store.append(task_id, &tokens(task_id, 3..=3)).await;
    assert!(matches!(late, Err(Error::SeqConflict { .. })));
    assert_eq!(all_seqs(log.store.as_ref(), task_id).await, vec![1, 2]);
}

async fn unfinished_tasks_go_back_to_the_outbox(backend: Backend) {
    let log = log(backend).await;
    let running = new_task(&log).await;
    let done = new_task(&log).await;
    // Both cleared by one statement; a row of another seq (a later retry) is not theirs.
    let other = new_task(&log).await;
    log.store
        .mark_dispatched(&[
            Dispatch {
                task_id: running,
                seq: 1,
            },
            Dispatch {
                task_id: done,
                seq: 1,
            },
            Dispatch {
                task_id: other,
                seq: 2,
            },
        ])
        .await
        .unwrap();
    let far_future = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        log.store.undispatched(far_future, 10).await.unwrap(),
        vec![Dispatch {
            task_id: other,
            seq: 1
        }]
    );
    log.store
        .mark_dispatched(&[Dispatch {
            task_id: other,
            seq: 1,
        }])
        .await
        .unwrap();
    for finished in [done, other] {
        log.store
            .append(finished, &[complete(finished, 2)])
            .await
            .unwrap();
    }
    assert!(
        log.store
            .undispatched(far_future, 10)
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(log.store.requeue_unfinished().await.unwrap(), 1);
    assert_eq!(
        log.store.undispatched(far_future, 10).await.unwrap(),
        vec![Dispatch {
            task_id: running,
            seq: 1
        }]
    );
}

async fn a_slow_follower_gets_every_event_once_through_a_tiny_buffer(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    let feeds = Feeds::new(
        log.store.clone(),
        log.bus.clone(),
        FeedConfig {
            buffer: 4,
            page: 7,
            idle_check: Duration::from_millis(200),
            ..FeedConfig::default()
        },
    );
    let follower = feeds.follow(task_id, 0).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut follower = std::pin::pin!(follower);
        let mut seqs = vec![];
        while let Some(event) = follower.next().await {
            seqs.push(event.unwrap().seq);
            // Slower than the writer: its buffer overflows again and again.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seqs
    });
    let last = 300;
    let mut seq = 2;
    while seq < last {
        let end = (seq + 9).min(last - 1);
        let batch = tokens(task_id, seq..=end);
        log.store.append(task_id, &batch).await.unwrap();
        log.bus.publish(&batch).await.unwrap();
        seq = end + 1;
    }
    let terminal = [complete(task_id, last)];
    log.store.append(task_id, &terminal).await.unwrap();
    log.bus.publish(&terminal).await.unwrap();

    let seqs = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every event once, in order"
    );
}

async fn an_event_whose_publish_was_lost_still_arrives(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    let feeds = Feeds::new(
        log.store.clone(),
        log.bus.clone(),
        FeedConfig {
            idle_check: Duration::from_millis(100),
            ..FeedConfig::default()
        },
    );
    let follower = feeds.follow(task_id, 0).await.unwrap();
    // Stored but never published: a worker died between commit and publish.
    log.store
        .append(task_id, &[token(task_id, 2), complete(task_id, 3)])
        .await
        .unwrap();
    let seqs: Vec<u64> = tokio::time::timeout(
        Duration::from_secs(10),
        follower.map(|e| e.unwrap().seq).collect::<Vec<_>>(),
    )
    .await
    .expect("the idle check finds what the bus never carried");
    assert_eq!(seqs, vec![1, 2, 3]);
}

async fn followers_of_one_task_share_one_subscription(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    let feeds = Feeds::new(log.store.clone(), log.bus.clone(), FeedConfig::default());
    let mut followers = vec![];
    for _ in 0..50 {
        followers.push(Box::pin(feeds.follow(task_id, 0).await.unwrap()));
    }
    assert_eq!(feeds.active(), 1);
    let batch = vec![token(task_id, 2), complete(task_id, 3)];
    log.store.append(task_id, &batch).await.unwrap();
    log.bus.publish(&batch).await.unwrap();
    for follower in &mut followers {
        let seqs: Vec<u64> = follower.by_ref().map(|e| e.unwrap().seq).collect().await;
        assert_eq!(seqs, vec![1, 2, 3]);
    }
    drop(followers);
    // The last follower gone, the task's subscription goes too: nothing is kept per task.
    assert_eq!(feeds.active(), 0);
    if let Some(bus) = &log.memory_bus {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(bus.channel_count(), 0);
    }
}

/// A subscription that ends (a connection lost for good) must not leave followers waiting:
/// they carry on from the store, and live again once the feed renews it.
#[tokio::test]
async fn followers_outlive_a_dead_bus_subscription() {
    let log = log(Backend::Embedded).await;
    let memory_bus = log.memory_bus.clone().unwrap();
    let task_id = new_task(&log).await;
    let feeds = Feeds::new(
        log.store.clone(),
        log.bus.clone(),
        FeedConfig {
            buffer: 64,
            page: 100,
            idle_check: Duration::from_millis(100),
            ..FeedConfig::default()
        },
    );
    let follower = feeds.follow(task_id, 0).await.unwrap();
    let reader = tokio::spawn(async move {
        let follower = std::pin::pin!(follower);
        follower.map(|e| e.unwrap().seq).collect::<Vec<_>>().await
    });
    let first = tokens(task_id, 2..=5);
    log.store.append(task_id, &first).await.unwrap();
    log.bus.publish(&first).await.unwrap();

    memory_bus.end_subscriptions(task_id);
    let while_dead = tokens(task_id, 6..=9);
    log.store.append(task_id, &while_dead).await.unwrap();
    log.bus.publish(&while_dead).await.unwrap();
    // Renewed at the next store check; these travel live again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = [tokens(task_id, 10..=12), vec![complete(task_id, 13)]].concat();
    log.store.append(task_id, &after).await.unwrap();
    log.bus.publish(&after).await.unwrap();

    let seqs = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the follower is not left waiting")
        .unwrap();
    assert_eq!(seqs, (1..=13).collect::<Vec<_>>());
}

async fn a_page_of_large_events_stays_small(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    // Five whole agent answers of 600 KiB each.
    let big: Vec<RawEvent> = (2..=6)
        .map(|seq| {
            Event::new(
                task_id,
                seq,
                EventBody::AgentToken {
                    agent_role: "qa".into(),
                    delta: "x".repeat(600 * 1024),
                    attempt: 1,
                },
            )
            .to_raw()
        })
        .collect();
    log.store.append(task_id, &big).await.unwrap();

    let first = log.store.events_after(task_id, 1, 1000).await.unwrap();
    let bytes: usize = first.iter().map(|e| e.json.len()).sum();
    assert_eq!(first.len(), 2, "the page stops once it passes 1 MiB");
    assert!(bytes < 2 << 20);
    let single = log.store.events_after(task_id, 2, 1).await.unwrap();
    assert_eq!(single.len(), 1, "the count still bounds a page");
    // The NDJSON form of a page is the same page, each event's JSON and a line feed.
    for (after, limit) in [(1, 1000), (2, 1), (0, 1000), (6, 10)] {
        let page = log.store.events_after(task_id, after, limit).await.unwrap();
        let lines = log
            .store
            .lines_after(task_id, after, limit, true)
            .await
            .unwrap();
        let Some(lines) = lines else {
            assert!(page.is_empty());
            continue;
        };
        let expected: Vec<u8> = page
            .iter()
            .flat_map(|e| e.json.iter().copied().chain([b'\n']))
            .collect();
        assert_eq!(lines.ndjson, expected);
        assert_eq!(entries_of(&lines), entries_of_events(&page));
        let untyped = log.store.lines_after(task_id, after, limit, false).await;
        let untyped = untyped.unwrap().expect("the same page");
        assert_eq!((&untyped.ndjson, &untyped.kinds), (&lines.ndjson, &None));
        assert_eq!(lines.events, page.len());
        assert_eq!(lines.last_seq, page.last().unwrap().seq);
        assert_eq!(lines.is_last_page(limit), is_last_page(&page, limit));
    }
    // Read until an empty page: everything, in order.
    assert_eq!(
        all_seqs(log.store.as_ref(), task_id).await,
        (1..=6).collect::<Vec<_>>()
    );
}

/// A parallel team's appends come through many connections, so a long log's rows lie all
/// over the heap, out of seq order; a page is still the log in seq order, as events and as
/// NDJSON. The table here has never been analyzed, as a new database's has not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_scattered_over_the_heap_reads_in_seq_order() {
    let log = log(Backend::Distributed).await;
    let pg = log.pg.clone().expect("a PostgreSQL store");
    let task_id = new_task(&log).await;
    for batch in (2..=3001u64).collect::<Vec<_>>().chunks(500) {
        let events = tokens(task_id, batch[0]..=batch[batch.len() - 1]);
        log.store.append(task_id, &events).await.unwrap();
    }
    // Rewriting a row puts its new version at the heap's end.
    for every in [3, 7] {
        sqlx::query("UPDATE task_events SET data = data WHERE task_id = $1 AND seq % $2 = 0")
            .bind(task_id)
            .bind(every)
            .execute(&pg)
            .await
            .unwrap();
    }
    let heap_order: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM task_events WHERE task_id = $1 ORDER BY ctid")
            .bind(task_id)
            .fetch_all(&pg)
            .await
            .unwrap();
    assert!(!heap_order.is_sorted(), "the rows are out of seq order");

    for (after, limit) in [(0, 5000), (1000, 700), (2990, 5000)] {
        let page = log.store.events_after(task_id, after, limit).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
        let expected_last = (after + u64::from(limit)).min(3001);
        assert_eq!(seqs, (after + 1..=expected_last).collect::<Vec<_>>());
        let lines = log
            .store
            .lines_after(task_id, after, limit, true)
            .await
            .unwrap();
        let expected: Vec<u8> = page
            .iter()
            .flat_map(|e| e.json.iter().copied().chain([b'\n']))
            .collect();
        let lines = lines.expect("a page");
        assert_eq!(lines.ndjson, expected);
        assert_eq!(entries_of(&lines), entries_of_events(&page));
    }
}

/// Each event of a joined page as its seq, type and JSON.
fn entries_of(lines: &troupe_events::store::Lines) -> Vec<(u64, String, Vec<u8>)> {
    lines
        .entries()
        .expect("a page read with its types")
        .map(|(seq, kind, json)| (seq, kind.to_owned(), json.to_vec()))
        .collect()
}

fn entries_of_events(page: &[RawEvent]) -> Vec<(u64, String, Vec<u8>)> {
    page.iter()
        .map(|e| (e.seq, e.kind.clone(), e.json.to_vec()))
        .collect()
}

async fn control_requests_wait_for_the_worker_and_transitions_race_it_safely(backend: Backend) {
    use troupe_events::{ControlRequest, TaskStatus, Transition, Transitioned};
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    let store = log.store.as_ref();

    // Requests are kept on the task until a worker reads them.
    assert!(
        store
            .request_control(task_id, &ControlRequest::Pause)
            .await
            .unwrap()
    );
    let agent = ControlRequest::CancelAgent {
        role: "qa".into(),
        attempt: 2,
    };
    assert!(store.request_control(task_id, &agent).await.unwrap());
    assert!(
        store.request_control(task_id, &agent).await.unwrap(),
        "asking twice is as good as once"
    );
    let controls = store.controls(task_id).await.unwrap();
    assert!(controls.pause && !controls.cancel);
    assert_eq!(controls.cancel_agents, vec![("qa".to_string(), 2)]);
    assert!(
        store
            .request_control(task_id, &ControlRequest::Unpause)
            .await
            .unwrap()
    );
    assert!(!store.controls(task_id).await.unwrap().pause);

    // A worker appended first: the api's transition from `queued` is refused and the
    // worker's log stays whole.
    log.store
        .append(task_id, &[start(task_id, 2)])
        .await
        .unwrap();
    let cancel = Transition {
        from: vec![TaskStatus::Queued],
        body: EventBody::TaskCancelled {
            usage: None,
            reason: "r".into(),
            total_execution_time: 1,
        },
        requeue: false,
        active_limit: None,
    };
    assert_eq!(
        store.transition(task_id, &cancel).await.unwrap(),
        Transitioned::Refused(TaskStatus::Running)
    );
    // The other way round: the api's transition wins, the worker's next append is fenced.
    let cancel_running = Transition {
        from: vec![TaskStatus::Running],
        ..cancel
    };
    let Transitioned::Applied(cancelled) =
        store.transition(task_id, &cancel_running).await.unwrap()
    else {
        panic!("a running task's transition was refused");
    };
    assert_eq!(
        (cancelled.seq, cancelled.kind.as_str()),
        (3, "task_cancelled")
    );
    assert_eq!(
        store.task(task_id).await.unwrap().unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(
        all_seqs(store, task_id).await,
        vec![1, 2, 3],
        "the returned event is the stored one"
    );
    let late = store.append(task_id, &tokens(task_id, 3..=3)).await;
    assert!(matches!(late, Err(Error::SeqConflict { .. })));
    assert!(
        !store
            .request_control(task_id, &ControlRequest::Cancel)
            .await
            .unwrap(),
        "a finished task takes no request"
    );

    // A retry reopens the log and queues the task again under the retry's seq.
    let retry = Transition {
        from: vec![TaskStatus::Failed, TaskStatus::Cancelled],
        body: EventBody::TaskRetried {
            agents: vec!["qa".into()],
            reason: "r".into(),
        },
        requeue: true,
        active_limit: None,
    };
    let Transitioned::Applied(retried) = store.transition(task_id, &retry).await.unwrap() else {
        panic!("a cancelled task's retry was refused");
    };
    assert_eq!((retried.seq, retried.kind.as_str()), (4, "task_retried"));
    assert_eq!(
        store.task(task_id).await.unwrap().unwrap().status,
        TaskStatus::Queued
    );
    let far_future = chrono::Utc::now() + chrono::Duration::days(1);
    assert!(
        store
            .undispatched(far_future, 10)
            .await
            .unwrap()
            .contains(&Dispatch { task_id, seq: 4 })
    );
    assert_eq!(all_seqs(store, task_id).await, vec![1, 2, 3, 4]);
}

fn start(task_id: Uuid, seq: u64) -> RawEvent {
    Event::new(
        task_id,
        seq,
        EventBody::AgentStart {
            agent_role: "qa".into(),
            agent_name: "QA".into(),
            agent_description: "tests".into(),
            attempt: 1,
        },
    )
    .to_raw()
}

async fn large_events_reach_followers_through_the_store(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    // Every event counts as large: nothing travels in the live buffer but its seq.
    let feeds = Feeds::new(
        log.store.clone(),
        log.bus.clone(),
        FeedConfig {
            inline_max: 10,
            ..FeedConfig::default()
        },
    );
    let follower = feeds.follow(task_id, 0).await.unwrap();
    let reader = tokio::spawn(async move {
        let follower = std::pin::pin!(follower);
        follower
            .map(|e| {
                let e = e.unwrap();
                (e.seq, e.json.len())
            })
            .collect::<Vec<_>>()
            .await
    });
    let mut written = vec![];
    for seq in 2..=40 {
        let batch = if seq == 40 {
            vec![complete(task_id, seq)]
        } else {
            tokens(task_id, seq..=seq)
        };
        written.push((seq, batch[0].json.len()));
        log.store.append(task_id, &batch).await.unwrap();
        log.bus.publish(&batch).await.unwrap();
    }
    let received = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = received.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        &received[1..],
        &written[..],
        "whole events, read from the store"
    );
}

async fn a_lease_tells_a_redelivery_from_a_duplicate_job(backend: Backend) {
    use troupe_events::{Claim, Lease};
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    let store = log.store.as_ref();
    let (owner, other) = (Uuid::now_v7(), Uuid::now_v7());
    let long = Duration::from_secs(30);

    assert_eq!(
        store.claim(task_id, owner, 7, long).await.unwrap(),
        Claim::Granted
    );
    assert_eq!(
        store.claim(task_id, owner, 7, long).await.unwrap(),
        Claim::Granted,
        "a holder may claim again"
    );
    let held = Claim::Held(Lease {
        holder: owner,
        job: 7,
    });
    assert_eq!(
        store.claim(task_id, other, 7, long).await.unwrap(),
        held,
        "the same message, redelivered"
    );
    assert_eq!(
        store.claim(task_id, other, 8, long).await.unwrap(),
        held,
        "another message of the task"
    );
    assert_eq!(
        store.lease(task_id).await.unwrap(),
        Some(Lease {
            holder: owner,
            job: 7
        })
    );

    // Released (a hand-back), the next delivery takes it at once.
    store.release(task_id, other).await.unwrap();
    assert!(
        store.lease(task_id).await.unwrap().is_some(),
        "only the holder releases"
    );
    store.release(task_id, owner).await.unwrap();
    assert_eq!(store.lease(task_id).await.unwrap(), None);

    // A lease that is not renewed lapses (the holder died): another worker takes over.
    let short = Duration::from_millis(200);
    assert_eq!(
        store.claim(task_id, owner, 9, short).await.unwrap(),
        Claim::Granted
    );
    store.renew(task_id, owner, short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.lease(task_id).await.unwrap(), None);
    assert_eq!(
        store.claim(task_id, other, 9, long).await.unwrap(),
        Claim::Granted
    );
    store.renew(task_id, owner, long).await.unwrap();
    assert_eq!(
        store.lease(task_id).await.unwrap(),
        Some(Lease {
            holder: other,
            job: 9
        }),
        "the old holder cannot renew a lease it lost"
    );

    // The run's terminal event gives the lease up with it.
    store
        .append(task_id, &tokens(task_id, 2..=2))
        .await
        .unwrap();
    assert!(store.lease(task_id).await.unwrap().is_some());
    store
        .append(task_id, &[complete(task_id, 3)])
        .await
        .unwrap();
    assert_eq!(store.lease(task_id).await.unwrap(), None);
}

async fn a_run_that_ends_settles_the_pending_requests(backend: Backend) {
    use troupe_events::ControlRequest;
    let log = log(backend).await;
    let store = log.store.as_ref();
    let task_id = new_task(&log).await;
    store.append(task_id, &[start(task_id, 2)]).await.unwrap();
    for request in [ControlRequest::Cancel, ControlRequest::Pause] {
        assert!(store.request_control(task_id, &request).await.unwrap());
    }
    // A token changes no status: the requests still wait for the worker.
    store
        .append(task_id, &tokens(task_id, 3..=3))
        .await
        .unwrap();
    let task = store.task(task_id).await.unwrap().unwrap();
    assert!(task.cancel_requested && task.pause_requested);

    // The worker's closing event carries them out.
    store
        .append(task_id, &[complete(task_id, 4)])
        .await
        .unwrap();
    let task = store.task(task_id).await.unwrap().unwrap();
    assert!(!task.cancel_requested && !task.pause_requested);
}

fn usage(task_id: Uuid, seq: u64, model: &str, counts: TokenCounts, cost: Option<f64>) -> RawEvent {
    Event::new(
        task_id,
        seq,
        EventBody::AgentUsage {
            agent_role: "qa".into(),
            attempt: 1,
            provider: "p".into(),
            model: model.into(),
            time_to_first_token: counts.input_tokens.map(|_| 30),
            usage: AttemptUsage {
                counts,
                cost_usd: cost,
            },
        },
    )
    .to_raw()
}

async fn appends_sum_usage_on_the_task_row_and_a_report_reads_the_owners_window(backend: Backend) {
    let log = log(backend).await;
    let task_id = new_task(&log).await;
    let task = log.store.task(task_id).await.unwrap().unwrap();
    assert_eq!(task.usage, UsageTotals::default());
    let reported = TokenCounts::reported(Some(100), Some(20));
    let simulated = TokenCounts {
        source: UsageSource::Simulated,
        input_tokens: Some(7),
        output_tokens: Some(3),
    };
    let ended = |seq: u64, ok: bool, ms: u64| {
        let body = if ok {
            EventBody::AgentComplete {
                agent_role: "qa".into(),
                status: SuccessStatus::Success,
                execution_time: ms,
                has_artifacts: false,
                output: String::new(),
                artifacts: vec![],
            }
        } else {
            EventBody::AgentError {
                agent_role: "qa".into(),
                status: ErrorStatus::Error,
                execution_time: ms,
                error: "boom".into(),
            }
        };
        Event::new(task_id, seq, body).to_raw()
    };
    // Two appends, as a worker's batches would come.
    let first = vec![
        start(task_id, 2),
        token(task_id, 3),
        usage(task_id, 4, "m1", reported, Some(0.5)),
        ended(5, false, 40),
    ];
    let second = vec![
        usage(task_id, 6, "simulated", simulated, None),
        usage(task_id, 7, "m1", TokenCounts::unknown(), None),
        ended(8, true, 70),
        complete(task_id, 9),
    ];
    log.store.append(task_id, &first).await.unwrap();
    log.store.append(task_id, &second).await.unwrap();

    let row = log.store.task(task_id).await.unwrap().unwrap();
    let expected = UsageTotals {
        input_tokens: 107,
        output_tokens: 23,
        cost_usd: 0.5,
        unreported_attempts: 1,
        unpriced_attempts: 2,
        simulated_attempts: 1,
    };
    assert_eq!(row.usage, expected);
    let listed = log.store.tasks_of(row.owner_id, None, 10).await.unwrap();
    assert_eq!(listed[0].usage, expected);

    let since = row.created_at - chrono::Duration::days(1);
    let report = log.store.usage_report(row.owner_id, since).await.unwrap();
    assert_eq!(report.tasks, 1);
    assert!(!report.truncated);
    assert_eq!(report.totals, expected);
    let cells: Vec<(&str, u64, u64)> = report
        .daily
        .iter()
        .map(|c| (c.model.as_str(), c.attempts, c.usage.tokens()))
        .collect();
    assert_eq!(cells, [("m1", 2, 120), ("simulated", 1, 10)]);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        report
            .daily
            .iter()
            .all(|c| c.day == today && c.role == "qa")
    );
    assert_eq!(report.daily[0].usage.unreported_attempts, 1);
    assert_eq!(report.daily[1].usage.simulated_attempts, 1);
    let [qa] = report.roles.as_slice() else {
        panic!("one role: {:?}", report.roles)
    };
    assert_eq!((qa.completed, qa.failed, qa.cancelled), (1, 1, 0));
    assert_eq!(qa.success_rate, Some(0.5));
    assert_eq!(
        (qa.duration.count, qa.duration.p50, qa.duration.p95),
        (1, Some(70), Some(70))
    );
    assert_eq!(qa.time_to_first_token.count, 2);
    assert_eq!(qa.time_to_first_token.p50, Some(30));

    // A window that starts after the task, and another owner, see nothing.
    let later = row.created_at + chrono::Duration::milliseconds(2);
    let after = log.store.usage_report(row.owner_id, later).await.unwrap();
    assert_eq!(
        (after.tasks, after.daily.len(), after.roles.len()),
        (0, 0, 0)
    );
    assert_eq!(after.totals, UsageTotals::default());
    let other = log.store.usage_report(Uuid::now_v7(), since).await.unwrap();
    assert_eq!(other.tasks, 0);
}

async fn a_workers_advert_is_replaced_by_its_next_and_lapses(backend: Backend) {
    use troupe_events::providers::{Advert, Directory, Offer};
    let log = log(backend).await;
    let store = log.store.as_ref();
    let advert = |offers: &[&str], stopping: bool| Advert {
        worker_id: Uuid::now_v7(),
        offers: offers
            .iter()
            .map(|name| Offer {
                name: name.to_string(),
                default_model: Some(format!("{name}-model")),
            })
            .collect(),
        stopping,
    };
    let minute = Duration::from_secs(60);
    let first = advert(&["simulated"], false);
    let second = advert(&["openai", "simulated"], false);
    store.advertise(&first, minute).await.unwrap();
    store.advertise(&second, minute * 2).await.unwrap();
    // Lapsed as soon as written: never live.
    store
        .advertise(&advert(&["anthropic"], false), Duration::ZERO)
        .await
        .unwrap();
    let stopping = Advert {
        stopping: true,
        offers: vec![],
        ..first.clone()
    };
    store.advertise(&stopping, minute).await.unwrap();
    // Newest expiry first; the first worker's advert replaced by its last word.
    assert_eq!(
        store.live_adverts().await.unwrap(),
        vec![second.clone(), stopping]
    );
    let directory = Directory::of(&store.live_adverts().await.unwrap());
    assert_eq!(directory.workers(), 1);
    assert!(directory.serves("openai") && directory.serves("simulated"));
    store.sweep(None, 10).await.unwrap();
    assert_eq!(store.live_adverts().await.unwrap().len(), 2);
}
