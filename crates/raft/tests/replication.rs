//! Log replication scenarios: the commit rule of Figure 8, log repair of every shape in Figure 7,
//! and snapshots (InstallSnapshot).

mod common;

use std::collections::BTreeMap;

use balsa_raft::{
    EntryKind, Index, Membership, Message, MessageBody, NodeId, Role, Snapshot, SnapshotError, SnapshotMeta,
    Term,
};
use common::{between, cmd, test_config, votes_only, Cluster, Disk, ELECTION_TICKS as T};

fn carries_entry_at_or_after(m: &Message, index: Index) -> bool {
    matches!(&m.body, MessageBody::AppendEntries(ae) if ae.entries.iter().any(|e| e.index >= index))
}

/// The situation of paper Figure 8 (c), built with real elections.
///
/// Returns the cluster with S1 leading term `t_c`; entry 2 ("x", term `t_a`) is stored on S1, S2
/// and S3 — a majority of five — and S1 knows it; S1's own no-op of term `t_c` (index 3) is on
/// S1 and S2 only. S5 (down) holds a different entry of term `t_b` at index 2.
struct Figure8 {
    c: Cluster,
    t_a: Term,
    t_b: Term,
    t_c: Term,
}

fn figure8_c() -> Figure8 {
    // One entry per AppendEntries, so that entry 2 can reach S3 without entry 3.
    let mut c = Cluster::with_configs(Membership::new(1..=5), |id| {
        let mut cfg = test_config(id);
        cfg.max_msg_bytes = 1;
        cfg
    });

    // (a) S1 leads term t_a; its no-op (index 1) commits everywhere. Then "x" (index 2) reaches
    // only S2.
    let t_a = c.elect(1);
    c.run(2);
    for id in c.ids() {
        assert_eq!(c.raft(id).status().commit_index, 1, "node {id}");
    }
    c.set_filter(|m| between(m, 1, 2));
    let x = c.propose(1, "x").expect("leader");
    assert_eq!(x, 2);
    c.deliver_all();
    assert_eq!(c.raft(2).term_at(2), Some(t_a));
    assert_eq!(c.raft(1).status().commit_index, 1, "x is on two of five servers only");
    c.crash(1);

    // (b) S5 is elected by S3, S4 and itself (S2's log is more up to date and refuses). Its
    // no-op lands at index 2, on S5 alone, and S5 crashes.
    c.set_filter(votes_only());
    let t_b = c.elect(5);
    assert!(t_b > t_a);
    assert_eq!(c.raft(5).term_at(2), Some(t_b));
    assert_eq!(c.node(5).disk.term(2), Some(t_b), "S5's entry is durable");
    c.crash(5);

    // (c) S1 restarts and is elected by S2, S3 and S4 in term t_c.
    c.restart(1);
    let t_c = c.elect(1);
    assert!(t_c > t_b);
    assert_eq!(c.log_terms(1), vec![(1, t_a), (2, t_a), (3, t_c)]);
    c.clear_filter();

    // S1 continues replicating entry 2. S3 gets it, but every message that would give S3 the
    // no-op at index 3 is lost.
    c.tick(1);
    while let Some(m) = c.pop_next(|m| between(m, 1, 3)) {
        if carries_entry_at_or_after(&m, 3) && c.raft(3).term_at(2).is_some() {
            continue;
        }
        c.deliver(m);
    }
    // S2 (which already had entry 2) acknowledges it, together with the no-op.
    c.deliver_matching(|m| between(m, 1, 2));
    c.clear_queue();

    for id in [1, 2, 3] {
        assert_eq!(c.raft(id).term_at(2), Some(t_a), "node {id} stores x");
    }
    assert_eq!(c.raft(3).status().last_index, 2);
    assert_eq!(c.raft(4).status().last_index, 1);
    Figure8 { c, t_a, t_b, t_c }
}

/// Reference: paper section 5.4.2, Figure 8 (a)–(d): "a leader cannot immediately conclude that
/// an entry from a previous term is committed once it is stored on a majority of servers". Here
/// the term-`t_a` entry is on a majority, the leader knows it, yet must not commit it — and
/// indeed it is later overwritten by S5.
#[test]
fn figure8_entry_of_an_earlier_term_on_a_majority_is_not_committed() {
    let Figure8 { mut c, t_a, t_b, t_c } = figure8_c();

    // The leader knows entry 2 is on S1, S2 and S3, a majority of five...
    let st = c.raft(1).status();
    assert_eq!(st.role, Role::Leader);
    assert_eq!(st.current_term, t_c);
    assert!(c.raft(1).progress(2).expect("follower").match_index >= 2);
    assert_eq!(c.raft(1).progress(3).expect("follower").match_index, 2);
    // ...but counting replicas of an entry of an earlier term must not commit it.
    assert_eq!(st.commit_index, 1, "entry 2 (term {t_a}) must not be committed by counting replicas");
    for id in [2, 3, 4] {
        assert_eq!(c.raft(id).status().commit_index, 1, "node {id}");
    }
    assert!(c.applied_at(2).is_none(), "nobody applied index 2");

    // (d) S1 crashes; S5 is elected by S3, S4 and itself, and overwrites index 2 everywhere.
    c.crash(1);
    c.restart(5);
    c.set_filter(votes_only());
    let t_d = c.elect(5);
    assert!(t_d > t_c);
    c.clear_filter();
    c.run(3);
    c.restart(1);
    c.run(3 * T);
    assert_eq!(c.leader(), Some(5));
    for id in c.ids() {
        assert_eq!(c.raft(id).term_at(2), Some(t_b), "node {id}: S5's entry replaced x");
        assert!(!c.node(id).commands().contains(&"x".to_string()), "node {id} applied x");
    }
    let (term, kind, _) = c.applied_at(2).expect("index 2 is committed now");
    assert_eq!((term, kind), (t_b, EntryKind::Noop));
    c.assert_converged(5, &c.ids());
}

/// Reference: paper section 5.4.2, Figure 8 (e): once the leader replicates an entry of its
/// current term on a majority, that entry and every earlier one are committed together; then
/// S5 can no longer be elected.
#[test]
fn figure8_earlier_entry_commits_once_a_current_term_entry_commits() {
    let Figure8 { mut c, t_a, t_c, .. } = figure8_c();
    let records_before = c.records.len();

    // S3 now gets the no-op of term t_c too: the leader notices the lost message and resends.
    for _ in 0..T {
        c.tick(1);
        c.deliver_matching(|m| between(m, 1, 3));
        if c.raft(1).status().commit_index > 1 {
            break;
        }
    }
    assert_eq!(c.raft(1).status().commit_index, 3, "the current-term entry commits, and x with it");
    // The commit index jumped from 1 to 3: index 2 was never committed on its own.
    assert!(!c.records[records_before..].iter().filter_map(|r| r.hard_state).any(|hs| hs.commit_index == 2));
    assert_eq!(c.applied_at(2).map(|(t, _, d)| (t, d)), Some((t_a, cmd("x"))));

    // Now S5 cannot win: S2 and S3 hold a term-t_c entry, more up to date than S5's log.
    c.crash(1);
    c.restart(5);
    c.set_filter(votes_only());
    assert!(c.try_elect(5).is_none(), "S5 must not be elected once x is committed");
    assert!(!c.leaders_by_term().values().any(|&l| l == 5 && c.raft(5).current_term() > t_c));
    c.clear_filter();
    c.restart(1);
    let leader = c.wait_for_leader(10 * T);
    assert_ne!(leader, 5);
    c.run(3 * T);
    for id in c.ids() {
        assert_eq!(c.raft(id).term_at(2), Some(t_a), "node {id} keeps x");
        assert_eq!(c.node(id).commands().first().map(String::as_str), Some("x"), "node {id}");
    }
    c.assert_converged(leader, &c.ids());
}

/// Reference: paper section 5.3, Figure 7 (followers a–f that are missing entries, have extra
/// uncommitted entries, or both) and the "fast repair" optimisation at the end of section 5.3
/// (with the conflicting term and the first index of that term, "one AppendEntries RPC will be
/// required for each term with conflicting entries, rather than one RPC per entry").
#[test]
fn figure7_every_follower_shape_is_repaired_quickly() {
    let leader_log: &[Term] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [(NodeId, &str, &[Term]); 6] = [
        (2, "a", &[1, 1, 1, 4, 4, 5, 5, 6, 6]),
        (3, "b", &[1, 1, 1, 4]),
        (4, "c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        (5, "d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        (6, "e", &[1, 1, 1, 4, 4, 4, 4]),
        (7, "f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    // Everyone is in term 7 and has committed the common prefix (indexes 1–3).
    let mut disks = BTreeMap::from([(1, Disk::with_log(7, leader_log, 3))]);
    for (id, _, log) in followers {
        disks.insert(id, Disk::with_log(7, log, 3));
    }
    let mut c = Cluster::with_disks(Membership::new(1..=7), disks, test_config);
    for (id, name, log) in followers {
        assert_eq!(c.raft(id).status().last_index, log.len() as Index, "follower ({name})");
    }

    // The leader of Figure 7 wins term 8 with the votes of a, b, e and f (c and d have more
    // up-to-date logs and refuse). No timer fires during the repair: every AppendEntries below
    // is driven by an answer to the previous one.
    let term = c.elect(1);
    assert_eq!(term, 8);
    let mut expected: Vec<(Index, Term)> =
        leader_log.iter().enumerate().map(|(i, &t)| (i as Index + 1, t)).collect();
    expected.push((11, 8)); // the new leader's no-op
    assert_eq!(c.log_terms(1), expected);
    c.run(2);

    let mut total_fast = 0;
    let mut total_sent = 0;
    let mut total_naive = 0;
    for (id, name, log) in followers {
        assert_eq!(c.log_terms(id), expected, "follower ({name}) converged in memory");
        assert_eq!(c.node(id).disk.log_terms(), expected, "follower ({name}) converged on disk");
        assert_eq!(c.raft(id).status().commit_index, 11, "follower ({name}) committed");
        assert_eq!(c.raft(id).current_term(), 8);

        // AppendEntries carrying entries that the leader sent this follower in term 8. A probe
        // may be sent twice (a heartbeat answer arriving while it is in flight releases it
        // again); a repeat is no extra round trip, so count distinct probe points too.
        let appends: Vec<Index> = c
            .sent
            .iter()
            .filter(|m| m.from == 1 && m.to == id && m.term == 8)
            .filter_map(|m| match &m.body {
                MessageBody::AppendEntries(ae) if !ae.entries.is_empty() => Some(ae.prev_log_index),
                _ => None,
            })
            .collect();
        let mut probe_points = appends.clone();
        probe_points.sort_unstable();
        probe_points.dedup();
        let fast = probe_points.len();
        total_sent += appends.len() as u64;
        // Backing up one entry per rejection would take one message per index between the
        // leader's last index and the end of the common prefix, plus the final one.
        let common = log.iter().zip(leader_log).take_while(|(a, b)| a == b).count() as u64;
        let naive = leader_log.len() as u64 - common + 1;
        let conflicting_terms = {
            let mut terms: Vec<Term> = log[common as usize..].to_vec();
            terms.dedup();
            terms.len() as u64
        };
        assert!(fast >= 1);
        assert!(
            fast as u64 <= conflicting_terms + 2,
            "follower ({name}): {fast} round trips; expected one per conflicting term, plus one if \
             its log is shorter, plus the final one"
        );
        assert!(fast as u64 <= naive, "follower ({name}): fast repair slower than naive");
        total_fast += fast as u64;
        total_naive += naive;
    }
    // b, e and f are far behind or far off: one message per entry would take 25 in total.
    assert_eq!(total_naive, 25);
    assert!(total_fast <= 12, "fast repair took {total_fast} round trips");
    // Counting raw messages, repeats included, it is still well below one per entry.
    assert!(
        3 * total_sent <= 2 * total_naive,
        "fast repair sent {total_sent} AppendEntries with entries, naive repair needs {total_naive}"
    );

    // The repaired cluster keeps working.
    let i = c.propose(1, "after-repair").expect("leader");
    c.run(2);
    c.assert_converged(1, &c.ids());
    assert!(c
        .ids()
        .iter()
        .all(|&id| c.node(id).commands().last().map(String::as_str) == Some("after-repair")));
    assert_eq!(i, 12);
}

fn count_snapshots_to(c: &Cluster, to: NodeId) -> usize {
    c.count_sent(|m| m.to == to && matches!(m.body, MessageBody::InstallSnapshot(_)))
}

/// Reference: paper section 7 (Figure 13, InstallSnapshot: "the leader must occasionally send
/// snapshots to followers that lag behind ... or a new server joining the cluster") and thesis
/// section 4.2.1 (new servers join as non-voting members and catch up first).
#[test]
fn compacted_leader_brings_lagging_and_new_servers_up_with_a_snapshot() {
    let mut membership = Membership::new([1, 2, 3]);
    membership.learners.insert(4);
    let mut c = Cluster::with_configs(membership, test_config);
    c.crash(3); // lagging voter: down from the start
    c.crash(4); // new non-voting member: not started yet
    c.elect(1);
    for i in 0..20 {
        c.propose(1, &format!("c{i}")).expect("leader");
        c.deliver_all();
    }
    c.run(2);
    let snap = c.node(1).applied_index;
    assert_eq!(snap, 21);
    c.compact(1, snap).expect("snapshot of applied entries");
    c.compact(2, 15).expect("followers may compact too");
    assert_eq!(c.raft(1).status().snapshot_index, snap);
    assert!(c.raft(1).entry(snap).is_none() && c.raft(1).entry(1).is_none(), "prefix dropped");
    assert!(c.node(1).disk.entries.is_empty());
    for i in 20..25 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.run(2);

    c.restart(3);
    c.restart(4);
    c.run(3 * T);

    for id in [3, 4] {
        assert!(count_snapshots_to(&c, id) >= 1, "node {id} was sent a snapshot");
        let installed: Vec<_> =
            c.records.iter().filter(|r| r.node == id).filter_map(|r| r.snapshot.clone()).collect();
        assert_eq!(installed.len(), 1, "node {id} installed exactly one snapshot");
        assert_eq!(installed[0].last_included_index, snap);
        assert_eq!(installed[0].last_included_term, c.raft(1).term_at(snap).expect("boundary term"));
        let disk = &c.node(id).disk;
        assert_eq!(disk.snapshot_index(), snap, "node {id} keeps the snapshot");
        assert_eq!(
            disk.entries.first().map(|e| e.index),
            Some(snap + 1),
            "node {id} then the entries after it"
        );
        assert_eq!(c.node(id).commands(), c.node(1).commands(), "node {id} state machine");
        assert_eq!(c.node(id).commands().len(), 25);
    }
    c.assert_converged(1, &[2, 3, 4]);
    // The learner never campaigned nor voted.
    assert_eq!(c.count_sent(|m| m.from == 4 && matches!(m.body, MessageBody::RequestVote(_))), 0);
    assert_eq!(c.count_sent(|m| m.from == 4 && matches!(m.body, MessageBody::RequestVoteResponse(_))), 0);

    // Both keep up with normal replication afterwards, without another snapshot.
    c.propose(1, "later").expect("leader");
    c.run(2);
    for id in [3, 4] {
        assert_eq!(c.node(id).commands().last().map(String::as_str), Some("later"));
        assert_eq!(c.records.iter().filter(|r| r.node == id && r.snapshot.is_some()).count(), 1);
    }

    // A restart of the new server comes back from its snapshot plus log.
    c.crash(3);
    c.restart(3);
    assert_eq!(c.raft(3).status().snapshot_index, snap);
    c.run(2);
    assert_eq!(c.node(3).commands(), c.node(1).commands());
}

/// Reference: paper section 7 (Figure 13, receiver step 6: "if existing log entry has same index
/// and term as snapshot's last included entry, retain log entries following it and reply").
#[test]
fn follower_holding_the_snapshot_boundary_keeps_its_suffix() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.run(2);
    // Node 3 receives everything, but its acknowledgements are lost: the leader believes it is
    // far behind.
    c.set_filter(|m| !(m.from == 3 && m.to == 1 && matches!(m.body, MessageBody::AppendEntriesResponse(_))));
    // All ten go out before anything is delivered, so every AppendEntries node 3 sees carries a
    // commit index of 1 and node 3 itself commits nothing new.
    for i in 0..10 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.deliver_all();
    let last = c.raft(1).status().last_index;
    assert_eq!(c.raft(3).status().last_index, last, "node 3 has every entry");
    assert!(c.raft(1).progress(3).expect("tracked").match_index < 5, "the leader does not know it");
    assert!(c.raft(3).status().commit_index < 8);
    c.compact(1, 8).expect("applied");
    c.clear_filter();

    // Wait for the leader to fall back to a snapshot for node 3, and hand it over by hand.
    let mut install = None;
    let is_install = |m: &Message| m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot(_));
    for _ in 0..5 * T {
        c.tick_all();
        c.deliver_matching(|m| !is_install(m));
        install = c.pop_next(is_install);
        if install.is_some() {
            break;
        }
    }
    let install = install.expect("the leader sends a snapshot to a follower it believes is behind it");
    let before = c.log_terms(3);
    let disk_before = c.node(3).disk.entries.clone();
    let records_before = c.records.len();
    assert!(c.deliver(install));

    assert_eq!(c.log_terms(3), before, "the suffix after the snapshot's last entry is kept");
    assert_eq!(c.node(3).disk.entries, disk_before, "nothing on disk was discarded");
    assert!(c.node(3).disk.snapshot.is_none());
    assert!(c.raft(3).status().commit_index >= 8, "the snapshot covers committed entries");
    let acks: Vec<_> = c.records[records_before..]
        .iter()
        .filter(|r| r.node == 3)
        .flat_map(|r| r.gated.iter())
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntriesResponse(r) => Some((r.success, r.match_index)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(true, 8)]);

    c.deliver_all();
    c.run(3);
    assert!(!c.records.iter().any(|r| r.node == 3 && r.snapshot.is_some()), "no snapshot was installed");
    c.assert_converged(1, &[2, 3]);
    assert_eq!(c.node(3).commands(), c.node(1).commands());
    assert_eq!(c.node(3).commands().len(), 10);
}

/// Reference: paper section 7 ("each server takes snapshots independently, covering just the
/// committed entries in its log").
#[test]
fn snapshot_taken_rejects_unapplied_stale_and_mismatched_snapshots() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..4 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.run(2);
    let applied = c.node(1).applied_index;
    let term = c.raft(1).current_term();
    let snapshot = |index: Index, term: Term| Snapshot {
        meta: SnapshotMeta {
            last_included_index: index,
            last_included_term: term,
            membership: Membership::new(1..=3),
        },
        data: cmd("").into(),
    };
    assert_eq!(
        c.raft_mut(1).snapshot_taken(snapshot(applied + 1, term)),
        Err(SnapshotError::NotApplied { index: applied + 1, applied })
    );
    assert_eq!(
        c.raft_mut(1).snapshot_taken(snapshot(3, term + 1)),
        Err(SnapshotError::TermMismatch { index: 3, term: term + 1 })
    );
    c.compact(1, 3).expect("valid");
    assert_eq!(c.compact(1, 3), Err(SnapshotError::Stale { index: 3, current: 3 }));
    assert_eq!(c.compact(1, 2), Err(SnapshotError::Stale { index: 2, current: 3 }));
    assert_eq!(c.raft(1).status().snapshot_index, 3);
    // The log after the snapshot is untouched and replication continues.
    assert!(c.raft(1).entry(4).is_some());
    c.propose(1, "more").expect("leader");
    c.run(2);
    c.assert_converged(1, &c.ids());
}

/// A cluster whose leader 1 has compacted its log while node 3 was down; node 3 is back.
fn compacted_with_node_3_behind() -> Cluster {
    let mut c = Cluster::new(3);
    c.crash(3);
    c.elect(1);
    for i in 0..10 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.run(2);
    let applied = c.node(1).applied_index;
    c.compact(1, applied).expect("applied");
    c.restart(3);
    c
}

fn is_snapshot_to_3(m: &Message) -> bool {
    m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot(_))
}

/// Reference: paper section 7 (Figure 13) and thesis 10.2 (the leader keeps retrying until the
/// follower is caught up): a lost InstallSnapshot is sent again, after a while on its own, and
/// at once when the transport reports the failure (`report_snapshot`).
#[test]
fn lost_snapshot_is_sent_again() {
    for report in [false, true] {
        let mut c = compacted_with_node_3_behind();
        // Wait for the first snapshot and lose it.
        let mut first = None;
        for _ in 0..3 * T {
            c.tick_all();
            c.deliver_matching(|m| !is_snapshot_to_3(m));
            first = c.pop_next(is_snapshot_to_3);
            if first.is_some() {
                break;
            }
        }
        assert!(first.is_some(), "report={report}: a snapshot was sent");
        if report {
            c.raft_mut(1).report_snapshot(3, false);
            c.process(1);
        }
        let resent = c.run_until(3 * T, |c| c.count_sent(is_snapshot_to_3) >= 2);
        let ticks = resent.unwrap_or_else(|| panic!("report={report}: the snapshot was never sent again"));
        if report {
            assert!(ticks <= 3, "report={report}: resent after {ticks} ticks");
        }
        c.run(3);
        c.assert_converged(1, &[2, 3]);
        assert_eq!(c.node(3).commands(), c.node(1).commands());
        assert_eq!(c.node(3).disk.snapshot_index(), c.raft(1).status().snapshot_index);
    }
}

/// A snapshot source over bytes that counts its reads and can be made to fail.
#[derive(Debug)]
struct CountingSource {
    data: bytes::Bytes,
    reads: std::sync::atomic::AtomicU64,
    bytes_read: std::sync::atomic::AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

impl balsa_raft::SnapshotSource for CountingSource {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> std::io::Result<bytes::Bytes> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.failing.load(SeqCst) {
            return Err(std::io::Error::other("injected read error"));
        }
        self.reads.fetch_add(1, SeqCst);
        self.bytes_read.fetch_add(len as u64, SeqCst);
        Ok(self.data.slice(offset as usize..offset as usize + len))
    }
}

/// The core holds no snapshot data of its own: once the driver hands it a handle on the stored
/// copy (`replace_snapshot_data`), the leader reads chunks from it only while it sends them, and
/// a read that fails sends nothing that round (no panic, counted) and is retried by the
/// transfer's own resend timeout.
#[test]
fn the_leader_reads_snapshot_chunks_from_its_source_only_when_sending() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut c = Cluster::new(3);
    c.crash(3);
    c.elect(1);
    for i in 0..10 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.run(2);
    let applied = c.node(1).applied_index;
    c.compact(1, applied).expect("applied");
    let (meta, data) = c.raft(1).latest_snapshot().map(|(m, d)| (m.clone(), d.clone())).expect("taken");
    assert!(data.is_in_memory());
    let source = std::sync::Arc::new(CountingSource {
        data: data.to_bytes().expect("in memory"),
        reads: Default::default(),
        bytes_read: Default::default(),
        failing: Default::default(),
    });
    let len = source.data.len() as u64;
    let wrong = SnapshotMeta { last_included_index: meta.last_included_index + 1, ..meta.clone() };
    let handle = balsa_raft::SnapshotData::from_source(source.clone());
    assert!(!c.raft_mut(1).replace_snapshot_data(&wrong, handle.clone()), "only for the same snapshot");
    assert!(c.raft_mut(1).replace_snapshot_data(&meta, handle));
    drop(data);
    assert!(!c.raft(1).latest_snapshot().expect("kept").1.is_in_memory(), "no bytes left in the core");

    // Nobody needs the snapshot: nothing is read.
    c.run(3 * T);
    assert_eq!(source.reads.load(SeqCst), 0);

    // Node 3 comes back needing it, but the source fails: nothing is sent, nothing panics.
    source.failing.store(true, SeqCst);
    c.restart(3);
    c.run(3 * T);
    assert_eq!(count_snapshots_to(&c, 3), 0, "no chunk without its data");
    let errors = c.raft(1).snapshot_read_errors();
    assert!(errors >= 1, "the failed reads are counted");

    // The source recovers: the transfer goes on by itself, reading each chunk once.
    source.failing.store(false, SeqCst);
    c.run(4 * T);
    c.assert_converged(1, &[2, 3]);
    assert_eq!(c.node(3).commands(), c.node(1).commands());
    assert!(source.reads.load(SeqCst) >= 1);
    assert_eq!(source.bytes_read.load(SeqCst), len, "each byte read once, when sent");
}

/// Reference: paper section 5.3 ("the leader keeps track of the highest index it knows to be
/// committed, and it includes that index in future AppendEntries RPCs ... so that the other
/// servers eventually find out"). "Eventually" must not mean "at the next heartbeat": a follower
/// whose acknowledgement arrives after the other follower already made the quorum learns the
/// commit of its own entry from the leader's answer to that acknowledgement. (In a server it
/// answers the clients whose writes it forwarded only once it applies them: waiting for the
/// heartbeat cost 1-client puts through a follower up to one heartbeat interval, 100 ms.)
#[test]
fn a_follower_acknowledging_after_the_quorum_learns_the_commit_without_a_tick() {
    let mut c = Cluster::new(3);
    let leader = c.elect(1);
    assert!(leader > 0);
    c.deliver_all();
    let (slow, fast) = (2, 3);
    let index = c.propose(1, "x").expect("leader");
    // Both followers store the entry; the slow one's acknowledgement is held back.
    let is_ack_from = |from: NodeId| {
        move |m: &Message| m.from == from && matches!(m.body, MessageBody::AppendEntriesResponse(_))
    };
    c.deliver_matching(|m| m.from == 1 && carries_entry_at_or_after(m, index));
    let held = c.take_matching(is_ack_from(slow));
    assert_eq!(held.len(), 1, "the slow follower acknowledged the entry");
    // The fast follower's acknowledgement commits it; the commit broadcast reaches the slow
    // follower too, but its heartbeat vouches only for what the leader knew it held.
    c.deliver_matching(is_ack_from(fast));
    c.deliver_matching(|m| m.from == 1);
    assert_eq!(c.raft(1).status().commit_index, index);
    assert!(c.raft(slow).status().commit_index < index, "the slow follower cannot know yet");
    // Its acknowledgement arrives: the leader answers with the commit, and no tick is needed.
    for m in held {
        c.deliver(m);
    }
    c.deliver_all();
    assert_eq!(c.raft(slow).status().commit_index, index, "learned without waiting for a heartbeat");
    assert_eq!(c.raft(slow).status().last_applied, index);
}

/// A follower answers an AppendEntries when the answer tells the leader something: a match or a
/// read round it has not heard from this follower. The leader's notice of a new commit index (an
/// empty AppendEntries, section 5.3: followers learn commits from later AppendEntries) repeats
/// both, so it is not answered, which saves each write two messages; a heartbeat opens a read
/// round of its own, so it is always answered (CheckQuorum, ReadIndex and leases count those).
#[test]
fn a_commit_notice_goes_unanswered_and_a_heartbeat_is_answered() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.deliver_all();
    let is_answer = |m: &Message| matches!(m.body, MessageBody::AppendEntriesResponse(_));
    let is_empty_append =
        |m: &Message| matches!(&m.body, MessageBody::AppendEntries(ae) if ae.entries.is_empty());
    let index = c.propose(1, "x").expect("leader");
    c.deliver_matching(|m| m.from == 1 && carries_entry_at_or_after(m, index));
    assert_eq!(c.deliver_matching(is_answer), 2, "both followers acknowledge the entry");
    assert_eq!(c.raft(1).status().commit_index, index);
    // The leader tells both followers of the commit (one follower may hear twice: its
    // acknowledgement came after the commit); they learn it and stay silent.
    let notices = c.take_matching(|m| m.from == 1 && is_empty_append(m));
    for follower in [2, 3] {
        assert!(notices.iter().any(|m| m.to == follower), "a commit notice to n{follower}");
    }
    for m in notices {
        c.deliver(m);
    }
    for follower in [2, 3] {
        assert_eq!(c.raft(follower).status().commit_index, index, "n{follower} learned the commit");
    }
    assert!(c.take_matching(is_answer).is_empty(), "a commit notice is not answered");
    // A heartbeat is answered by both, though it carries nothing new for their logs.
    c.tick(1);
    let heartbeats = c.take_matching(|m| m.from == 1 && is_empty_append(m));
    assert_eq!(heartbeats.len(), 2, "the tick sent a heartbeat to each follower");
    for m in heartbeats {
        c.deliver(m);
    }
    let answers = c.take_matching(is_answer);
    assert_eq!(answers.len(), 2, "every heartbeat is answered");
    // A new entry is acknowledged as ever.
    let next = c.propose(1, "y").expect("leader");
    c.deliver_matching(|m| m.from == 1 && carries_entry_at_or_after(m, next));
    assert_eq!(c.take_matching(is_answer).len(), 2, "appended entries are acknowledged");
}

/// Commands proposed at a follower before its next Ready are forwarded to the leader in one
/// Propose, in the order they were proposed (the leader then steps one message for them, as it
/// appends its own clients' commands together); a command that would take the message past
/// `max_msg_bytes` starts another, and the next Ready starts afresh.
#[test]
fn a_follower_forwards_the_commands_of_one_round_in_one_message() {
    let mut c = Cluster::with_configs(Membership::new(1..=3), |id| {
        let mut cfg = test_config(id);
        cfg.max_msg_bytes = 200;
        cfg
    });
    c.elect(1);
    c.deliver_all();
    let proposes_from_2 = |m: &Message| m.from == 2 && matches!(m.body, MessageBody::Propose(_));
    let commands_in = |m: &Message| match &m.body {
        MessageBody::Propose(p) => {
            p.commands.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
        }
        _ => Vec::new(),
    };
    for i in 0..5 {
        c.raft_mut(2).propose_anywhere(cmd(&format!("f{i}"))).expect("a leader is known");
    }
    c.process(2);
    let round_1 = c.take_matching(proposes_from_2);
    assert_eq!(round_1.len(), 1, "one message for the round");
    assert_eq!(commands_in(&round_1[0]), ["f0", "f1", "f2", "f3", "f4"]);
    // Past the size limit (48 bytes of header + 100 + 100 > 200), a second message.
    let big = |tag: char| String::from(tag).repeat(100);
    for tag in ['a', 'b', 'c'] {
        c.raft_mut(2).propose_anywhere(cmd(&big(tag))).expect("a leader is known");
    }
    c.raft_mut(2).propose_anywhere(cmd("g")).expect("a leader is known");
    c.process(2);
    let round_2 = c.take_matching(proposes_from_2);
    let split: Vec<Vec<String>> = round_2.iter().map(commands_in).collect();
    assert_eq!(split, [vec![big('a')], vec![big('b')], vec![big('c'), "g".to_string()]]);
    // The leader appends them all, in order, and every member applies them.
    for m in round_1.into_iter().chain(round_2) {
        c.deliver(m);
    }
    c.deliver_all();
    let expected: Vec<String> = ["f0", "f1", "f2", "f3", "f4"]
        .into_iter()
        .map(String::from)
        .chain([big('a'), big('b'), big('c'), "g".into()])
        .collect();
    for id in c.ids() {
        let applied: Vec<String> = c.node(id).commands().into_iter().filter(|s| !s.is_empty()).collect();
        assert_eq!(applied, expected, "member {id}");
    }
}
