//! Results: what a run measured (saved as JSON with `--json`), printed as text, and the
//! side-by-side table of several results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::args::LoadFlags;
use crate::run::ClientOutcome;
use crate::stats::{Latencies, Summary};
use crate::workload::Workload;
use crate::{memory, BenchError};

/// One run's result: its parameters and what was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The server under test (`--label`).
    pub label: String,
    /// `put`, `get`, `get-serializable`, `txn`, `watch`, `log-append`, or `memory` (figures in
    /// `extra`, see [`memory::result`]).
    pub workload: String,
    /// The members driven.
    pub endpoints: Vec<String>,
    /// Concurrent requests in flight.
    pub clients: u32,
    /// gRPC connections.
    pub connections: u32,
    /// The load generator's threads (`--threads`; 0 in results from before the flag).
    #[serde(default)]
    pub threads: u32,
    /// Distinct keys.
    pub key_space: u64,
    /// Bytes per key.
    pub key_size: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Target rate (open loop), if any.
    pub rate: Option<f64>,
    /// Warmup, seconds.
    pub warmup_s: f64,
    /// The measured span: from the end of warmup until the last client finished, seconds.
    pub elapsed_s: f64,
    /// Measured operations that succeeded.
    pub ops: u64,
    /// Measured operations that failed.
    pub errors: u64,
    /// `ops / elapsed_s`.
    pub throughput: f64,
    /// Latency of the measured operations (for `watch`: put acknowledgement to event delivery).
    pub latency: Summary,
    /// Server CPU (summed over `--pids`) during the measured span, seconds.
    pub server_cpu_s: Option<f64>,
    /// Server CPU per measured operation, microseconds.
    pub server_cpu_us_per_op: Option<f64>,
    /// The first error a client saw.
    pub first_error: Option<String>,
    /// Workload-specific figures (txn successes; watch put latency, deliveries).
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl RunResult {
    /// An empty result carrying the run's parameters.
    pub fn new(workload: &Workload, load: &LoadFlags) -> Self {
        Self {
            endpoints: load.endpoints.clone(),
            clients: load.clients,
            connections: load.connections,
            threads: load.threads,
            key_space: load.key_space,
            key_size: load.key_size,
            value_size: load.value_size,
            rate: load.rate,
            warmup_s: load.warmup.as_secs_f64(),
            ..Self::empty(&load.label, workload.name())
        }
    }

    /// A result with a label and a workload name and nothing else (no load made it: `memory`).
    pub fn empty(label: &str, workload: &str) -> Self {
        Self {
            label: label.to_string(),
            workload: workload.to_string(),
            endpoints: Vec::new(),
            clients: 0,
            connections: 0,
            threads: 0,
            key_space: 0,
            key_size: 0,
            value_size: 0,
            rate: None,
            warmup_s: 0.0,
            elapsed_s: 0.0,
            ops: 0,
            errors: 0,
            throughput: 0.0,
            latency: Summary::default(),
            server_cpu_s: None,
            server_cpu_us_per_op: None,
            first_error: None,
            extra: BTreeMap::new(),
        }
    }

    /// Merges the clients' outcomes measured over `elapsed`.
    pub fn fill(&mut self, outcomes: &[ClientOutcome], elapsed: Duration) {
        let mut all = Latencies::new();
        for outcome in outcomes {
            all.merge(&outcome.latencies);
            self.errors += outcome.errors;
            if self.first_error.is_none() {
                self.first_error = outcome.first_error.clone();
            }
        }
        self.latency = all.summary();
        self.ops = all.count();
        self.elapsed_s = elapsed.as_secs_f64();
        self.throughput = if self.elapsed_s > 0.0 { self.ops as f64 / self.elapsed_s } else { 0.0 };
        let successes: Option<u64> = outcomes.iter().map(|o| o.successes).sum();
        if let Some(successes) = successes {
            self.extra.insert("txn_succeeded".into(), successes.into());
        }
    }

    /// Records the servers' CPU time over the measured span.
    pub fn set_server_cpu(&mut self, cpu: Duration) {
        self.server_cpu_s = Some(cpu.as_secs_f64());
        self.server_cpu_us_per_op = (self.ops > 0).then(|| cpu.as_secs_f64() * 1e6 / self.ops as f64);
    }

    /// Watch: the latency becomes delivery latency; the put latency moves to `extra`.
    pub fn set_watch(&mut self, watchers: usize, delivery: Summary, expected_events: u64) {
        let put = std::mem::replace(&mut self.latency, delivery);
        self.extra.insert("put_latency".into(), serde_json::to_value(put).expect("a summary serializes"));
        self.extra.insert("watchers".into(), watchers.into());
        self.extra.insert("events_expected".into(), expected_events.into());
        self.extra.insert("events_delivered".into(), delivery.count.into());
    }

    /// Reads a result saved with `--json`.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Usage(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| BenchError::Usage(format!("{}: not a result: {e}", path.display())))
    }

    /// Writes it as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self).expect("a result serializes");
        std::fs::write(path, text + "\n").map_err(|e| BenchError::Usage(format!("{}: {e}", path.display())))
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let label = if self.label.is_empty() { String::new() } else { format!(" [{}]", self.label) };
        let rate = self.rate.map_or("closed loop".to_string(), |r| format!("open loop at {r} ops/s"));
        // Log appends touch no key: what they write is records, to `streams` streams.
        let data = match self.extra.get("streams") {
            Some(streams) => format!("{streams} streams, records of {} B", self.value_size),
            None => {
                format!("{} keys of {} B, values of {} B", self.key_space, self.key_size, self.value_size)
            }
        };
        let _ = writeln!(
            s,
            "{}{label}: {} clients, {} connections, {}, {data}, {rate}",
            self.workload,
            self.clients,
            self.connections,
            threads(self.threads)
        );
        let _ = writeln!(s, "  ops         {} in {:.2} s, {} errors", self.ops, self.elapsed_s, self.errors);
        let _ = writeln!(s, "  throughput  {:.0} ops/s", self.throughput);
        let l = &self.latency;
        let what = if self.workload == "watch" { "delivery" } else { "latency" };
        let _ = writeln!(
            s,
            "  {what:<10}  p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
        if let (Some(cpu), Some(per_op)) = (self.server_cpu_s, self.server_cpu_us_per_op) {
            let _ = writeln!(s, "  server CPU  {cpu:.2} s, {per_op:.1} CPU-µs/op");
        }
        for (key, value) in &self.extra {
            let _ = writeln!(s, "  {key}: {value}");
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "  first error: {e}");
        }
        s
    }
}

/// Microseconds as milliseconds with 3 decimals.
fn ms(us: f64) -> String {
    format!("{:.3}ms", us / 1000.0)
}

/// The row order of [`table`].
const WORKLOAD_ORDER: [&str; 6] = ["put", "get", "get-serializable", "txn", "watch", "log-append"];

/// The side-by-side table: one row per workload with both labels, ratio = candidate / baseline
/// throughput; results under other labels (the no-op servers, and references such as one balsa
/// member) are listed after it, then the ceiling ([`ceiling_lines`]).
pub fn table(results: &[RunResult], baseline: &str, candidate: &str) -> String {
    // The workloads in the order the issue lists them, then any other in order of appearance.
    let mut workloads: Vec<&str> = Vec::from(WORKLOAD_ORDER);
    for r in results {
        if !workloads.contains(&r.workload.as_str()) && r.workload != "memory" {
            workloads.push(&r.workload);
        }
    }
    let find = |label: &str, workload: &str| {
        results.iter().rev().find(|r| r.label == label && r.workload == workload)
    };
    let ops = |r: Option<&RunResult>| r.map_or("-".into(), |r| format!("{:.0}", r.throughput));
    let lat = |r: Option<&RunResult>| {
        r.map_or("-".into(), |r| format!("{:.2}/{:.2}", r.latency.p50_us / 1000.0, r.latency.p99_us / 1000.0))
    };
    let cpu = |r: Option<&RunResult>| {
        r.and_then(|r| r.server_cpu_us_per_op).map_or("-".into(), |c| format!("{c:.1}"))
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<17} {:>11} {:>11} {:>6} {:>15} {:>15} {:>11} {:>11}",
        "workload",
        format!("{baseline} ops/s"),
        format!("{candidate} ops/s"),
        "ratio",
        format!("{baseline} p50/p99"),
        format!("{candidate} p50/p99"),
        format!("{baseline} CPU"),
        format!("{candidate} CPU"),
    );
    for workload in &workloads {
        let (b, c) = (find(baseline, workload), find(candidate, workload));
        if b.is_none() && c.is_none() {
            continue;
        }
        let ratio = match (b, c) {
            (Some(b), Some(c)) if b.throughput > 0.0 => format!("{:.2}x", c.throughput / b.throughput),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "{workload:<17} {:>11} {:>11} {ratio:>6} {:>15} {:>15} {:>11} {:>11}",
            ops(b),
            ops(c),
            lat(b),
            lat(c),
            cpu(b),
            cpu(c)
        );
    }
    if let Some(line) = memory_row(find(baseline, "memory"), find(candidate, "memory"), baseline, candidate) {
        s.push_str(&line);
    }
    let _ = writeln!(s, "(latency in ms; CPU = server CPU-µs per op summed over the members; watch: puts/s, delivery latency)");
    if find(candidate, "log-append").is_some() && find(baseline, "log-append").is_none() {
        let _ = writeln!(
            s,
            "(log-append: {candidate}'s log streams, one {}-byte record per append; {baseline} has no \
             counterpart, so no ratio: its put row is the nearest write)",
            find(candidate, "log-append").map_or(0, |r| r.value_size)
        );
    }
    for r in results.iter().filter(|r| r.label != baseline && r.label != candidate) {
        let of_candidate =
            find(candidate, &r.workload).filter(|_| r.throughput > 0.0).map_or(String::new(), |c| {
                format!("; {candidate} reaches {:.0}% of it", 100.0 * c.throughput / r.throughput)
            });
        let _ = writeln!(
            s,
            "{} {}: {:.0} ops/s, p50/p99 {} ms{of_candidate}",
            r.label,
            r.workload,
            r.throughput,
            lat(Some(r))
        );
    }
    s.push_str(&ceiling_lines(results, baseline, candidate));
    s
}

/// Labels of the no-op servers (`noop`, `noop-mt`): their runs are the ceiling. Any other label
/// beside the two compared is a reference (such as one balsa member, no replication), listed
/// with the candidate's share of it but never taken for the ceiling.
const CEILING_PREFIX: &str = "noop";

/// For each workload run against a no-op server, the fastest of them (on one thread or on every
/// core): the ceiling the candidate is measured against, with the candidate's share of it and
/// each reference's.
fn ceiling_lines(results: &[RunResult], baseline: &str, candidate: &str) -> String {
    let is_ceiling = |r: &RunResult| r.label.starts_with(CEILING_PREFIX);
    let others: Vec<&RunResult> =
        results.iter().filter(|r| r.label != baseline && r.label != candidate).collect();
    let latest = |label: &str, workload: &str| {
        results.iter().rev().find(|r| r.label == label && r.workload == workload)
    };
    let mut s = String::new();
    let mut workloads: Vec<&str> =
        others.iter().filter(|r| is_ceiling(r)).map(|r| r.workload.as_str()).collect();
    workloads.sort_unstable();
    workloads.dedup();
    for workload in workloads {
        let runs: Vec<&RunResult> =
            others.iter().copied().filter(|r| r.workload == workload && is_ceiling(r)).collect();
        let labels: std::collections::BTreeSet<&str> = runs.iter().map(|r| r.label.as_str()).collect();
        let Some(top) = runs.iter().max_by(|a, b| a.throughput.total_cmp(&b.throughput)) else {
            continue;
        };
        if top.throughput <= 0.0 {
            continue;
        }
        let mut reach: Vec<String> = Vec::new();
        let mut share_of = |label: &str| {
            if let Some(r) = latest(label, workload) {
                reach.push(format!("{label} reaches {:.0}% of it", 100.0 * r.throughput / top.throughput));
            }
        };
        share_of(candidate);
        let references: std::collections::BTreeSet<&str> = others
            .iter()
            .filter(|r| r.workload == workload && !is_ceiling(r))
            .map(|r| r.label.as_str())
            .collect();
        for label in references {
            share_of(label);
        }
        let reach: String = reach.iter().map(|r| format!("; {r}")).collect();
        let _ = writeln!(
            s,
            "ceiling for {workload}: {} ({:.0} ops/s), the highest of {}{reach}",
            top.label,
            top.throughput,
            labels.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    s
}

/// The memory line of the table: resident MiB per member (max / mean) of each side, and the
/// candidate's max over the baseline's (the target is at most 1.00x).
fn memory_row(
    baseline: Option<&RunResult>,
    candidate: Option<&RunResult>,
    baseline_label: &str,
    candidate_label: &str,
) -> Option<String> {
    let (b, c) = (baseline.and_then(memory::rss_of), candidate.and_then(memory::rss_of));
    if b.is_none() && c.is_none() {
        return None;
    }
    let keys = candidate.or(baseline).map_or(0, |r| r.key_space);
    let side = |rss: Option<(f64, f64)>| rss.map_or("-".into(), |(max, mean)| format!("{max:.0}/{mean:.0}"));
    let ratio = match (b, c) {
        (Some((b, _)), Some((c, _))) if b > 0.0 => format!("{:.2}x", c / b),
        _ => "-".into(),
    };
    Some(format!(
        "memory, {keys} keys: resident MiB per member (max/mean) {baseline_label} {}, {candidate_label} {}, \
         ratio of the max {ratio}\n",
        side(b),
        side(c)
    ))
}

/// How a report names the load generator's threads.
fn threads(count: u32) -> String {
    match count {
        0 => "client threads not recorded".to_string(),
        1 => "1 client thread".to_string(),
        n => format!("{n} client threads"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn result(label: &str, workload: &str, throughput: f64, p99_us: f64) -> RunResult {
        let cli = crate::args::Cli::parse_from(["balsa-bench", "put", "--label", label]);
        let crate::args::BenchCommand::Put(load) = cli.args.command else { unreachable!() };
        let mut r = RunResult::new(&Workload::Put, &load);
        r.workload = workload.into();
        r.throughput = throughput;
        r.ops = (throughput * 10.0) as u64;
        r.latency.p50_us = p99_us / 4.0;
        r.latency.p99_us = p99_us;
        r
    }

    #[test]
    fn json_round_trip() {
        let mut r = result("balsa", "put", 1234.5, 800.0);
        r.set_server_cpu(Duration::from_millis(500));
        r.extra.insert("txn_succeeded".into(), 7.into());
        let text = serde_json::to_string(&r).unwrap();
        let mut back = serde_json::from_str::<RunResult>(&text).unwrap();
        let per_op = r.server_cpu_us_per_op.unwrap();
        // serde_json may round the last bit of a float; everything else comes back exactly.
        assert!((back.server_cpu_us_per_op.unwrap() - per_op).abs() < 1e-9);
        back.server_cpu_us_per_op = r.server_cpu_us_per_op;
        assert_eq!(back, r);
        assert!((per_op - 500_000.0 / 12_345.0).abs() < 1e-6, "{per_op}");
    }

    #[test]
    fn table_pairs_labels_and_lists_the_ceiling() {
        let results = [
            result("etcd", "put", 1000.0, 40_000.0),
            result("balsa", "put", 2500.0, 20_000.0),
            result("noop", "put", 5000.0, 1_000.0),
            result("etcd", "get", 3000.0, 10_000.0),
        ];
        let reversed: Vec<RunResult> = results.iter().rev().cloned().collect();
        let t2 = table(&reversed, "etcd", "balsa");
        let rows: Vec<&str> =
            t2.lines().skip(1).take(2).map(|l| l.split_whitespace().next().unwrap()).collect();
        assert_eq!(rows, ["put", "get"], "rows in the issue's order, whatever the files' order");
        let t = table(&results, "etcd", "balsa");
        let put = t.lines().find(|l| l.starts_with("put ")).unwrap();
        assert!(put.contains("1000") && put.contains("2500") && put.contains("2.50x"), "{put}");
        assert!(put.contains("10.00/40.00") && put.contains("5.00/20.00"), "{put}");
        let get = t.lines().find(|l| l.starts_with("get ")).unwrap();
        assert!(get.contains(" - "), "a missing side is a dash: {get}");
        assert!(t.contains("noop put: 5000 ops/s") && t.contains("balsa reaches 50% of it"), "{t}");
        let line = t.lines().find(|l| l.starts_with("ceiling for put")).expect("a ceiling line");
        assert!(line.contains("noop (5000 ops/s), the highest of noop; balsa reaches 50%"), "{line}");
        assert!(!t.contains("ceiling for get"), "no no-op server ran get: {t}");
    }

    #[test]
    fn table_names_the_highest_of_several_ceilings() {
        let results = [
            result("etcd", "put", 1000.0, 40_000.0),
            result("balsa", "put", 2500.0, 20_000.0),
            result("noop-mt", "put", 4000.0, 1_000.0),
            result("noop", "put", 10_000.0, 1_000.0),
        ];
        let t = table(&results, "etcd", "balsa");
        assert!(t.contains("noop-mt put: 4000 ops/s") && t.contains("balsa reaches 62% of it"), "{t}");
        let line = t.lines().find(|l| l.starts_with("ceiling for put")).expect("a ceiling line");
        assert!(line.contains("noop (10000 ops/s)") && line.contains("noop, noop-mt"), "{line}");
        assert!(line.ends_with("balsa reaches 25% of it"), "{line}");
    }

    #[test]
    fn a_reference_is_listed_with_its_share_but_is_never_the_ceiling() {
        let results = [
            result("etcd", "put", 1000.0, 40_000.0),
            result("balsa", "put", 2500.0, 20_000.0),
            // Faster than the no-op server: were it taken for the ceiling, balsa's share would be 25%.
            result("balsa-one", "put", 10_000.0, 5_000.0),
            result("noop", "put", 5000.0, 1_000.0),
        ];
        let t = table(&results, "etcd", "balsa");
        assert!(t.contains("balsa-one put: 10000 ops/s") && t.contains("balsa reaches 25% of it"), "{t}");
        let line = t.lines().find(|l| l.starts_with("ceiling for put")).expect("a ceiling line");
        assert!(line.starts_with("ceiling for put: noop (5000 ops/s), the highest of noop;"), "{line}");
        assert!(line.ends_with("; balsa reaches 50% of it; balsa-one reaches 200% of it"), "{line}");
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("put ")).collect();
        assert_eq!(rows.len(), 1, "a reference is not a row of the table: {t}");
    }

    #[test]
    fn table_shows_memory_and_log_append_without_a_ratio() {
        let member =
            |rss_mib: u64| crate::memory::ProcessMemory { pid: 1, rss_kib: rss_mib * 1024, hwm_kib: 0 };
        let results = [
            result("etcd", "put", 1000.0, 40_000.0),
            result("balsa", "log-append", 3000.0, 8_000.0),
            crate::memory::result("etcd", 1_000_000, &[member(400), member(200)]),
            crate::memory::result("balsa", 1_000_000, &[member(600), member(600)]),
        ];
        let t = table(&results, "etcd", "balsa");
        let log = t.lines().find(|l| l.starts_with("log-append ")).unwrap();
        assert!(log.contains("3000") && !log.contains('x'), "balsa only, no ratio: {log}");
        assert!(t.contains("etcd has no counterpart"), "{t}");
        let memory = t.lines().find(|l| l.starts_with("memory")).unwrap();
        assert!(memory.contains("1000000 keys"), "{memory}");
        assert!(memory.contains("etcd 400/300") && memory.contains("balsa 600/600"), "{memory}");
        assert!(memory.contains("1.50x"), "600 over 400: {memory}");
        assert!(!t.lines().any(|l| l.starts_with("memory ") && l.contains(" - ")), "no throughput row");
    }

    #[test]
    fn watch_moves_put_latency_aside() {
        let mut r = result("balsa", "watch", 100.0, 500.0);
        let delivery = Summary { count: 30, p99_us: 70.0, ..Summary::default() };
        r.set_watch(3, delivery, 30);
        assert_eq!(r.latency, delivery);
        assert_eq!(r.extra["put_latency"]["p99_us"], 500.0);
        assert_eq!(r.extra["events_delivered"], 30);
        assert!(r.text().contains("delivery"));
    }
}
