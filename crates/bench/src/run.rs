//! The runner: connections, client tasks, warmup, the open-loop schedule, progress, and the
//! result. Every loop here ends by its deadline (or `--total`), whatever the server does.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_server::pb::balsapb::{log_client::LogClient, CreateStreamRequest};
use balsa_server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use balsa_server::pb::etcdserverpb::{PutResponse, StatusRequest};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::{Channel, Endpoint};

use crate::args::{LoadFlags, DEFAULT_DURATION};
use crate::cpu::CpuMeter;
use crate::grpc::UnaryChannel;
use crate::report::RunResult;
use crate::stats::{latency_from, Latencies, Schedule};
use crate::workload::{ClientOp, KeyPick, Keys, LogStreams, Rng, Workload, KV_PUT};
use crate::{watch, BenchError};

/// The longest a `--total` run may take before it stops anyway.
const TOTAL_RUN_LIMIT: Duration = Duration::from_secs(3600);
/// A client pauses this long after an error, so a server that is down is not spun against.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

/// When the run measures, and when it stops.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Operations due (open loop) or started (closed loop) before this are warmup.
    pub measure_from: Instant,
    /// No operation starts at or after this.
    pub end: Instant,
    /// `--total`: measured operations to start.
    pub total: Option<u64>,
    /// `--rate`: the open-loop schedule.
    pub schedule: Option<Schedule>,
}

impl Timing {
    /// The timing of `load` starting now.
    pub fn new(load: &LoadFlags, start: Instant) -> Self {
        let measure_from = start + load.warmup;
        let end = match (load.total, load.duration) {
            (Some(_), _) => measure_from + TOTAL_RUN_LIMIT,
            (None, duration) => measure_from + duration.unwrap_or(DEFAULT_DURATION),
        };
        let schedule = load.rate.map(|rate| Schedule::new(start, rate));
        Self { measure_from, end, total: load.total, schedule }
    }
}

/// Counters shared by the clients (and read by the progress bar).
#[derive(Default)]
pub struct Shared {
    /// Open loop: the next schedule slot.
    next_slot: AtomicU64,
    /// Measured operations started (for `--total`).
    measured_started: AtomicU64,
    /// Operations answered, warmup included (progress only).
    pub answered: AtomicU64,
    /// Errors, warmup included (progress only).
    pub errors: AtomicU64,
}

/// What one client brings back.
pub struct ClientOutcome {
    /// Latencies of its measured operations.
    pub latencies: Latencies,
    /// Its measured operations that failed.
    pub errors: u64,
    /// The first error it saw.
    pub first_error: Option<String>,
    /// Measured writes: (revision, when acknowledged) — the watch workload's reference points.
    pub acks: Vec<(i64, Instant)>,
    /// Compare-and-swap successes (txn).
    pub successes: Option<u64>,
}

/// Everything a client task needs.
pub struct ClientSetup {
    /// Its connection: a clone of one of the run's, shared with the other clients on it.
    pub conn: UnaryChannel,
    /// Key layout.
    pub keys: Arc<Keys>,
    /// The value written.
    pub value: Arc<Vec<u8>>,
    /// How it chooses keys.
    pub pick: KeyPick,
    /// Keep write acknowledgements (watch workload).
    pub keep_acks: bool,
}

/// One client: sends operations one at a time until the run ends.
pub async fn client(
    setup: ClientSetup,
    mut op: ClientOp,
    timing: Timing,
    shared: Arc<Shared>,
) -> ClientOutcome {
    let ClientSetup { mut conn, keys, value, mut pick, keep_acks } = setup;
    let mut out = ClientOutcome {
        latencies: Latencies::new(),
        errors: 0,
        first_error: None,
        acks: Vec::new(),
        successes: None,
    };
    loop {
        let intended = timing.schedule.map(|s| s.due(shared.next_slot.fetch_add(1, Ordering::Relaxed)));
        if let Some(due) = intended {
            if due >= timing.end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        if intended.is_none() && sent >= timing.end {
            break;
        }
        let measured = intended.unwrap_or(sent) >= timing.measure_from;
        if measured {
            if let Some(total) = timing.total {
                if shared.measured_started.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
            }
        }
        let result = op.call(&mut conn, &keys, &value, &mut pick).await;
        let done = Instant::now();
        shared.answered.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(revision) if measured => {
                out.latencies.record(latency_from(intended, sent, done));
                if let (true, Some(revision)) = (keep_acks, revision) {
                    out.acks.push((revision, done));
                }
            }
            Ok(_) => {}
            Err(status) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if measured {
                    out.errors += 1;
                }
                out.first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    out.successes = op.successes();
    out
}

/// Opens `count` connections for the load's calls ([`UnaryChannel`]), spread over `endpoints`
/// in turn.
pub async fn connect_unary(endpoints: &[String], count: u32) -> Result<Vec<UnaryChannel>, BenchError> {
    let mut channels = Vec::new();
    for i in 0..count as usize {
        channels.push(UnaryChannel::connect(&endpoints[i % endpoints.len()]).await?);
    }
    Ok(channels)
}

/// Opens `count` tonic channels (for watch streams and the run's setup), spread over `endpoints`
/// in turn.
pub async fn connect(endpoints: &[String], count: u32) -> Result<Vec<Channel>, BenchError> {
    let mut channels = Vec::new();
    for i in 0..count as usize {
        let endpoint = &endpoints[i % endpoints.len()];
        let uri = if endpoint.contains("://") { endpoint.clone() } else { format!("http://{endpoint}") };
        let channel = Endpoint::from_shared(uri.clone())
            .map_err(|e| BenchError::Usage(format!("--endpoints {endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| BenchError::Connect(format!("{uri}: {e}")))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// The endpoints whose member leads, by each one's Maintenance.Status (the member id in its
/// header against the leader it names).
pub async fn leader_endpoints(endpoints: &[String]) -> Result<Vec<String>, BenchError> {
    let mut statuses = Vec::new();
    for endpoint in endpoints {
        let channel = connect(std::slice::from_ref(endpoint), 1).await?.remove(0);
        let status = MaintenanceClient::new(channel)
            .status(StatusRequest {})
            .await
            .map_err(|e| BenchError::Connect(format!("{endpoint}: status: {}", e.message())))?
            .into_inner();
        statuses.push((endpoint.clone(), status.header.map_or(0, |h| h.member_id), status.leader));
    }
    pick_leaders(&statuses)
}

/// Of `(endpoint, member id, leader it names)`, the endpoints of members that name themselves.
pub fn pick_leaders(statuses: &[(String, u64, u64)]) -> Result<Vec<String>, BenchError> {
    let leaders: Vec<String> = statuses
        .iter()
        .filter(|(_, member, leader)| *member != 0 && member == leader)
        .map(|(endpoint, _, _)| endpoint.clone())
        .collect();
    if leaders.is_empty() {
        let seen: Vec<String> = statuses
            .iter()
            .map(|(endpoint, member, leader)| format!("{endpoint} is {member:x}, leader {leader:x}"))
            .collect();
        return Err(BenchError::Usage(format!(
            "--at-leader: no endpoint is the leader ({}); name the leader's, or wait for an election",
            seen.join("; ")
        )));
    }
    Ok(leaders)
}

/// Writes every key of the key space once (not measured), `clients` at a time, within 5 minutes.
async fn preload(
    channels: &[UnaryChannel],
    keys: &Arc<Keys>,
    value: &Arc<Vec<u8>>,
    clients: u32,
) -> Result<(), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut tasks = Vec::new();
    for c in 0..clients as usize {
        let mut conn = channels[c % channels.len()].clone();
        let (next, keys, value) = (next.clone(), keys.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys.space || Instant::now() >= deadline {
                    return Ok::<(), BenchError>(());
                }
                let put = balsa_server::pb::etcdserverpb::PutRequest {
                    key: keys.key(index),
                    value: value.to_vec(),
                    ..Default::default()
                };
                let _: PutResponse = conn
                    .call(KV_PUT, &put)
                    .await
                    .map_err(|s| BenchError::Connect(format!("preload: {}", s.message())))?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError::Connect(format!("preload task: {e}")))??;
    }
    Ok(())
}

/// What a log-append run says when the server has no Log service (etcd, the no-op server).
pub const NO_LOG_SERVICE: &str =
    "the endpoint does not serve balsa's log streams (balsapb.Log): log-append runs against balsa only";

/// Creates the streams of a log-append run (not measured). A stream that exists already is used
/// as it is, whatever its retention: rerunning against the same cluster appends to it.
async fn create_streams(channel: &Channel, streams: &LogStreams) -> Result<(), BenchError> {
    let mut log = LogClient::new(channel.clone());
    for name in &streams.names {
        let create = CreateStreamRequest {
            stream: name.clone(),
            retention_bytes: Some(streams.retention_bytes),
            retention_ms: Some(0),
        };
        match log.create_stream(create).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                return Err(BenchError::Usage(NO_LOG_SERVICE.into()))
            }
            Err(s) => return Err(BenchError::Connect(format!("creating stream {name:?}: {}", s.message()))),
        }
    }
    Ok(())
}

/// A progress bar on a terminal (stderr), hidden otherwise; updated by a task until `stop`.
fn progress(
    shared: Arc<Shared>,
    timing: Timing,
    stop: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(1000) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.notified() => break,
            }
            let span = timing.end.saturating_duration_since(start).as_secs_f64().max(1e-9);
            let fraction = match timing.total {
                Some(_) => 0.0,
                None => (start.elapsed().as_secs_f64() / span).min(1.0),
            };
            bar.set_position((fraction * 1000.0) as u64);
            let (ops, errors) =
                (shared.answered.load(Ordering::Relaxed), shared.errors.load(Ordering::Relaxed));
            let phase = if Instant::now() < timing.measure_from { "warmup" } else { "measuring" };
            bar.set_message(format!("{phase}: {ops} ops, {errors} errors"));
        }
        bar.finish_and_clear();
    })
}

/// Runs `workload` with `load` and returns its result.
pub async fn run(workload: Workload, load: &LoadFlags, preload_keys: bool) -> Result<RunResult, BenchError> {
    if load.endpoints.is_empty() {
        return Err(BenchError::Usage("--endpoints: at least one".into()));
    }
    if let Some(rate) = load.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(BenchError::Usage(format!("--rate {rate}: must be positive")));
        }
    }
    let keys = Arc::new(Keys::new(&load.prefix, load.key_size, load.key_space)?);
    let value = Arc::new(vec![b'v'; load.value_size]);
    let endpoints =
        if load.at_leader { leader_endpoints(&load.endpoints).await? } else { load.endpoints.clone() };
    let unary = connect_unary(&endpoints, load.connections).await?;
    if preload_keys {
        preload(&unary, &keys, &value, load.clients).await?;
    }
    if let Workload::LogAppend(streams) = &workload {
        create_streams(&connect(&endpoints, 1).await?[0], streams).await?;
    }
    let meter = if load.pids.is_empty() {
        None
    } else {
        Some(CpuMeter::new(load.pids.clone()).map_err(BenchError::Io)?)
    };
    let watchers = match workload {
        Workload::Watch { watchers } => {
            let channels = connect(&endpoints, load.connections).await?;
            Some(watch::Watchers::start(&channels, &keys, watchers).await?)
        }
        _ => None,
    };

    let start = Instant::now();
    let timing = Timing::new(load, start);
    let shared = Arc::new(Shared::default());
    let stop_progress = Arc::new(tokio::sync::Notify::new());
    let bar = progress(shared.clone(), timing, stop_progress.clone());
    let cpu_start = tokio::spawn({
        let meter = meter.clone();
        async move {
            tokio::time::sleep_until(timing.measure_from.into()).await;
            meter.map(|m| m.total()).transpose()
        }
    });
    let mut tasks = Vec::new();
    let sequence = Arc::new(AtomicU64::new(0));
    for c in 0..load.clients as usize {
        let pick = match load.sequential_keys {
            true => KeyPick::Sequential(sequence.clone()),
            false => KeyPick::Random(Rng::new(0x5eed_0000 + c as u64)),
        };
        let setup = ClientSetup {
            conn: unary[c % unary.len()].clone(),
            keys: keys.clone(),
            value: value.clone(),
            pick,
            keep_acks: watchers.is_some(),
        };
        tasks.push(tokio::spawn(client(setup, ClientOp::new(&workload, c), timing, shared.clone())));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.map_err(|e| BenchError::Connect(format!("client task: {e}")))?);
    }
    let finished = Instant::now();
    let cpu_end = meter.as_ref().map(|m| m.total()).transpose().map_err(BenchError::Io)?;
    let cpu_start = cpu_start
        .await
        .map_err(|e| BenchError::Connect(format!("cpu task: {e}")))?
        .map_err(BenchError::Io)?;
    stop_progress.notify_one();
    let _ = bar.await;

    let mut result = RunResult::new(&workload, load);
    // The members actually driven (`--at-leader` keeps only the leader's).
    result.endpoints = endpoints;
    if let Workload::LogAppend(streams) = &workload {
        result.extra.insert("streams".into(), streams.names.len().into());
    }
    let elapsed = finished.saturating_duration_since(timing.measure_from);
    result.fill(&outcomes, elapsed);
    if let (Some(before), Some(after)) = (cpu_start, cpu_end) {
        result.set_server_cpu(after.saturating_sub(before));
    }
    if result.ops == 0 && result.errors > 0 {
        let first = result.first_error.unwrap_or_default();
        return Err(BenchError::Connect(format!(
            "no operation succeeded ({} errors; the first: {first})",
            result.errors
        )));
    }
    if let Some(watchers) = watchers {
        let acks: Vec<(i64, Instant)> = outcomes.iter().flat_map(|o| o.acks.iter().copied()).collect();
        watchers.finish(acks, &mut result).await;
    }
    Ok(result)
}
