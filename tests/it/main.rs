//! End-to-end tests over HTTP, each run twice: embedded (SQLite, in-process bus and queue)
//! and distributed (PostgreSQL, NATS JetStream, two api instances and a worker).

mod accounts;
mod cli;
mod control;
mod deletion;
#[path = "../support/event_stream.rs"]
mod event_stream;
mod fairness;
mod faults;
mod helpers;
mod hostile;
mod input;
mod load;
mod metrics;
mod process;
#[path = "../support/procs.rs"]
mod procs;
mod providers;
mod reference;
mod resume;
mod runs;
mod served;
mod sessions;
mod stats;
mod stats_faults;
mod stream;
mod traces;
mod usage;
mod usage_page;
