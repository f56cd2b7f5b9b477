//! The client port's server (`client_server`): paths reach the right service, unknown methods
//! are refused the gRPC way, and stopping the server closes its connections.

mod common;

use std::time::Duration;

use balsa_server::kv_service::{self, KvService};
use balsa_server::pb::etcdserverpb::{kv_client::KvClient, PutRequest, PutResponse, RangeRequest};
use common::{single_node, Dir};
use tonic::codec::ProstCodec;
use tonic::transport::Channel;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// A unary call to `path` with a put request, as if the method existed.
async fn call(channel: Channel, path: &'static str) -> Result<PutResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request =
        tonic::Request::new(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
    let codec: ProstCodec<PutRequest, PutResponse> = ProstCodec::default();
    grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn each_path_reaches_its_service_and_unknown_methods_are_unimplemented() {
    let dir = Dir::new("client-server-paths");
    let (_node, addr) = single_node(&dir).await;
    let ch = channel(addr).await;
    // The direct route (KV) and the router (Maintenance) both answer.
    let put = call(ch.clone(), "/etcdserverpb.KV/Put").await.expect("a put through the direct route");
    assert!(put.header.unwrap().revision > 1);
    let mut kv = KvClient::new(ch.clone());
    let got = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].value, b"v");
    let mut maintenance =
        balsa_server::pb::etcdserverpb::maintenance_client::MaintenanceClient::new(ch.clone());
    assert!(maintenance.status(balsa_server::pb::etcdserverpb::StatusRequest {}).await.is_ok());
    // A method the KV service does not have, and a service nobody serves.
    for path in ["/etcdserverpb.KV/Nope", "/balsapb.Log/Nope", "/nobody.Service/Call"] {
        let refused = call(ch.clone(), path).await.expect_err(path);
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{path}: {refused:?}");
    }
    // The connection is still good after the refusals.
    assert!(kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.is_ok());
}

#[tokio::test]
async fn stopping_the_server_closes_its_connections() {
    let dir = Dir::new("client-server-stop");
    let (node, _) = single_node(&dir).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(kv_service::serve(KvService::new(node.clone(), 99, 1), listener));
    let mut kv = KvClient::new(channel(addr).await);
    assert!(kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.is_ok());
    server.abort();
    let _ = server.await;
    // The open connection is closed with the server: the next call fails rather than being
    // served by a connection task the server left behind.
    let after = tokio::time::timeout(
        Duration::from_secs(5),
        kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }),
    )
    .await
    .expect("an answer or an error in time");
    let error = after.expect_err("served after the server was stopped");
    // Cancelled when the connection closed under the call, Unavailable when it was already
    // gone and reconnecting was refused.
    assert!(matches!(error.code(), tonic::Code::Cancelled | tonic::Code::Unavailable), "{error:?}");
}

#[tokio::test]
async fn answers_carry_grpc_headers_and_no_date() {
    let dir = Dir::new("client-server-headers");
    let (_node, addr) = single_node(&dir).await;
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.unwrap();
    let request =
        tonic::Request::new(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
    let codec: ProstCodec<PutRequest, PutResponse> = ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let answer = grpc.unary(request, path, codec).await.expect("a put");
    let headers = answer.metadata().clone().into_headers();
    assert_eq!(headers.get("content-type").map(|v| v.as_bytes()), Some(&b"application/grpc"[..]));
    // hyper adds `date` to every HTTP/2 answer unless told not to; gRPC has no use for it.
    assert!(headers.get("date").is_none(), "{headers:?}");
}
