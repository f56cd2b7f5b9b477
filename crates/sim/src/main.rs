//! `balsa-sim`: run simulated clusters from seeds and report safety violations.
//!
//! ```text
//! balsa-sim --seeds 0..500 [--nodes 5] [--threads 2]
//! balsa-sim --seed 42 [--nodes 5] --trace
//! ```

use std::process::ExitCode;

use balsa_sim::{run_seeds, run_with_trace, SimConfig};

struct Args {
    /// A scripted measurement to run instead of seeds.
    scenario: Option<String>,
    state_mib: u64,
    delegate: bool,
    seeds: std::ops::Range<u64>,
    nodes: Option<usize>,
    trace: bool,
    threads: usize,
}

fn usage() -> String {
    "usage: balsa-sim (--seeds A..B | --seed S) [--nodes N] [--threads T] [--trace]\n       \
     balsa-sim --scenario replace-majority [--state-mib N] [--no-delegate] [--seed S]"
        .into()
}

fn run_scenario(args: &Args) -> ExitCode {
    let bytes = args.state_mib << 20;
    match balsa_sim::cluster::scenario::replace_two_of_three(
        bytes,
        args.delegate,
        args.seeds.start,
        args.trace,
    ) {
        Ok(r) => {
            println!(
                "replace 2 of 3 voters, state {} MiB, catch-up from peers: {}",
                args.state_mib, r.delegate
            );
            for step in &r.steps {
                println!("  {step}");
            }
            println!("time until C_new committed     {:.2} s", r.change_us as f64 / 1e6);
            println!("client ops/s before            {:.0}", r.ops_per_s_before);
            println!(
                "client ops/s during the change {:.0} ({:.0}%)",
                r.ops_per_s_during,
                100.0 * r.ops_per_s_during / r.ops_per_s_before
            );
            println!("bytes sent by the leader       {:.1} MiB", r.leader_bytes as f64 / (1 << 20) as f64);
            println!("bytes sent by the others       {:.1} MiB", r.others_bytes as f64 / (1 << 20) as f64);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("scenario failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        scenario: None,
        state_mib: 64,
        delegate: true,
        seeds: 0..100,
        nodes: None,
        trace: false,
        threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{}", usage()));
        match flag.as_str() {
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").ok_or_else(|| format!("--seeds takes A..B, got {v:?}"))?;
                let a: u64 = a.parse().map_err(|_| format!("bad seed {a:?}"))?;
                let b: u64 = b.parse().map_err(|_| format!("bad seed {b:?}"))?;
                if a >= b {
                    return Err(format!("empty seed range {v}"));
                }
                args.seeds = a..b;
            }
            "--seed" => {
                let v = value()?;
                let s: u64 = v.parse().map_err(|_| format!("bad seed {v:?}"))?;
                args.seeds = s..s + 1;
            }
            "--nodes" => {
                let v = value()?;
                let n: usize = v.parse().map_err(|_| format!("bad node count {v:?}"))?;
                if !(1..=9).contains(&n) {
                    return Err(format!("--nodes must be 1 to 9, got {n}"));
                }
                args.nodes = Some(n);
            }
            "--threads" => {
                let v = value()?;
                args.threads = v.parse().map_err(|_| format!("bad thread count {v:?}"))?;
            }
            "--trace" => args.trace = true,
            "--scenario" => {
                let v = value()?;
                if v != "replace-majority" {
                    return Err(format!("unknown scenario {v:?} (known: replace-majority)"));
                }
                args.scenario = Some(v);
            }
            "--state-mib" => {
                let v = value()?;
                args.state_mib = v.parse().map_err(|_| format!("bad size {v:?}"))?;
                if args.state_mib > 4096 {
                    return Err("--state-mib is at most 4096".into());
                }
            }
            "--no-delegate" => args.delegate = false,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.scenario.is_some() {
        return run_scenario(&args);
    }
    // Core panics are caught and reported per seed; keep the default hook from printing each.
    std::panic::set_hook(Box::new(|_| {}));
    let count = args.seeds.end - args.seeds.start;
    if args.trace {
        for seed in args.seeds.clone() {
            let mut cfg = SimConfig::from_seed(seed, args.nodes);
            cfg.trace = true;
            println!("# seed {seed}: {cfg:?}");
            let (result, trace) = run_with_trace(cfg);
            for line in &trace {
                println!("{line}");
            }
            match result {
                Ok(s) => println!("seed {seed} ok: {s:?}"),
                Err(v) => println!("seed {seed} VIOLATION at {}us: {}", v.at_us, v.what),
            }
        }
    }
    let failures = if args.trace {
        // Already replayed above; rerun untraced only to count.
        run_seeds(args.seeds.clone(), args.nodes, 1)
    } else {
        run_seeds(args.seeds.clone(), args.nodes, args.threads)
    };
    for (seed, v) in &failures {
        println!("seed {seed}: VIOLATION at {}us: {}", v.at_us, v.what);
        if !args.trace {
            let mut cfg = SimConfig::from_seed(*seed, args.nodes);
            cfg.trace = true;
            let (_, trace) = run_with_trace(cfg);
            println!("  last events of seed {seed} (replay with --seed {seed} --trace):");
            for line in trace.iter().rev().take(40).rev() {
                println!("    {line}");
            }
        }
    }
    println!("{count} seeds, {} violations", failures.len());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
