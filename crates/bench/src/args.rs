//! Command-line arguments. [`BenchArgs`] is a clap `Args` so that `balsa bench` can embed it as
//! a subcommand; `balsa-bench` parses it directly.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// `balsa-bench`: a load generator over etcd's v3 gRPC API.
#[derive(Parser, Debug)]
#[command(
    name = "balsa-bench",
    version,
    about = "Load generator over etcd's v3 gRPC API (balsa and etcd alike)"
)]
pub struct Cli {
    /// What to do.
    #[command(flatten)]
    pub args: BenchArgs,
}

/// Everything `balsa-bench` (and `balsa bench`) takes.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The workload, or another command.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// A workload to run, or a tool around the results.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Puts of random keys from the key space (or of every key in turn: `--sequential-keys`).
    Put(LoadFlags),
    /// Ranges of one random key: linearizable, or `--serializable`. Preloads the key space first.
    Get {
        /// Serializable reads (served by the member asked, without a ReadIndex round).
        #[arg(long)]
        serializable: bool,
        /// Skip writing every key of the key space before the run.
        #[arg(long)]
        no_preload: bool,
        /// The load.
        #[command(flatten)]
        load: LoadFlags,
    },
    /// Compare-and-swap: a transaction putting a key if its mod_revision is the one last seen
    /// (else reading it back, to learn the current one).
    Txn(LoadFlags),
    /// Watch fan-out: W watchers on the key prefix while the clients put; the latency reported is
    /// from each put's acknowledgement to each watcher's event.
    Watch {
        /// Watchers (each its own Watch stream), spread over `--connections` connections of their
        /// own (the writers' are apart).
        #[arg(long, default_value_t = 16)]
        watchers: usize,
        /// The load (the writers).
        #[command(flatten)]
        load: LoadFlags,
    },
    /// Appends to balsa's log streams (the `balsapb.Log` service; balsa only, etcd has none):
    /// each operation appends one record of `--value-size` bytes.
    LogAppend {
        /// The stream's name [default: the key prefix without its trailing `/`]. With
        /// `--streams N` above 1, the streams are NAME-0 .. NAME-(N-1).
        #[arg(long)]
        stream: Option<String>,
        /// Streams to spread the clients over (client i appends to stream i mod N).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        streams: u32,
        /// Retention of the streams the run creates, payload bytes per stream (0: no limit). The
        /// default keeps a run of minutes untrimmed while bounding what a long one holds.
        #[arg(long, default_value_t = DEFAULT_RETENTION_BYTES)]
        retention_bytes: u64,
        /// The load.
        #[command(flatten)]
        load: LoadFlags,
    },
    /// Prints the resident memory (VmRSS from /proc/PID/status) of server processes: the
    /// largest and the mean over them, in MiB; `--json` saves it for `table`.
    Memory {
        /// Comma-separated pids of the members.
        #[arg(long, value_delimiter = ',', required = true)]
        pids: Vec<u32>,
        /// Keys the servers hold (recorded with the figures; the load is not made here).
        #[arg(long, default_value_t = 0)]
        keys: u64,
        /// A name for the server under test (e.g. `etcd`, `balsa`).
        #[arg(long, default_value = "")]
        label: String,
        /// Write the result as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// A server implementing etcd's KV Put and Range that answers at once (no storage): the
    /// ceiling any server could reach with this client on this machine.
    Noop {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:2379")]
        listen: std::net::SocketAddr,
        /// Threads to serve on: 1 is a single-threaded runtime, as a balsa member serves its
        /// clients on one thread; without it, tokio's multi-threaded runtime on every core.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_024))]
        threads: Option<u32>,
    },
    /// Draws latency against throughput across JSON results, one line per label and workload.
    Chart {
        /// The SVG file to write.
        #[arg(long, value_name = "FILE.svg")]
        chart: PathBuf,
        /// JSON results (from `--json`).
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// Prints a side-by-side table of JSON results: baseline and candidate per workload, their
    /// ratio, and any other label (such as the no-op ceiling) below.
    Table {
        /// The label of the baseline (the left columns).
        #[arg(long, default_value = "etcd")]
        baseline: String,
        /// The label of the candidate (the right columns; ratio = candidate / baseline).
        #[arg(long, default_value = "balsa")]
        candidate: String,
        /// JSON results (from `--json`).
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// Judges issue 7's targets over rounds of `scripts/bench-vs-etcd`: every round's measure,
    /// the median, how many rounds met each bound, and the verdict on the median.
    Targets {
        /// The label of the baseline.
        #[arg(long, default_value = "etcd")]
        baseline: String,
        /// The label of the candidate.
        #[arg(long, default_value = "balsa")]
        candidate: String,
        /// Round directories, as the script writes them (JSON results, and the sweep's under
        /// `sweep/`).
        #[arg(required = true)]
        rounds: Vec<PathBuf>,
    },
}

/// The parameters every workload shares.
#[derive(Args, Debug, Clone)]
pub struct LoadFlags {
    /// Comma-separated `host:port` (or `http://host:port`) of the members; connections are
    /// spread over them in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Concurrent requests in flight (client tasks).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// gRPC connections (HTTP/2 channels), shared by the clients round-robin.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Threads the load generator runs on. With one (the default), the calls that become ready
    /// together are written to their connection together, as grpc-go's writer sends what is
    /// queued before it flushes; with more, tokio's multi-threaded runtime, whose other thread
    /// writes each call as soon as it is queued, for a machine where one core cannot keep up.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_024))]
    pub threads: u32,
    /// How many distinct keys the workload touches.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space: u64,
    /// Bytes per key, the prefix included (zero-padded key numbers fill the rest).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// The prefix of every key (the watch workload watches it).
    #[arg(long, default_value = "bench/")]
    pub prefix: String,
    /// How long to measure (after the warmup): `10s`, `500ms`, `2m`, or seconds.
    #[arg(long, value_parser = parse_duration, conflicts_with = "total")]
    pub duration: Option<Duration>,
    /// Measure this many operations instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub total: Option<u64>,
    /// Target operations per second (open loop; latency counted from each operation's intended
    /// send time). Without it the clients run closed-loop, each sending as soon as answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Load run before measuring, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw this result, with those of `--compare`, as an SVG chart of latency against throughput.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Earlier JSON results to draw beside this one in `--chart`.
    #[arg(long, value_name = "FILE", value_delimiter = ',')]
    pub compare: Vec<PathBuf>,
    /// A name for the server under test, kept in the JSON (e.g. `etcd`, `balsa`, `noop`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Comma-separated pids of the server processes: their CPU time during the measured part
    /// (from /proc/PID/stat) is reported per operation, summed.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Send everything to the leader: before the run, each endpoint's Maintenance.Status names
    /// the leader, and only the leader's endpoint is used (a request to a follower pays a hop
    /// more, so which endpoint comes first would otherwise decide a few-client run's latency).
    #[arg(long)]
    pub at_leader: bool,
    /// Take keys in order (0, 1, 2, ... shared by all clients) instead of at random: with
    /// `--total` equal to `--key-space` and no warmup, every key is written exactly once.
    #[arg(long)]
    pub sequential_keys: bool,
}

/// The default `--retention-bytes` of `log-append`: 1 GiB per stream.
pub const DEFAULT_RETENTION_BYTES: u64 = 1 << 30;

/// The default measured duration when neither `--duration` nor `--total` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Parses `10s`, `250ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 =
        number.trim().parse().map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use ms, s, m or h)")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (0 to 24h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("balsa-bench").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn put_with_every_flag() {
        let cli = parse(&[
            "put",
            "--endpoints",
            "127.0.0.1:1,http://127.0.0.1:2",
            "--clients",
            "256",
            "--connections",
            "4",
            "--key-space",
            "100",
            "--key-size",
            "12",
            "--value-size",
            "1024",
            "--duration",
            "3s",
            "--rate",
            "5000",
            "--warmup",
            "0s",
            "--json",
            "r.json",
            "--label",
            "etcd",
            "--pids",
            "10,11,12",
            "--at-leader",
        ])
        .unwrap();
        let BenchCommand::Put(load) = cli.args.command else { panic!("a put") };
        assert!(load.at_leader);
        assert_eq!(load.endpoints, ["127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!((load.clients, load.connections, load.key_space), (256, 4, 100));
        assert_eq!((load.key_size, load.value_size), (12, 1024));
        assert_eq!(load.duration, Some(Duration::from_secs(3)));
        assert_eq!(load.rate, Some(5000.0));
        assert_eq!(load.warmup, Duration::ZERO);
        assert_eq!(load.pids, [10, 11, 12]);
        assert_eq!(load.label, "etcd");
    }

    #[test]
    fn defaults_and_subcommand_options() {
        let cli = parse(&["get", "--serializable"]).unwrap();
        let BenchCommand::Get { serializable, no_preload, load } = cli.args.command else { panic!("a get") };
        assert!(serializable && !no_preload);
        assert_eq!((load.clients, load.connections, load.value_size, load.key_size), (64, 8, 256, 16));
        assert_eq!(load.duration, None);
        assert_eq!(load.warmup, Duration::from_secs(1));
        assert_eq!(load.threads, 1, "one thread unless asked: calls ready together leave together");
        let cli = parse(&["put", "--threads", "2"]).unwrap();
        let BenchCommand::Put(load) = cli.args.command else { panic!("a put") };
        assert_eq!(load.threads, 2);
        assert!(parse(&["put", "--threads", "0"]).is_err(), "no threads cannot run a load");
        let cli = parse(&["watch", "--watchers", "3", "--total", "50"]).unwrap();
        let BenchCommand::Watch { watchers, load } = cli.args.command else { panic!("a watch") };
        assert_eq!((watchers, load.total), (3, Some(50)));
    }

    #[test]
    fn log_append_and_memory_options() {
        let cli = parse(&["log-append", "--streams", "4", "--stream", "s", "--value-size", "100"]).unwrap();
        let BenchCommand::LogAppend { stream, streams, retention_bytes, load } = cli.args.command else {
            panic!("a log-append")
        };
        assert_eq!((stream.as_deref(), streams, retention_bytes), (Some("s"), 4, DEFAULT_RETENTION_BYTES));
        assert_eq!(load.value_size, 100);
        assert!(parse(&["log-append", "--streams", "0"]).is_err());
        let cli = parse(&["memory", "--pids", "1,2,3", "--keys", "1000000", "--label", "etcd"]).unwrap();
        let BenchCommand::Memory { pids, keys, label, json } = cli.args.command else { panic!("a memory") };
        assert_eq!((pids, keys, label.as_str(), json), (vec![1, 2, 3], 1_000_000, "etcd", None));
        assert!(parse(&["memory"]).is_err(), "memory needs pids");
        let cli = parse(&["put", "--sequential-keys"]).unwrap();
        let BenchCommand::Put(load) = cli.args.command else { panic!("a put") };
        assert!(load.sequential_keys);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["put", "--duration", "1s", "--total", "5"]).is_err(), "duration or total, not both");
        assert!(parse(&["put", "--clients", "0"]).is_err());
        assert!(parse(&["put", "--key-space", "0"]).is_err());
        assert!(parse(&["chart", "--chart", "x.svg"]).is_err(), "a chart needs results");
        assert!(parse(&["frobnicate"]).is_err());
    }
}
