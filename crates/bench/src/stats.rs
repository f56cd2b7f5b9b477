//! Latency histograms and the open-loop schedule.
//!
//! Latencies are kept in an HDR histogram in nanoseconds (3 significant digits, 1 ns to 1 h), so
//! p99.9 and the maximum are exact to 0.1% however many operations a run makes, and per-client
//! histograms merge losslessly at the end.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency a histogram records (larger values are clamped to it): one hour.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// One client's (or a whole run's) latencies.
#[derive(Clone)]
pub struct Latencies {
    /// Nanoseconds per operation.
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static bounds are valid");
        Self { histogram }
    }

    /// Records one operation's latency; anything over an hour counts as an hour, and zero as 1 ns.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).clamp(1, MAX_LATENCY_NS);
        self.histogram.record(ns).expect("value clamped into the histogram's bounds");
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Latencies) {
        self.histogram.add(&other.histogram).expect("histograms share bounds");
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The percentiles reported, in microseconds.
    pub fn summary(&self) -> Summary {
        let h = &self.histogram;
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Percentiles of a latency histogram, in microseconds (what the JSON results hold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Operations recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// When each operation of an open-loop run is meant to start.
///
/// Operation `i` (counted from 0 across all clients) is due at `start + i / rate`. A client
/// measures its latency from that *intended* time, not from when it got round to sending: when
/// the server stalls, the operations that should have been sent meanwhile count the stall too,
/// instead of silently not existing (coordinated omission).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When operation 0 is due.
    pub start: Instant,
    /// Nanoseconds between two consecutive operations.
    pub interval_ns: f64,
}

impl Schedule {
    /// A schedule of `rate` operations per second from `start`; `rate` must be positive.
    pub fn new(start: Instant, rate: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "a rate is positive and finite, got {rate}");
        Self { start, interval_ns: 1e9 / rate }
    }

    /// When operation `index` is due.
    pub fn due(&self, index: u64) -> Instant {
        self.start + Duration::from_nanos((index as f64 * self.interval_ns) as u64)
    }

    /// How many operations are due within `elapsed` of the start (the run's length in ops).
    pub fn ops_within(&self, elapsed: Duration) -> u64 {
        (elapsed.as_nanos() as f64 / self.interval_ns).floor() as u64
    }
}

/// The latency of an operation that was due at `intended`, started at `sent` and answered at
/// `done`. Open loop: from the intended time (never earlier than sent, never negative).
pub fn latency_from(intended: Option<Instant>, sent: Instant, done: Instant) -> Duration {
    let from = intended.map_or(sent, |i| i.min(sent));
    done.saturating_duration_since(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
        assert!(close(s.p50_us, 500.0), "p50 {}", s.p50_us);
        assert!(close(s.p90_us, 900.0), "p90 {}", s.p90_us);
        assert!(close(s.p99_us, 990.0), "p99 {}", s.p99_us);
        assert!(close(s.p999_us, 999.0), "p99.9 {}", s.p999_us);
        assert!(close(s.max_us, 1000.0), "max {}", s.max_us);
        assert!(close(s.mean_us, 500.5), "mean {}", s.mean_us);
    }

    #[test]
    fn merging_equals_recording_into_one() {
        let (mut a, mut b, mut all) = (Latencies::new(), Latencies::new(), Latencies::new());
        for i in 0..500u64 {
            let d = Duration::from_micros(i * 7 % 311 + 1);
            if i % 2 == 0 {
                a.record(d)
            } else {
                b.record(d)
            }
            all.record(d);
        }
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut l = Latencies::new();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(10_000));
        let s = l.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= 3_599_000_000.0, "clamped to an hour: {}", s.max_us);
        assert_eq!(Latencies::new().summary(), Summary::default(), "empty summary is zeros");
    }

    #[test]
    fn schedule_spaces_operations_evenly() {
        let start = Instant::now();
        let s = Schedule::new(start, 1000.0);
        assert_eq!(s.due(0), start);
        assert_eq!(s.due(1000) - start, Duration::from_secs(1));
        assert_eq!(s.due(1) - start, Duration::from_millis(1));
        assert_eq!(s.ops_within(Duration::from_millis(2500)), 2500);
    }

    #[test]
    fn open_loop_latency_counts_time_spent_behind_schedule() {
        let t = Instant::now();
        let intended = t;
        let sent = t + Duration::from_millis(40); // the client was stuck behind a stall
        let done = sent + Duration::from_millis(1);
        assert_eq!(latency_from(Some(intended), sent, done), Duration::from_millis(41));
        assert_eq!(latency_from(None, sent, done), Duration::from_millis(1), "closed loop: from send");
        // Sent early (never happens with the schedule, but must not go negative or inflate).
        assert_eq!(latency_from(Some(done + Duration::from_secs(1)), sent, done), Duration::from_millis(1));
    }

    #[test]
    #[should_panic(expected = "positive")]
    fn zero_rate_is_refused() {
        Schedule::new(Instant::now(), 0.0);
    }
}
