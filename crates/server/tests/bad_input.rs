//! Bad input through every etcd service of a single-member server: each request gets etcd 3.4's
//! gRPC code and message (from etcd's `rpctypes`), never a crash or a hang, and afterwards the
//! server still serves and every key written before is intact.

mod common;

use std::future::Future;
use std::time::Duration;

use balsa_server::kv_service::{MAX_DECODING_BYTES, MAX_REQUEST_BYTES, MAX_TXN_OPS};
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::cluster_client::ClusterClient;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::pb::etcdserverpb::lease_client::LeaseClient;
use balsa_server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use balsa_server::pb::etcdserverpb::watch_client::WatchClient;
use pb::request_op::Request as Op;
use tonic::transport::Channel;
use tonic::{Code, Status};

const TOO_LARGE: &str = "etcdserver: request is too large";
const EMPTY_KEY: &str = "etcdserver: key is not provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const DUPLICATE: &str = "etcdserver: duplicate key given in txn request";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
const BAD_URLS: &str = "etcdserver: given member URLs are invalid";

/// Every call answers within 10 s: a hang is a failure too.
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 10 s"))
}

/// Asserts that `result` is the etcd error (`code`, `message`).
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code, message: &str) {
    match result {
        Ok(v) => panic!("{what}: expected {code:?} {message:?}, got {v:?}"),
        Err(e) => assert_eq!((e.code(), e.message()), (code, message), "{what}"),
    }
}

/// Asserts that `result` is tonic's refusal of a message over the decoding limit (grpc-go
/// answers ResourceExhausted here; a documented difference): an error, not a hang.
fn transport_refused<T: std::fmt::Debug>(what: &str, result: Result<T, Status>) {
    let e = result.expect_err(what);
    assert_eq!(e.code(), Code::OutOfRange, "{what}: {e:?}");
    assert!(e.message().contains("decoded message length too large"), "{what}: {e:?}");
}

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

fn get(k: &str) -> pb::RangeRequest {
    pb::RangeRequest { key: k.into(), ..Default::default() }
}

fn op_put(k: &str, v: &str) -> pb::RequestOp {
    pb::RequestOp { request: Some(Op::RequestPut(put(k, v))) }
}

fn op_get(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(Op::RequestRange(r)) }
}

fn op_del(k: &str, end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: false,
        })),
    }
}

fn txn(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest { compare: vec![], success, failure: vec![] }
}

fn big(n: usize) -> String {
    "x".repeat(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcds_errors_and_the_server_keeps_serving() {
    let dir = common::Dir::new("bad-input");
    let (_node, addr) = common::single_node(&dir).await;
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    // Clients send what they like: lift tonic's client-side limits so the server is tested.
    let mut kv = KvClient::new(channel.clone()).max_encoding_message_size(8 << 20);
    let mut lease = LeaseClient::new(channel.clone()).max_encoding_message_size(8 << 20);
    let mut cluster = ClusterClient::new(channel.clone()).max_encoding_message_size(8 << 20);
    let mut watch = WatchClient::new(channel.clone()).max_encoding_message_size(8 << 20);
    let mut maintenance = MaintenanceClient::new(channel.clone());

    // Data written before, checked at the end.
    for i in 0..10 {
        bounded("put", kv.put(put(&format!("keep/{i}"), &format!("v{i}")))).await.unwrap();
    }
    let first = bounded("put", kv.put(put("old", "1"))).await.unwrap().into_inner().header.unwrap().revision;
    bounded("put", kv.put(put("old", "2"))).await.unwrap();

    // --- Put ---
    refused("put empty key", bounded("put", kv.put(put("", "x"))).await, Code::InvalidArgument, EMPTY_KEY);
    let huge = put("big", &big(MAX_REQUEST_BYTES));
    refused("put over 1.5 MiB", bounded("put", kv.put(huge)).await, Code::InvalidArgument, TOO_LARGE);
    let huge_key = put(&big(MAX_REQUEST_BYTES + 1), "v");
    refused(
        "put with a 1.5 MiB key",
        bounded("put", kv.put(huge_key)).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    // Just under the limit is accepted (etcd counts the encoded request).
    let fits = put("fits", &big(MAX_REQUEST_BYTES - 64));
    bounded("put", kv.put(fits)).await.expect("a request under the limit is taken");
    transport_refused(
        "put over gRPC's limit",
        bounded("put", kv.put(put("k", &big(MAX_DECODING_BYTES)))).await,
    );
    let leased = pb::PutRequest { lease: 0x1234_5678, ..put("l", "1") };
    refused(
        "put with an unknown lease",
        bounded("put", kv.put(leased)).await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    let ignore_missing = pb::PutRequest { ignore_value: true, ..put("missing", "") };
    refused(
        "ignore_value on a missing key",
        bounded("put", kv.put(ignore_missing)).await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    let value_given = pb::PutRequest { ignore_value: true, ..put("old", "x") };
    refused(
        "ignore_value with a value",
        bounded("put", kv.put(value_given)).await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    let lease_given = pb::PutRequest { ignore_lease: true, lease: 5, ..put("old", "x") };
    refused(
        "ignore_lease with a lease",
        bounded("put", kv.put(lease_given)).await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );

    // --- Range ---
    refused("range empty key", bounded("range", kv.range(get(""))).await, Code::InvalidArgument, EMPTY_KEY);
    let inverted = pb::RangeRequest { range_end: "a".into(), ..get("z") };
    let r = bounded("range", kv.range(inverted.clone())).await.expect("etcd answers an inverted range");
    assert_eq!((r.get_ref().count, r.get_ref().kvs.len()), (0, 0));
    let serial = pb::RangeRequest { serializable: true, ..inverted };
    assert_eq!(bounded("range", kv.range(serial)).await.unwrap().into_inner().count, 0);
    let all_keep = pb::RangeRequest { range_end: "keep0".into(), ..get("keep/") };
    let negative_limit = pb::RangeRequest { limit: -5, ..all_keep.clone() };
    let r = bounded("range", kv.range(negative_limit)).await.unwrap().into_inner();
    assert_eq!((r.kvs.len(), r.more), (10, false), "a negative limit is no limit, as in etcd");
    let negative_rev = pb::RangeRequest { revision: -3, ..get("old") };
    let r = bounded("range", kv.range(negative_rev)).await.unwrap().into_inner();
    assert_eq!(r.kvs[0].value, b"2", "a negative revision reads now, as in etcd");
    let future = pb::RangeRequest { revision: 1 << 40, ..get("old") };
    refused("range future revision", bounded("range", kv.range(future)).await, Code::OutOfRange, FUTURE);
    // A long key under gRPC's limit is an ordinary (empty) read in etcd, not an error.
    let long = bounded("range", kv.range(get(&big(MAX_REQUEST_BYTES + 1)))).await.unwrap().into_inner();
    assert_eq!(long.count, 0);
    transport_refused(
        "range over gRPC's limit",
        bounded("range", kv.range(get(&big(MAX_DECODING_BYTES)))).await,
    );
    let bad_sort = pb::RangeRequest { sort_order: 9, sort_target: 42, ..all_keep.clone() };
    assert_eq!(bounded("range", kv.range(bad_sort)).await.unwrap().into_inner().count, 10);

    // --- DeleteRange ---
    let del =
        |k: &str, end: &str| pb::DeleteRangeRequest { key: k.into(), range_end: end.into(), prev_kv: true };
    refused(
        "delete empty key",
        bounded("delete", kv.delete_range(del("", ""))).await,
        Code::InvalidArgument,
        EMPTY_KEY,
    );
    let d =
        bounded("delete", kv.delete_range(del("z", "a"))).await.expect("an inverted delete deletes nothing");
    assert_eq!(d.into_inner().deleted, 0);
    refused(
        "delete with a huge key",
        bounded("delete", kv.delete_range(del(&big(MAX_REQUEST_BYTES + 1), ""))).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );

    // --- Txn ---
    let t = |ops: Vec<pb::RequestOp>| txn(ops);
    let many: Vec<_> = (0..=MAX_TXN_OPS).map(|i| op_put(&format!("many/{i}"), "v")).collect();
    refused("129 ops", bounded("txn", kv.txn(t(many))).await, Code::InvalidArgument, TOO_MANY_OPS);
    let fine: Vec<_> = (0..MAX_TXN_OPS).map(|i| op_get(get(&format!("many/{i}")))).collect();
    bounded("txn", kv.txn(t(fine))).await.expect("128 ops are allowed");
    let compare = |k: &str| pb::Compare {
        result: 0,
        target: 0,
        key: k.into(),
        range_end: vec![],
        target_union: Some(pb::compare::TargetUnion::Version(0)),
    };
    let many_compares = pb::TxnRequest {
        compare: (0..=MAX_TXN_OPS).map(|i| compare(&format!("c{i}"))).collect(),
        ..t(vec![])
    };
    refused("129 compares", bounded("txn", kv.txn(many_compares)).await, Code::InvalidArgument, TOO_MANY_OPS);
    let dup = t(vec![op_put("d", "1"), op_put("d", "2")]);
    refused("duplicate put", bounded("txn", kv.txn(dup)).await, Code::InvalidArgument, DUPLICATE);
    let put_in_delete = t(vec![op_del("d", "e"), op_put("dx", "1")]);
    refused(
        "put inside a delete",
        bounded("txn", kv.txn(put_in_delete)).await,
        Code::InvalidArgument,
        DUPLICATE,
    );
    // etcd checks the branch that does not run too.
    let dup_failure = pb::TxnRequest { failure: vec![op_put("d", "1"), op_put("d", "2")], ..t(vec![]) };
    refused(
        "duplicate in failure",
        bounded("txn", kv.txn(dup_failure)).await,
        Code::InvalidArgument,
        DUPLICATE,
    );
    let nested = pb::RequestOp {
        request: Some(Op::RequestTxn(pb::TxnRequest {
            compare: vec![],
            success: vec![op_put("n", "1")],
            failure: vec![op_put("n", "2")],
        })),
    };
    bounded("txn", kv.txn(t(vec![nested.clone()]))).await.expect("the two branches may write one key");
    refused(
        "nested put twice",
        bounded("txn", kv.txn(t(vec![nested, op_put("n", "3")]))).await,
        Code::InvalidArgument,
        DUPLICATE,
    );
    let empty_op = t(vec![pb::RequestOp { request: None }]);
    refused("empty op", bounded("txn", kv.txn(empty_op)).await, Code::InvalidArgument, KEY_NOT_FOUND);
    let empty_compare = pb::TxnRequest { compare: vec![compare("")], ..t(vec![]) };
    refused(
        "empty compare key",
        bounded("txn", kv.txn(empty_compare)).await,
        Code::InvalidArgument,
        EMPTY_KEY,
    );
    refused(
        "empty range key in txn",
        bounded("txn", kv.txn(t(vec![op_get(get(""))]))).await,
        Code::InvalidArgument,
        EMPTY_KEY,
    );
    let future_read = t(vec![op_get(pb::RangeRequest { revision: 1 << 40, ..get("old") })]);
    refused(
        "txn read at a future revision",
        bounded("txn", kv.txn(future_read)).await,
        Code::OutOfRange,
        FUTURE,
    );
    let leased = t(vec![
        op_put("ok", "1"),
        pb::RequestOp { request: Some(Op::RequestPut(pb::PutRequest { lease: 777, ..put("l", "1") })) },
    ]);
    refused(
        "txn put with an unknown lease",
        bounded("txn", kv.txn(leased)).await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    assert_eq!(
        bounded("range", kv.range(get("ok"))).await.unwrap().into_inner().count,
        0,
        "nothing of it applied"
    );
    let bad_target =
        pb::TxnRequest { compare: vec![pb::Compare { target: 17, ..compare("a") }], ..t(vec![]) };
    refused(
        "invalid compare target",
        bounded("txn", kv.txn(bad_target)).await,
        Code::InvalidArgument,
        "etcdserver: invalid compare target",
    );
    let bad_result = pb::TxnRequest { compare: vec![pb::Compare { result: 9, ..compare("a") }], ..t(vec![]) };
    refused(
        "invalid compare result",
        bounded("txn", kv.txn(bad_result)).await,
        Code::InvalidArgument,
        "etcdserver: invalid compare result",
    );
    let huge_txn =
        t(vec![op_put("a", &big(MAX_REQUEST_BYTES / 2)), op_put("b", &big(MAX_REQUEST_BYTES / 2))]);
    refused("txn over 1.5 MiB", bounded("txn", kv.txn(huge_txn)).await, Code::InvalidArgument, TOO_LARGE);

    // --- Compact, and reads of compacted revisions ---
    let head = bounded("put", kv.put(put("head", "1"))).await.unwrap().into_inner().header.unwrap().revision;
    let compact = |revision| pb::CompactionRequest { revision, physical: false };
    refused(
        "compact future",
        bounded("compact", kv.compact(compact(head + 100))).await,
        Code::OutOfRange,
        FUTURE,
    );
    bounded("compact", kv.compact(compact(head - 1))).await.unwrap();
    refused(
        "compact again",
        bounded("compact", kv.compact(compact(first))).await,
        Code::OutOfRange,
        COMPACTED,
    );
    refused(
        "compact negative",
        bounded("compact", kv.compact(compact(-1))).await,
        Code::OutOfRange,
        COMPACTED,
    );
    let old = pb::RangeRequest { revision: first, ..get("old") };
    refused("range compacted", bounded("range", kv.range(old.clone())).await, Code::OutOfRange, COMPACTED);
    refused(
        "txn read of a compacted revision",
        bounded("txn", kv.txn(t(vec![op_get(old)]))).await,
        Code::OutOfRange,
        COMPACTED,
    );

    // --- Lease ---
    let revoke = pb::LeaseRevokeRequest { id: 0x0bad };
    refused(
        "revoke unknown",
        bounded("revoke", lease.lease_revoke(revoke)).await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    let ttl = bounded("ttl", lease.lease_time_to_live(pb::LeaseTimeToLiveRequest { id: 0x0bad, keys: true }))
        .await
        .expect("etcd answers an unknown lease's TTL with -1")
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    let grant = |ttl, id| pb::LeaseGrantRequest { ttl, id };
    refused(
        "ttl too large",
        bounded("grant", lease.lease_grant(grant(9_000_000_001, 0))).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    let granted = bounded("grant", lease.lease_grant(grant(60, 4242))).await.unwrap().into_inner();
    assert_eq!(granted.id, 4242);
    refused(
        "grant an existing id",
        bounded("grant", lease.lease_grant(grant(60, 4242))).await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );

    // --- Watch ---
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stream = bounded("watch", watch.watch(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let create = |key: Vec<u8>, range_end: Vec<u8>| pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key,
            range_end,
            ..Default::default()
        })),
    };
    tx.send(create(b"z".to_vec(), b"a".to_vec())).await.unwrap();
    let r = bounded("watch", stream.message()).await.unwrap().unwrap();
    assert!(r.created && r.canceled, "{r:?}");
    assert_eq!((r.watch_id, r.cancel_reason.as_str()), (-1, "mvcc: watcher range is empty"));
    tx.send(create(big(MAX_REQUEST_BYTES + 1).into_bytes(), vec![])).await.unwrap();
    let r = bounded("watch", stream.message()).await.unwrap().unwrap();
    assert!(r.created && !r.canceled, "a long key under gRPC's limit is watched, as in etcd: {r:?}");
    tx.send(create(big(MAX_DECODING_BYTES).into_bytes(), vec![])).await.unwrap();
    transport_refused("watch over gRPC's limit", bounded("watch", stream.message()).await);
    drop(tx);

    // --- Cluster ---
    refused(
        "remove unknown",
        bounded("remove", cluster.member_remove(pb::MemberRemoveRequest { id: 0xdead })).await,
        Code::NotFound,
        MEMBER_NOT_FOUND,
    );
    refused(
        "promote unknown",
        bounded("promote", cluster.member_promote(pb::MemberPromoteRequest { id: 0xdead })).await,
        Code::NotFound,
        MEMBER_NOT_FOUND,
    );
    let add = |urls: &[&str]| pb::MemberAddRequest {
        peer_ur_ls: urls.iter().map(|u| u.to_string()).collect(),
        is_learner: false,
    };
    for urls in
        [&[][..], &["not a url"], &["http://"], &["http://127.0.0.1:notaport"], &["http://127.0.0.1:1", "x"]]
    {
        refused(
            &format!("add {urls:?}"),
            bounded("add", cluster.member_add(add(urls))).await,
            Code::InvalidArgument,
            BAD_URLS,
        );
    }
    let update = pb::MemberUpdateRequest { id: 0xdead, peer_ur_ls: vec!["http://127.0.0.1:1".into()] };
    refused(
        "update unknown",
        bounded("update", cluster.member_update(update)).await,
        Code::NotFound,
        MEMBER_NOT_FOUND,
    );
    let huge_add = add(&[&format!("http://127.0.0.1:1/{}", big(MAX_DECODING_BYTES))]);
    transport_refused("member add over gRPC's limit", bounded("add", cluster.member_add(huge_add)).await);
    let members = bounded("list", cluster.member_list(pb::MemberListRequest {})).await.unwrap().into_inner();
    assert_eq!(members.members.len(), 1, "no member was added: {members:?}");

    // --- Still serving, nothing lost ---
    bounded("status", maintenance.status(pb::StatusRequest {})).await.unwrap();
    bounded("put", kv.put(put("after", "yes"))).await.unwrap();
    assert_eq!(bounded("range", kv.range(get("after"))).await.unwrap().into_inner().kvs[0].value, b"yes");
    let r = bounded("range", kv.range(all_keep)).await.unwrap().into_inner();
    let values: Vec<_> = r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect();
    assert_eq!(values, (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>());
    assert_eq!(bounded("range", kv.range(get("old"))).await.unwrap().into_inner().kvs[0].value, b"2");
    assert_eq!(bounded("range", kv.range(get("n"))).await.unwrap().into_inner().kvs[0].value, b"1");
    assert_eq!(bounded("range", kv.range(get("fits"))).await.unwrap().into_inner().count, 1);
}
