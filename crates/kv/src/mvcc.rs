//! The multi-version keyspace (etcd's `mvcc` package, rebuilt): every write transaction gets the
//! next main revision; each key keeps its versions, so reads at an old revision and watches
//! from an old revision work until compaction.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;

use bytes::Bytes;

use crate::error::KvError;
use crate::key::Key;
use crate::types::{Event, EventKind, KeyRange, KeyValue, Revision};

/// One version of a key as the keyspace holds it: etcd's `KeyValue` less what is known already
/// (the key is the map's, the mod revision is the version's own main revision). It takes 72
/// bytes where a `(Revision, Option<KeyValue>)` took 112; after the allocator's rounding that is
/// 48 bytes less per key, about 46 MiB per member at a million keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    /// Main revision of the write: the key's mod revision at this version.
    pub(crate) main: i64,
    /// Revision of the key's creation (0 for a tombstone).
    pub(crate) create_revision: i64,
    /// Modifications since creation: 1 after creation. 0 marks a tombstone (a deletion), as a
    /// deleted key's version is 0 in etcd.
    pub(crate) version: i64,
    /// Lease the key is attached to (0: none).
    pub(crate) lease: i64,
    /// The value (empty for a tombstone).
    pub(crate) value: Bytes,
    /// Position of the write within its transaction (the revision's sub).
    pub(crate) sub: u32,
}

impl Version {
    /// A tombstone: the key deleted at `revision` (also what a put's version is built on).
    fn tombstone(revision: Revision) -> Self {
        // A transaction's writes are bounded by the request size limit, far below 2^32.
        let sub = u32::try_from(revision.sub).expect("a transaction writes fewer than 2^32 keys");
        Self { main: revision.main, sub, create_revision: 0, version: 0, lease: 0, value: Bytes::new() }
    }

    pub(crate) fn revision(&self) -> Revision {
        Revision { main: self.main, sub: i64::from(self.sub) }
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    /// The key-value pair this version of `key` is, or `None` for a tombstone.
    pub(crate) fn kv(&self, key: &Bytes) -> Option<KeyValue> {
        (!self.is_tombstone()).then(|| self.live_kv(key.clone()))
    }

    /// As [`Version::kv`] for a key as the tree holds it (copied out if inline).
    fn kv_of(&self, key: &Key) -> Option<KeyValue> {
        (!self.is_tombstone()).then(|| self.live_kv(key.to_bytes()))
    }

    /// The key-value pair of a version known not to be a tombstone.
    fn live_kv(&self, key: Bytes) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.main,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }

    /// A version as a snapshot holds it: its revision, and its key-value pair unless it is a
    /// tombstone. Refuses what the keyspace never holds: a sub-revision beyond `u32`, a live
    /// version numbered below 1, a mod revision other than the write's own.
    pub(crate) fn restored(revision: Revision, kv: Option<KeyValue>) -> Result<Self, KvError> {
        if !(0..=i64::from(u32::MAX)).contains(&revision.sub) {
            return Err(KvError::Malformed("sub-revision"));
        }
        let Some(kv) = kv else { return Ok(Self::tombstone(revision)) };
        if kv.version < 1 || kv.mod_revision != revision.main {
            return Err(KvError::Malformed("version"));
        }
        let KeyValue { create_revision, version, value, lease, .. } = kv;
        Ok(Self { create_revision, version, value, lease, ..Self::tombstone(revision) })
    }
}

/// The keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mvcc {
    /// Every key's versions, oldest first.
    pub(crate) keys: BTreeMap<Key, Vec<Version>>,
    /// Main revision of the last write transaction. Starts at 1, as in etcd.
    pub(crate) current: i64,
    /// Revisions below this were compacted away.
    pub(crate) compacted: i64,
}

impl Default for Mvcc {
    fn default() -> Self {
        Self { keys: BTreeMap::new(), current: 1, compacted: 0 }
    }
}

/// A page of a range's history, from [`Mvcc::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The events, in revision order.
    pub events: Vec<(Revision, Event)>,
    /// Whether they reach the current revision (false: more follow after the last one).
    pub complete: bool,
    /// Keys of the range looked at to find them: with the events, the page's cost.
    pub keys_visited: usize,
}

/// What a put replaced, from [`Mvcc::put`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// The previous value, when the caller asked for it (`prev_kv`): building it clones the old
    /// value's handle, a cache miss on a buffer written long ago, which most puts never read.
    pub prev: Option<KeyValue>,
    /// The lease the key was attached to (0: none, or no previous value), which the caller
    /// needs to move the key between leases whether or not it asked for the value.
    pub prev_lease: i64,
}

/// A write transaction in progress: its main revision and the next sub-revision.
#[derive(Debug)]
pub struct WriteCtx {
    main: i64,
    sub: i64,
    wrote: bool,
    /// The change feed of this transaction, when someone asked for it (see
    /// [`Mvcc::begin_recording`]): each write as the watch event it is, in write order.
    events: Option<Vec<(Revision, Event)>>,
}

impl WriteCtx {
    /// The events this transaction wrote so far (empty unless it was begun recording).
    pub fn take_events(&mut self) -> Vec<(Revision, Event)> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

fn bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    let start = Bound::Included(&range.key[..]);
    if range.range_end.is_empty() {
        return (start, Bound::Included(&range.key[..]));
    }
    if &range.range_end[..] == b"\0" {
        return (start, Bound::Unbounded);
    }
    if range.range_end < range.key {
        // An end before the key selects nothing (etcd answers such a range with no keys);
        // `BTreeMap::range` would panic on the inverted bounds.
        return (start, Bound::Excluded(&range.key[..]));
    }
    (start, Bound::Excluded(&range.range_end[..]))
}

/// A key's version as of main revision `at`: the last one written at or before it. Versions are
/// in revision order, so this is a binary search; a read at an old revision of a key rewritten a
/// million times used to walk back through them one by one, on the driver thread.
fn version_at(versions: &[Version], at: i64) -> Option<&Version> {
    versions.partition_point(|v| v.main <= at).checked_sub(1).map(|i| &versions[i])
}

/// etcd's shape of a delete event: the key, the deleting revision, version 0, no value.
fn delete_event(key: Bytes, revision: i64, prev_kv: Option<KeyValue>) -> Event {
    let kv = KeyValue { key, mod_revision: revision, ..KeyValue::default() };
    Event { kind: EventKind::Delete, kv, prev_kv }
}

impl Mvcc {
    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.current
    }

    /// The compaction point (0 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compacted
    }

    /// Starts a write transaction.
    pub fn begin(&self) -> WriteCtx {
        WriteCtx { main: self.current + 1, sub: 0, wrote: false, events: None }
    }

    /// Starts a write transaction that also records each write as a watch event (the change
    /// feed): live watchers are served from it instead of rescanning the keyspace after every
    /// write. Recording clones only reference-counted keys and values.
    pub fn begin_recording(&self) -> WriteCtx {
        WriteCtx { events: Some(Vec::new()), ..self.begin() }
    }

    /// Ends a write transaction; the revision moves only if it wrote something.
    pub fn finish(&mut self, ctx: WriteCtx) -> i64 {
        if ctx.wrote {
            self.current = ctx.main;
        }
        self.current
    }

    /// The current value of `key` (including writes of the transaction in progress).
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let (key, versions) = self.keys.get_key_value(key)?;
        versions.last()?.kv_of(key)
    }

    /// Writes `key`; returns its previous value, built only when `want_prev` asks for it or the
    /// transaction is being recorded (see [`Put`]).
    pub fn put(&mut self, ctx: &mut WriteCtx, key: Bytes, value: Bytes, lease: i64, want_prev: bool) -> Put {
        let revision = Revision { main: ctx.main, sub: ctx.sub };
        ctx.sub += 1;
        ctx.wrote = true;
        // Most keys hold one version: room for exactly one, where `Vec`'s first push would make
        // room for four (3 x 112 unused bytes per key, a quarter of a node's memory at 1M keys).
        let versions = self.keys.entry(Key::from(&key)).or_insert_with(|| Vec::with_capacity(1));
        let last = versions.last().filter(|v| !v.is_tombstone());
        let (create_revision, version) = last.map_or((ctx.main, 1), |p| (p.create_revision, p.version + 1));
        let prev_lease = last.map_or(0, |p| p.lease);
        let prev = if want_prev || ctx.events.is_some() { last.and_then(|v| v.kv(&key)) } else { None };
        let written = Version { create_revision, version, value, lease, ..Version::tombstone(revision) };
        if let Some(events) = &mut ctx.events {
            let kv = written.kv(&key).expect("a put is not a tombstone");
            events.push((revision, Event { kind: EventKind::Put, kv, prev_kv: prev.clone() }));
        }
        versions.push(written);
        Put { prev: if want_prev { prev } else { None }, prev_lease }
    }

    /// Deletes `key` if it exists; returns what it held.
    pub fn delete(&mut self, ctx: &mut WriteCtx, key: &Bytes) -> Option<KeyValue> {
        let versions = self.keys.get_mut(&key[..])?;
        let prev = versions.last().and_then(|v| v.kv(key))?;
        let revision = Revision { main: ctx.main, sub: ctx.sub };
        versions.push(Version::tombstone(revision));
        ctx.sub += 1;
        ctx.wrote = true;
        if let Some(events) = &mut ctx.events {
            events.push((revision, delete_event(key.clone(), revision.main, Some(prev.clone()))));
        }
        Some(prev)
    }

    /// Keys currently in `range`.
    pub fn current_keys(&self, range: &KeyRange) -> Vec<Bytes> {
        self.keys
            .range::<[u8], _>(bounds(range))
            .filter(|(_, v)| v.last().is_some_and(|v| !v.is_tombstone()))
            .map(|(k, _)| k.to_bytes())
            .collect()
    }

    /// Checks a read revision: 0 (or, as in etcd, any negative revision) means current;
    /// compacted or future revisions are errors.
    pub fn check_revision(&self, revision: i64) -> Result<i64, KvError> {
        if revision <= 0 {
            return Ok(self.current);
        }
        if revision > self.current {
            return Err(KvError::FutureRevision);
        }
        if revision < self.compacted {
            return Err(KvError::Compacted { compact_revision: self.compacted });
        }
        Ok(revision)
    }

    /// The values in `range` as of `revision` (0: now, including an unfinished transaction's
    /// writes), in key order.
    pub fn range(&self, range: &KeyRange, revision: i64) -> Result<Vec<KeyValue>, KvError> {
        let at = if revision <= 0 { None } else { Some(self.check_revision(revision)?) };
        let mut out = Vec::new();
        for (key, versions) in self.keys.range::<[u8], _>(bounds(range)) {
            let version = match at {
                None => versions.last(),
                Some(rev) => version_at(versions, rev),
            };
            if let Some(kv) = version.and_then(|v| v.kv_of(key)) {
                out.push(kv);
            }
        }
        Ok(out)
    }

    /// Forgets history before `revision`: each key keeps its latest version at or before it
    /// (a tombstone only if it is exactly at `revision`), so reads at `revision` still work.
    pub fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        if revision <= self.compacted {
            return Err(KvError::Compacted { compact_revision: self.compacted });
        }
        if revision > self.current {
            return Err(KvError::FutureRevision);
        }
        self.keys.retain(|_, versions| {
            let keep_from = versions.partition_point(|v| v.main <= revision).saturating_sub(1);
            versions.drain(..keep_from);
            if versions.first().is_some_and(|v| v.is_tombstone() && v.main < revision) {
                versions.remove(0);
            }
            // Give back the room of the history just dropped: a key rewritten a thousand times
            // would otherwise keep space for a thousand versions after compaction.
            if versions.capacity() > 2 * versions.len() {
                versions.shrink_to_fit();
            }
            !versions.is_empty()
        });
        self.compacted = revision;
        Ok(())
    }

    /// Every change to keys in `range` at or after `start` (etcd's watch history), in revision
    /// order, with the previous value where history still holds it.
    pub fn events_since(&self, range: &KeyRange, start: i64) -> Result<Vec<(Revision, Event)>, KvError> {
        self.history(range, start, usize::MAX).map(|h| h.events)
    }

    /// A page of the history of `range` from revision `start` on, in revision order: at most
    /// `limit` events, unless the last revision's events run past it (a revision's events are
    /// never split, as etcd sends them). The work is one binary search per key in `range` plus the
    /// events returned, not the whole history: a watcher catching up on a long history pages
    /// through it without the driver rescanning it for every page.
    pub fn history(&self, range: &KeyRange, start: i64, limit: usize) -> Result<History, KvError> {
        if start < self.compacted {
            return Err(KvError::Compacted { compact_revision: self.compacted });
        }
        // One cursor per key with versions at or after `start`, merged by revision.
        let mut cursors: Vec<(Bytes, &[Version], usize)> = Vec::new();
        let mut heap = BinaryHeap::new();
        let mut keys_visited = 0;
        for (key, versions) in self.keys.range::<[u8], _>(bounds(range)) {
            keys_visited += 1;
            if versions.last().is_none_or(|v| v.main < start) {
                continue;
            }
            let at = versions.partition_point(|v| v.main < start);
            heap.push(Reverse((versions[at].revision(), cursors.len())));
            cursors.push((key.to_bytes(), versions, at));
        }
        let mut events = Vec::new();
        while let Some(&Reverse((rev, c))) = heap.peek() {
            if events.len() >= limit
                && events.last().is_some_and(|(last, _): &(Revision, Event)| last.main != rev.main)
            {
                return Ok(History { events, complete: false, keys_visited });
            }
            heap.pop();
            let (key, versions, at) = &mut cursors[c];
            let prev_kv = at.checked_sub(1).and_then(|j| versions[j].kv(key));
            let event = match versions[*at].kv(key) {
                Some(kv) => Event { kind: EventKind::Put, kv, prev_kv },
                None => delete_event(key.clone(), rev.main, prev_kv),
            };
            events.push((rev, event));
            *at += 1;
            if let Some(next) = versions.get(*at) {
                heap.push(Reverse((next.revision(), c)));
            }
        }
        Ok(History { events, complete: true, keys_visited })
    }

    /// How many keys the keyspace holds a history for (deleted ones included until compacted).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Rebuilds the key index with full tree nodes, the same keys and versions in it. A tree
    /// grown by keys arriving in order (a bulk load, numbered keys) splits every full node in
    /// two and leaves it at six of eleven slots: at 1M keys that slack was 34 MiB per member,
    /// 6% of its resident size (a snapshot's decode inserts keys in order too). Built from the
    /// sorted keys at once, nodes are full. Costs a walk of the whole index (60-190 ms at 1M
    /// keys on the benchmark machine) and, for a moment, about half the index's size again
    /// (the entries in a vector, the sort's scratch), so the server does it while idle.
    pub fn repack(&mut self) {
        // Every entry leaves the old tree before the new one is built, so the old nodes' memory
        // is free as a whole and can go back to the system. (`append` into a one-key tree also
        // builds full nodes, without the vector, but it frees old nodes while allocating new
        // ones of the same size in their slots: the resident size did not move.)
        let entries: Vec<_> = std::mem::take(&mut self.keys).into_iter().collect();
        self.keys = entries.into_iter().collect();
    }

    /// A CRC-32C of the keyspace's history up to `revision` (0: the current revision), for etcd's
    /// `HashKV`: every version still held at or before it, in key order, with its revision,
    /// create and mod revisions, version, lease and value (a deletion as a tombstone), then the
    /// compaction point. Replicas that applied the same log give the same hash. Returns the hash
    /// and the compaction point; a compacted or future revision is an error, as in etcd.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), KvError> {
        let at = self.check_revision(revision)?;
        let mut crc = 0u32;
        let mut feed = |bytes: &[u8]| crc = crc32c::crc32c_append(crc, bytes);
        for (key, versions) in &self.keys {
            for v in versions.iter().take_while(|v| v.main <= at) {
                feed(&(key.as_slice().len() as u64).to_le_bytes());
                feed(key.as_slice());
                feed(&v.main.to_le_bytes());
                feed(&i64::from(v.sub).to_le_bytes());
                if v.is_tombstone() {
                    feed(&[0]);
                } else {
                    feed(&[1]);
                    for n in [v.create_revision, v.main, v.version, v.lease] {
                        feed(&n.to_le_bytes());
                    }
                    feed(&(v.value.len() as u64).to_le_bytes());
                    feed(&v.value);
                }
            }
        }
        feed(&self.compacted.to_le_bytes());
        Ok((crc, self.compacted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(m: &mut Mvcc, k: &str, v: &str) -> i64 {
        let mut ctx = m.begin();
        m.put(&mut ctx, b(k), b(v), 0, false);
        m.finish(ctx)
    }

    /// A put reports the lease it replaced every time and the previous value only when asked
    /// (or when the transaction is recorded for watchers, whose events carry it); a tombstone
    /// or a new key has neither.
    #[test]
    fn a_put_returns_the_previous_value_only_when_asked() {
        let mut m = Mvcc::default();
        let mut ctx = m.begin();
        assert_eq!(m.put(&mut ctx, b("k"), b("1"), 7, true), Put { prev: None, prev_lease: 0 }, "a new key");
        let unasked = m.put(&mut ctx, b("k"), b("2"), 8, false);
        assert_eq!(unasked, Put { prev: None, prev_lease: 7 });
        let asked = m.put(&mut ctx, b("k"), b("3"), 0, true);
        let prev = asked.prev.expect("asked for");
        assert_eq!((&prev.value[..], prev.lease, prev.version, asked.prev_lease), (&b"2"[..], 8, 2, 8));
        m.delete(&mut ctx, &b("k"));
        assert_eq!(
            m.put(&mut ctx, b("k"), b("4"), 0, true),
            Put { prev: None, prev_lease: 0 },
            "after a delete"
        );
        m.finish(ctx);

        let mut ctx = m.begin_recording();
        assert_eq!(m.put(&mut ctx, b("k"), b("5"), 0, false).prev, None, "not asked, though recorded");
        let events = ctx.take_events();
        let recorded = events[0].1.prev_kv.as_ref().expect("a watcher's event carries the old value");
        assert_eq!(&recorded.value[..], b"4");
        m.finish(ctx);
    }

    /// Repacking rebuilds the index and nothing else: the same keys, versions, tombstones and
    /// compaction point (the derived equality compares them all), the same reads at every
    /// revision, the same hash; and the keyspace goes on taking writes afterwards.
    #[test]
    fn repacking_keeps_every_key_and_version() {
        let mut m = Mvcc::default();
        for i in 0..2_000u32 {
            // Keys in order (the case repacking is for), some rewritten, some deleted.
            put(&mut m, &format!("key{i:05}"), &format!("v{i}"));
            if i % 7 == 0 {
                put(&mut m, &format!("key{:05}", i / 2), "again");
            }
            if i % 11 == 0 {
                let mut ctx = m.begin();
                m.delete(&mut ctx, &b(&format!("key{:05}", i / 3)));
                m.finish(ctx);
            }
        }
        m.compact(100).unwrap();
        let before = m.clone();
        m.repack();
        assert_eq!(m, before);
        let everything = KeyRange { key: b("\0"), range_end: b("\0") };
        for revision in [100, 101, 1_000, 2_000, 0] {
            assert_eq!(m.range(&everything, revision), before.range(&everything, revision));
        }
        assert_eq!(m.hash_kv(0), before.hash_kv(0));
        assert_eq!(m.key_count(), before.key_count());
        let revision = put(&mut m, "key00007", "after");
        assert_eq!(m.get(b"key00007").map(|kv| kv.mod_revision), Some(revision));
    }

    /// Bad input found by the API tests: an end before the key used to panic in
    /// `BTreeMap::range` (on the driver thread, stopping the node); a negative revision was
    /// taken for a compacted one. etcd answers both as a plain read of nothing / of now.
    #[test]
    fn inverted_ranges_are_empty_and_negative_revisions_mean_now() {
        let mut m = Mvcc::default();
        put(&mut m, "a", "1");
        put(&mut m, "c", "1");
        let inverted = KeyRange { key: b("c"), range_end: b("a") };
        assert!(m.range(&inverted, 0).unwrap().is_empty());
        assert!(m.current_keys(&inverted).is_empty());
        assert!(m.events_since(&inverted, 1).unwrap().is_empty());
        let everything = KeyRange { key: b("a"), range_end: b("\0") };
        assert_eq!(m.range(&everything, -7).unwrap().len(), 2);
        assert_eq!(m.check_revision(-1), Ok(m.revision()));
    }

    /// A keyspace with multi-key transactions, deletes and a compaction: the history pages
    /// `history` hands out, joined, are exactly the unpaged history, every page but the last
    /// ends at a revision boundary, and no page goes past `limit` but to finish a revision.
    #[test]
    fn history_pages_join_to_the_whole_history_and_never_split_a_revision() {
        let mut m = Mvcc::default();
        for i in 0..300u32 {
            let mut ctx = m.begin();
            // Transactions of 1 to 3 writes over 7 keys; every fifth deletes one.
            for j in 0..=(i % 3) {
                let key = b(&format!("k{}", (i * 3 + j * 5) % 7));
                if i % 5 == 0 && j == 0 {
                    m.delete(&mut ctx, &key);
                } else {
                    m.put(&mut ctx, key, b(&format!("{i}.{j}")), 0, false);
                }
            }
            m.finish(ctx);
        }
        m.compact(40).unwrap();
        let outside = KeyRange::single("other");
        for range in [KeyRange::prefix("k"), KeyRange::single("k3"), outside] {
            for start in [40, 41, 150, m.revision(), m.revision() + 1] {
                let whole = m.events_since(&range, start).unwrap();
                for limit in [1, 2, 7, 1000] {
                    let (mut joined, mut next) = (Vec::new(), start);
                    loop {
                        let page = m.history(&range, next, limit).unwrap();
                        // Past `limit` only to finish the revision it reached.
                        let last = page.events.last().map(|(r, _)| r.main);
                        let before_last = page.events.iter().filter(|(r, _)| Some(r.main) != last).count();
                        assert!(page.events.len() <= limit || before_last < limit, "an overlong page");
                        assert!(
                            page.complete || !page.events.is_empty(),
                            "an empty page that is not the last"
                        );
                        next = page.events.last().map_or(next, |(r, _)| r.main + 1);
                        joined.extend(page.events);
                        if page.complete {
                            break;
                        }
                    }
                    assert_eq!(joined, whole, "range {range:?} from {start}, pages of {limit}");
                }
            }
        }
        let all = m.events_since(&KeyRange::prefix("k"), 40).unwrap();
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "revision order");
        assert_eq!(all.last().unwrap().0.main, m.revision());
        assert_eq!(
            m.history(&KeyRange::prefix("k"), 39, 1),
            Err(KvError::Compacted { compact_revision: 40 })
        );
    }

    /// Reads at every past revision of two interleaved keys with many versions, one deleted
    /// now and then, see exactly the value written last at or before that revision.
    #[test]
    fn reads_at_past_revisions_see_the_version_of_that_revision() {
        let mut m = Mvcc::default();
        let mut expected: Vec<(i64, &str, Option<String>)> = Vec::new();
        for i in 0..600u32 {
            let key = if i % 3 == 0 { "b" } else { "a" };
            if i % 7 == 6 {
                let mut ctx = m.begin();
                m.delete(&mut ctx, &b(key));
                expected.push((m.finish(ctx), key, None));
            } else {
                expected.push((put(&mut m, key, &i.to_string()), key, Some(i.to_string())));
            }
        }
        for key in ["a", "b"] {
            for at in 1..=m.revision() {
                let want = expected
                    .iter()
                    .rev()
                    .find(|(r, k, _)| *r <= at && *k == key)
                    .and_then(|(_, _, v)| v.clone());
                let got = m
                    .range(&KeyRange::single(key), at)
                    .unwrap()
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                assert_eq!(got, want, "{key} at {at}");
            }
        }
    }

    #[test]
    fn revisions_versions_and_history() {
        let mut m = Mvcc::default();
        assert_eq!(m.revision(), 1, "etcd starts at revision 1");
        assert_eq!(put(&mut m, "a", "1"), 2);
        assert_eq!(put(&mut m, "a", "2"), 3);
        let kv = m.get(b"a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        let mut ctx = m.begin();
        assert!(m.delete(&mut ctx, &b("a")).is_some());
        assert_eq!(m.finish(ctx), 4);
        assert_eq!(put(&mut m, "a", "3"), 5);
        let kv = m.get(b"a").unwrap();
        assert_eq!((kv.create_revision, kv.version), (5, 1), "a new generation after a delete");
        assert_eq!(&m.range(&KeyRange::single("a"), 3).unwrap()[0].value[..], b"2");
        assert!(m.range(&KeyRange::single("a"), 4).unwrap().is_empty(), "deleted at 4");
        assert_eq!(m.range(&KeyRange::single("a"), 6), Err(KvError::FutureRevision));
        // Deleting a missing key writes nothing and keeps the revision.
        let mut ctx = m.begin();
        assert!(m.delete(&mut ctx, &b("zz")).is_none());
        assert_eq!(m.finish(ctx), 5);
    }

    #[test]
    fn compaction_keeps_reads_at_the_compaction_point() {
        let mut m = Mvcc::default();
        put(&mut m, "a", "1"); // 2
        put(&mut m, "b", "1"); // 3
        put(&mut m, "a", "2"); // 4
        let mut ctx = m.begin();
        m.delete(&mut ctx, &b("b"));
        m.finish(ctx); // 5
        put(&mut m, "a", "3"); // 6
        m.compact(5).unwrap();
        assert_eq!(m.range(&KeyRange::single("a"), 3), Err(KvError::Compacted { compact_revision: 5 }));
        assert_eq!(&m.range(&KeyRange::single("a"), 5).unwrap()[0].value[..], b"2");
        assert!(m.range(&KeyRange::single("b"), 5).unwrap().is_empty());
        assert_eq!(m.compact(5), Err(KvError::Compacted { compact_revision: 5 }));
        assert_eq!(m.compact(7), Err(KvError::FutureRevision));
        // The delete at exactly 5 is still visible to a watch from 5; nothing before 5 is.
        let events = m.events_since(&KeyRange::prefix(""), 5).unwrap();
        let kinds: Vec<_> = events.iter().map(|(r, e)| (r.main, e.kind)).collect();
        assert_eq!(kinds, vec![(5, EventKind::Delete), (6, EventKind::Put)]);
        assert_eq!(events[1].1.prev_kv.as_ref().map(|kv| &kv.value[..]), Some(&b"2"[..]));
        assert!(m.events_since(&KeyRange::prefix(""), 4).is_err());
        m.compact(6).unwrap();
        assert!(!m.keys.contains_key(&b("b")[..]), "a key deleted before the compaction point is gone");
    }

    /// The memory bound: a key's versions take the room they need, not `Vec`'s default of four,
    /// and compaction gives back the room of the history it drops.
    #[test]
    fn versions_take_the_room_they_need() {
        let mut m = Mvcc::default();
        for i in 0..100 {
            put(&mut m, &format!("k{i:03}"), "v");
        }
        assert!(m.keys.values().all(|v| (v.len(), v.capacity()) == (1, 1)), "one version, room for one");
        for round in 0..200 {
            put(&mut m, "k000", &round.to_string());
        }
        assert_eq!(m.keys[&b("k000")[..]].len(), 201);
        m.compact(m.revision()).unwrap();
        let versions = &m.keys[&b("k000")[..]];
        assert_eq!(versions.len(), 1);
        assert!(versions.capacity() <= 2, "room for 256 versions kept: {}", versions.capacity());
        assert!(m.keys.values().all(|v| v.capacity() <= 2 * v.len()));

        // A state restored from a snapshot is as compact.
        let sm = crate::machine::StateMachine { mvcc: m, ..Default::default() };
        let restored = crate::machine::StateMachine::decode(sm.encode()).unwrap();
        assert_eq!(restored.mvcc, sm.mvcc);
        assert!(restored.mvcc.keys.values().all(|v| v.capacity() == v.len()));
    }

    /// A snapshot that lists a key with no versions is refused: the keyspace never holds one
    /// (a key's last version goes only with the key), and a restored state must not either.
    #[test]
    fn a_snapshot_key_without_versions_is_refused() {
        let mut m = Mvcc::default();
        put(&mut m, "k", "v");
        let sm = crate::machine::StateMachine { mvcc: m, ..Default::default() };
        let encoded = sm.encode();
        // Revision, compaction point and key count (20 bytes), the key (4 + 1), then its count
        // of versions (4) and its one version: main, sub, tag, value (4 + 1), four numbers.
        let (count_at, version_bytes) = (25, 8 + 8 + 1 + 5 + 32);
        assert_eq!(encoded[count_at..count_at + 4], 1u32.to_le_bytes(), "one version");
        let mut emptied = encoded[..count_at].to_vec();
        emptied.extend_from_slice(&0u32.to_le_bytes());
        emptied.extend_from_slice(&encoded[count_at + 4 + version_bytes..]);
        let refused = crate::machine::StateMachine::decode(Bytes::from(emptied));
        assert_eq!(refused.err(), Some(KvError::Malformed("a key without versions")));
    }

    /// A version is held in 72 bytes (a malloc chunk of 80), where a `(Revision,
    /// Option<KeyValue>)` took 112 (a chunk of 128): the key and the mod revision are not
    /// stored twice.
    #[test]
    fn a_version_holds_neither_its_key_nor_its_mod_revision() {
        assert_eq!(std::mem::size_of::<Version>(), 72);
        let mut m = Mvcc::default();
        put(&mut m, "k", "v");
        let kv = m.get(b"k").unwrap();
        assert_eq!((&kv.key[..], kv.mod_revision, kv.create_revision, kv.version), (&b"k"[..], 2, 2, 1));
    }

    /// Snapshots keep the format they had when a version was a `(Revision, Option<KeyValue>)`:
    /// these bytes were written by that build (c7f80c4) for the same writes.
    #[test]
    fn snapshots_keep_their_format() {
        let mut m = Mvcc::default();
        let mut ctx = m.begin();
        m.put(&mut ctx, b("a"), b("1"), 0, false);
        m.put(&mut ctx, b("b"), b("2"), 7, false);
        m.finish(ctx);
        let mut ctx = m.begin();
        m.delete(&mut ctx, &b("a"));
        m.finish(ctx);
        let mut ctx = m.begin();
        m.put(&mut ctx, b("a"), b("3"), 0, false);
        m.put(&mut ctx, b("b"), b("4"), 7, false);
        m.finish(ctx);
        let sm = crate::machine::StateMachine { mvcc: m, ..Default::default() };
        let hex: String = sm.encode().iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(hex, OLD_FORMAT);
        let bytes: Vec<u8> = (0..OLD_FORMAT.len() / 2)
            .map(|i| u8::from_str_radix(&OLD_FORMAT[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(crate::machine::StateMachine::decode(bytes.into()).unwrap(), sm);
    }

    const OLD_FORMAT: &str = "0400000000000000000000000000000002000000010000006103000000020000000000000000000000000000000101000000310200000000000000020000000000000001000000000000000000000000000000030000000000000000000000000000000004000000000000000000000000000000010100000033040000000000000004000000000000000100000000000000000000000000000001000000620200000002000000000000000100000000000000010100000032020000000000000002000000000000000100000000000000070000000000000004000000000000000100000000000000010100000034020000000000000004000000000000000200000000000000070000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

    /// A snapshot whose versions say what the keyspace never holds is refused, not restored
    /// into a state that would answer wrongly: a live version numbered 0 (it would read as a
    /// tombstone), a mod revision other than the write's own, a sub-revision beyond 32 bits.
    #[test]
    fn snapshots_with_impossible_versions_are_refused() {
        let mut m = Mvcc::default();
        put(&mut m, "k", "v"); // revision 2
        let good = crate::machine::StateMachine { mvcc: m, ..Default::default() }.encode().to_vec();
        // Layout: current, compacted, key count, key "k" (4 + 1), version count, then the
        // version: main at 29, sub at 37, tag at 45, value (4 + 1) at 46, create at 51, mod
        // at 59, version at 67.
        assert_eq!(&good[29..37], &2i64.to_le_bytes());
        for (at, value, what) in [(67, 0i64, "version 0"), (59, 3, "mod revision"), (37, 1 << 40, "sub")] {
            let mut bad = good.clone();
            bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
            assert!(
                matches!(crate::machine::StateMachine::decode(bad.into()), Err(KvError::Malformed(_))),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn hash_kv_covers_history_up_to_a_revision() {
        let mut a = Mvcc::default();
        put(&mut a, "a", "1"); // 2
        put(&mut a, "b", "1"); // 3
        let mut b_ = a.clone();
        let (h3, c) = a.hash_kv(0).unwrap();
        assert_eq!(
            (h3, c),
            b_.hash_kv(3).unwrap(),
            "revision 0 is the current one; equal states, equal hashes"
        );
        put(&mut a, "a", "2"); // 4
        assert_eq!(a.hash_kv(3).unwrap().0, h3, "later writes do not change the hash at 3");
        assert_ne!(a.hash_kv(4).unwrap().0, h3);
        // The same revision reached with another value differs.
        put(&mut b_, "a", "X"); // 4
        assert_ne!(a.hash_kv(4).unwrap().0, b_.hash_kv(4).unwrap().0);
        assert_eq!(a.hash_kv(5), Err(KvError::FutureRevision));
        let mut ctx = a.begin();
        a.delete(&mut ctx, &b("b"));
        a.finish(ctx); // 5
        let before = a.hash_kv(5).unwrap().0;
        assert_ne!(before, a.hash_kv(4).unwrap().0, "a deletion is part of the history");
        a.compact(4).unwrap();
        assert_eq!(a.hash_kv(3), Err(KvError::Compacted { compact_revision: 4 }));
        let (after, c) = a.hash_kv(5).unwrap();
        assert_eq!(c, 4);
        assert_ne!(after, before, "the compaction point is part of the hash");
    }
}
