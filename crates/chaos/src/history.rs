//! The run's clock and what the clients record.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balsa_client::{Client, ClientOptions};

/// Nanoseconds since the run began: one monotonic clock for every client and the nemesis, so
/// operations and faults can be laid side by side.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self { start: Instant::now() }
    }

    /// Nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// A list many tasks append to.
pub type Shared<T> = Arc<Mutex<Vec<T>>>;

/// Appends to a [`Shared`] list (a poisoned lock means a recording task panicked: the run is
/// void anyway, so the panic carries on).
pub fn push<T>(list: &Shared<T>, item: T) {
    list.lock().expect("a recording task panicked").push(item);
}

/// Takes everything recorded so far.
pub fn take<T>(list: &Shared<T>) -> Vec<T> {
    std::mem::take(&mut *list.lock().expect("a recording task panicked"))
}

/// Client settings for the workloads: short attempts so a request to a partitioned member gives
/// up quickly and goes elsewhere, and a budget that outlasts an election, so most operations
/// end with an answer rather than an unknown outcome.
pub fn client_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(1000),
        retry_budget: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

/// The hard limit for one recorded operation, retries included: past it the outcome is unknown.
pub const OP_LIMIT: Duration = Duration::from_secs(6);

/// Connects a workload client to every host (members or not: the client finds the leader).
pub async fn connect(urls: &[String]) -> Result<Client, String> {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    Client::connect(&urls, client_options()).await.map_err(|e| format!("connecting a client: {e}"))
}

/// Counts of what happened to a workload's operations.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counts {
    /// Answered with success (for a CAS or a transfer: answered, whichever branch ran).
    pub ok: u64,
    /// Answered with a definite failure (nothing happened).
    pub failed: u64,
    /// No answer: the operation may or may not have taken effect.
    pub unknown: u64,
}

/// Sleeps until `deadline`, or forever without one: the end-of-run limit of the watchers and
/// subscribers, which only starts once they are told what to wait for.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
