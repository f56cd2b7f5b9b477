//! Commands and snapshots survive encoding; malformed input is an error, never a panic.

use balsa_kv::*;
use bytes::Bytes;
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn sample_commands() -> Vec<Command> {
    let put = PutRequest {
        key: b("k"),
        value: b("v"),
        lease: 3,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: true,
    };
    let mut range = RangeRequest::of(KeyRange::prefix("p/"));
    range.limit = 5;
    range.revision = 9;
    range.sort_order = SortOrder::Descend;
    range.sort_target = SortTarget::Mod;
    range.keys_only = true;
    range.min_create_revision = 2;
    let inner = TxnRequest {
        compare: vec![Compare {
            range: KeyRange::single(b("x")),
            target: CompareTarget::Value(b("1")),
            result: CompareResult::NotEqual,
        }],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            range: KeyRange::prefix("d/"),
            prev_kv: true,
        })],
        failure: vec![],
    };
    vec![
        Command::Put(put.clone()),
        Command::DeleteRange(DeleteRangeRequest { range: KeyRange::single(b("k")), prev_kv: false }),
        Command::Txn(TxnRequest {
            compare: vec![
                Compare {
                    range: KeyRange::single(b("a")),
                    target: CompareTarget::Version(0),
                    result: CompareResult::Equal,
                },
                Compare {
                    range: KeyRange::single(b("a")),
                    target: CompareTarget::Create(1),
                    result: CompareResult::Greater,
                },
                Compare {
                    range: KeyRange::single(b("a")),
                    target: CompareTarget::Mod(2),
                    result: CompareResult::Less,
                },
                Compare {
                    range: KeyRange::single(b("a")),
                    target: CompareTarget::Lease(4),
                    result: CompareResult::Equal,
                },
            ],
            success: vec![RequestOp::Put(put), RequestOp::Range(range), RequestOp::Txn(inner)],
            failure: vec![RequestOp::Range(RangeRequest::of(KeyRange::single(b("z"))))],
        }),
        Command::Compact { revision: 42 },
        Command::LeaseGrant { id: 7, ttl_secs: 60 },
        Command::LeaseRevoke { id: 7 },
        Command::LeaseKeepAlive { id: 7 },
        Command::MemberPut(MemberAttrs {
            id: u64::MAX - 3,
            name: "n\u{e9}1".into(),
            peer_urls: vec!["http://10.0.0.1:2380".into(), "http://10.0.0.2:2380".into()],
            client_urls: vec!["http://10.0.0.1:2379".into()],
        }),
        Command::MemberForget { id: u64::MAX - 3 },
        Command::SessionRegister { timeout_ms: 60_000, now_ms: 1_790_000_000_000 },
        Command::SessionClose { client_id: 3 },
        Command::Clock { now_ms: 1_790_000_000_000 },
        Command::Sessioned {
            client_id: 3,
            seq: 9,
            command: Box::new(Command::Put(PutRequest { key: b("s"), value: b("1"), ..Default::default() })),
        },
        Command::Stream(StreamCommand::Create {
            stream: "orders".into(),
            retention: Retention { max_bytes: 1 << 20, max_age_ms: 3_600_000 },
        }),
        Command::Stream(StreamCommand::Append {
            stream: "orders".into(),
            timestamp_ms: 1_700_000_000_123,
            records: vec![b("one"), Bytes::new(), b("three")],
        }),
        Command::Stream(StreamCommand::Trim { stream: "orders".into(), before_offset: u64::MAX }),
        Command::Stream(StreamCommand::Delete { stream: "\u{e9}v\u{e9}nements".into() }),
    ]
}

#[test]
fn every_command_round_trips_and_every_truncation_is_an_error() {
    for cmd in sample_commands() {
        let bytes = cmd.encode();
        assert_eq!(Command::decode(bytes.clone()).as_ref(), Ok(&cmd));
        for cut in 0..bytes.len() {
            assert!(Command::decode(bytes.slice(..cut)).is_err(), "{cmd:?} cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Command::decode(Bytes::from(longer)).is_err(), "trailing bytes are refused");
    }
}

#[test]
fn sessions_do_not_nest() {
    let put = Command::Put(PutRequest { key: b("k"), ..Default::default() });
    let once = Command::Sessioned { client_id: 1, seq: 1, command: Box::new(put) };
    let twice = Command::Sessioned { client_id: 1, seq: 1, command: Box::new(once) };
    assert_eq!(
        Command::decode(twice.encode()),
        Err(KvError::Malformed("a sessioned command inside another"))
    );
}

#[test]
fn a_state_with_sessions_and_their_remembered_results_round_trips() {
    let mut sm = StateMachine::default();
    sm.apply(&Command::Clock { now_ms: 5_000 }).unwrap();
    let Response::SessionRegistered { client_id } =
        sm.apply(&Command::SessionRegister { timeout_ms: 9_000, now_ms: 0 }).unwrap()
    else {
        panic!()
    };
    sm.apply(&Command::SessionRegister { timeout_ms: 9_000, now_ms: 0 }).unwrap();
    let put =
        |k: &str| Command::Put(PutRequest { key: b(k), value: b("v"), prev_kv: true, ..Default::default() });
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(PutRequest { key: b("t"), value: b("1"), prev_kv: true, ..Default::default() }),
            RequestOp::Range(RangeRequest::of(KeyRange::prefix(b("")))),
            RequestOp::Txn(TxnRequest::default()),
            RequestOp::DeleteRange(DeleteRangeRequest { range: KeyRange::single(b("a")), prev_kv: true }),
        ],
        failure: vec![],
    };
    sm.apply(&put("a")).unwrap();
    let session = |seq, command| Command::Sessioned { client_id, seq, command: Box::new(command) };
    sm.apply(&session(1, Command::Txn(txn))).unwrap();
    sm.apply(&session(2, Command::LeaseRevoke { id: 404 })).unwrap_err();
    let restored = StateMachine::decode(sm.encode()).unwrap();
    assert_eq!(restored, sm, "sessions, the clock and the remembered error survive a snapshot");
    sm.apply(&session(3, Command::Txn(TxnRequest::default()))).unwrap();
    let create = StreamCommand::Create { stream: "s".into(), retention: Retention::default() };
    sm.apply(&Command::Stream(create)).unwrap();
    let append = |stream: &str| {
        Command::Stream(StreamCommand::Append {
            stream: stream.into(),
            timestamp_ms: 7,
            records: vec![b("r")],
        })
    };
    sm.apply(&session(4, append("s"))).unwrap();
    assert_eq!(StateMachine::decode(sm.encode()).unwrap(), sm, "a remembered append");
    sm.apply(&session(5, append("missing"))).unwrap_err();
    assert_eq!(StateMachine::decode(sm.encode()).unwrap(), sm, "a remembered stream error");
    assert_eq!(StateMachine::decode(sm.encode()).unwrap(), sm, "a remembered transaction result too");
    let bytes = sm.encode();
    for cut in 0..bytes.len() {
        assert!(StateMachine::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
    }
}

#[test]
fn deeply_nested_transactions_are_refused_not_a_stack_overflow() {
    let mut t = TxnRequest::default();
    for _ in 0..100 {
        t = TxnRequest { success: vec![RequestOp::Txn(t)], ..Default::default() };
    }
    let bytes = Command::Txn(t).encode();
    assert_eq!(Command::decode(bytes), Err(KvError::Malformed("transactions nested too deep")));
}

#[test]
fn a_state_with_history_and_leases_round_trips() {
    let mut sm = StateMachine::default();
    sm.apply(&Command::LeaseGrant { id: 9, ttl_secs: 30 }).unwrap();
    for (i, k) in ["a", "b", "a", "c"].iter().enumerate() {
        let lease = if *k == "c" { 9 } else { 0 };
        sm.apply(&Command::Put(PutRequest {
            key: b(k),
            value: b(&i.to_string()),
            lease,
            ..Default::default()
        }))
        .unwrap();
    }
    sm.apply(&Command::DeleteRange(DeleteRangeRequest { range: KeyRange::single(b("b")), prev_kv: false }))
        .unwrap();
    sm.apply(&Command::Compact { revision: 3 }).unwrap();
    let member =
        MemberAttrs { id: 77, name: "m".into(), peer_urls: vec!["http://h:1".into()], client_urls: vec![] };
    sm.apply(&Command::MemberPut(member)).unwrap();
    let restored = StateMachine::decode(sm.encode()).unwrap();
    assert_eq!(restored, sm);
    let mut at = RangeRequest::of(KeyRange::prefix(""));
    at.revision = 4;
    assert_eq!(restored.range(&at), sm.range(&at), "history survives the snapshot");
    let bytes = sm.encode();
    for capacity in [0, 1, bytes.len() / 2, bytes.len(), bytes.len() * 3] {
        assert_eq!(sm.encode_sized(capacity), bytes, "a starting capacity of {capacity} changes nothing");
    }
    for cut in 0..bytes.len() {
        assert!(StateMachine::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
    }
}

#[test]
fn streams_round_trip_in_a_snapshot_and_every_truncation_is_an_error() {
    let mut sm = StateMachine::default();
    sm.apply(&Command::Put(PutRequest { key: b("k"), value: b("v"), ..Default::default() })).unwrap();
    for (name, max_bytes, max_age_ms) in [("orders", 8, 0), ("audit", 0, 100), ("gone", 0, 0)] {
        let retention = Retention { max_bytes, max_age_ms };
        sm.apply(&Command::Stream(StreamCommand::Create { stream: name.into(), retention })).unwrap();
    }
    for (at, stream, recs) in
        [(10, "orders", vec!["abc", "def"]), (20, "orders", vec!["ghi"]), (30, "audit", vec!["x"])]
    {
        let records = recs.into_iter().map(b).collect();
        sm.apply(&Command::Stream(StreamCommand::Append {
            stream: stream.into(),
            timestamp_ms: at,
            records,
        }))
        .unwrap();
    }
    sm.apply(&Command::Stream(StreamCommand::Delete { stream: "gone".into() })).unwrap();
    let orders = sm.streams.info("orders").unwrap();
    assert_eq!((orders.first_offset, orders.end_offset, orders.bytes), (1, 3, 6), "size retention ran");
    let bytes = sm.encode();
    let restored = StateMachine::decode(bytes.clone()).unwrap();
    assert_eq!(restored, sm);
    assert_eq!(restored.streams.read("orders", 1, 10, 100), sm.streams.read("orders", 1, 10, 100));
    assert_eq!(restored.streams.next_id, 3, "a recreated stream still gets a new id after a restore");
    for cut in 0..bytes.len() {
        assert!(StateMachine::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
    }
    // Replaying the same commands on a restored state gives the same offsets (determinism).
    let mut a = sm.clone();
    let mut b2 = restored;
    let more = Command::Stream(StreamCommand::Append {
        stream: "audit".into(),
        timestamp_ms: 200,
        records: vec![b("y")],
    });
    assert_eq!(a.apply(&more), b2.apply(&more));
    assert_eq!(a, b2);
    assert_eq!(a.streams.info("audit").unwrap().first_offset, 1, "age retention ran at t=200");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Command::decode(Bytes::from(data.clone()));
        let _ = StateMachine::decode(Bytes::from(data));
    }
}
