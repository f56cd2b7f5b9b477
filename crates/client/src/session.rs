//! Exactly-once writes: [`Session`]s, the pool a [`Client`](crate::Client) keeps of them, and the
//! interceptor that puts a write's session and sequence number on the wire (`balsa-client-id`,
//! `balsa-seq`).
//!
//! The numbering is the point: a write keeps its sequence number across every retry of it, and
//! the server remembers, per session, the last number applied and its answer, so a retried write
//! is applied once and the retry answered from memory (Raft thesis, section 6.3).
//!
//! **One write per session at a time.** The server remembers one outstanding write per session
//! (the last). Two concurrent writes on one session would race: the higher number could land
//! first and make the other "stale", or a retry of the lower one would find its answer
//! forgotten. So a client keeps a *pool*: each write takes an idle session (registering a new
//! one when none is idle, up to [`ClientOptions::max_sessions`](crate::ClientOptions)), uses it
//! for all of its attempts, and gives it back when it has an answer. Concurrent writes on one
//! `Client` therefore run on different sessions, and a client that does one write at a time
//! uses one session. Sessions idle for more than half their timeout are not reused (the server
//! may be about to expire them); they are left to expire.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Metadata key carrying the session's client id (decimal).
pub const CLIENT_ID_HEADER: &str = "balsa-client-id";
/// Metadata key carrying the write's sequence number (decimal, from 1).
pub const SEQ_HEADER: &str = "balsa-seq";

/// A client identity for exactly-once writes; cheap to clone (clones share the numbering).
#[derive(Debug, Clone)]
pub struct Session {
    /// Names this client to the server's deduplication table.
    client_id: u64,
    /// The last sequence number handed out; shared so every clone numbers from one counter.
    last_seq: Arc<AtomicU64>,
}

impl Session {
    /// A session for `client_id` (an id `balsapb.Session/Register` returned), numbering writes
    /// from 1.
    pub fn new(client_id: u64) -> Self {
        Self::resume(client_id, 0)
    }

    /// A session that continues after sequence number `last_seq` (a restarted client that
    /// persisted its counter).
    pub fn resume(client_id: u64, last_seq: u64) -> Self {
        Self { client_id, last_seq: Arc::new(AtomicU64::new(last_seq)) }
    }

    /// The client id sent with every write.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }

    /// The next sequence number: one per logical write, reused by all of its retries.
    pub(crate) fn next_seq(&self) -> u64 {
        self.last_seq.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A write's session and sequence number, carried in the request's extensions from the write
/// loop (which picks them once per logical write) to the interceptor (which writes the metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seq {
    pub(crate) client_id: u64,
    pub(crate) seq: u64,
}

/// Adds `balsa-client-id` and `balsa-seq` to requests tagged with a write's session and sequence
/// number; passes everything else (reads, watches, untagged writes) through untouched.
#[derive(Debug, Clone, Default)]
pub struct SessionInterceptor;

impl Interceptor for SessionInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(Seq { client_id, seq }) = request.extensions().get::<Seq>().copied() else {
            return Ok(request);
        };
        request.metadata_mut().insert(CLIENT_ID_HEADER, MetadataValue::from(client_id));
        request.metadata_mut().insert(SEQ_HEADER, MetadataValue::from(seq));
        Ok(request)
    }
}

/// The sessions of one client: idle ones, a bound on how many writes hold one at once, and what
/// the cluster said about sessions.
pub(crate) struct SessionPool {
    /// A session the caller chose (`ClientOptions::session`): every write uses it, one at a time.
    fixed: Option<Session>,
    /// Whether to register sessions (`ClientOptions::sessions`).
    enabled: bool,
    /// The timeout asked for at registration.
    pub(crate) timeout: Duration,
    /// Sessions not in use, with when each was last used.
    idle: Mutex<Vec<(Session, Instant)>>,
    /// Permits: one per write holding a session (1 for a fixed session).
    permits: Arc<Semaphore>,
    /// Set when the cluster has no Session service (etcd): writes then go without one.
    unsupported: AtomicBool,
    /// Sessions registered so far (for tests and diagnostics).
    pub(crate) registered: AtomicU64,
}

impl SessionPool {
    pub(crate) fn new(fixed: Option<Session>, enabled: bool, timeout: Duration, max: usize) -> Self {
        let permits = if fixed.is_some() { 1 } else { max.max(1) };
        Self {
            fixed,
            enabled,
            timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(permits)),
            unsupported: AtomicBool::new(false),
            registered: AtomicU64::new(0),
        }
    }

    /// Whether writes should be put into sessions (and registration be tried).
    pub(crate) fn active(&self) -> bool {
        self.fixed.is_some() || (self.enabled && !self.unsupported.load(Ordering::Relaxed))
    }

    /// Remembers that the cluster serves no sessions.
    pub(crate) fn mark_unsupported(&self) {
        self.unsupported.store(true, Ordering::Relaxed);
    }

    /// Waits for a permit (bounded by the caller's deadline through `timeout`).
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits.clone().acquire_owned().await.expect("the pool's semaphore is never closed")
    }

    /// An idle session fit for reuse, if any (or the fixed one).
    pub(crate) fn take_idle(&self) -> Option<Session> {
        if let Some(fixed) = &self.fixed {
            return Some(fixed.clone());
        }
        let mut idle = self.idle.lock().expect("session pool lock");
        while let Some((session, used)) = idle.pop() {
            if used.elapsed() < self.timeout / 2 {
                return Some(session);
            }
            // Too close to its expiry to trust: let the server forget it.
        }
        None
    }

    /// Gives a session back after a write that has an answer.
    pub(crate) fn put_back(&self, session: Session) {
        if self.fixed.is_none() {
            self.idle.lock().expect("session pool lock").push((session, Instant::now()));
        }
    }

    /// Every idle session, removed from the pool (to close them).
    pub(crate) fn drain_idle(&self) -> Vec<Session> {
        self.idle.lock().expect("session pool lock").drain(..).map(|(s, _)| s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_requests_carry_the_session_and_untagged_ones_do_not() {
        let session = Session::resume(42, 6);
        let mut interceptor = SessionInterceptor;
        let mut tagged = Request::new(());
        tagged.extensions_mut().insert(Seq { client_id: session.client_id(), seq: session.next_seq() });
        let tagged = interceptor.call(tagged).unwrap();
        assert_eq!(tagged.metadata().get(CLIENT_ID_HEADER).unwrap(), "42");
        assert_eq!(tagged.metadata().get(SEQ_HEADER).unwrap(), "7");
        let plain = interceptor.call(Request::new(())).unwrap();
        assert!(plain.metadata().get(SEQ_HEADER).is_none());
        assert!(plain.metadata().get(CLIENT_ID_HEADER).is_none());
    }
}
