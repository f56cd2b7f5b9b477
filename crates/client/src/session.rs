//! The hook for exactly-once writes: a [`Session`] names this client (`balsa-client-id`) and
//! numbers its writes (`balsa-seq`), sent as gRPC metadata by [`SessionInterceptor`].
//!
//! The numbering is the point: a write keeps its sequence number across every retry of it, so a
//! server that remembers, per client id, the last sequence number applied (and its answer) can
//! apply a retried write once and answer the retry from memory (Raft thesis, section 6.3). The
//! server side is being built separately; until it honours the metadata, a session changes
//! nothing on the wire but two headers, and retried writes stay at-least-once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// A session for `client_id`, numbering writes from 1. How a client obtains its id (chosen,
    /// or registered with the server) is for the server's session design to settle.
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

/// A write's sequence number, carried in the request's extensions from the retry loop (which
/// picks it once per logical write) to the interceptor (which writes the metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seq(pub u64);

/// Adds `balsa-client-id` and `balsa-seq` to requests tagged with a [`Seq`] when a session is set;
/// passes everything else through untouched.
#[derive(Debug, Clone, Default)]
pub struct SessionInterceptor {
    /// The session, if the client has one.
    session: Option<Session>,
}

impl SessionInterceptor {
    pub(crate) fn new(session: Option<Session>) -> Self {
        Self { session }
    }
}

impl Interceptor for SessionInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let (Some(session), Some(Seq(seq))) = (&self.session, request.extensions().get::<Seq>().copied())
        else {
            return Ok(request);
        };
        let id = MetadataValue::from(session.client_id);
        request.metadata_mut().insert(CLIENT_ID_HEADER, id);
        request.metadata_mut().insert(SEQ_HEADER, MetadataValue::from(seq));
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_requests_carry_the_session_and_untagged_ones_do_not() {
        let session = Session::resume(42, 6);
        let mut interceptor = SessionInterceptor::new(Some(session.clone()));
        let mut tagged = Request::new(());
        tagged.extensions_mut().insert(Seq(session.next_seq()));
        let tagged = interceptor.call(tagged).unwrap();
        assert_eq!(tagged.metadata().get(CLIENT_ID_HEADER).unwrap(), "42");
        assert_eq!(tagged.metadata().get(SEQ_HEADER).unwrap(), "7");
        let plain = interceptor.call(Request::new(())).unwrap();
        assert!(plain.metadata().get(SEQ_HEADER).is_none());
        // Without a session nothing is added, tagged or not.
        let mut tagged = Request::new(());
        tagged.extensions_mut().insert(Seq(1));
        let out = SessionInterceptor::new(None).call(tagged).unwrap();
        assert!(out.metadata().get(CLIENT_ID_HEADER).is_none());
    }
}
