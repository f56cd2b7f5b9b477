//! A snapshot encoded a step at a time while commands keep being applied is the snapshot of the
//! state it began at, byte for byte.

use balsa_kv::*;
use bytes::Bytes;
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One command of a random workload: puts (new and existing keys, with and without a lease),
/// deletes of single keys and prefixes, lease grants and revokes. No compaction.
fn command(op: u8, key: u8, value: u16) -> Command {
    let k = format!("k/{:02}", key % 40);
    match op % 6 {
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

    /// Whatever is applied between steps (no compaction), and however small the steps, the
    /// encoding equals the one taken at once when the snapshot began, and it restores to that
    /// state; so does one whose bytes are taken out after every step (`streamed`, as a server
    /// writes them to the file), with its first bytes replaced and its last appended at the end.
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
        while !encoder.step(&sm, budget) {
            steps += 1;
            prop_assert!(steps < 100_000, "the encoding never finishes");
            if streamed {
                taken.extend_from_slice(&encoder.take_output());
            }
            for (op, key, value) in writes.by_ref().take(per_step) {
                let _ = sm.apply(&command(op, key, value));
            }
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
}
