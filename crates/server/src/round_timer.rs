//! Timing of the node driver's rounds: everything the Raft core does happens between two inputs
//! of the driver loop, so a long round is time in which no vote is counted, no heartbeat answered
//! and no tick taken. Slow rounds are logged with where their time went.

use std::time::{Duration, Instant};

/// A driver round longer than this is logged with where its time went: while it runs, no
/// message is stepped and no tick taken, so a few in a row can cost the leader its lease.
pub(crate) const SLOW_ROUND: Duration = Duration::from_millis(100);

/// Times one round of the driver loop, in phases, and its inputs by kind.
pub(crate) struct RoundTimer {
    start: Instant,
    /// Inputs handled this round.
    inputs: usize,
    /// Time and count per kind of input (a handful of kinds: a list is enough).
    by_kind: Vec<(&'static str, Duration, usize)>,
    /// The slowest single input: one that took most of a slow round points at that input (or
    /// at the process being stopped while it ran, as SIGSTOP does), many cheap ones at a backlog.
    slowest: (&'static str, Duration),
}

impl RoundTimer {
    pub(crate) fn start() -> Self {
        Self { start: Instant::now(), inputs: 0, by_kind: Vec::new(), slowest: ("none", Duration::ZERO) }
    }

    /// Handles one input of kind `kind` with `handle`, noting its time.
    pub(crate) fn time(&mut self, kind: &'static str, handle: impl FnOnce()) {
        let begun = Instant::now();
        handle();
        let took = begun.elapsed();
        self.inputs += 1;
        if took > self.slowest.1 {
            self.slowest = (kind, took);
        }
        match self.by_kind.iter_mut().find(|(k, ..)| *k == kind) {
            Some((_, total, count)) => {
                *total += took;
                *count += 1;
            }
            None => self.by_kind.push((kind, took, 1)),
        }
    }

    /// Time since the round began.
    pub(crate) fn lap(&self) -> Duration {
        self.start.elapsed()
    }

    /// Logs the round if it was slow; the laps were taken after handling inputs, after the
    /// tick and Ready, and after watch catch-up (the rest is log-stream catch-up).
    pub(crate) fn report_if_slow(&self, inputs: Duration, ready: Duration, watches: Duration) {
        let total = self.start.elapsed();
        if total >= SLOW_ROUND {
            let costliest = self.costliest(3);
            tracing::warn!(
                took_ms = total.as_millis() as u64,
                inputs_ms = inputs.as_millis() as u64,
                inputs = self.inputs,
                costliest_inputs = costliest.join(", "),
                slowest_input = format!("{} {}ms", self.slowest.0, self.slowest.1.as_millis()),
                tick_and_ready_ms = (ready - inputs).as_millis() as u64,
                watch_catch_up_ms = (watches - ready).as_millis() as u64,
                stream_catch_up_ms = (total - watches).as_millis() as u64,
                "a slow driver round held up Raft"
            );
        }
    }

    /// The `n` kinds of input that took the most time this round, costliest first, as
    /// "kind xCOUNT TIMEms".
    fn costliest(&self, n: usize) -> Vec<String> {
        let mut by_kind = self.by_kind.clone();
        by_kind.sort_by_key(|(_, took, _)| std::cmp::Reverse(*took));
        by_kind
            .iter()
            .take(n)
            .map(|(kind, took, count)| format!("{kind} x{count} {}ms", took.as_millis()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_summed_by_kind_and_ranked_by_time() {
        let mut round = RoundTimer::start();
        for _ in 0..3 {
            round.time("propose", || std::thread::sleep(Duration::from_millis(1)));
        }
        round.time("Heartbeat", || {});
        round.time("status", || std::thread::sleep(Duration::from_millis(10)));
        assert_eq!(round.inputs, 5);
        assert_eq!(round.slowest.0, "status");
        let costliest = round.costliest(2);
        assert_eq!(costliest.len(), 2);
        assert!(costliest[0].starts_with("status x1 "), "{costliest:?}");
        assert!(costliest[1].starts_with("propose x3 "), "{costliest:?}");
        assert!(round.lap() >= Duration::from_millis(13));
    }
}
