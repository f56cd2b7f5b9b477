//! Resident memory of server processes, read from `/proc/PID/status`, for the memory
//! target ("resident size per node holding 1M keys no more than etcd's"). The figure is VmRSS:
//! what the process holds in RAM now (heap, stacks, and the pages of mapped files it touched —
//! for etcd, the part of its bbolt file in use), plus VmHWM, the highest VmRSS it ever had.

use std::path::Path;

use serde_json::json;

use crate::report::RunResult;
use crate::BenchError;

/// One process's memory, in KiB as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// The process.
    pub pid: u32,
    /// Resident now.
    pub rss_kib: u64,
    /// Resident at its highest.
    pub hwm_kib: u64,
}

/// The value in kB of the line `name:` of a `/proc/PID/status` text.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    let mut words = line.split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// Reads the memory of `pid`.
pub fn process_memory(pid: u32) -> Result<ProcessMemory, BenchError> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Usage(format!("{}: {e} (is process {pid} running?)", path.display())))?;
    let read = |name| {
        status_kib(&text, name)
            .ok_or_else(|| BenchError::Usage(format!("{}: no {name} line in kB", path.display())))
    };
    Ok(ProcessMemory { pid, rss_kib: read("VmRSS")?, hwm_kib: read("VmHWM")? })
}

/// KiB as MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The result of `memory`: a [`RunResult`] of workload `memory` (so `table` reads it beside the
/// others) whose figures are in `extra`: `rss_max_mib`, `rss_mean_mib`, `hwm_max_mib`, and
/// `members` (pid, rss_mib, hwm_mib of each).
pub fn result(label: &str, keys: u64, members: &[ProcessMemory]) -> RunResult {
    let mut r = RunResult::empty(label, "memory");
    r.key_space = keys;
    let n = members.len().max(1) as f64;
    let max = members.iter().map(|m| m.rss_kib).max().unwrap_or(0);
    let mean = members.iter().map(|m| m.rss_kib).sum::<u64>() as f64 / n;
    let hwm = members.iter().map(|m| m.hwm_kib).max().unwrap_or(0);
    r.extra.insert("rss_max_mib".into(), json!(mib(max)));
    r.extra.insert("rss_mean_mib".into(), json!(mean / 1024.0));
    r.extra.insert("hwm_max_mib".into(), json!(mib(hwm)));
    let each: Vec<_> = members
        .iter()
        .map(|m| json!({"pid": m.pid, "rss_mib": mib(m.rss_kib), "hwm_mib": mib(m.hwm_kib)}))
        .collect();
    r.extra.insert("members".into(), json!(each));
    r
}

/// A memory result's (max, mean) resident MiB per member, if it is one.
pub fn rss_of(r: &RunResult) -> Option<(f64, f64)> {
    if r.workload != "memory" {
        return None;
    }
    Some((r.extra.get("rss_max_mib")?.as_f64()?, r.extra.get("rss_mean_mib")?.as_f64()?))
}

/// The human-readable report of a memory result.
pub fn text(r: &RunResult) -> String {
    let label = if r.label.is_empty() { String::new() } else { format!(" [{}]", r.label) };
    let (max, mean) = rss_of(r).unwrap_or_default();
    let hwm = r.extra.get("hwm_max_mib").and_then(|v| v.as_f64()).unwrap_or_default();
    let members = r.extra.get("members").and_then(|v| v.as_array()).map_or(0, Vec::len);
    format!(
        "memory{label}: {members} processes holding {} keys\n  resident    max {max:.1} MiB, mean {mean:.1} MiB \
         per process (highest ever: {hwm:.1} MiB)\n",
        r.key_space
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tetcd\nVmPeak:\t 1000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n";

    #[test]
    fn parses_status_lines() {
        assert_eq!(status_kib(STATUS, "VmRSS"), Some(102_400));
        assert_eq!(status_kib(STATUS, "VmHWM"), Some(204_800));
        assert_eq!(status_kib(STATUS, "VmSwap"), None, "absent");
        assert_eq!(status_kib(STATUS, "Threads"), None, "not in kB");
        assert_eq!(status_kib("VmRSS:\tlots kB\n", "VmRSS"), None);
    }

    #[test]
    fn max_and_mean_over_members() {
        let members = [
            ProcessMemory { pid: 1, rss_kib: 100 * 1024, hwm_kib: 150 * 1024 },
            ProcessMemory { pid: 2, rss_kib: 300 * 1024, hwm_kib: 310 * 1024 },
        ];
        let r = result("balsa", 1_000_000, &members);
        assert_eq!(rss_of(&r), Some((300.0, 200.0)));
        assert_eq!(r.extra["hwm_max_mib"], 310.0);
        assert_eq!(r.extra["members"][1]["pid"], 2);
        let text = text(&r);
        assert!(text.contains("2 processes holding 1000000 keys"), "{text}");
        assert!(text.contains("max 300.0 MiB, mean 200.0 MiB"), "{text}");
    }

    #[test]
    fn reads_this_process_and_refuses_a_missing_one() {
        let me = process_memory(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib, "{me:?}");
        let error = process_memory(u32::MAX).unwrap_err().to_string();
        assert!(error.contains("is process"), "{error}");
    }
}
