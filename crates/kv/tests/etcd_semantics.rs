//! The state machine against etcd's documented v3 semantics.

use balsa_kv::*;
use bytes::Bytes;
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest { key: b(k), value: b(v), ..Default::default() }
}

fn put(sm: &mut StateMachine, k: &str, v: &str) -> PutResponse {
    match sm.apply(&Command::Put(put_req(k, v))).unwrap() {
        Response::Put(p) => p,
        other => panic!("{other:?}"),
    }
}

fn get(sm: &StateMachine, range: KeyRange) -> RangeResponse {
    sm.range(&RangeRequest::of(range)).unwrap()
}

fn values(r: &RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).collect()
}

#[test]
fn puts_track_create_mod_revision_and_version() {
    let mut sm = StateMachine::default();
    assert_eq!(put(&mut sm, "k", "a").revision, 2);
    let mut req = put_req("k", "b");
    req.prev_kv = true;
    let Response::Put(r) = sm.apply(&Command::Put(req)).unwrap() else { panic!() };
    assert_eq!(r.revision, 3);
    assert_eq!(&r.prev_kv.unwrap().value[..], b"a");
    let kv = &get(&sm, KeyRange::single("k")).kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // Without prev_kv, none is returned.
    assert_eq!(put(&mut sm, "k", "c").prev_kv, None);
}

#[test]
fn bad_puts_are_refused_and_change_nothing() {
    let mut sm = StateMachine::default();
    assert_eq!(sm.apply(&Command::Put(put_req("", "x"))), Err(KvError::EmptyKey));
    let mut req = put_req("missing", "x");
    req.ignore_value = true;
    assert_eq!(sm.apply(&Command::Put(req)), Err(KvError::KeyNotFound));
    let mut req = put_req("k", "x");
    req.lease = 42;
    assert_eq!(sm.apply(&Command::Put(req)), Err(KvError::LeaseNotFound));
    assert_eq!(sm.mvcc.revision(), 1, "no refused write moved the revision");
    assert_eq!(KvError::LeaseNotFound.to_string(), "etcdserver: requested lease not found");
    // ignore_value keeps the value, takes the new lease.
    put(&mut sm, "k", "v1");
    sm.apply(&Command::LeaseGrant { id: 7, ttl_secs: 10 }).unwrap();
    let mut req = put_req("k", "ignored");
    req.ignore_value = true;
    req.lease = 7;
    sm.apply(&Command::Put(req)).unwrap();
    let kv = &get(&sm, KeyRange::single("k")).kvs[0];
    assert_eq!((&kv.value[..], kv.lease), (&b"v1"[..], 7));
}

#[test]
fn ranges_by_prefix_from_key_limit_sort_and_filters() {
    let mut sm = StateMachine::default();
    for (k, v) in [("a", "3"), ("b/1", "1"), ("b/2", "2"), ("b/3", "0"), ("c", "9")] {
        put(&mut sm, k, v);
    }
    assert_eq!(values(&get(&sm, KeyRange::prefix("b/"))), ["1", "2", "0"]);
    let from_b = KeyRange { key: b("b/2"), range_end: Bytes::from_static(b"\0") };
    assert_eq!(values(&get(&sm, from_b)), ["2", "0", "9"]);
    let all = KeyRange { key: Bytes::from_static(b"\0"), range_end: Bytes::from_static(b"\0") };
    assert_eq!(get(&sm, all.clone()).count, 5);
    let mut req = RangeRequest::of(all.clone());
    req.limit = 2;
    let r = sm.range(&req).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 5));
    req.sort_order = SortOrder::Descend;
    req.sort_target = SortTarget::Value;
    assert_eq!(values(&sm.range(&req).unwrap()), ["9", "3"]);
    req.limit = 0;
    req.sort_order = SortOrder::None;
    req.sort_target = SortTarget::Mod;
    assert_eq!(
        values(&sm.range(&req).unwrap()),
        ["3", "1", "2", "0", "9"],
        "a target without an order sorts ascending"
    );
    let mut req = RangeRequest::of(all.clone());
    req.keys_only = true;
    assert!(sm.range(&req).unwrap().kvs.iter().all(|kv| kv.value.is_empty()));
    req.keys_only = false;
    req.count_only = true;
    let r = sm.range(&req).unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 5);
    let mut req = RangeRequest::of(all);
    req.min_mod_revision = 3;
    req.max_mod_revision = 4;
    assert_eq!(values(&sm.range(&req).unwrap()), ["1", "2"]);
}

#[test]
fn reads_at_old_revisions_until_compaction() {
    let mut sm = StateMachine::default();
    put(&mut sm, "k", "1"); // 2
    put(&mut sm, "k", "2"); // 3
    let mut req = RangeRequest::of(KeyRange::single("k"));
    req.revision = 2;
    assert_eq!(values(&sm.range(&req).unwrap()), ["1"]);
    req.revision = 9;
    assert_eq!(sm.range(&req), Err(KvError::FutureRevision));
    sm.apply(&Command::Compact { revision: 3 }).unwrap();
    req.revision = 2;
    assert_eq!(sm.range(&req), Err(KvError::Compacted { compact_revision: 3 }));
    assert_eq!(
        KvError::Compacted { compact_revision: 3 }.to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(sm.apply(&Command::Compact { revision: 3 }), Err(KvError::Compacted { compact_revision: 3 }));
}

#[test]
fn delete_range_counts_returns_and_moves_the_revision_only_when_it_deletes() {
    let mut sm = StateMachine::default();
    put(&mut sm, "p/1", "a");
    put(&mut sm, "p/2", "b");
    let del = |prev_kv| Command::DeleteRange(DeleteRangeRequest { range: KeyRange::prefix("p/"), prev_kv });
    let Response::DeleteRange(r) = sm.apply(&del(true)).unwrap() else { panic!() };
    assert_eq!((r.deleted, r.prev_kvs.len(), r.revision), (2, 2, 4), "one revision for the whole delete");
    let Response::DeleteRange(r) = sm.apply(&del(false)).unwrap() else { panic!() };
    assert_eq!((r.deleted, r.revision), (0, 4), "deleting nothing writes nothing");
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare { range: KeyRange::single(b(key)), target, result }
}

#[test]
fn transactions_compare_then_run_one_branch_atomically_at_one_revision() {
    let mut sm = StateMachine::default();
    put(&mut sm, "balance", "100"); // 2
                                    // Compare-and-swap on the mod revision.
    let txn = |expected_mod: i64| {
        Command::Txn(TxnRequest {
            compare: vec![cmp("balance", CompareTarget::Mod(expected_mod), CompareResult::Equal)],
            success: vec![
                RequestOp::Put(put_req("balance", "90")),
                RequestOp::Put(put_req("log", "withdraw 10")),
                RequestOp::Range(RangeRequest::of(KeyRange::single("balance"))),
            ],
            failure: vec![RequestOp::Range(RangeRequest::of(KeyRange::single("balance")))],
        })
    };
    let Response::Txn(t) = sm.apply(&txn(2)).unwrap() else { panic!() };
    assert!(t.succeeded);
    assert_eq!(t.revision, 3, "both puts share one revision");
    let ResponseOp::Range(r) = &t.responses[2] else { panic!() };
    assert_eq!(values(r), ["90"], "a read in the transaction sees its earlier writes");
    let Response::Txn(t) = sm.apply(&txn(2)).unwrap() else { panic!() };
    assert!(!t.succeeded, "the stale compare fails");
    assert_eq!(t.revision, 3, "a read-only branch writes nothing");
    // etcd: comparing the value of a missing key fails; its version compares as 0.
    let missing_value = cmp("nope", CompareTarget::Value(b("")), CompareResult::Equal);
    let missing_version = cmp("nope", CompareTarget::Version(0), CompareResult::Equal);
    let run = |sm: &mut StateMachine, c: Compare| {
        let Response::Txn(t) =
            sm.apply(&Command::Txn(TxnRequest { compare: vec![c], ..Default::default() })).unwrap()
        else {
            panic!()
        };
        t.succeeded
    };
    assert!(!run(&mut sm, missing_value));
    assert!(run(&mut sm, missing_version));
}

#[test]
fn a_transaction_with_a_bad_operation_applies_nothing() {
    let mut sm = StateMachine::default();
    let mut bad = put_req("b", "x");
    bad.lease = 99;
    let txn = Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Put(put_req("a", "1")), RequestOp::Put(bad)],
        failure: vec![],
    });
    assert_eq!(sm.apply(&txn), Err(KvError::LeaseNotFound));
    assert!(get(&sm, KeyRange::single("a")).kvs.is_empty(), "the first put did not happen");
    assert_eq!(sm.mvcc.revision(), 1);
    let dup = Command::Txn(TxnRequest {
        success: vec![RequestOp::Put(put_req("a", "1")), RequestOp::Put(put_req("a", "2"))],
        ..Default::default()
    });
    assert_eq!(sm.apply(&dup), Err(KvError::DuplicateKey));
    let overlap = Command::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(put_req("a/1", "1")),
            RequestOp::DeleteRange(DeleteRangeRequest { range: KeyRange::prefix("a/"), prev_kv: false }),
        ],
        ..Default::default()
    });
    assert_eq!(sm.apply(&overlap), Err(KvError::DuplicateKey));
}

#[test]
fn leases_take_their_keys_with_them() {
    let mut sm = StateMachine::default();
    assert_eq!(sm.apply(&Command::LeaseGrant { id: 0, ttl_secs: 5 }), Err(KvError::InvalidLeaseId));
    sm.apply(&Command::LeaseGrant { id: 5, ttl_secs: 5 }).unwrap();
    assert_eq!(sm.apply(&Command::LeaseGrant { id: 5, ttl_secs: 5 }), Err(KvError::LeaseExists));
    for k in ["s/1", "s/2", "s/3"] {
        let mut req = put_req(k, "up");
        req.lease = 5;
        sm.apply(&Command::Put(req)).unwrap();
    }
    // Re-put without the lease detaches s/3; deleting s/2 detaches it too.
    sm.apply(&Command::Put(put_req("s/3", "kept"))).unwrap();
    sm.apply(&Command::DeleteRange(DeleteRangeRequest { range: KeyRange::single("s/2"), prev_kv: false }))
        .unwrap();
    assert_eq!(sm.leases[&5].keys.len(), 1);
    let before = sm.mvcc.revision();
    let Response::LeaseRevoke { revision } = sm.apply(&Command::LeaseRevoke { id: 5 }).unwrap() else {
        panic!()
    };
    assert_eq!(revision, before + 1, "the revoke deletes in one revision");
    assert_eq!(values(&get(&sm, KeyRange::prefix("s/"))), ["kept"]);
    assert_eq!(sm.apply(&Command::LeaseRevoke { id: 5 }), Err(KvError::LeaseNotFound));
    assert_eq!(sm.apply(&Command::LeaseKeepAlive { id: 5 }), Err(KvError::LeaseNotFound), "revoked");
}

#[test]
fn a_put_moves_its_key_from_the_old_lease_to_the_new_one() {
    let mut sm = StateMachine::default();
    for id in [5, 6] {
        sm.apply(&Command::LeaseGrant { id, ttl_secs: 5 }).unwrap();
    }
    let with_lease = |k: &str, v: &str, lease| Command::Put(PutRequest { lease, ..put_req(k, v) });
    sm.apply(&with_lease("k", "on 5", 5)).unwrap();
    sm.apply(&with_lease("k", "still on 5", 5)).unwrap();
    assert_eq!(sm.leases[&5].keys.len(), 1, "a re-put on the same lease keeps one entry");
    sm.apply(&with_lease("k", "on 6", 6)).unwrap();
    assert!(sm.leases[&5].keys.is_empty(), "the old lease lets go");
    assert_eq!(sm.leases[&6].keys.len(), 1);
    sm.apply(&Command::LeaseRevoke { id: 5 }).unwrap();
    assert_eq!(values(&get(&sm, KeyRange::single("k"))), ["on 6"], "revoking the old lease leaves it");
    sm.apply(&Command::LeaseRevoke { id: 6 }).unwrap();
    assert!(get(&sm, KeyRange::single("k")).kvs.is_empty(), "the new lease takes it");
}

/// Raft thesis 6.3: a retried write in a session is answered from memory, not applied twice.
#[test]
fn a_sessioned_write_applies_once_however_often_it_is_retried() {
    let mut sm = StateMachine::default();
    sm.apply(&Command::Clock { now_ms: 1_000 }).unwrap();
    let Ok(Response::SessionRegistered { client_id }) =
        sm.apply(&Command::SessionRegister { timeout_ms: 10_000, now_ms: 0 })
    else {
        panic!()
    };
    let put = |seq| Command::Sessioned { client_id, seq, command: Box::new(Command::Put(put_req("n", "x"))) };
    let first = sm.apply(&put(1)).unwrap();
    let retry = sm.apply(&put(1)).unwrap();
    assert_eq!(first, retry, "the retry gets the first answer");
    let kv = get(&sm, KeyRange::single("n")).kvs[0].clone();
    assert_eq!((kv.version, sm.mvcc.revision()), (1, 2), "applied once");
    sm.apply(&put(2)).unwrap();
    assert_eq!(get(&sm, KeyRange::single("n")).kvs[0].version, 2, "a new number is a new write");
    assert_eq!(sm.apply(&put(1)), Err(KvError::StaleSequence { seq: 1, last_seq: 2 }));
    // Only committed leader time expires a session.
    sm.apply(&Command::Clock { now_ms: 10_999 }).unwrap();
    assert!(sm.apply(&put(3)).is_ok(), "used at 10.999 s: alive until 20.999 s");
    sm.apply(&Command::Clock { now_ms: 21_000 }).unwrap();
    assert_eq!(sm.apply(&put(4)), Err(KvError::SessionExpired { client_id }));
    assert_eq!(get(&sm, KeyRange::single("n")).kvs[0].version, 3, "nothing applied on an expired session");
    let nested = Command::Sessioned { client_id, seq: 1, command: Box::new(Command::Clock { now_ms: 1 }) };
    assert!(sm.apply(&nested).is_err(), "only client writes take a session");
}

#[test]
fn keep_alive_answers_the_granted_ttl_and_changes_no_state() {
    let mut sm = StateMachine::default();
    sm.apply(&Command::LeaseGrant { id: 3, ttl_secs: 42 }).unwrap();
    let before = sm.clone();
    assert_eq!(
        sm.apply(&Command::LeaseKeepAlive { id: 3 }),
        Ok(Response::LeaseKeepAlive { id: 3, ttl_secs: 42 })
    );
    assert_eq!(sm, before, "renewal is a matter of each server's clock, not of replicated state");
}

#[test]
fn the_member_table_records_replaces_and_forgets() {
    let mut sm = StateMachine::default();
    let attrs = |id: u64, url: &str| MemberAttrs { id, peer_urls: vec![url.into()], ..Default::default() };
    sm.apply(&Command::MemberPut(attrs(5, "http://a:1"))).unwrap();
    sm.apply(&Command::MemberPut(attrs(6, "http://b:1"))).unwrap();
    let Response::Members(table) = sm.apply(&Command::MemberPut(attrs(5, "http://c:1"))).unwrap() else {
        panic!()
    };
    assert_eq!(table[&5].peer_urls, ["http://c:1"], "a put replaces");
    assert_eq!(table.len(), 2);
    sm.apply(&Command::MemberForget { id: 5 }).unwrap();
    assert_eq!(sm.members.keys().copied().collect::<Vec<_>>(), [6]);
    assert!(sm.apply(&Command::MemberPut(attrs(0, "http://d:1"))).is_err(), "id 0 is nobody");
    assert_eq!(sm.mvcc.revision(), 1, "membership is not a keyspace write");
}

#[test]
fn watch_history_replays_changes_in_order_with_previous_values() {
    let mut sm = StateMachine::default();
    put(&mut sm, "w/a", "1"); // 2
    put(&mut sm, "x", "other"); // 3
    put(&mut sm, "w/a", "2"); // 4
    sm.apply(&Command::DeleteRange(DeleteRangeRequest { range: KeyRange::single("w/a"), prev_kv: false }))
        .unwrap(); // 5
    let events = sm.mvcc.events_since(&KeyRange::prefix("w/"), 3).unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|(r, e)| {
            (r.main, e.kind, e.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into_owned()))
        })
        .collect();
    assert_eq!(seen, vec![(4, EventKind::Put, Some("1".into())), (5, EventKind::Delete, Some("2".into()))]);
    assert_eq!(sm.mvcc.events_since(&KeyRange::prefix("w/"), 2).unwrap().len(), 3);
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    TxnSwap(u8, u8),
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..6).prop_map(Op::Delete),
        2 => (0u8..6, 0u8..6).prop_map(|(a, b)| Op::TxnSwap(a, b)),
        1 => Just(Op::Compact),
    ]
}

proptest! {
    /// Against a plain map: the current state always matches; the revision grows by exactly one
    /// per command that wrote; every historical read at a retained revision returns what the
    /// model held then.
    #[test]
    fn matches_a_plain_map_at_every_revision(ops in prop::collection::vec(op(), 1..80)) {
        let mut sm = StateMachine::default();
        let mut model = std::collections::BTreeMap::<u8, u8>::new();
        let mut snapshots = vec![(1i64, model.clone())];
        let key = |k: u8| Bytes::from(vec![b'k', k]);
        for op in ops {
            let before = sm.mvcc.revision();
            let wrote = match op {
                Op::Put(k, v) => {
                    sm.apply(&Command::Put(PutRequest { key: key(k), value: Bytes::from(vec![v]), ..Default::default() })).unwrap();
                    model.insert(k, v);
                    true
                }
                Op::Delete(k) => {
                    sm.apply(&Command::DeleteRange(DeleteRangeRequest { range: KeyRange::single(key(k)), prev_kv: false })).unwrap();
                    model.remove(&k).is_some()
                }
                Op::TxnSwap(a, bk) => {
                    // Swap two keys' values if both exist, in one transaction.
                    let (Some(&va), Some(&vb)) = (model.get(&a), model.get(&bk)) else { continue };
                    if a == bk { continue; }
                    let txn = TxnRequest {
                        compare: vec![],
                        success: vec![
                            RequestOp::Put(PutRequest { key: key(a), value: Bytes::from(vec![vb]), ..Default::default() }),
                            RequestOp::Put(PutRequest { key: key(bk), value: Bytes::from(vec![va]), ..Default::default() }),
                        ],
                        failure: vec![],
                    };
                    sm.apply(&Command::Txn(txn)).unwrap();
                    model.insert(a, vb);
                    model.insert(bk, va);
                    true
                }
                Op::Compact => {
                    let target = sm.mvcc.revision();
                    if target > sm.mvcc.compact_revision() {
                        sm.apply(&Command::Compact { revision: target }).unwrap();
                        snapshots.retain(|(r, _)| *r >= target);
                    }
                    false
                }
            };
            prop_assert_eq!(sm.mvcc.revision(), before + i64::from(wrote));
            if wrote {
                snapshots.push((sm.mvcc.revision(), model.clone()));
            }
            let all = KeyRange::prefix("k");
            let now: Vec<(u8, u8)> = sm.range(&RangeRequest::of(all.clone())).unwrap().kvs.iter().map(|kv| (kv.key[1], kv.value[0])).collect();
            prop_assert_eq!(now, model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
        }
        for (rev, then) in &snapshots {
            let mut req = RangeRequest::of(KeyRange::prefix("k"));
            req.revision = *rev;
            let got: Vec<(u8, u8)> = sm.range(&req).unwrap().kvs.iter().map(|kv| (kv.key[1], kv.value[0])).collect();
            prop_assert_eq!(got, then.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), "at revision {}", rev);
        }
    }
}
