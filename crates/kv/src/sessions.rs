//! Client sessions for exactly-once writes (Raft thesis 6.3, deck 001's client protocol).
//!
//! A client registers a session and numbers its writes; the state machine remembers, per session,
//! the last sequence number it applied and that write's result. A retry of the same number (the
//! client never heard the answer: the leader crashed between commit and reply, say) gets the
//! remembered result instead of being applied again.
//!
//! Sessions expire by *leader time committed to the log*: the leader proposes `Clock` commands
//! carrying its clock, and the state machine's notion of "now" is the latest committed one. A
//! session not used for its timeout (by that clock) is dropped on every replica at the same point
//! of the log. A write on an expired (or unknown) session is refused with a clear error, never
//! applied without protection.

use std::collections::BTreeMap;

use crate::command::Response;
use crate::error::KvError;

/// Shortest and longest session timeouts a client may ask for, milliseconds.
pub const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Dropped when the committed clock passes `last_active_ms + timeout_ms`.
    pub timeout_ms: u64,
    /// The committed clock when the session was last used.
    pub last_active_ms: u64,
    /// The highest sequence number applied (0: none yet).
    pub last_seq: u64,
    /// The result of that write, replayed to a retry.
    pub last_result: Option<Result<Response, KvError>>,
}

/// Every session, and the committed clock that expires them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Sessions by client id.
    pub table: BTreeMap<u64, Session>,
    /// The next client id to hand out (ids start at 1 and are never reused).
    pub next_id: u64,
    /// The latest leader time committed, milliseconds since the Unix epoch.
    pub clock_ms: u64,
}

/// What a sessioned write should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new sequence number: apply it, then [`Sessions::record`] the result.
    Apply,
    /// A retry of the last write: answer this.
    Replay(Result<Response, KvError>),
}

impl Sessions {
    /// Opens a session; returns its client id. `now_ms` (the proposer's clock) only starts a
    /// clock that no leader has set yet, so a session is never born already expired.
    pub fn register(&mut self, timeout_ms: u64, now_ms: u64) -> Result<u64, KvError> {
        if !SESSION_TIMEOUT_MS.contains(&timeout_ms) {
            return Err(KvError::InvalidSessionTimeout);
        }
        if self.clock_ms == 0 {
            self.clock_ms = now_ms;
        }
        self.next_id = self.next_id.max(1);
        let id = self.next_id;
        self.next_id += 1;
        let session = Session { timeout_ms, last_active_ms: self.clock_ms, last_seq: 0, last_result: None };
        self.table.insert(id, session);
        Ok(id)
    }

    /// Closes a session (the client is done).
    pub fn close(&mut self, client_id: u64) -> Result<(), KvError> {
        self.table.remove(&client_id).map(|_| ()).ok_or(KvError::SessionExpired { client_id })
    }

    /// Advances the committed clock (never backwards: a new leader's clock may lag the old
    /// one's) and drops the sessions it expires.
    pub fn tick(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        let now = self.clock_ms;
        self.table.retain(|_, s| s.last_active_ms.saturating_add(s.timeout_ms) > now);
    }

    /// Decides what to do with write `seq` of `client_id`.
    pub fn admit(&mut self, client_id: u64, seq: u64) -> Result<Admission, KvError> {
        let clock = self.clock_ms;
        let s = self.table.get_mut(&client_id).ok_or(KvError::SessionExpired { client_id })?;
        s.last_active_ms = clock;
        match seq {
            0 => Err(KvError::StaleSequence { seq, last_seq: s.last_seq }),
            _ if seq == s.last_seq => Ok(Admission::Replay(
                s.last_result.clone().expect("a session that applied a write keeps its result"),
            )),
            _ if seq < s.last_seq => Err(KvError::StaleSequence { seq, last_seq: s.last_seq }),
            _ => Ok(Admission::Apply),
        }
    }

    /// Remembers the result of write `seq`, applied after [`Admission::Apply`].
    pub fn record(&mut self, client_id: u64, seq: u64, result: &Result<Response, KvError>) {
        if let Some(s) = self.table.get_mut(&client_id) {
            s.last_seq = seq;
            s.last_result = Some(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_replays_the_result_and_older_numbers_are_refused() {
        let mut s = Sessions::default();
        s.tick(10_000);
        let id = s.register(5_000, 99_999).unwrap();
        assert_eq!(s.clock_ms, 10_000, "a proposer's clock does not move a running clock");
        assert_eq!(id, 1);
        assert_eq!(s.admit(id, 1), Ok(Admission::Apply));
        let result = Ok(Response::Compact { revision: 7 });
        s.record(id, 1, &result);
        assert_eq!(s.admit(id, 1), Ok(Admission::Replay(result.clone())), "a retry is answered, not applied");
        assert_eq!(s.admit(id, 3), Ok(Admission::Apply), "gaps are allowed (abandoned requests)");
        s.record(id, 3, &Err(KvError::KeyNotFound));
        assert_eq!(s.admit(id, 3), Ok(Admission::Replay(Err(KvError::KeyNotFound))), "errors replay too");
        assert_eq!(s.admit(id, 2), Err(KvError::StaleSequence { seq: 2, last_seq: 3 }));
        assert_eq!(s.admit(id, 0), Err(KvError::StaleSequence { seq: 0, last_seq: 3 }));
    }

    #[test]
    fn sessions_expire_by_the_committed_clock_only() {
        let mut s = Sessions::default();
        let a = s.register(2_000, 1_000).unwrap();
        assert_eq!(s.clock_ms, 1_000, "the first registration starts the clock");
        let b = s.register(2_000, 0).unwrap();
        s.tick(2_500);
        assert_eq!(s.admit(b, 1), Ok(Admission::Apply), "use keeps b alive");
        s.tick(1_200);
        assert_eq!(s.clock_ms, 2_500, "the clock never goes back");
        s.tick(3_000);
        assert_eq!(s.admit(a, 1), Err(KvError::SessionExpired { client_id: a }), "a idled 2 s");
        assert!(s.table.contains_key(&b));
        s.tick(4_500);
        assert!(s.table.is_empty());
        assert_eq!(s.register(2_000, 0), Ok(3), "ids are never reused");
        assert_eq!(s.register(10, 0), Err(KvError::InvalidSessionTimeout));
    }
}
