//! The watch hub: the node's watchers, served on the driver thread from the state machine's
//! change feed.
//!
//! Watchers are grouped in *feeds* (one per gRPC watch stream), each a bounded channel of
//! [`WatchUpdate`]s. A watcher is either **synced** — it has everything up to the applied
//! revision and receives each new write's events as they are applied, from the change feed,
//! without a scan — or **lagging**, with the next revision it still needs. Lagging watchers are
//! caught up from the keyspace's history (`Mvcc::events_since`) whenever their feed has room, in
//! batches that never split a revision; once a catch-up reaches the applied revision the watcher is
//! synced again. Because registration, catch-up and live delivery all run on the driver thread,
//! between applies, nothing is missed and nothing is delivered twice.
//!
//! Three things make a watcher lag: a start revision in the past (history replay), a full feed
//! (a slow client: the driver never blocks, it stops sending to that watcher and catches it up
//! later, holding nothing but a revision for it), and a state machine replaced by a snapshot from
//! the leader (the writes in between were never applied here, but are in the snapshot's
//! history). If history was compacted past what a lagging watcher needs, it is canceled with
//! etcd's compacted error, as etcd does: never a silent gap.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use balsa_kv::{Event, EventKind, KeyRange, KvError, Revision, StateMachine};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::node::{Input, NodeError, NodeHandle};

/// Updates a feed holds before its watchers start lagging (one live update is one revision).
pub const FEED_CAPACITY: usize = 256;

/// Events in one catch-up update, at most — unless one revision alone has more: a revision's
/// events always travel together, as etcd sends them.
pub const CATCH_UP_EVENTS: usize = 1000;

/// Work one driver round spends on catch-up at most, across all feeds, in events sent plus keys
/// looked at: a long history is paged out over many rounds, so Raft's messages and ticks never
/// wait behind a watcher replaying it.
pub const CATCH_UP_BUDGET: usize = 8 * CATCH_UP_EVENTS;

/// etcd's reason for a watch whose start revision is compacted away.
pub const COMPACTED_REASON: &str = "etcdserver: mvcc: required revision has been compacted";

/// What to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// The keys.
    pub range: KeyRange,
    /// The first revision to report; 0 means the next one (nothing already applied).
    pub start_revision: i64,
    /// Report each event's previous value.
    pub prev_kv: bool,
    /// Drop put events (etcd's NOPUT filter).
    pub no_put: bool,
    /// Drop delete events (etcd's NODELETE filter).
    pub no_delete: bool,
}

impl WatchSpec {
    /// New writes to `range`, without previous values or filters.
    pub fn new(range: KeyRange) -> Self {
        Self { range, start_revision: 0, prev_kv: false, no_put: false, no_delete: false }
    }
}

/// What a feed delivers. Each watcher's updates come in revision order, with no gap and no
/// duplicate; a progress update at revision R comes after every event at or before R.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchUpdate {
    /// Events of one or more revisions, in order; `revision` is the last event's.
    Events {
        /// The watcher (as named when it was added).
        watch: u64,
        /// Revision of the last event.
        revision: i64,
        /// The events, filtered and with `prev_kv` only if asked for.
        events: Vec<Event>,
    },
    /// Everything up to `revision` was delivered: to one watcher, or (`None`) to every watcher
    /// of the feed.
    Progress {
        /// The watcher, or `None` for the whole feed.
        watch: Option<u64>,
        /// The applied revision.
        revision: i64,
    },
    /// The watcher ended and was removed.
    Canceled {
        /// The watcher.
        watch: u64,
        /// The applied revision.
        revision: i64,
        /// The compaction point when history it needed is gone (etcd's compacted cancel), else 0.
        compact_revision: i64,
        /// Why.
        reason: String,
    },
}

/// Requests to the hub, carried to the driver thread.
pub(crate) enum HubCommand {
    Open { feed: u64, tx: mpsc::Sender<WatchUpdate> },
    Watch { feed: u64, watch: u64, spec: WatchSpec, reply: oneshot::Sender<i64> },
    Cancel { feed: u64, watch: u64, reply: oneshot::Sender<i64> },
    Progress { feed: u64, watch: Option<u64> },
    Revision { reply: oneshot::Sender<i64> },
    Close { feed: u64 },
}

struct Watcher {
    spec: WatchSpec,
    /// The first revision this watcher may see (a start revision in the future is honoured).
    floor: i64,
    /// For a lagging watcher: the first revision it has not been given yet.
    next: i64,
    synced: bool,
}

struct Feed {
    tx: mpsc::Sender<WatchUpdate>,
    watchers: BTreeMap<u64, Watcher>,
    /// A feed-wide progress request waits until every watcher is synced (only then is "all up to
    /// R delivered" true for the whole feed).
    progress_pending: bool,
}

/// Why a send to a feed failed.
enum SendFailure {
    Full,
    Closed,
}

fn try_send(tx: &mpsc::Sender<WatchUpdate>, update: WatchUpdate) -> Result<(), SendFailure> {
    tx.try_send(update).map_err(|e| match e {
        TrySendError::Full(_) => SendFailure::Full,
        TrySendError::Closed(_) => SendFailure::Closed,
    })
}

/// The watcher's view of some events: its range and filters, previous values if asked for.
fn select<'a>(spec: &WatchSpec, events: impl Iterator<Item = &'a (Revision, Event)>) -> Vec<Event> {
    events
        .filter(|(_, e)| spec.range.contains(&e.kv.key))
        .filter(|(_, e)| match e.kind {
            EventKind::Put => !spec.no_put,
            EventKind::Delete => !spec.no_delete,
        })
        .map(|(_, e)| {
            let mut e = e.clone();
            if !spec.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect()
}

/// Every watcher of the node. Lives on the driver thread.
#[derive(Default)]
pub(crate) struct WatchHub {
    feeds: BTreeMap<u64, Feed>,
}

impl WatchHub {
    /// Carries out a request from a [`WatchFeed`].
    pub(crate) fn handle(&mut self, command: HubCommand, sm: &StateMachine) {
        let current = sm.mvcc.revision();
        match command {
            HubCommand::Open { feed, tx } => {
                self.feeds.insert(feed, Feed { tx, watchers: BTreeMap::new(), progress_pending: false });
            }
            HubCommand::Watch { feed, watch, spec, reply } => {
                let Some(f) = self.feeds.get_mut(&feed) else { return };
                // etcd: 0 is "from the next revision"; a negative start means from the
                // beginning (what history still holds).
                let floor = match spec.start_revision {
                    0 => current + 1,
                    r => r.max(1),
                };
                // Even a watcher starting now goes through catch-up: it costs one empty scan and
                // keeps a single path for becoming synced.
                f.watchers.insert(watch, Watcher { spec, floor, next: floor, synced: false });
                // Answer first: the stream announces the watch before its first events.
                let _ = reply.send(current);
                self.catch_up_one(feed, sm);
            }
            HubCommand::Cancel { feed, watch, reply } => {
                if let Some(f) = self.feeds.get_mut(&feed) {
                    f.watchers.remove(&watch);
                }
                let _ = reply.send(current);
                // A pending feed-wide progress may have been waiting for just this watcher.
                self.catch_up_one(feed, sm);
            }
            HubCommand::Progress { feed, watch: Some(watch) } => {
                let Some(f) = self.feeds.get(&feed) else { return };
                // Like etcd, only a synced watcher gets one; a lagging one will hear soon enough.
                if f.watchers.get(&watch).is_some_and(|w| w.synced) {
                    let update = WatchUpdate::Progress { watch: Some(watch), revision: current };
                    if let Err(SendFailure::Closed) = try_send(&f.tx, update) {
                        self.feeds.remove(&feed);
                    }
                }
            }
            HubCommand::Progress { feed, watch: None } => {
                let Some(f) = self.feeds.get_mut(&feed) else { return };
                f.progress_pending = true;
                self.catch_up_one(feed, sm);
            }
            HubCommand::Revision { reply } => {
                let _ = reply.send(current);
            }
            HubCommand::Close { feed } => {
                self.feeds.remove(&feed);
            }
        }
    }

    /// Whether any watcher takes events from the change feed (is synced). If none does, the
    /// driver applies without recording events: a lagging or new watcher catches up from
    /// history, and only synced watchers are ever handed the feed.
    pub(crate) fn wants_events(&self) -> bool {
        self.feeds.values().any(|f| f.watchers.values().any(|w| w.synced))
    }

    /// Hands the events one applied command wrote (the change feed) to synced watchers.
    pub(crate) fn publish(&mut self, events: &[(Revision, Event)]) {
        let Some((last, _)) = events.last() else { return };
        let revision = last.main;
        let mut closed = Vec::new();
        for (id, feed) in &mut self.feeds {
            for (watch, w) in feed.watchers.iter_mut().filter(|(_, w)| w.synced && revision >= w.floor) {
                let mine = select(&w.spec, events.iter());
                if mine.is_empty() {
                    continue;
                }
                match try_send(&feed.tx, WatchUpdate::Events { watch: *watch, revision, events: mine }) {
                    Ok(()) => {}
                    // A slow client: stop sending, remember where it is, catch up later.
                    Err(SendFailure::Full) => {
                        w.synced = false;
                        w.next = revision;
                    }
                    Err(SendFailure::Closed) => {
                        closed.push(*id);
                        break;
                    }
                }
            }
        }
        for id in closed {
            self.feeds.remove(&id);
        }
    }

    /// The state machine was replaced (a snapshot from the leader): synced watchers had
    /// everything up to `before`, the revision of the old state; what came after is in the new
    /// state's history, so they catch up from there.
    pub(crate) fn state_replaced(&mut self, before: i64) {
        for feed in self.feeds.values_mut() {
            for w in feed.watchers.values_mut().filter(|w| w.synced) {
                w.synced = false;
                w.next = (before + 1).max(w.floor);
            }
        }
    }

    /// Catches lagging watchers up as far as their feeds have room and [`CATCH_UP_BUDGET`]
    /// allows (called by the driver after each round of work; cheap when nobody lags). Returns
    /// whether the budget ran out with work left, so the driver comes back without waiting.
    pub(crate) fn catch_up(&mut self, sm: &StateMachine) -> bool {
        let lagging: Vec<u64> = self
            .feeds
            .iter()
            .filter(|(_, f)| f.progress_pending || f.watchers.values().any(|w| !w.synced))
            .map(|(id, _)| *id)
            .collect();
        let mut budget = CATCH_UP_BUDGET;
        let mut more = false;
        for feed in lagging {
            more |= self.catch_up_feed(feed, sm, &mut budget);
        }
        self.feeds.retain(|_, f| !f.tx.is_closed());
        more
    }

    /// Catches one feed up after a request to it, with a round's budget of its own (what is
    /// left over is done by the driver's next rounds).
    fn catch_up_one(&mut self, feed: u64, sm: &StateMachine) {
        let mut budget = CATCH_UP_BUDGET;
        self.catch_up_feed(feed, sm, &mut budget);
    }

    /// One feed's catch-up, a page per watcher at a time while the feed has room and `budget`
    /// lasts. Returns whether the budget ran out first.
    fn catch_up_feed(&mut self, feed: u64, sm: &StateMachine, budget: &mut usize) -> bool {
        let Some(f) = self.feeds.get_mut(&feed) else { return false };
        let current = sm.mvcc.revision();
        let mut canceled = Vec::new();
        let mut out_of_budget = false;
        'watchers: for (watch, w) in f.watchers.iter_mut().filter(|(_, w)| !w.synced) {
            while !w.synced {
                if f.tx.capacity() == 0 {
                    break 'watchers;
                }
                if *budget == 0 {
                    out_of_budget = true;
                    break 'watchers;
                }
                let page = match sm.mvcc.history(&w.spec.range, w.next, CATCH_UP_EVENTS) {
                    Ok(page) => page,
                    Err(e) => {
                        let compact_revision = match e {
                            KvError::Compacted { compact_revision } => compact_revision,
                            _ => 0,
                        };
                        let reason =
                            if compact_revision > 0 { COMPACTED_REASON.to_string() } else { e.to_string() };
                        let update = WatchUpdate::Canceled {
                            watch: *watch,
                            revision: current,
                            compact_revision,
                            reason,
                        };
                        match try_send(&f.tx, update) {
                            Ok(()) => canceled.push(*watch),
                            Err(_) => break 'watchers,
                        }
                        continue 'watchers;
                    }
                };
                *budget = budget.saturating_sub(page.events.len() + page.keys_visited);
                // An unfinished page is never empty: it stops after a revision's events.
                let last = page.events.last().map(|(r, _)| r.main);
                let upto = if page.complete { current } else { last.expect("an unfinished page has events") };
                let mine = select(&w.spec, page.events.iter());
                if let Some(last) = last.filter(|_| !mine.is_empty()) {
                    let update = WatchUpdate::Events { watch: *watch, revision: last, events: mine };
                    if try_send(&f.tx, update).is_err() {
                        break 'watchers;
                    }
                }
                w.next = upto + 1;
                w.synced = page.complete;
            }
        }
        for watch in canceled {
            f.watchers.remove(&watch);
        }
        if f.progress_pending && f.watchers.values().all(|w| w.synced) {
            let update = WatchUpdate::Progress { watch: None, revision: current };
            if try_send(&f.tx, update).is_ok() {
                f.progress_pending = false;
            }
        }
        out_of_budget
    }
}

/// Feed ids are unique in the process, so a feed can be opened without a round trip.
static NEXT_FEED: AtomicU64 = AtomicU64::new(1);

/// A feed of watch updates from a node: the watchers added to it share its bounded channel.
/// Dropping it removes them.
pub struct WatchFeed {
    id: u64,
    input: crate::node::InputSender,
    updates: mpsc::Receiver<WatchUpdate>,
}

impl NodeHandle {
    /// Opens an empty feed.
    pub fn watch_feed(&self) -> Result<WatchFeed, NodeError> {
        let id = NEXT_FEED.fetch_add(1, Ordering::Relaxed);
        let (tx, updates) = mpsc::channel(FEED_CAPACITY);
        let input = self.input.clone();
        input.send(Input::Watch(HubCommand::Open { feed: id, tx })).map_err(|_| NodeError::Stopped)?;
        Ok(WatchFeed { id, input, updates })
    }

    /// One watcher (named 0) on a feed of its own; also returns the revision at registration.
    pub async fn watch(&self, spec: WatchSpec) -> Result<(i64, WatchFeed), NodeError> {
        let feed = self.watch_feed()?;
        let revision = feed.watch(0, spec).await?;
        Ok((revision, feed))
    }
}

impl WatchFeed {
    fn send(&self, command: HubCommand) -> Result<(), NodeError> {
        self.input.send(Input::Watch(command)).map_err(|_| NodeError::Stopped)
    }

    /// Adds watcher `watch` (a name of the caller's choosing, unique in this feed); returns the
    /// applied revision at registration. Its history, if it starts in the past, follows on the
    /// feed.
    pub async fn watch(&self, watch: u64, spec: WatchSpec) -> Result<i64, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Watch { feed: self.id, watch, spec, reply })?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Removes watcher `watch`; returns the applied revision. Updates already queued for it
    /// may still arrive.
    pub async fn cancel(&self, watch: u64) -> Result<i64, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Cancel { feed: self.id, watch, reply })?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Asks for a progress update for one watcher (sent only if it is synced), or for the whole
    /// feed (sent once every watcher is synced).
    pub fn request_progress(&self, watch: Option<u64>) -> Result<(), NodeError> {
        self.send(HubCommand::Progress { feed: self.id, watch })
    }

    /// The applied revision (for the header of a response that carries no event).
    pub async fn revision(&self) -> Result<i64, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(HubCommand::Revision { reply })?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The next update; `None` once the node stopped.
    pub async fn recv(&mut self) -> Option<WatchUpdate> {
        self.updates.recv().await
    }
}

impl Drop for WatchFeed {
    fn drop(&mut self) {
        let _ = self.send(HubCommand::Close { feed: self.id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balsa_kv::{Command, DeleteRangeRequest, PutRequest};
    use bytes::Bytes;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(k: &str, v: &str) -> Command {
        Command::Put(PutRequest { key: b(k), value: b(v), ..Default::default() })
    }

    /// Applies and publishes, as the driver does.
    fn apply(hub: &mut WatchHub, sm: &mut StateMachine, c: Command) {
        let mut feed = Vec::new();
        sm.apply_recording(&c, &mut feed).unwrap();
        hub.publish(&feed);
    }

    fn open(hub: &mut WatchHub, sm: &StateMachine, capacity: usize) -> mpsc::Receiver<WatchUpdate> {
        let (tx, rx) = mpsc::channel(capacity);
        hub.handle(HubCommand::Open { feed: 1, tx }, sm);
        rx
    }

    fn add(hub: &mut WatchHub, sm: &StateMachine, watch: u64, spec: WatchSpec) -> i64 {
        let (reply, mut rx) = oneshot::channel();
        hub.handle(HubCommand::Watch { feed: 1, watch, spec, reply }, sm);
        rx.try_recv().unwrap()
    }

    /// Drains the feed: (watch, revision, key, value) of every event, in order.
    fn events(rx: &mut mpsc::Receiver<WatchUpdate>) -> Vec<(u64, i64, String, String)> {
        let mut out = Vec::new();
        while let Ok(u) = rx.try_recv() {
            if let WatchUpdate::Events { watch, events, .. } = u {
                for e in events {
                    let s = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
                    out.push((watch, e.kv.mod_revision, s(&e.kv.key), s(&e.kv.value)));
                }
            }
        }
        out
    }

    fn revisions(rx: &mut mpsc::Receiver<WatchUpdate>) -> Vec<i64> {
        events(rx).into_iter().map(|(_, r, _, _)| r).collect()
    }

    #[test]
    fn history_then_live_with_no_gap_and_no_duplicate() {
        let mut hub = WatchHub::default();
        let mut sm = StateMachine::default();
        for i in 0..5 {
            apply(&mut hub, &mut sm, put("a", &i.to_string())); // revisions 2..=6
        }
        let mut rx = open(&mut hub, &sm, 16);
        let spec = WatchSpec { start_revision: 4, ..WatchSpec::new(KeyRange::single("a")) };
        assert_eq!(add(&mut hub, &sm, 7, spec), 6, "the applied revision at registration");
        let now = WatchSpec::new(KeyRange::prefix(""));
        add(&mut hub, &sm, 8, now);
        apply(&mut hub, &mut sm, put("a", "x")); // 7
        apply(&mut hub, &mut sm, put("b", "y")); // 8
        let got = events(&mut rx);
        let w7: Vec<i64> = got.iter().filter(|e| e.0 == 7).map(|e| e.1).collect();
        let w8: Vec<i64> = got.iter().filter(|e| e.0 == 8).map(|e| e.1).collect();
        assert_eq!(w7, vec![4, 5, 6, 7], "history from 4, then live; b is not in range");
        assert_eq!(w8, vec![7, 8], "start 0: from the next revision");
    }

    #[test]
    fn filters_prev_kv_and_future_start() {
        let mut hub = WatchHub::default();
        let mut sm = StateMachine::default();
        let mut rx = open(&mut hub, &sm, 16);
        let no_put = WatchSpec { no_put: true, prev_kv: true, ..WatchSpec::new(KeyRange::prefix("k")) };
        add(&mut hub, &sm, 1, no_put);
        let later = WatchSpec { start_revision: 4, ..WatchSpec::new(KeyRange::prefix("k")) };
        add(&mut hub, &sm, 2, later);
        apply(&mut hub, &mut sm, put("k1", "a")); // 2
        apply(&mut hub, &mut sm, put("k2", "b")); // 3
        let del = DeleteRangeRequest { range: KeyRange::prefix("k"), prev_kv: false };
        apply(&mut hub, &mut sm, Command::DeleteRange(del)); // 4
        let mut deletes = Vec::new();
        let mut later_revs = Vec::new();
        while let Ok(WatchUpdate::Events { watch, events, .. }) = rx.try_recv() {
            for e in events {
                if watch == 1 {
                    assert_eq!(e.kind, EventKind::Delete, "NOPUT drops puts");
                    deletes.push(e.prev_kv.expect("prev_kv asked for").value);
                } else {
                    assert!(e.prev_kv.is_none(), "prev_kv only when asked for");
                    later_revs.push(e.kv.mod_revision);
                }
            }
        }
        assert_eq!(deletes, vec![b("a"), b("b")]);
        assert_eq!(later_revs, vec![4, 4], "a start revision in the future is waited for");
    }

    #[test]
    fn a_slow_feed_lags_then_catches_up_exactly() {
        let mut hub = WatchHub::default();
        let mut sm = StateMachine::default();
        let mut rx = open(&mut hub, &sm, 4);
        add(&mut hub, &sm, 1, WatchSpec::new(KeyRange::prefix("")));
        for i in 0..30 {
            apply(&mut hub, &mut sm, put(&format!("k{}", i % 3), "v")); // 2..=31
        }
        assert_eq!(rx.len(), 4, "the driver never waits: the feed filled and the watcher lags");
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.extend(revisions(&mut rx));
            hub.catch_up(&sm);
            apply(&mut hub, &mut sm, put("live", "v"));
        }
        seen.extend(revisions(&mut rx));
        let expected: Vec<i64> = (2..=sm.mvcc.revision()).collect();
        assert_eq!(seen, expected, "every revision once, in order");
    }

    /// A watcher replaying a long history gets it a budget per driver round, not all at once:
    /// each round sends at most `CATCH_UP_BUDGET` events and says whether more is due, and the
    /// rounds together deliver every revision once, in order.
    #[test]
    fn a_long_replay_is_paged_out_over_rounds_within_the_budget() {
        let mut hub = WatchHub::default();
        let mut sm = StateMachine::default();
        let total = 3 * CATCH_UP_BUDGET;
        for i in 0..total {
            apply(&mut hub, &mut sm, put(&format!("k{}", i % 5), "v")); // 2..=total+1
        }
        let mut rx = open(&mut hub, &sm, FEED_CAPACITY);
        let spec = WatchSpec { start_revision: 1, ..WatchSpec::new(KeyRange::prefix("k")) };
        add(&mut hub, &sm, 1, spec);
        let mut seen = revisions(&mut rx);
        assert!(seen.len() <= CATCH_UP_BUDGET, "registration replayed {} events at once", seen.len());
        let mut rounds = 0;
        loop {
            let more = hub.catch_up(&sm);
            let round = revisions(&mut rx);
            assert!(!round.is_empty() && round.len() <= CATCH_UP_BUDGET, "a round sent {}", round.len());
            seen.extend(round);
            rounds += 1;
            assert!(rounds <= total, "the replay never ends");
            if !more {
                break;
            }
        }
        assert!(rounds >= 2, "{rounds} rounds after registration: the budget did not page the replay");
        let expected: Vec<i64> = (2..=sm.mvcc.revision()).collect();
        assert_eq!(seen, expected, "every revision once, in order");
        assert!(!hub.catch_up(&sm), "nothing left once synced");
    }

    #[test]
    fn compaction_overtaking_a_lagging_watcher_cancels_it_with_the_compact_revision() {
        let mut hub = WatchHub::default();
        let mut sm = StateMachine::default();
        let mut rx = open(&mut hub, &sm, 2);
        add(&mut hub, &sm, 1, WatchSpec::new(KeyRange::prefix("")));
        for _ in 0..10 {
            apply(&mut hub, &mut sm, put("k", "v")); // 2..=11
        }
        sm.apply(&Command::Compact { revision: 8 }).unwrap();
        assert_eq!(revisions(&mut rx), vec![2, 3]);
        hub.catch_up(&sm);
        match rx.try_recv() {
            Ok(WatchUpdate::Canceled { watch: 1, compact_revision: 8, reason, .. }) => {
                assert_eq!(reason, COMPACTED_REASON)
            }
            other => panic!("expected a compacted cancel, got {other:?}"),
        }
        assert!(hub.feeds[&1].watchers.is_empty(), "a canceled watcher is gone");
        // A new watch from a compacted revision: canceled the same way.
        add(&mut hub, &sm, 2, WatchSpec { start_revision: 3, ..WatchSpec::new(KeyRange::single("k")) });
        assert!(matches!(rx.try_recv(), Ok(WatchUpdate::Canceled { watch: 2, compact_revision: 8, .. })));
        // From the compaction point itself: history is still there.
        add(&mut hub, &sm, 3, WatchSpec { start_revision: 8, ..WatchSpec::new(KeyRange::single("k")) });
        assert_eq!(revisions(&mut rx), vec![8, 9, 10, 11]);
    }

    #[test]
    fn watchers_continue_exactly_across_a_snapshot_install() {
        let mut hub = WatchHub::default();
        let mut sm = StateMachine::default();
        let mut rx = open(&mut hub, &sm, 64);
        add(&mut hub, &sm, 1, WatchSpec::new(KeyRange::prefix("")));
        apply(&mut hub, &mut sm, put("a", "1")); // 2
                                                 // The leader's state: the same history and more, never applied here.
        let mut leader = sm.clone();
        for i in 0..5 {
            leader.apply(&put("b", &i.to_string())).unwrap(); // 3..=7
        }
        let before = sm.mvcc.revision();
        let mut sm = leader.clone();
        hub.state_replaced(before);
        hub.catch_up(&sm);
        apply(&mut hub, &mut sm, put("c", "live")); // 8
        assert_eq!(revisions(&mut rx), (2..=8).collect::<Vec<_>>());
        // A snapshot whose history is compacted past what the watcher needs: canceled, not a gap.
        let mut compacted = sm.clone();
        for _ in 0..3 {
            compacted.apply(&put("d", "x")).unwrap(); // 9..=11
        }
        compacted.apply(&Command::Compact { revision: 10 }).unwrap();
        hub.state_replaced(sm.mvcc.revision());
        hub.catch_up(&compacted);
        assert!(matches!(rx.try_recv(), Ok(WatchUpdate::Canceled { compact_revision: 10, .. })));
    }

    #[test]
    fn feed_wide_progress_waits_until_every_watcher_is_synced() {
        let mut hub = WatchHub::default();
        let mut sm = StateMachine::default();
        let mut rx = open(&mut hub, &sm, 2);
        add(&mut hub, &sm, 1, WatchSpec::new(KeyRange::prefix("")));
        for _ in 0..4 {
            apply(&mut hub, &mut sm, put("k", "v")); // 2..=5; the feed holds 2
        }
        hub.handle(HubCommand::Progress { feed: 1, watch: None }, &sm);
        hub.handle(HubCommand::Progress { feed: 1, watch: Some(1) }, &sm);
        let mut seen = revisions(&mut rx);
        assert_eq!(seen, vec![2, 3], "no progress while the watcher lags");
        hub.catch_up(&sm);
        let mut last = None;
        while let Ok(u) = rx.try_recv() {
            match u {
                WatchUpdate::Events { events, .. } => seen.extend(events.iter().map(|e| e.kv.mod_revision)),
                WatchUpdate::Progress { watch: None, revision } => last = Some(revision),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, vec![2, 3, 4, 5]);
        assert_eq!(last, Some(5), "progress after every event up to its revision");
        hub.handle(HubCommand::Progress { feed: 1, watch: Some(1) }, &sm);
        assert_eq!(rx.try_recv().ok(), Some(WatchUpdate::Progress { watch: Some(1), revision: 5 }));
    }
}
