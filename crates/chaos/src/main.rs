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
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let balsa = args.balsa.unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("balsa"))).unwrap_or_default()
    });
    let dir = args.dir.unwrap_or_else(|| std::env::temp_dir().join(format!("balsa-chaos-{seed}")));
    let mut config = Config::new(seed, args.duration, balsa, dir);
    config.keep = args.keep;
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
