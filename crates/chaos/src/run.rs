//! One chaos run: start the cluster, start the workloads, let the nemesis loose for the
//! duration, heal, read everything back, check, and say what happened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_client::{Client, ClientOptions, GetOptions, PutOptions};
use balsa_raft::rng::SplitMix64;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::history::{connect, take, Clock, Counts};
use crate::nemesis::{FaultKind, FaultRecord, Nemesis};
use crate::net::Net;
use crate::{bank, register, stream, watch};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Chooses the fault schedule and every client's choices.
    pub seed: u64,
    /// How long the nemesis runs (the heal and the checks come after).
    pub duration: Duration,
    /// The fault kinds, used in a seeded round-robin order so each appears.
    pub faults: Vec<FaultKind>,
    /// The `balsa` binary.
    pub balsa: PathBuf,
    /// Where data, logs and histories go (kept if the run fails or `keep`).
    pub dir: PathBuf,
    /// Keep the directory of a run that passed too.
    pub keep: bool,
    /// Founding members.
    pub nodes: usize,
    /// Hosts to add as members later.
    pub spares: usize,
    /// The servers' Raft tick (the election timeout is ten).
    pub tick_ms: u64,
    /// Register clients and keys.
    pub register_clients: usize,
    /// How many register keys.
    pub keys: usize,
    /// Bank clients.
    pub bank_clients: usize,
    /// Bank accounts.
    pub accounts: usize,
    /// Watchers of the register keys.
    pub watchers: usize,
    /// Stream appenders.
    pub appenders: usize,
    /// Stream subscribers.
    pub subscribers: usize,
    /// How long a fault lasts (ms), at least and at most.
    pub hold_ms: (u64, u64),
    /// The quiet time between faults (ms).
    pub gap_ms: (u64, u64),
    /// The linearizability checker's time limit (past it: "unknown").
    pub check_budget: Duration,
}

impl Config {
    /// Defaults for a run of `duration` with `seed`.
    pub fn new(seed: u64, duration: Duration, balsa: PathBuf, dir: PathBuf) -> Self {
        Self {
            seed,
            duration,
            faults: FaultKind::ALL.to_vec(),
            balsa,
            dir,
            keep: false,
            nodes: 5,
            spares: 2,
            tick_ms: 50,
            register_clients: 10,
            keys: 5,
            bank_clients: 3,
            accounts: 5,
            watchers: 2,
            appenders: 2,
            subscribers: 2,
            hold_ms: (1_000, 5_000),
            gap_ms: (1_000, 3_000),
            check_budget: Duration::from_secs(120),
        }
    }
}

/// What a run found.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Seconds of faults.
    pub duration_s: f64,
    /// Operations per workload.
    pub operations: BTreeMap<String, Counts>,
    /// Faults per kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Every fault, in order.
    pub fault_log: Vec<FaultRecord>,
    /// The register history's verdict: `ok`, `illegal: ...` or `unknown: ...`.
    pub linearizability: String,
    /// Everything that went wrong. Must be empty.
    pub anomalies: Vec<String>,
    /// Where the run's files are, if kept.
    pub kept: Option<PathBuf>,
}

impl Summary {
    /// Whether the run found nothing wrong (an "unknown" verdict is not a pass).
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty() && self.linearizability == "ok"
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "chaos run, seed {}, {:.0} s of faults", self.seed, self.duration_s)?;
        for (name, c) in &self.operations {
            writeln!(f, "  {name:<10} {:>7} ok {:>6} failed {:>6} unknown", c.ok, c.failed, c.unknown)?;
        }
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k:?} {n}")).collect();
        writeln!(f, "  faults: {} ({})", self.fault_log.len(), faults.join(", "))?;
        writeln!(f, "  recovery (fault undone -> first write taken), ms: mean / max per kind")?;
        for kind in self.faults.keys() {
            let times: Vec<u64> =
                self.fault_log.iter().filter(|r| r.kind == *kind).filter_map(|r| r.recovered_ms).collect();
            if let Some(max) = times.iter().max() {
                let mean = times.iter().sum::<u64>() / times.len() as u64;
                writeln!(f, "    {kind:?}: {mean} / {max}")?;
            }
        }
        writeln!(f, "  linearizability (register): {}", self.linearizability)?;
        writeln!(f, "  anomalies: {}", self.anomalies.len())?;
        for a in &self.anomalies {
            writeln!(f, "    - {a}")?;
        }
        if let Some(dir) = &self.kept {
            writeln!(f, "  history and node logs kept in {}", dir.display())?;
        }
        Ok(())
    }
}

/// Waits (bounded) until a write through the cluster succeeds.
async fn until_writable(client: &Client, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), client.put("chaos/probe", "x", PutOptions::new()))
            .await
        {
            Ok(Ok(_)) => return Ok(()),
            other if Instant::now() > deadline => {
                return Err(format!("the cluster took no write within {limit:?}: {other:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs the whole thing. `Err` is a harness failure (no namespaces, no binary), not a finding.
pub async fn run(config: Config) -> Result<Summary, String> {
    std::fs::create_dir_all(&config.dir).map_err(|e| format!("{}: {e}", config.dir.display()))?;
    if !config.balsa.exists() {
        return Err(format!("no balsa binary at {}", config.balsa.display()));
    }
    let net =
        Net::create(config.nodes + config.spares).map_err(|e| format!("setting up the network: {e}"))?;
    let mut cluster = Cluster::new(net, &config.balsa, &config.dir, config.tick_ms);
    let founders: Vec<usize> = (0..config.nodes).collect();
    let initial = cluster.initial_cluster(&founders);
    for &h in &founders {
        cluster.start(h, &initial, "new").map_err(|e| format!("starting n{h}: {e}"))?;
        cluster.nodes[h].member = true;
    }
    let urls = cluster.client_urls();
    let clock = Clock::start();
    let control_options = ClientOptions { sessions: false, ..crate::history::client_options() };
    let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let control =
        Client::connect(&url_refs, control_options).await.map_err(|e| format!("connecting: {e}"))?;
    until_writable(&control, Duration::from_secs(60)).await?;

    let setup = connect(&urls).await?;
    bank::open(&setup, config.accounts).await?;
    stream::create(&setup).await?;

    let mut seeds = SplitMix64::new(config.seed);
    let stop = Arc::new(AtomicBool::new(false));
    let reg = register::Recorded::default();
    let bank_rec = bank::Recorded::default();
    let log_rec = stream::Recorded::default();
    let (watch_target, watch_rx) = watch::target();
    let (sub_target, sub_rx) = tokio::sync::watch::channel(None);
    let end_limit = Duration::from_secs(60);
    let mut watchers = Vec::new();
    for _ in 0..config.watchers {
        let c = connect(&urls).await?;
        watchers.push(tokio::spawn(watch::watcher(c, watch_rx.clone(), end_limit)));
    }
    let mut subscribers = Vec::new();
    for _ in 0..config.subscribers {
        let c = connect(&urls).await?;
        subscribers.push(tokio::spawn(stream::subscriber(c, sub_rx.clone(), end_limit)));
    }
    let mut workers = Vec::new();
    for id in 0..config.register_clients {
        let c = connect(&urls).await?;
        let seed = seeds.next_u64();
        workers.push(tokio::spawn(register::client(
            id as u64,
            c,
            config.keys,
            seed,
            clock,
            stop.clone(),
            reg.clone(),
        )));
    }
    for _ in 0..config.bank_clients {
        let c = connect(&urls).await?;
        workers.push(tokio::spawn(bank::client(c, seeds.next_u64(), stop.clone(), bank_rec.clone())));
    }
    for id in 0..config.appenders {
        let c = connect(&urls).await?;
        workers.push(tokio::spawn(stream::appender(id as u64, c, stop.clone(), log_rec.clone())));
    }

    // The nemesis.
    let mut kinds = config.faults.clone();
    let mut rng = SplitMix64::new(seeds.next_u64());
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let mut nemesis = Nemesis {
        kinds,
        faults: 0,
        rng,
        hold_ms: config.hold_ms,
        gap_ms: config.gap_ms,
        control: control.clone(),
        log: Vec::new(),
        anomalies: Vec::new(),
        clock,
    };
    let started = Instant::now();
    while started.elapsed() < config.duration {
        tokio::time::sleep(nemesis.gap()).await;
        nemesis.check_crashes(&mut cluster);
        if started.elapsed() >= config.duration || nemesis.kinds.is_empty() {
            break;
        }
        nemesis.one_fault(&mut cluster).await;
    }
    let duration_s = started.elapsed().as_secs_f64();

    // Heal, let the clients see a working cluster for a moment, then stop them.
    nemesis.heal_all(&mut cluster);
    let mut anomalies = Vec::new();
    if let Err(e) = until_writable(&control, Duration::from_secs(60)).await {
        anomalies.push(format!("after the heal: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        if tokio::time::timeout(Duration::from_secs(30), w).await.is_err() {
            anomalies.push("a client did not stop within 30 s".into());
        }
    }
    nemesis.check_crashes(&mut cluster);

    // Read everything back.
    let reader = connect(&urls).await?;
    if let Err(e) = register::final_reads(&reader, config.keys, clock, &reg).await {
        anomalies.push(e);
    }
    match bank::read(&reader, false).await {
        Ok(books) => {
            if let Err(e) = books.check() {
                anomalies.push(format!("bank (final read): {e}"));
            }
        }
        Err(e) => anomalies.push(format!("bank: final read failed: {e}")),
    }
    let all = stream::read_all(&reader).await.unwrap_or_else(|e| {
        anomalies.push(e);
        Vec::new()
    });
    let last_reg_revision = reader
        .get(register::PREFIX, GetOptions::new().prefix())
        .await
        .map(|r| r.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0))
        .unwrap_or(0);
    let _ = watch_target.send(Some(last_reg_revision));
    let _ = sub_target.send(Some(all.len() as u64));
    let mut seen_by_watchers = Vec::new();
    for w in watchers {
        seen_by_watchers
            .push(w.await.unwrap_or_else(|e| (Vec::new(), Some(format!("watcher task failed: {e}")))));
    }
    let mut seen_by_subscribers = Vec::new();
    for s in subscribers {
        seen_by_subscribers
            .push(s.await.unwrap_or_else(|e| (Vec::new(), Some(format!("subscriber task failed: {e}")))));
    }

    // Check.
    let ops = take(&reg.ops);
    let acked = take(&reg.acked);
    let attempted = take(&reg.attempted);
    let verdict = crate::check::register(&ops, config.check_budget);
    anomalies.append(&mut nemesis.anomalies);
    anomalies.extend(take(&bank_rec.violations));
    anomalies.extend(watch::check(&seen_by_watchers, &acked, &attempted));
    let mut all_acked = acked.clone();
    all_acked.extend(take(&bank_rec.acked));
    anomalies.extend(crate::lost::check(&reader, all_acked.clone()).await);
    let log_acked = take(&log_rec.acked);
    anomalies.extend(stream::check(&all, &log_acked, &take(&log_rec.attempted), &seen_by_subscribers));

    let sum = |v: Vec<Counts>| {
        v.iter().fold(Counts::default(), |a, c| Counts {
            ok: a.ok + c.ok,
            failed: a.failed + c.failed,
            unknown: a.unknown + c.unknown,
        })
    };
    let mut operations = BTreeMap::new();
    operations.insert("register".to_string(), sum(take(&reg.counts)));
    operations.insert("bank".to_string(), sum(take(&bank_rec.counts)));
    operations.insert("log".to_string(), sum(take(&log_rec.counts)));
    let watched: u64 = seen_by_watchers.iter().map(|(s, _)| s.len() as u64).sum();
    operations.insert("watch".to_string(), Counts { ok: watched, ..Counts::default() });
    let mut faults = BTreeMap::new();
    for f in &nemesis.log {
        *faults.entry(f.kind).or_insert(0) += 1;
    }
    let mut summary = Summary {
        seed: config.seed,
        duration_s,
        operations,
        faults,
        fault_log: nemesis.log.clone(),
        linearizability: verdict,
        anomalies,
        kept: None,
    };

    drop(cluster);
    let write = |name: &str, text: String| std::fs::write(config.dir.join(name), text);
    let _ = write("register.jsonl", balsa_lincheck::to_json_lines(&ops));
    // The other workloads' records, for the reader of a failing run.
    let lines = |items: Vec<serde_json::Value>| items.iter().map(|v| format!("{v}\n")).collect::<String>();
    let _ =
        write("acknowledged-writes.jsonl", lines(all_acked.iter().map(|w| serde_json::json!(w)).collect()));
    let _ = write("watchers.json", serde_json::json!(seen_by_watchers).to_string());
    let _ = write(
        "stream.json",
        serde_json::json!({
            "read_back": all,
            "acknowledged": log_acked.iter().map(|a| (&a.record, a.offset)).collect::<Vec<_>>(),
            "subscribers": seen_by_subscribers,
        })
        .to_string(),
    );
    let _ = write("summary.json", serde_json::to_string_pretty(&summary).unwrap_or_default());
    if summary.passed() && !config.keep {
        let _ = std::fs::remove_dir_all(&config.dir);
    } else {
        // Data directories are large and say little the logs do not; histories and logs stay.
        for entry in std::fs::read_dir(&config.dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() && !config.keep {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        summary.kept = Some(config.dir.clone());
    }
    Ok(summary)
}
