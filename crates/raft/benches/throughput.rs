//! Throughput of the Raft core alone: three in-memory servers in one thread, no I/O.
//!
//! The driver is the loop of the crate documentation, with the network and the disk replaced by
//! the cheapest thing that honours the contract: a message is delivered by calling `step` on its
//! target, a `PersistBatch` is "written" by reading it (bytes counted, last index noted) and
//! declared durable at once, and applying an entry means counting it. Every server takes a
//! snapshot (empty data) every `--compact-every` applied entries, so memory stays bounded however
//! many entries are run; the leader compacts no further than its slowest follower's match, so
//! nobody ever needs an InstallSnapshot.
//!
//! The figure reported is entries applied at the leader per second of process CPU time (the
//! time spent proposing, replicating on all three servers, committing and compacting), measured
//! after the election. It is read from `/proc/self/task/*/schedstat` (nanoseconds, folded in at
//! scheduler ticks), or from `/proc/self/stat` (10 ms clock ticks) where schedstat is not kept:
//! `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)` would need `unsafe`, which the workspace forbids.
//!
//! ```text
//! cargo bench -p balsa-raft --bench throughput                       # batches 64, 256, 1024
//! cargo bench -p balsa-raft --bench throughput -- --batch 256 --entries 5000000
//! cargo bench -p balsa-raft --bench throughput -- --batch 64,1024 --payload alloc
//! ```
//!
//! Run without any argument (as `cargo test --benches` does) it makes a short smoke run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use balsa_raft::{
    Config, EntryKind, Index, InitialState, Membership, Message, NodeId, Raft, Role, Snapshot, SnapshotMeta,
    Term,
};
use bytes::Bytes;

const NODES: u64 = 3;
const PAYLOAD_BYTES: usize = 64;
const TARGET_PER_CPU_SECOND: f64 = 1_000_000.0;

const USAGE: &str = "\
usage: throughput [--batch N[,N...]] [--entries N] [--window N] [--compact-every N]
                  [--tick-every N] [--payload shared|alloc|static]

  --batch          entries per propose_batch call; a list runs one measurement each
                   (default 64,256,1024)
  --entries        entries to commit per measurement (default 5000000)
  --window         batches proposed and not yet applied at the leader (default 4)
  --compact-every  applied entries between snapshots on each server (default 16384)
  --tick-every     driver rounds between ticks of every server; 0 = never (default 100)
  --payload        how each 64-byte command is made: `shared` slices one buffer (a refcount
                   bump, like commands decoded from a receive buffer), `alloc` allocates and
                   fills a buffer per command, `static` points at a constant (default shared)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    Shared,
    Alloc,
    Static,
}

#[derive(Clone, Debug)]
struct Options {
    batches: Vec<usize>,
    entries: u64,
    window: usize,
    compact_every: u64,
    tick_every: u64,
    payload: Payload,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batches: vec![64, 256, 1024],
            entries: 5_000_000,
            window: 4,
            compact_every: 16_384,
            tick_every: 100,
            payload: Payload::Shared,
        }
    }
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    if args.is_empty() {
        // Not started by `cargo bench` (which passes --bench): `cargo test --benches` or a bare
        // run. Keep it short; it only shows that the benchmark still works.
        opts.entries = 20_000;
        return Ok(opts);
    }
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{name} needs a value"));
        match name {
            // cargo bench passes --bench to harness = false targets; there is nothing to filter.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            "--batch" => {
                opts.batches = value()?.split(',').map(parse_count).collect::<Result<Vec<_>, _>>()?;
            }
            "--entries" => opts.entries = parse_count(&value()?)? as u64,
            "--window" => opts.window = parse_count(&value()?)?,
            "--compact-every" => opts.compact_every = parse_count(&value()?)? as u64,
            "--tick-every" => {
                let v = value()?;
                opts.tick_every = v.parse().map_err(|_| format!("not a number: {v}"))?;
            }
            "--payload" => {
                opts.payload = match value()?.as_str() {
                    "shared" => Payload::Shared,
                    "alloc" => Payload::Alloc,
                    "static" => Payload::Static,
                    other => return Err(format!("unknown payload kind: {other}")),
                }
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(opts)
}

/// A positive count; `_` separators and k/m suffixes allowed (`5m`, `5_000_000`).
fn parse_count(s: &str) -> Result<usize, String> {
    let t = s.trim().replace('_', "").to_ascii_lowercase();
    let (digits, scale) = match t.strip_suffix('k') {
        Some(d) => (d, 1_000),
        None => match t.strip_suffix('m') {
            Some(d) => (d, 1_000_000),
            None => (t.as_str(), 1),
        },
    };
    match digits.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * scale),
        _ => Err(format!("not a positive count: {s}")),
    }
}

// ----- CPU time --------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CpuClock {
    /// Sum of `/proc/self/task/*/schedstat` run times, in nanoseconds.
    Schedstat,
    /// `utime + stime` of `/proc/self/stat`, in clock ticks of 10 ms.
    Stat,
}

impl CpuClock {
    fn detect() -> Option<Self> {
        // The kernel folds a running task's time into schedstat only at scheduler events (so a
        // reading may lag by up to one scheduler tick), and a kernel without CONFIG_SCHED_INFO
        // shows zeros. Spin briefly until a working schedstat shows some time.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            if read_schedstat().is_some_and(|d| d > Duration::ZERO) {
                return Some(Self::Schedstat);
            }
            std::hint::spin_loop();
        }
        read_stat().map(|_| Self::Stat)
    }

    fn now(self) -> Duration {
        match self {
            Self::Schedstat => read_schedstat(),
            Self::Stat => read_stat(),
        }
        .expect("the CPU clock worked when detected")
    }

    fn name(self) -> &'static str {
        match self {
            Self::Schedstat => "schedstat, ns",
            Self::Stat => "/proc/self/stat, 10 ms ticks",
        }
    }
}

fn read_schedstat() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

fn read_stat() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain numbers. utime and
    // stime are fields 14 and 15, i.e. the 12th and 13th after the closing parenthesis.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ, the unit of these fields, is 100 on every Linux architecture that Rust supports.
    Some(Duration::from_millis((utime + stime) * 10))
}

// ----- the cluster -----------------------------------------------------------------------------

/// One server and what its driver keeps: the durable positions and the applied count.
struct Node {
    raft: Raft,
    /// Last entry "written": index and term.
    stored_last: (Index, Term),
    /// Bytes of entries written, as a log writer would have serialized them.
    stored_bytes: u64,
    /// Index of the last applied entry.
    applied_index: Index,
    /// Term of that entry, for the snapshot's metadata.
    applied_term: Term,
    /// Normal (client) entries applied.
    applied_normal: u64,
    /// Index of the last snapshot taken.
    snapshot_index: Index,
}

struct Cluster {
    nodes: Vec<Node>,
    /// Messages in flight, delivered at the end of each round.
    net: Vec<Message>,
    /// Spare buffer swapped with `net` during delivery.
    delivering: Vec<Message>,
    membership: Membership,
    messages_delivered: u64,
    readies: u64,
    snapshots: u64,
    /// Longest in-memory log (last index - snapshot index) seen on any server.
    max_log_len: u64,
}

impl Cluster {
    fn new() -> Self {
        let membership = Membership::new(1..=NODES);
        let nodes = (1..=NODES)
            .map(|id| {
                let initial = InitialState { membership: membership.clone(), ..Default::default() };
                let raft = Raft::new(Config::new(id), initial).expect("default config is valid");
                Node {
                    raft,
                    stored_last: (0, 0),
                    stored_bytes: 0,
                    applied_index: 0,
                    applied_term: 0,
                    applied_normal: 0,
                    snapshot_index: 0,
                }
            })
            .collect();
        Self {
            nodes,
            net: Vec::new(),
            delivering: Vec::new(),
            membership,
            messages_delivered: 0,
            readies: 0,
            snapshots: 0,
            max_log_len: 0,
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn leader(&self) -> Option<NodeId> {
        let mut leaders = self.nodes.iter().filter(|n| n.raft.role() == Role::Leader);
        match (leaders.next(), leaders.next()) {
            (Some(one), None) => Some(one.raft.id()),
            _ => None,
        }
    }

    fn tick(&mut self) {
        for n in &mut self.nodes {
            n.raft.tick();
        }
    }

    /// Carries out every Ready of every server, then delivers the messages they produced.
    /// Returns whether anything happened.
    fn round(&mut self) -> bool {
        let mut busy = false;
        for i in 0..self.nodes.len() {
            while self.nodes[i].raft.has_ready() {
                self.handle_ready(i);
                busy = true;
            }
        }
        busy |= !self.net.is_empty();
        self.deliver();
        busy
    }

    fn handle_ready(&mut self, i: usize) {
        self.readies += 1;
        let node = &mut self.nodes[i];
        let mut ready = node.raft.ready();
        // 1. Ungated messages leave at once.
        self.net.append(&mut ready.messages);
        // 2. "Write" the batch: a log writer reads each entry; nothing is kept.
        let persist = std::mem::take(&mut ready.persist);
        if let Some(snapshot) = &persist.snapshot {
            // Never expected here (the leader compacts behind its followers), but honour it.
            node.applied_index = snapshot.meta.last_included_index;
            node.applied_term = snapshot.meta.last_included_term;
            node.snapshot_index = snapshot.meta.last_included_index;
        }
        for e in &persist.entries {
            node.stored_bytes += e.size_bytes() as u64;
        }
        if let Some(last) = persist.entries.last() {
            node.stored_last = (last.index, last.term);
        }
        let receipt = persist.durable();
        // 3. Acknowledgements and votes leave once durable.
        self.net.extend(ready.gated_messages.release(&receipt));
        // 4. Apply.
        if let Some(last) = ready.committed_entries.last() {
            node.applied_index = last.index;
            node.applied_term = last.term;
        }
        node.applied_normal +=
            ready.committed_entries.iter().filter(|e| e.kind == EntryKind::Normal).count() as u64;
        // 5. Advance.
        node.raft.advance(receipt);
    }

    fn deliver(&mut self) {
        std::mem::swap(&mut self.net, &mut self.delivering);
        let mut batch = std::mem::take(&mut self.delivering);
        self.messages_delivered += batch.len() as u64;
        for m in batch.drain(..) {
            let to = m.to;
            self.node(to).raft.step(m).expect("message addressed to a member");
        }
        self.delivering = batch;
    }

    /// Takes a snapshot on every server that applied `every` entries since its last one. The
    /// leader keeps every entry a follower still lacks, so no follower needs a snapshot.
    fn maybe_compact(&mut self, every: u64) {
        let leader_floor = self.leader().map(|l| {
            let leader = &self.nodes[(l - 1) as usize].raft;
            (1..=NODES)
                .filter(|&id| id != l)
                .filter_map(|id| leader.progress(id))
                .map(|p| p.match_index)
                .min()
        });
        for node in &mut self.nodes {
            let status = node.raft.status();
            self.max_log_len = self.max_log_len.max(status.last_index - status.snapshot_index);
            let mut index = node.applied_index;
            if node.raft.role() == Role::Leader {
                if let Some(Some(floor)) = leader_floor {
                    index = index.min(floor);
                }
            }
            if index < node.snapshot_index + every {
                continue;
            }
            let term = if index == node.applied_index {
                node.applied_term
            } else {
                node.raft.term_at(index).expect("entry above the snapshot is in the log")
            };
            let meta = SnapshotMeta {
                last_included_index: index,
                last_included_term: term,
                membership: self.membership.clone(),
            };
            node.raft
                .snapshot_taken(Snapshot { meta, data: Bytes::new().into() })
                .expect("snapshot accepted");
            node.snapshot_index = index;
            self.snapshots += 1;
        }
    }
}

// ----- one measurement -------------------------------------------------------------------------

struct Outcome {
    committed: u64,
    cpu: Duration,
    wall: Duration,
    rounds: u64,
    messages: u64,
    readies: u64,
    snapshots: u64,
    max_log_len: u64,
    bytes_written: u64,
}

fn elect(cluster: &mut Cluster) -> Result<NodeId, String> {
    for _ in 0..1_000 {
        cluster.tick();
        while cluster.round() {}
        if let Some(leader) = cluster.leader() {
            // Wait until the leader's no-op is applied everywhere, so the cluster is quiet.
            let last = cluster.node(leader).raft.status().last_index;
            if cluster.nodes.iter().all(|n| n.applied_index == last) {
                return Ok(leader);
            }
        }
    }
    Err("no leader after 1000 ticks".to_string())
}

fn run(opts: &Options, batch: usize, clock: CpuClock) -> Result<Outcome, String> {
    let mut cluster = Cluster::new();
    let leader = elect(&mut cluster)?;
    let term = cluster.node(leader).raft.current_term();

    let shared = Bytes::from(vec![0xA5u8; PAYLOAD_BYTES * 1024]);
    static CONSTANT: [u8; PAYLOAD_BYTES] = [0x5A; PAYLOAD_BYTES];
    let make = |seq: u64| -> Bytes {
        match opts.payload {
            Payload::Shared => {
                let at = (seq as usize % 1024) * PAYLOAD_BYTES;
                shared.slice(at..at + PAYLOAD_BYTES)
            }
            Payload::Alloc => Bytes::from(vec![seq as u8; PAYLOAD_BYTES]),
            Payload::Static => Bytes::from_static(&CONSTANT),
        }
    };

    let total = opts.entries;
    let window = (opts.window * batch) as u64;
    let base_applied = cluster.node(leader).applied_normal;
    let (base_messages, base_readies) = (cluster.messages_delivered, cluster.readies);
    let mut proposed = 0u64;
    let mut rounds = 0u64;
    let (mut last_applied, mut idle_rounds) = (0u64, 0u64);

    let cpu_start = clock.now();
    let wall_start = Instant::now();
    loop {
        let applied = cluster.node(leader).applied_normal - base_applied;
        if applied >= total {
            break;
        }
        if proposed < total && proposed - applied < window {
            let n = (batch as u64).min(total - proposed);
            let first = proposed;
            let node = &mut cluster.node(leader).raft;
            node.propose_batch((first..first + n).map(&make)).map_err(|e| format!("propose: {e}"))?;
            proposed += n;
        }
        cluster.round();
        rounds += 1;
        if opts.tick_every > 0 && rounds.is_multiple_of(opts.tick_every) {
            cluster.tick();
        }
        cluster.maybe_compact(opts.compact_every);
        let now_leader = cluster.node(leader);
        if now_leader.raft.role() != Role::Leader || now_leader.raft.current_term() != term {
            return Err(format!("leader {leader} lost leadership after {rounds} rounds"));
        }
        if applied == last_applied {
            idle_rounds += 1;
            if idle_rounds > 10_000 {
                return Err(format!("nothing applied for {idle_rounds} rounds (at {applied})"));
            }
        } else {
            (last_applied, idle_rounds) = (applied, 0);
        }
    }
    let cpu = clock.now().saturating_sub(cpu_start);
    let wall = wall_start.elapsed();

    // Let the followers catch up, then check every server applied the same entries.
    while cluster.round() {}
    let leader_status = cluster.node(leader).raft.status();
    for n in &cluster.nodes {
        let s = n.raft.status();
        if s.commit_index != leader_status.commit_index || n.applied_index != leader_status.last_applied {
            return Err(format!("server {} diverged: {s:?} vs leader {leader_status:?}", s.id));
        }
        if n.applied_normal != cluster.nodes[(leader - 1) as usize].applied_normal {
            return Err(format!("server {} applied a different number of commands", s.id));
        }
        if n.stored_last.0 != s.last_index {
            return Err(format!(
                "server {} wrote up to {:?}, log ends at {}",
                s.id, n.stored_last, s.last_index
            ));
        }
    }

    let outcome = Outcome {
        committed: cluster.node(leader).applied_normal - base_applied,
        cpu,
        wall,
        rounds,
        messages: cluster.messages_delivered - base_messages,
        readies: cluster.readies - base_readies,
        snapshots: cluster.snapshots,
        max_log_len: cluster.max_log_len,
        bytes_written: cluster.nodes.iter().map(|n| n.stored_bytes).sum(),
    };
    Ok(outcome)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("throughput: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("note: built with debug assertions; use `cargo bench` for meaningful figures");
    }
    let Some(clock) = CpuClock::detect() else {
        eprintln!("throughput: cannot read the process CPU time from /proc");
        return ExitCode::FAILURE;
    };
    let mut below_target = false;
    for &batch in &opts.batches {
        let o = match run(&opts, batch, clock) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("throughput: batch {batch}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let secs = o.cpu.as_secs_f64();
        let rate = if secs > 0.0 { o.committed as f64 / secs } else { f64::INFINITY };
        below_target |= rate < TARGET_PER_CPU_SECOND;
        println!(
            "raft-core: {NODES} nodes, batch {batch} x {PAYLOAD_BYTES} B: {rate:.0} entries/s of CPU \
             ({} entries in {secs:.3} s)",
            o.committed
        );
        println!(
            "           {:.0} ns of CPU per entry, wall {:.3} s; {} rounds, {:.1} messages and {:.1} \
             readies per batch; {} snapshots, longest log {} entries; {:.1} MB written by {NODES} servers",
            secs * 1e9 / o.committed as f64,
            o.wall.as_secs_f64(),
            o.rounds,
            o.messages as f64 * batch as f64 / o.committed as f64,
            o.readies as f64 * batch as f64 / o.committed as f64,
            o.snapshots,
            o.max_log_len,
            o.bytes_written as f64 / 1e6,
        );
    }
    println!(
        "(CPU time from {}; payload {:?}; window {} batches; snapshot every {} entries; \
         tick every {} rounds; target {TARGET_PER_CPU_SECOND:.0} entries/s: {})",
        clock.name(),
        opts.payload,
        opts.window,
        opts.compact_every,
        opts.tick_every,
        if below_target { "NOT met" } else { "met" }
    );
    ExitCode::SUCCESS
}
