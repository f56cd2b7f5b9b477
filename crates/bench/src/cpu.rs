//! Server CPU time, read from `/proc/PID/stat` (user + system time of every thread the process
//! ever ran, the dead ones included), so a run can report CPU-microseconds per operation summed
//! over a cluster's members.

use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ): asked of `getconf CLK_TCK` once; 100
/// (every mainstream Linux build) if that fails.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// utime + stime, in ticks, from the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time used so far by the process `pid`.
pub fn process_cpu(pid: u32, ticks_per_second: u64) -> std::io::Result<Duration> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))?;
    let ticks = parse_stat_ticks(&text).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("/proc/{pid}/stat unreadable"))
    })?;
    Ok(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second))
}

/// The CPU time of several processes, summed.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    /// The processes.
    pids: Vec<u32>,
    /// USER_HZ.
    ticks_per_second: u64,
}

impl CpuMeter {
    /// A meter over `pids`; fails at once if one of them cannot be read.
    pub fn new(pids: Vec<u32>) -> std::io::Result<Self> {
        let meter = Self { pids, ticks_per_second: clock_ticks_per_second() };
        meter.total()?;
        Ok(meter)
    }

    /// Their CPU time so far, summed.
    pub fn total(&self) -> std::io::Result<Duration> {
        self.pids
            .iter()
            .try_fold(Duration::ZERO, |sum, &pid| Ok(sum + process_cpu(pid, self.ticks_per_second)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_an_awkward_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn reads_this_process() {
        let meter = CpuMeter::new(vec![std::process::id()]).unwrap();
        let before = meter.total().unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(meter.total().unwrap() >= before);
        assert!(CpuMeter::new(vec![u32::MAX]).is_err(), "a missing pid is an error at once");
    }
}
