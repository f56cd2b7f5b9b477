//! Lease clocks: when each lease runs out, by this server's clock.
//!
//! Leases live in the replicated state machine (id, TTL, attached keys), but time does not: the
//! state machine is deterministic and has no clock. Every server restarts a lease's clock when it
//! applies the lease's grant or a keep-alive, and only the leader acts on expiry, by proposing a
//! revoke that commits like any write. So a lease is revoked once, at one point of the log, on
//! every replica alike, and a server's clock skew only moves *when* that happens.
//!
//! A new leader gives every lease a full TTL from the moment it takes over (as etcd does without
//! checkpoints): it cannot know how long the old leader had left, and erring late is safe for a
//! lease's holder while erring early is not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use balsa_kv::{Command, Lease};

/// How long the leader waits before proposing the same revoke again (the first may have been
/// lost to a change of leader).
const REVOKE_RETRY: Duration = Duration::from_secs(1);

/// Deadlines of the leases this server knows.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// When each lease runs out.
    deadlines: BTreeMap<i64, Instant>,
    /// Revokes this leader proposed and when, so a slow commit is not answered with a flood of
    /// duplicate revokes.
    revoking: BTreeMap<i64, Instant>,
}

/// `ttl_secs` as a duration; negative TTLs count as zero.
fn ttl(ttl_secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0))
}

impl LeaseClock {
    /// Follows an applied command that succeeded: grants and keep-alives restart a clock,
    /// revokes stop it.
    pub fn applied(&mut self, command: &Command, ttl_secs: Option<i64>, now: Instant) {
        match command {
            Command::LeaseGrant { id, ttl_secs } => {
                self.deadlines.insert(*id, now + ttl(*ttl_secs));
            }
            Command::LeaseKeepAlive { id } => {
                if let Some(t) = ttl_secs {
                    self.deadlines.insert(*id, now + ttl(t));
                }
            }
            Command::LeaseRevoke { id } => {
                self.deadlines.remove(id);
                self.revoking.remove(id);
            }
            _ => {}
        }
    }

    /// Restarts every clock at a full TTL: on becoming leader, and after the state machine was
    /// replaced by a snapshot (whose leases may differ from what this server followed).
    pub fn restart_all(&mut self, leases: &BTreeMap<i64, Lease>, now: Instant) {
        self.deadlines = leases.iter().map(|(id, l)| (*id, now + ttl(l.ttl_secs))).collect();
        self.revoking.clear();
    }

    /// Leases past their deadline that the leader should revoke now (each at most once per
    /// [`REVOKE_RETRY`]).
    pub fn due(&mut self, now: Instant) -> Vec<i64> {
        let due: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(id, at)| **at <= now && self.revoking.get(id).is_none_or(|t| now >= *t + REVOKE_RETRY))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.revoking.insert(*id, now);
        }
        due
    }

    /// Time left on a lease, by this server's clock.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        self.deadlines.get(&id).map(|at| at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_and_keep_alives_restart_the_clock_and_revokes_stop_it() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        c.applied(&Command::LeaseGrant { id: 1, ttl_secs: 10 }, None, t0);
        assert!(c.due(t0 + Duration::from_secs(9)).is_empty());
        c.applied(&Command::LeaseKeepAlive { id: 1 }, Some(10), t0 + Duration::from_secs(9));
        assert!(c.due(t0 + Duration::from_secs(18)).is_empty(), "renewed at 9 s: runs to 19 s");
        assert_eq!(c.due(t0 + Duration::from_secs(19)), [1]);
        assert!(c.due(t0 + Duration::from_millis(19_500)).is_empty(), "no duplicate revoke at once");
        assert_eq!(c.due(t0 + Duration::from_secs(20)), [1], "proposed again after the retry interval");
        c.applied(&Command::LeaseRevoke { id: 1 }, None, t0 + Duration::from_secs(20));
        assert!(c.due(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(c.remaining(1, t0), None);
    }

    #[test]
    fn a_keep_alive_that_failed_does_not_resurrect_a_lease() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        c.applied(&Command::LeaseKeepAlive { id: 4 }, None, t0);
        assert_eq!(c.remaining(4, t0), None);
    }

    #[test]
    fn a_new_leader_grants_every_lease_a_full_ttl() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        c.applied(&Command::LeaseGrant { id: 2, ttl_secs: 5 }, None, t0);
        let leases = BTreeMap::from([(2, Lease { ttl_secs: 5, keys: Default::default() })]);
        c.restart_all(&leases, t0 + Duration::from_secs(4));
        assert_eq!(c.remaining(2, t0 + Duration::from_secs(4)), Some(Duration::from_secs(5)));
        assert!(c.due(t0 + Duration::from_secs(8)).is_empty());
    }
}
