//! The session hook on the wire: a stand-in KV server (not balsa: one that records metadata)
//! answers the first put "not leader" and the second OK. With a session, both attempts carry the
//! same `balsa-client-id` and `balsa-seq`, and the next write the next number; without one, no
//! metadata; reads never carry a sequence number.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use balsa_client::{Client, ClientOptions, GetOptions, PutOptions, Session, CLIENT_ID_HEADER, SEQ_HEADER};
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::kv_server::{Kv, KvServer};
use tonic::{Request, Response, Status};

/// (client id, seq) per call received, as strings ("" when absent).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

struct Recorder {
    seen: Seen,
}

impl Recorder {
    fn record<T>(&self, r: &Request<T>) -> usize {
        let get = |k: &str| r.metadata().get(k).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let mut seen = self.seen.lock().unwrap();
        seen.push((get(CLIENT_ID_HEADER), get(SEQ_HEADER)));
        seen.len()
    }
}

#[tonic::async_trait]
impl Kv for Recorder {
    async fn range(&self, r: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        self.record(&r);
        Ok(Response::new(pb::RangeResponse::default()))
    }
    async fn put(&self, r: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        // Every odd-numbered call is refused as a follower would, so each put is retried once.
        if self.record(&r) % 2 == 1 {
            return Err(Status::unavailable("etcdserver: not leader"));
        }
        Ok(Response::new(pb::PutResponse::default()))
    }
    async fn delete_range(
        &self,
        _: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn txn(&self, _: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn compact(
        &self,
        _: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn recorder() -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Seen::default();
    let server = KvServer::new(Recorder { seen: seen.clone() });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

fn options(session: Option<Session>) -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(2),
        retry_budget: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(5),
        session,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_write_keeps_its_sequence_number_across_retries() {
    let (addr, seen) = recorder().await;
    let c = Client::connect_lazy(&[addr.as_str()], options(Some(Session::resume(77, 10)))).unwrap();
    c.put("k", "v", PutOptions::new()).await.unwrap();
    c.put("k", "w", PutOptions::new()).await.unwrap();
    c.get("k", GetOptions::new()).await.unwrap();
    let pair = |id: &str, seq: &str| (id.to_string(), seq.to_string());
    assert_eq!(
        *seen.lock().unwrap(),
        [pair("77", "11"), pair("77", "11"), pair("77", "12"), pair("77", "12"), pair("", "")],
        "each put twice (refused, then retried) under one number; the read untagged"
    );
    assert_eq!(c.session().unwrap().last_seq(), 12);
}

#[tokio::test]
async fn a_server_without_sessions_gets_plain_writes() {
    // Sessions are on by default; the stand-in serves no Session service (like etcd), so the
    // client notices "unimplemented" and writes without metadata.
    let (addr, seen) = recorder().await;
    let c = Client::connect_lazy(&[addr.as_str()], options(None)).unwrap();
    assert!(c.sessions_active());
    c.put("k", "v", PutOptions::new()).await.unwrap();
    assert!(!c.sessions_active());
    assert!(seen.lock().unwrap().iter().all(|(id, seq)| id.is_empty() && seq.is_empty()));
}

#[tokio::test]
async fn without_a_session_no_metadata_is_sent() {
    let (addr, seen) = recorder().await;
    let c =
        Client::connect_lazy(&[addr.as_str()], ClientOptions { sessions: false, ..options(None) }).unwrap();
    c.put("k", "v", PutOptions::new()).await.unwrap();
    assert!(seen.lock().unwrap().iter().all(|(id, seq)| id.is_empty() && seq.is_empty()));
}
