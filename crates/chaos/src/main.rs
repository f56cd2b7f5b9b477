//! `balsa-chaos`: one fault-test run of a real balsa cluster (see the crate docs).

use std::path::PathBuf;
use std::time::Duration;

use balsa_chaos::{Config, FaultKind};
use clap::Parser;

/// Runs a 5-member balsa cluster in network namespaces under a nemesis, records client
/// histories and checks them. Needs root (ip netns). Exits 0 if nothing was found, 1 on an
/// anomaly or an undecided check, 2 if the harness itself failed.
#[derive(Parser, Debug)]
#[command(name = "balsa-chaos", version)]
struct Args {
    /// How long the nemesis runs: `90s`, `30m`, `1h` or seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Chooses the fault schedule and the clients' choices (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The fault kinds to use (comma-separated; default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    faults: Vec<FaultKind>,
    /// The `balsa` binary (default: beside this one).
    #[arg(long)]
    balsa: Option<PathBuf>,
    /// Where data, logs and histories go (default: a new folder under the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the folder of a run that passed.
    #[arg(long)]
    keep: bool,
    /// Also write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not run: check a kept run's register history (`register.jsonl`) again and exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// The linearizability checker's time limit (past it the verdict is "unknown").
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    check_budget: Duration,
}

/// `--check FILE`: the verdict on a recorded register history; exit 0 only for "ok".
fn check_file(path: &std::path::Path, budget: Duration) -> ! {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("balsa-chaos: {}: {e}", path.display());
        std::process::exit(2)
    });
    let ops: Vec<balsa_chaos::register::RegOp> = balsa_lincheck::from_json_lines(&text).unwrap_or_else(|e| {
        eprintln!("balsa-chaos: {}: {e}", path.display());
        std::process::exit(2)
    });
    let started = std::time::Instant::now();
    let verdict = balsa_chaos::check::register(&ops, budget);
    println!("{} operations: {verdict} ({:.1} s)", ops.len(), started.elapsed().as_secs_f64());
    std::process::exit(if verdict == "ok" { 0 } else { 1 })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 30m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    if !(1.0..=86_400.0).contains(&secs) {
        return Err(format!("{text:?}: between 1 s and 24 h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    let args = Args::parse();
    if let Some(path) = &args.check {
        check_file(path, args.check_budget);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let balsa = args.balsa.unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("balsa"))).unwrap_or_default()
    });
    let dir = args.dir.unwrap_or_else(|| std::env::temp_dir().join(format!("balsa-chaos-{seed}")));
    let mut config = Config::new(seed, args.duration, balsa, dir);
    config.keep = args.keep;
    config.check_budget = args.check_budget;
    if !args.faults.is_empty() {
        config.faults = args.faults;
    }
    if !balsa_chaos::net::Net::available() {
        eprintln!("balsa-chaos: cannot create network namespaces (run as root, with iproute2)");
        std::process::exit(2);
    }
    eprintln!("balsa-chaos: seed {seed}, {:?} of faults ({:?})", config.duration, config.faults);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(balsa_chaos::run(config)) {
        Ok(summary) => {
            print!("{summary}");
            if let Some(path) = args.json {
                let _ = std::fs::write(path, serde_json::to_string_pretty(&summary).unwrap_or_default());
            }
            std::process::exit(if summary.passed() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("balsa-chaos: {e}");
            std::process::exit(2);
        }
    }
}
