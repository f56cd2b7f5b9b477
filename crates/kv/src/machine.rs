//! The state machine Raft drives: it applies committed [`Command`]s in log order and serves
//! reads. Deterministic: the same commands give the same state and responses on every replica.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::command::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, Response, ResponseOp, SortOrder, SortTarget,
    TxnResponse,
};
use crate::error::KvError;
use crate::members::MemberTable;
use crate::mvcc::{Mvcc, WriteCtx};
use crate::sessions::{Admission, Sessions};
use crate::streams::Streams;
use crate::types::{Event, KeyValue, Revision};

/// A lease: keys attached to it go when it is revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// Time to live granted, seconds (the leader tracks expiry and proposes the revoke).
    pub ttl_secs: i64,
    /// Keys attached.
    pub keys: BTreeSet<Bytes>,
}

/// The keyspace and its leases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    /// Keys and their history.
    pub mvcc: Mvcc,
    /// Leases by id.
    pub leases: BTreeMap<i64, Lease>,
    /// The cluster's members' attributes (names and URLs).
    pub members: MemberTable,
    /// Client sessions for exactly-once writes.
    pub sessions: Sessions,
    /// Log streams.
    pub streams: Streams,
}

impl StateMachine {
    /// Applies a committed command. An error leaves the state unchanged (transactions are
    /// validated in full before any write).
    pub fn apply(&mut self, command: &Command) -> Result<Response, KvError> {
        self.apply_inner(command, None)
    }

    /// Applies a committed command like [`apply`](Self::apply), and appends to `feed` what it
    /// wrote, as watch events in revision order (with `prev_kv`): the change feed that serves
    /// live watchers without rescanning the keyspace. A failed command, a compaction or a lease
    /// grant appends nothing.
    pub fn apply_recording(
        &mut self,
        command: &Command,
        feed: &mut Vec<(Revision, Event)>,
    ) -> Result<Response, KvError> {
        self.apply_inner(command, Some(feed))
    }

    fn begin(&self, feed: &Option<&mut Vec<(Revision, Event)>>) -> WriteCtx {
        if feed.is_some() {
            self.mvcc.begin_recording()
        } else {
            self.mvcc.begin()
        }
    }

    fn finish(&mut self, mut ctx: WriteCtx, feed: &mut Option<&mut Vec<(Revision, Event)>>) -> i64 {
        if let Some(feed) = feed.as_deref_mut() {
            feed.extend(ctx.take_events());
        }
        self.mvcc.finish(ctx)
    }

    fn apply_inner(
        &mut self,
        command: &Command,
        mut feed: Option<&mut Vec<(Revision, Event)>>,
    ) -> Result<Response, KvError> {
        match command {
            Command::Put(req) => {
                self.validate_put(req)?;
                let mut ctx = self.begin(&feed);
                let mut resp = self.put(&mut ctx, req);
                resp.revision = self.finish(ctx, &mut feed);
                Ok(Response::Put(resp))
            }
            Command::DeleteRange(req) => {
                let mut ctx = self.begin(&feed);
                let mut resp = self.delete_range(&mut ctx, req);
                resp.revision = self.finish(ctx, &mut feed);
                Ok(Response::DeleteRange(resp))
            }
            Command::Txn(req) => {
                let succeeded = self.compares_hold(&req.compare);
                let ops = if succeeded { &req.success } else { &req.failure };
                self.validate_ops(ops)?;
                let mut ctx = self.begin(&feed);
                let responses = ops.iter().map(|op| self.run_op(&mut ctx, op)).collect();
                let revision = self.finish(ctx, &mut feed);
                let mut resp = TxnResponse { revision, succeeded, responses };
                set_revisions(&mut resp.responses, revision);
                Ok(Response::Txn(resp))
            }
            Command::Compact { revision } => {
                self.mvcc.compact(*revision)?;
                Ok(Response::Compact { revision: self.mvcc.revision() })
            }
            Command::LeaseGrant { id, ttl_secs } => {
                if *id <= 0 {
                    return Err(KvError::InvalidLeaseId);
                }
                if self.leases.contains_key(id) {
                    return Err(KvError::LeaseExists);
                }
                self.leases.insert(*id, Lease { ttl_secs: *ttl_secs, keys: BTreeSet::new() });
                Ok(Response::LeaseGrant { id: *id, ttl_secs: *ttl_secs })
            }
            Command::LeaseRevoke { id } => {
                let lease = self.leases.remove(id).ok_or(KvError::LeaseNotFound)?;
                let mut ctx = self.begin(&feed);
                for key in &lease.keys {
                    self.mvcc.delete(&mut ctx, key);
                }
                Ok(Response::LeaseRevoke { revision: self.finish(ctx, &mut feed) })
            }
            Command::LeaseKeepAlive { id } => {
                let lease = self.leases.get(id).ok_or(KvError::LeaseNotFound)?;
                Ok(Response::LeaseKeepAlive { id: *id, ttl_secs: lease.ttl_secs })
            }
            Command::MemberPut(attrs) => {
                if attrs.id == 0 {
                    return Err(KvError::Malformed("member id 0"));
                }
                self.members.insert(attrs.id, attrs.clone());
                Ok(Response::Members(self.members.clone()))
            }
            Command::SessionRegister { timeout_ms, now_ms } => {
                Ok(Response::SessionRegistered { client_id: self.sessions.register(*timeout_ms, *now_ms)? })
            }
            Command::SessionClose { client_id } => self.sessions.close(*client_id).map(|()| Response::Done),
            Command::Clock { now_ms } => {
                self.sessions.tick(*now_ms);
                Ok(Response::Done)
            }
            Command::Sessioned { client_id, seq, command } => {
                if !command.is_sessionable() {
                    return Err(KvError::Malformed(
                        "only writes of the KV and Lease services take a session",
                    ));
                }
                match self.sessions.admit(*client_id, *seq)? {
                    Admission::Replay(result) => result,
                    Admission::Apply => {
                        let result = self.apply_inner(command, feed);
                        self.sessions.record(*client_id, *seq, &result);
                        result
                    }
                }
            }
            Command::MemberForget { id } => {
                self.members.remove(id);
                Ok(Response::Members(self.members.clone()))
            }
            Command::Stream(c) => Ok(Response::Stream(self.streams.apply(c)?)),
        }
    }

    /// A read (etcd's Range), served by any replica once it has applied far enough.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let mut kvs = self.mvcc.range(&req.range, req.revision)?;
        kvs.retain(|kv| in_bounds(kv.mod_revision, req.min_mod_revision, req.max_mod_revision));
        kvs.retain(|kv| in_bounds(kv.create_revision, req.min_create_revision, req.max_create_revision));
        sort(&mut kvs, req.sort_order, req.sort_target);
        let count = kvs.len() as i64;
        let more = req.limit > 0 && count > req.limit;
        if req.limit > 0 {
            kvs.truncate(req.limit as usize);
        }
        if req.count_only {
            kvs.clear();
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        Ok(RangeResponse { revision: self.mvcc.revision(), kvs, more, count })
    }

    fn validate_put(&self, req: &PutRequest) -> Result<(), KvError> {
        if req.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        // Only the ignore flags need the key to exist: a plain put costs no lookup here (each is
        // a walk down the key index with a comparison per level, most of a put's apply time).
        if (req.ignore_value || req.ignore_lease) && self.mvcc.get(&req.key).is_none() {
            return Err(KvError::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(KvError::LeaseNotFound);
        }
        Ok(())
    }

    /// Checks a branch before running it, so a transaction applies whole or not at all. Nested
    /// transactions are checked on both branches (which one runs depends on writes before it).
    fn validate_ops(&self, ops: &[RequestOp]) -> Result<(), KvError> {
        let mut written = BTreeSet::new();
        for op in ops {
            match op {
                RequestOp::Put(p) => {
                    self.validate_put(p)?;
                    if !written.insert(p.key.clone()) {
                        return Err(KvError::DuplicateKey);
                    }
                }
                RequestOp::Range(r) => {
                    if r.revision != 0 {
                        self.mvcc.check_revision(r.revision)?;
                    }
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => {
                    self.validate_ops(&t.success)?;
                    self.validate_ops(&t.failure)?;
                }
            }
        }
        for op in ops {
            if let RequestOp::DeleteRange(d) = op {
                if written.iter().any(|k| d.range.contains(k)) {
                    return Err(KvError::DuplicateKey);
                }
            }
        }
        Ok(())
    }

    fn run_op(&mut self, ctx: &mut WriteCtx, op: &RequestOp) -> ResponseOp {
        match op {
            RequestOp::Range(r) => {
                ResponseOp::Range(self.range(r).expect("validated before the transaction ran"))
            }
            RequestOp::Put(p) => ResponseOp::Put(self.put(ctx, p)),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(ctx, d)),
            RequestOp::Txn(t) => {
                let succeeded = self.compares_hold(&t.compare);
                let ops = if succeeded { &t.success } else { &t.failure };
                let responses = ops.iter().map(|op| self.run_op(ctx, op)).collect();
                ResponseOp::Txn(TxnResponse { revision: 0, succeeded, responses })
            }
        }
    }

    fn put(&mut self, ctx: &mut WriteCtx, req: &PutRequest) -> PutResponse {
        // A plain put walks the key index once, in `Mvcc::put` (the walk is most of a put's apply
        // time); only the ignore flags need the current value before writing.
        let (value, lease) = if req.ignore_value || req.ignore_lease {
            let existing = self.mvcc.get(&req.key);
            let value = match &existing {
                Some(kv) if req.ignore_value => kv.value.clone(),
                _ => req.value.clone(),
            };
            let lease = match existing {
                Some(kv) if req.ignore_lease => kv.lease,
                _ => req.lease,
            };
            (value, lease)
        } else {
            (req.value.clone(), req.lease)
        };
        let put = self.mvcc.put(ctx, req.key.clone(), value, lease, req.prev_kv);
        let old_lease = put.prev_lease;
        if old_lease != lease {
            if let Some(l) = self.leases.get_mut(&old_lease) {
                l.keys.remove(&req.key);
            }
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(req.key.clone());
            }
        }
        PutResponse { revision: 0, prev_kv: put.prev }
    }

    fn delete_range(&mut self, ctx: &mut WriteCtx, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let mut prev_kvs = Vec::new();
        let keys = self.mvcc.current_keys(&req.range);
        for key in &keys {
            if let Some(prev) = self.mvcc.delete(ctx, key) {
                if let Some(l) = self.leases.get_mut(&prev.lease) {
                    l.keys.remove(key);
                }
                if req.prev_kv {
                    prev_kvs.push(prev);
                }
            }
        }
        DeleteRangeResponse { revision: 0, deleted: keys.len() as i64, prev_kvs }
    }

    /// etcd's rule: a compare holds if it holds for every key in its range; comparing the value
    /// of a key that does not exist always fails, other targets compare against zero.
    fn compares_hold(&self, compares: &[Compare]) -> bool {
        compares.iter().all(|c| {
            let kvs = self.mvcc.range(&c.range, 0).expect("current revision is readable");
            if kvs.is_empty() {
                return !matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default());
            }
            kvs.iter().all(|kv| compare_kv(c, kv))
        })
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value[..].cmp(&v[..]),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => !ordering.is_eq(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

fn in_bounds(value: i64, min: i64, max: i64) -> bool {
    (min == 0 || value >= min) && (max == 0 || value <= max)
}

fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    if order == SortOrder::None && target == SortTarget::Key {
        return; // already in key order
    }
    kvs.sort_by(|a, b| {
        let o = match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            o.reverse()
        } else {
            o
        }
    });
}

/// Every write response inside a transaction reports the revision after it.
fn set_revisions(responses: &mut [ResponseOp], revision: i64) {
    for r in responses {
        match r {
            ResponseOp::Range(_) => {}
            ResponseOp::Put(p) => p.revision = revision,
            ResponseOp::DeleteRange(d) => d.revision = revision,
            ResponseOp::Txn(t) => {
                t.revision = revision;
                set_revisions(&mut t.responses, revision);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TxnRequest;
    use crate::types::{EventKind, KeyRange};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(k: &str, v: &str) -> PutRequest {
        PutRequest { key: b(k), value: b(v), ..Default::default() }
    }

    fn everything() -> KeyRange {
        KeyRange { key: b("\0"), range_end: b("\0") }
    }

    #[test]
    fn the_feed_reports_each_write_with_its_revision_and_previous_value() {
        let mut sm = StateMachine::default();
        let mut feed = Vec::new();
        sm.apply_recording(&Command::Put(put("a", "1")), &mut feed).unwrap();
        assert_eq!(feed.len(), 1);
        let (rev, e) = &feed[0];
        assert_eq!((rev.main, rev.sub, e.kind, e.prev_kv.clone()), (2, 0, EventKind::Put, None));
        assert_eq!((&e.kv.value[..], e.kv.version, e.kv.create_revision), (&b"1"[..], 1, 2));
        feed.clear();
        // One transaction: one main revision, sub-revisions in write order.
        let txn = TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(put("a", "2")),
                RequestOp::Put(put("b", "1")),
                RequestOp::DeleteRange(DeleteRangeRequest { range: KeyRange::single("c"), prev_kv: false }),
            ],
            failure: vec![],
        };
        sm.apply_recording(&Command::Txn(txn), &mut feed).unwrap();
        let seen: Vec<_> = feed.iter().map(|(r, e)| (r.main, r.sub, e.kind, e.kv.key.clone())).collect();
        assert_eq!(seen, vec![(3, 0, EventKind::Put, b("a")), (3, 1, EventKind::Put, b("b"))]);
        assert_eq!(
            feed[0].1.prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(b("1")),
            "prev_kv is the old value"
        );
        feed.clear();
        // A delete: etcd's shape (key, deleting revision, version 0) and the deleted value.
        let del = DeleteRangeRequest { range: KeyRange::prefix(""), prev_kv: false };
        sm.apply_recording(&Command::DeleteRange(del), &mut feed).unwrap();
        assert_eq!(feed.len(), 2);
        let (rev, e) = &feed[1];
        assert_eq!(
            (rev.main, e.kind, &e.kv.key[..], e.kv.mod_revision, e.kv.version),
            (4, EventKind::Delete, &b"b"[..], 4, 0)
        );
        assert_eq!(e.prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b("1")));
        feed.clear();
        // Nothing written, nothing reported: failures, deletes of nothing, compaction, grants.
        assert!(sm.apply_recording(&Command::Put(put("", "x")), &mut feed).is_err());
        let nothing = DeleteRangeRequest { range: KeyRange::single("zz"), prev_kv: false };
        sm.apply_recording(&Command::DeleteRange(nothing), &mut feed).unwrap();
        sm.apply_recording(&Command::Compact { revision: 3 }, &mut feed).unwrap();
        sm.apply_recording(&Command::LeaseGrant { id: 7, ttl_secs: 10 }, &mut feed).unwrap();
        assert!(feed.is_empty(), "{feed:?}");
        // A revoke deletes the lease's keys: delete events.
        sm.apply_recording(&Command::Put(PutRequest { lease: 7, ..put("l", "x") }), &mut feed).unwrap();
        feed.clear();
        sm.apply_recording(&Command::LeaseRevoke { id: 7 }, &mut feed).unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!((feed[0].1.kind, &feed[0].1.kv.key[..]), (EventKind::Delete, &b"l"[..]));
    }

    /// Over a long pseudo-random run the feed is exactly the history a watch from the start would
    /// replay, and recording changes nothing in the state.
    #[test]
    fn the_feed_equals_watch_history_and_leaves_the_state_alone() {
        let mut recorded = StateMachine::default();
        let mut plain = StateMachine::default();
        let mut feed = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for i in 0..600 {
            let key = |r: u64| format!("k{r}");
            let command = match next(10) {
                0..=4 => Command::Put(put(&key(next(20)), &format!("v{i}"))),
                5 => Command::DeleteRange(DeleteRangeRequest {
                    range: KeyRange::single(key(next(20))),
                    prev_kv: false,
                }),
                6 => Command::DeleteRange(DeleteRangeRequest {
                    range: KeyRange::prefix(key(next(3))),
                    prev_kv: true,
                }),
                7 => Command::Put(put("", "refused")),
                8 => Command::LeaseGrant { id: 1 + next(3) as i64, ttl_secs: 5 },
                _ => {
                    let lease = 1 + next(3) as i64;
                    if next(2) == 0 {
                        Command::LeaseRevoke { id: lease }
                    } else {
                        Command::Txn(TxnRequest {
                            compare: vec![],
                            success: vec![
                                RequestOp::Put(PutRequest { lease, ..put(&key(next(20)), "t") }),
                                RequestOp::DeleteRange(DeleteRangeRequest {
                                    range: KeyRange::single(key(20 + next(5))),
                                    prev_kv: false,
                                }),
                            ],
                            failure: vec![],
                        })
                    }
                }
            };
            let before = feed.len();
            let a = recorded.apply_recording(&command, &mut feed);
            let b = plain.apply(&command);
            assert_eq!(a, b, "{command:?}");
            if a.is_err() {
                assert_eq!(feed.len(), before, "a refused command reports nothing");
            }
        }
        assert_eq!(recorded, plain);
        let history = recorded.mvcc.events_since(&everything(), 0).unwrap();
        assert!(history.len() > 300, "the run wrote enough: {}", history.len());
        assert_eq!(feed, history);
    }
}
