//! A snapshot encoded a step at a time while commands keep being applied is the snapshot of the
//! state it began at, byte for byte.

use balsa_kv::*;
use bytes::Bytes;
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One command of a random workload: puts (new and existing keys, with and without a lease),
/// deletes of single keys and prefixes, lease grants and revokes; log streams created (`s/0`
/// and `s/1` without a retention, `s/2` with one that keeps 600 bytes), appended to, trimmed
/// and deleted. No compaction of the keyspace.
fn command(op: u8, key: u8, value: u16) -> Command {
    let k = format!("k/{:02}", key % 40);
    let stream = format!("s/{}", key % 3);
    match op % 12 {
        6 => {
            let retention = Retention { max_bytes: if key % 3 == 2 { 600 } else { 0 }, max_age_ms: 0 };
            Command::Stream(StreamCommand::Create { stream, retention })
        }
        7..=9 => Command::Stream(StreamCommand::Append {
            stream,
            timestamp_ms: u64::from(value),
            records: (0..=value % 4)
                .map(|i| b(&format!("{value}-{i}-{}", "r".repeat(usize::from(key % 50)))))
                .collect(),
        }),
        10 => Command::Stream(StreamCommand::Trim { stream, before_offset: u64::from(value % 8) }),
        11 if value.is_multiple_of(4) => Command::Stream(StreamCommand::Delete { stream }),
        0 | 1 => Command::Put(PutRequest { key: b(&k), value: b(&value.to_string()), ..Default::default() }),
        2 => Command::Put(PutRequest {
            key: b(&k),
            value: b("leased"),
            lease: 1 + i64::from(key % 3),
            ..Default::default()
        }),
        3 => Command::DeleteRange(DeleteRangeRequest { range: KeyRange::single(b(&k)), prev_kv: false }),
        4 => Command::LeaseGrant { id: 1 + i64::from(key % 3), ttl_secs: 30 },
        _ => Command::LeaseRevoke { id: 1 + i64::from(key % 3) },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever is applied between steps, and however small the steps, the encoding equals the
    /// one taken at once when the snapshot began, and it restores to that state; so does one
    /// whose bytes are taken out after every step (`streamed`, as a server writes them to the
    /// file), with its first bytes replaced and its last appended at the end. Commands are
    /// applied as the server applies them: each after `before_apply`, which encodes ahead the
    /// records of a stream the command trims, deletes or (by its retention) shortens.
    #[test]
    fn steps_between_writes_give_the_snapshot_of_the_beginning(
        before in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>()), 0..120),
        during in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>()), 0..120),
        budget in 1usize..400,
        per_step in 1usize..8,
        streamed in any::<bool>(),
    ) {
        let mut sm = StateMachine::default();
        for (op, key, value) in before {
            let _ = sm.apply(&command(op, key, value));
        }
        let expected = sm.encode();
        let at_beginning = sm.clone();
        let mut encoder = sm.begin_snapshot(0);
        let mut writes = during.into_iter();
        let mut steps = 0;
        let mut taken = Vec::new();
        let mut finished = encoder.step(&sm, budget);
        while !finished {
            steps += 1;
            prop_assert!(steps < 100_000, "the encoding never finishes");
            if streamed {
                taken.extend_from_slice(&encoder.take_output());
            }
            for (op, key, value) in writes.by_ref().take(per_step) {
                let command = command(op, key, value);
                prop_assert!(!command.compacts(), "the workload does not compact the keyspace");
                encoder.before_apply(&sm, &command);
                let _ = sm.apply(&command);
            }
            finished = encoder.step(&sm, budget);
        }
        let data = if streamed {
            taken.extend_from_slice(&encoder.take_output());
            let (head, last) = encoder.finish_streamed();
            taken[..head.len()].copy_from_slice(&head);
            taken.extend_from_slice(&last);
            Bytes::from(taken)
        } else {
            encoder.finish()
        };
        prop_assert_eq!(&data, &expected);
        prop_assert_eq!(StateMachine::decode(data).unwrap(), at_beginning);
    }
}

/// A compaction between steps would remove versions the snapshot holds: the encoder refuses to
/// go on rather than write a snapshot of no state that ever was.
#[test]
#[should_panic(expected = "compacted during a snapshot")]
fn a_compaction_between_steps_is_refused() {
    let mut sm = StateMachine::default();
    for i in 0..50 {
        sm.apply(&Command::Put(PutRequest {
            key: b(&format!("k{i:02}")),
            value: b("v"),
            ..Default::default()
        }))
        .unwrap();
    }
    let mut encoder = sm.begin_snapshot(0);
    assert!(!encoder.step(&sm, 64), "a small budget leaves keys for later");
    let revision = sm.mvcc.revision();
    sm.apply(&Command::Compact { revision }).unwrap();
    encoder.step(&sm, 64);
}

/// Streams' records are read from the live state as the steps go: a trim between steps, applied
/// without `before_apply`, removes records the snapshot holds, and the encoder refuses to go on.
#[test]
#[should_panic(expected = "was trimmed during a snapshot")]
fn a_trim_between_steps_is_refused() {
    let (mut sm, mut encoder) = a_stream_half_encoded();
    sm.apply(&Command::Stream(StreamCommand::Trim { stream: "s".into(), before_offset: 40 })).unwrap();
    encoder.step(&sm, 64);
}

/// ...and so would a delete of the stream, even if one of the same name is created again.
#[test]
#[should_panic(expected = "was deleted during a snapshot")]
fn a_stream_deleted_between_steps_is_refused() {
    let (mut sm, mut encoder) = a_stream_half_encoded();
    sm.apply(&Command::Stream(StreamCommand::Delete { stream: "s".into() })).unwrap();
    sm.apply(&create_stream("s")).unwrap();
    encoder.step(&sm, 64);
}

fn create_stream(name: &str) -> Command {
    Command::Stream(StreamCommand::Create { stream: name.into(), retention: Retention::default() })
}

/// A state holding stream `s` of 50 records, and a snapshot of it whose first step left most of
/// them for later.
fn a_stream_half_encoded() -> (StateMachine, SnapshotEncoder) {
    let mut sm = StateMachine::default();
    sm.apply(&create_stream("s")).unwrap();
    for i in 0..50 {
        let records = vec![b(&format!("record {i}"))];
        sm.apply(&Command::Stream(StreamCommand::Append { stream: "s".into(), timestamp_ms: i, records }))
            .unwrap();
    }
    let mut encoder = sm.begin_snapshot(0);
    assert!(!encoder.step(&sm, 64), "a small budget leaves records for later");
    (sm, encoder)
}

/// ...and with `before_apply` first, the trim, a delete and an append that the retention makes
/// drop records leave the snapshot of the beginning, while the steps go on reading live records
/// of the streams nothing removed from.
#[test]
fn records_about_to_be_removed_are_encoded_ahead() {
    let mut sm = StateMachine::default();
    for (name, max_bytes) in [("kept", 0), ("trimmed", 0), ("deleted", 0), ("bounded", 400)] {
        let retention = Retention { max_bytes, max_age_ms: 0 };
        sm.apply(&Command::Stream(StreamCommand::Create { stream: name.to_string(), retention })).unwrap();
    }
    let append = |stream: &str, i: u64| {
        let records = vec![b(&format!("{stream} record {i:03} of forty bytes or so"))];
        Command::Stream(StreamCommand::Append { stream: stream.to_string(), timestamp_ms: i, records })
    };
    for i in 0..10 {
        for stream in ["kept", "trimmed", "deleted", "bounded"] {
            sm.apply(&append(stream, i)).unwrap();
        }
    }
    let expected = sm.encode();
    let bounded_first_before = sm.streams.get("bounded").unwrap().first_offset;
    let mut encoder = sm.begin_snapshot(0);
    assert!(!encoder.step(&sm, 64), "a small budget leaves records for later");
    let commands = [
        append("kept", 10),
        Command::Stream(StreamCommand::Trim { stream: "trimmed".into(), before_offset: 8 }),
        Command::Stream(StreamCommand::Delete { stream: "deleted".into() }),
        append("bounded", 10),
    ];
    for command in commands {
        // As a client's session wraps it (the encoder looks inside).
        let sessioned = Command::Sessioned { client_id: 7, seq: 1, command: Box::new(command.clone()) };
        encoder.before_apply(&sm, &sessioned);
        sm.apply(&command).unwrap();
    }
    let bounded_first = sm.streams.get("bounded").unwrap().first_offset;
    assert!(bounded_first > bounded_first_before, "the append made the retention drop records");
    while !encoder.step(&sm, 64) {}
    assert_eq!(encoder.finish(), expected);
}

/// Only a compaction, alone or in a session, may remove versions.
#[test]
fn only_compactions_compact() {
    let compact = Command::Compact { revision: 3 };
    assert!(compact.compacts());
    assert!(Command::Sessioned { client_id: 1, seq: 1, command: Box::new(compact) }.compacts());
    let put = Command::Put(PutRequest { key: b("k"), value: b("v"), ..Default::default() });
    assert!(!put.compacts());
    assert!(!Command::Sessioned { client_id: 1, seq: 2, command: Box::new(put) }.compacts());
    let delete = Command::DeleteRange(DeleteRangeRequest { range: KeyRange::prefix("k"), prev_kv: true });
    assert!(!delete.compacts());
    assert!(!Command::Stream(StreamCommand::Trim { stream: "s".into(), before_offset: 1 }).compacts());
}
