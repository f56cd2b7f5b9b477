//! The etcd v3 KV API served by a balsa node, through a generated gRPC client and, where Debian's
//! etcd-client is installed, through the real `etcdctl`.

mod common;

use balsa_server::kv_service;
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use common::{single_node, Dir};
use tonic::Code;

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

fn get(k: &str) -> pb::RangeRequest {
    pb::RangeRequest { key: k.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_api_speaks_etcd() {
    let dir = Dir::new("kvapi");
    let (_node, addr) = single_node(&dir).await;
    let mut c = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let r = c.put(put("fruit/apple", "red")).await.unwrap().into_inner();
    let first = r.header.unwrap().revision;
    c.put(put("fruit/banana", "yellow")).await.unwrap();
    let got = c.range(get("fruit/apple")).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].value, b"red");
    assert_eq!((got.kvs[0].create_revision, got.kvs[0].version), (first, 1));
    let prefix = pb::RangeRequest { key: "fruit/".into(), range_end: "fruit0".into(), ..Default::default() };
    assert_eq!(c.range(prefix.clone()).await.unwrap().into_inner().count, 2);
    // Serializable reads are served too.
    let serial = pb::RangeRequest { serializable: true, ..prefix.clone() };
    assert_eq!(c.range(serial).await.unwrap().into_inner().count, 2);
    // Compare-and-swap in a transaction.
    let cas = |expect: &str, new: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            result: 0,
            target: 3,
            key: "fruit/apple".into(),
            target_union: Some(pb::compare::TargetUnion::Value(expect.into())),
            range_end: vec![],
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put("fruit/apple", new))),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(get("fruit/apple"))),
        }],
    };
    assert!(c.txn(cas("red", "green")).await.unwrap().into_inner().succeeded);
    let failed = c.txn(cas("red", "blue")).await.unwrap().into_inner();
    assert!(!failed.succeeded);
    let Some(pb::response_op::Response::ResponseRange(now)) = &failed.responses[0].response else { panic!() };
    assert_eq!(now.kvs[0].value, b"green");
    // Deletes, with previous values.
    let del = pb::DeleteRangeRequest { key: "fruit/".into(), range_end: "fruit0".into(), prev_kv: true };
    let d = c.delete_range(del).await.unwrap().into_inner();
    assert_eq!((d.deleted, d.prev_kvs.len()), (2, 2));
    // etcd's errors, with etcd's codes.
    let e = c.put(put("", "x")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));
    let future = pb::RangeRequest { revision: 1_000, ..get("a") };
    assert_eq!(c.range(future).await.unwrap_err().code(), Code::OutOfRange);
    let head = c.put(put("x", "1")).await.unwrap().into_inner().header.unwrap().revision;
    c.compact(pb::CompactionRequest { revision: head, physical: false }).await.unwrap();
    let old = pb::RangeRequest { revision: first, ..get("fruit/apple") };
    let e = c.range(old).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    let leased = pb::PutRequest { lease: 12345, ..put("y", "1") };
    assert_eq!(c.put(leased).await.unwrap_err().code(), Code::NotFound);
    let huge = put("big", &"x".repeat(kv_service::MAX_REQUEST_BYTES + 1));
    assert!(c.put(huge).await.is_err(), "oversized requests are refused");
    assert_eq!(c.range(get("x")).await.unwrap().into_inner().kvs[0].value, b"1", "still serving");
}

/// The real etcdctl (Debian's etcd-client) against balsa, when it is installed (CI installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_puts_gets_and_deletes() {
    let Ok(path) = which_etcdctl() else {
        eprintln!("NOTE: etcdctl is not installed; apt-get install etcd-client to run this test");
        return;
    };
    let dir = Dir::new("etcdctl-kv");
    let (_node, addr) = single_node(&dir).await;
    let endpoint = format!("--endpoints={addr}");
    let run = |args: Vec<String>| {
        let path = path.clone();
        async move {
            let out = tokio::process::Command::new(path)
                .env("ETCDCTL_API", "3")
                .args(&args)
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let arg = |v: &[&str]| {
        std::iter::once(endpoint.clone()).chain(v.iter().map(|s| s.to_string())).collect::<Vec<_>>()
    };
    assert_eq!(run(arg(&["put", "greeting", "hello"])).await.trim(), "OK");
    assert_eq!(run(arg(&["put", "greet/2", "hi"])).await.trim(), "OK");
    assert_eq!(run(arg(&["get", "greeting"])).await, "greeting\nhello\n");
    assert_eq!(run(arg(&["get", "--prefix", "greet"])).await, "greet/2\nhi\ngreeting\nhello\n");
    assert_eq!(run(arg(&["del", "greet/2"])).await.trim(), "1");
    assert_eq!(run(arg(&["get", "--prefix", "greet", "--keys-only"])).await.trim(), "greeting");
    // `endpoint status`: Maintenance.Status, decoded by etcdctl into its own field names.
    let status = run(arg(&["endpoint", "status", "-w", "json"])).await;
    assert!(status.contains("\"version\":\"balsa-0.1.0\""), "{status}");
    assert!(status.contains("\"leader\":1,"), "the single member leads: {status}");
    assert!(status.contains("\"raft_term\":") || status.contains("\"raftTerm\":"), "{status}");
    // The header's revision (three writes after revision 1), and the files' size on disk.
    let number = |field: &str| -> i64 {
        let at = status.find(&format!("\"{field}\":")).unwrap_or_else(|| panic!("{field} in {status}"));
        let digits: String =
            status[at + field.len() + 3..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().unwrap_or_else(|_| panic!("{field} in {status}"))
    };
    assert_eq!(number("revision"), 4, "{status}");
    assert!(number("dbSize") > 0, "the WAL and any snapshot take room: {status}");
}

fn which_etcdctl() -> Result<String, ()> {
    for p in ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"] {
        if std::path::Path::new(p).exists() {
            return Ok(p.to_string());
        }
    }
    Err(())
}
