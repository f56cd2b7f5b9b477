//! The client commands (`balsa put/get/del/txn/watch/lease/member/cluster status/snapshot
//! save`): each parses its flags, makes one call through balsa-client, and prints the answer —
//! lines for people by default, JSON with `-w json`. Errors are returned as messages; `main`
//! prints them and exits non-zero.

use std::time::Duration;

use balsa_client::{
    Client, ClientOptions, DeleteOptions, EventKind, GetOptions, GetResponse, KeyValue, LeaseState,
    PutOptions, Record, Retention, SortOrder, SortTarget, StreamInfo, Txn, TxnOpResponse, WatchOptions,
};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::txn_syntax;

/// Flags every client command takes (anywhere on the line).
#[derive(Args, Debug, Clone)]
pub struct ClientFlags {
    /// Members to talk to: comma-separated host:port or http://host:port.
    #[arg(
        long,
        env = "BALSA_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple", global = true)]
    pub write_out: Output,
    /// Give up on a call after this many seconds, retries across members included.
    #[arg(long = "timeout", default_value_t = 15, global = true)]
    pub timeout_secs: u64,
}

/// `-w`: for people, or for programs.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Lines for people (etcdctl's "simple").
    Simple,
    /// One JSON object (per event, for `watch`).
    Json,
}

impl ClientFlags {
    async fn connect(&self) -> Result<Client, String> {
        let budget = Duration::from_secs(self.timeout_secs.max(1));
        let options = ClientOptions {
            request_timeout: budget.min(Duration::from_secs(5)),
            retry_budget: budget,
            ..Default::default()
        };
        let endpoints: Vec<&str> = self.endpoints.iter().map(String::as_str).collect();
        Client::connect(&endpoints, options)
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.endpoints.join(",")))
    }

    fn json(&self) -> bool {
        self.write_out == Output::Json
    }
}

/// Which keys: the key, a range, a prefix, or from the key on.
#[derive(Args, Debug, Clone)]
pub struct Span {
    /// The key.
    pub key: String,
    /// Keys in [KEY, RANGE_END).
    pub range_end: Option<String>,
    /// Every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Every key from KEY on.
    #[arg(long, conflicts_with = "prefix")]
    pub from_key: bool,
}

/// `balsa get`.
#[derive(Args, Debug)]
pub struct GetFlags {
    #[command(flatten)]
    span: Span,
    /// Read as of this revision (0: now).
    #[arg(long = "rev", default_value_t = 0)]
    revision: i64,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Sort by key, version, create, modify or value.
    #[arg(long)]
    sort_by: Option<String>,
    /// ascend or descend (with --sort-by; default ascend).
    #[arg(long)]
    order: Option<String>,
    /// Print keys only.
    #[arg(long)]
    keys_only: bool,
    /// Print only the number of keys.
    #[arg(long)]
    count_only: bool,
    /// Print values only.
    #[arg(long)]
    print_value_only: bool,
    /// Read from the member asked, without the leader's confirmation (may be stale).
    #[arg(long)]
    serializable: bool,
    #[command(flatten)]
    client: ClientFlags,
}

/// `balsa lease ...`.
#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds; prints its id (hex).
    Grant {
        /// Seconds.
        ttl: i64,
    },
    /// Revoke a lease (its keys are deleted).
    Revoke {
        /// Lease id (hex).
        id: String,
    },
    /// Time left on a lease.
    Ttl {
        /// Lease id (hex).
        id: String,
        /// List the lease's keys too.
        #[arg(long)]
        keys: bool,
    },
    /// Renew a lease every TTL/3 until interrupted (or once, with --once).
    KeepAlive {
        /// Lease id (hex).
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// List live leases.
    List,
}

/// `balsa member ...`.
#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members.
    List,
    /// Add a member by its peer URLs (comma-separated).
    Add {
        /// The new member's peer URLs.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner (a voter is still added as a learner first and promoted once caught up).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (id in hex).
    Remove {
        /// Member id (hex).
        id: String,
    },
    /// Promote a learner to a voter (id in hex).
    Promote {
        /// Member id (hex).
        id: String,
    },
}

/// The client commands, as `main` dispatches them.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Attach to this lease (hex id).
        #[arg(long)]
        lease: Option<String>,
        /// Print the previous key-value.
        #[arg(long)]
        prev_kv: bool,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Read a key or a range.
    Get(GetFlags),
    /// Delete a key or a range; prints how many were deleted.
    Del {
        #[command(flatten)]
        span: Span,
        /// Print the deleted key-values.
        #[arg(long)]
        prev_kv: bool,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// A transaction: `--if 'value(k) = v' --then 'put k v2' --else 'get k'` (see the README).
    Txn {
        /// A condition: FIELD(KEY) OP VALUE, FIELD one of value, version, create, mod, lease; OP one
        /// of = != > <. All must hold.
        #[arg(long = "if")]
        conditions: Vec<String>,
        /// An operation run if every condition holds: put KEY VALUE | get KEY [--prefix] | del KEY [--prefix].
        #[arg(long = "then", allow_hyphen_values = true)]
        then_ops: Vec<String>,
        /// An operation run otherwise.
        #[arg(long = "else", allow_hyphen_values = true)]
        else_ops: Vec<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Print changes to a key or range as they happen (resumes across member failures).
    Watch {
        #[command(flatten)]
        span: Span,
        /// Start at this revision (replays history).
        #[arg(long = "rev", default_value_t = 0)]
        revision: i64,
        /// Print each event's previous value.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Leases: grant, revoke, ttl, keep-alive, list.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Members: list, add, remove, promote.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Log streams: create, append, read, tail, list, info, trim, delete.
    Log {
        #[command(subcommand)]
        command: LogCommand,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// The cluster as every endpoint sees it.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        client: ClientFlags,
    },
}

/// `balsa log ...`.
#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Create a stream (again with the same retention: no change).
    Create {
        /// The stream's name.
        stream: String,
        /// Keep at most this many payload bytes (0: no limit; default: the server's).
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Remove records older than this many milliseconds (0: no limit; default: the server's).
        #[arg(long)]
        retention_ms: Option<u64>,
    },
    /// Append records (each argument one record; none: one record per line of stdin). Exactly
    /// once, in a session.
    Append {
        /// The stream.
        stream: String,
        /// The records.
        records: Vec<String>,
    },
    /// Print records from an offset.
    Read {
        /// The stream.
        stream: String,
        /// The first offset.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many records (0: the server's limit, 1000).
        #[arg(long, default_value_t = 0)]
        max: u32,
    },
    /// Follow a stream: records from an offset, then as they are appended (resumes across
    /// member failures), until Ctrl-C or --count records.
    Tail {
        /// The stream.
        stream: String,
        /// The first offset (default: the current end, i.e. only new records).
        #[arg(long)]
        from: Option<u64>,
        /// Exit after this many records.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Every stream.
    List,
    /// One stream: offsets, size, retention.
    Info {
        /// The stream.
        stream: String,
    },
    /// Remove every record before an offset.
    Trim {
        /// The stream.
        stream: String,
        /// The first offset to keep.
        before: u64,
    },
    /// Delete a stream and its records.
    Delete {
        /// The stream.
        stream: String,
    },
}

/// `balsa cluster ...`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// A table of every endpoint's member: name, id, endpoint, role, term, commit, applied, lag
    /// (the leader's commit index minus the member's applied index).
    Status,
}

fn hex(s: &str, what: &str) -> Result<i64, String> {
    i64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| format!("{what} {s:?} is not a hex id"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key), "value": text(&kv.value), "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision, "version": kv.version, "lease": format!("{:x}", kv.lease),
    })
}

fn print_kvs(kvs: &[KeyValue], values_only: bool) {
    for kv in kvs {
        if !values_only {
            println!("{}", text(&kv.key));
        }
        println!("{}", text(&kv.value));
    }
}

fn get_json(r: &GetResponse) -> Value {
    json!({ "revision": r.revision, "count": r.count, "more": r.more, "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>() })
}

impl Span {
    fn get(&self, o: GetOptions) -> GetOptions {
        match (&self.range_end, self.prefix, self.from_key) {
            (_, true, _) => o.prefix(),
            (_, _, true) => o.from_key(),
            (Some(end), ..) => o.range_end(end.as_bytes()),
            _ => o,
        }
    }
    fn delete(&self, o: DeleteOptions) -> DeleteOptions {
        match (&self.range_end, self.prefix, self.from_key) {
            (_, true, _) => o.prefix(),
            (_, _, true) => o.from_key(),
            (Some(end), ..) => o.range_end(end.as_bytes()),
            _ => o,
        }
    }
}

/// Runs one client command.
pub async fn run(command: ClientCommand) -> Result<(), String> {
    match command {
        ClientCommand::Put { key, value, lease, prev_kv, client } => {
            let mut o = PutOptions::new();
            if let Some(l) = lease {
                o = o.lease(hex(&l, "lease")?);
            }
            if prev_kv {
                o = o.prev_kv();
            }
            let c = client.connect().await?;
            let r = c.put(key, value, o).await.map_err(|e| e.to_string())?;
            if client.json() {
                println!("{}", json!({ "revision": r.revision, "prev_kv": r.prev_kv.as_ref().map(kv_json) }));
            } else {
                println!("OK");
                print_kvs(r.prev_kv.as_slice(), false);
            }
            Ok(())
        }
        ClientCommand::Get(flags) => get(flags).await,
        ClientCommand::Del { span, prev_kv, client } => {
            let mut o = span.delete(DeleteOptions::new());
            if prev_kv {
                o = o.prev_kv();
            }
            let c = client.connect().await?;
            let r = c.delete(span.key.clone(), o).await.map_err(|e| e.to_string())?;
            if client.json() {
                let prev: Vec<Value> = r.prev_kvs.iter().map(kv_json).collect();
                println!("{}", json!({ "revision": r.revision, "deleted": r.deleted, "prev_kvs": prev }));
            } else {
                println!("{}", r.deleted);
                print_kvs(&r.prev_kvs, false);
            }
            Ok(())
        }
        ClientCommand::Txn { conditions, then_ops, else_ops, client } => {
            txn(conditions, then_ops, else_ops, client).await
        }
        ClientCommand::Watch { span, revision, prev_kv, count, client } => {
            watch(span, revision, prev_kv, count, client).await
        }
        ClientCommand::Lease { command, client } => lease(command, client).await,
        ClientCommand::Member { command, client } => member(command, client).await,
        ClientCommand::Log { command, client } => log(command, client).await,
        ClientCommand::Cluster { command: ClusterCommand::Status, client } => cluster_status(client).await,
    }
}

async fn get(f: GetFlags) -> Result<(), String> {
    let mut o = f.span.get(GetOptions::new()).revision(f.revision).limit(f.limit);
    if let Some(by) = &f.sort_by {
        let target = match by.to_ascii_lowercase().as_str() {
            "key" => SortTarget::Key,
            "version" => SortTarget::Version,
            "create" => SortTarget::Create,
            "modify" | "mod" => SortTarget::Mod,
            "value" => SortTarget::Value,
            other => return Err(format!("--sort-by {other:?}: one of key, version, create, modify, value")),
        };
        let order = match f.order.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("ascend") => SortOrder::Ascend,
            Some("descend") => SortOrder::Descend,
            Some(other) => return Err(format!("--order {other:?}: ascend or descend")),
        };
        o = o.sort(target, order);
    } else if f.order.is_some() {
        return Err("--order needs --sort-by".into());
    }
    if f.keys_only {
        o = o.keys_only();
    }
    if f.count_only {
        o = o.count_only();
    }
    if f.serializable {
        o = o.serializable();
    }
    let c = f.client.connect().await?;
    let r = c.get(f.span.key.clone(), o).await.map_err(|e| e.to_string())?;
    if f.client.json() {
        println!("{}", get_json(&r));
    } else if f.count_only {
        println!("{}", r.count);
    } else if f.keys_only {
        r.kvs.iter().for_each(|kv| println!("{}", text(&kv.key)));
    } else {
        print_kvs(&r.kvs, f.print_value_only);
    }
    Ok(())
}

async fn txn(
    conditions: Vec<String>,
    then_ops: Vec<String>,
    else_ops: Vec<String>,
    client: ClientFlags,
) -> Result<(), String> {
    let compares = conditions.iter().map(|c| txn_syntax::condition(c)).collect::<Result<Vec<_>, _>>()?;
    let then_ops = then_ops.iter().map(|o| txn_syntax::operation(o)).collect::<Result<Vec<_>, _>>()?;
    let else_ops = else_ops.iter().map(|o| txn_syntax::operation(o)).collect::<Result<Vec<_>, _>>()?;
    let c = client.connect().await?;
    let r = c
        .txn(Txn::new().when(compares).and_then(then_ops).or_else(else_ops))
        .await
        .map_err(|e| e.to_string())?;
    if client.json() {
        let ops: Vec<Value> = r.responses.iter().map(op_json).collect();
        println!("{}", json!({ "revision": r.revision, "succeeded": r.succeeded, "responses": ops }));
        return Ok(());
    }
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for op in &r.responses {
        println!();
        match op {
            TxnOpResponse::Put(_) => println!("OK"),
            TxnOpResponse::Get(g) => print_kvs(&g.kvs, false),
            TxnOpResponse::Delete(d) => println!("{}", d.deleted),
            TxnOpResponse::Txn(t) => println!("{}", if t.succeeded { "SUCCESS" } else { "FAILURE" }),
        }
    }
    Ok(())
}

fn op_json(op: &TxnOpResponse) -> Value {
    match op {
        TxnOpResponse::Put(p) => json!({ "put": { "revision": p.revision } }),
        TxnOpResponse::Get(g) => json!({ "get": get_json(g) }),
        TxnOpResponse::Delete(d) => json!({ "delete": { "deleted": d.deleted } }),
        TxnOpResponse::Txn(t) => json!({ "txn": { "succeeded": t.succeeded } }),
    }
}

async fn watch(
    span: Span,
    revision: i64,
    prev_kv: bool,
    count: Option<usize>,
    client: ClientFlags,
) -> Result<(), String> {
    let mut o = WatchOptions::new().start_revision(revision);
    if span.prefix {
        o = o.prefix();
    } else if span.from_key {
        o = o.range_end(vec![0]);
    } else if let Some(end) = &span.range_end {
        o = o.range_end(end.as_bytes());
    }
    if prev_kv {
        o = o.prev_kv();
    }
    let c = client.connect().await?;
    let mut w = c.watch(span.key.clone(), o).await.map_err(|e| e.to_string())?;
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let e = tokio::select! {
            e = w.next() => e.map_err(|e| e.to_string())?,
            _ = crate::shutdown_signal() => return Ok(()),
        };
        seen += 1;
        let kind = if e.kind == EventKind::Put { "PUT" } else { "DELETE" };
        if client.json() {
            let prev = e.prev_kv.as_ref().map(kv_json);
            println!(
                "{}",
                json!({ "type": kind, "revision": e.revision(), "kv": kv_json(&e.kv), "prev_kv": prev })
            );
        } else {
            println!("{kind}");
            println!("{}", text(&e.kv.key));
            if let Some(p) = &e.prev_kv {
                println!("{}", text(&p.value));
            }
            if e.kind == EventKind::Put {
                println!("{}", text(&e.kv.value));
            }
        }
    }
    Ok(())
}

fn stream_json(i: &StreamInfo) -> Value {
    json!({
        "stream": i.stream,
        "first_retained_offset": i.first_retained_offset,
        "end_offset": i.end_offset,
        "bytes": i.bytes,
        "records": i.records,
        "retention_bytes": i.retention_bytes,
        "retention_ms": i.retention_ms,
    })
}

fn print_stream(i: &StreamInfo) {
    let limit = |v: u64, unit: &str| if v == 0 { "none".to_string() } else { format!("{v} {unit}") };
    println!("stream: {}", i.stream);
    println!(
        "offsets: {}..{} ({} records, {} bytes)",
        i.first_retained_offset, i.end_offset, i.records, i.bytes
    );
    println!("retention: {}, {}", limit(i.retention_bytes, "bytes"), limit(i.retention_ms, "ms"));
}

fn record_json(r: &Record) -> Value {
    json!({ "offset": r.offset, "data": text(&r.data), "timestamp_ms": r.timestamp_ms })
}

fn print_record(r: &Record, json: bool) {
    if json {
        println!("{}", record_json(r));
    } else {
        println!("{}\t{}", r.offset, text(&r.data));
    }
}

async fn log(command: LogCommand, client: ClientFlags) -> Result<(), String> {
    let c = client.connect().await?;
    let json = client.json();
    let e = |e: balsa_client::Error| e.to_string();
    match command {
        LogCommand::Create { stream, retention_bytes, retention_ms } => {
            let i = c
                .log_create(&stream, Retention { bytes: retention_bytes, ms: retention_ms })
                .await
                .map_err(e)?;
            if json {
                println!("{}", stream_json(&i));
            } else {
                println!("stream {} created", i.stream);
            }
        }
        LogCommand::Append { stream, mut records } => {
            if records.is_empty() {
                use std::io::BufRead;
                for line in std::io::stdin().lock().lines() {
                    records.push(line.map_err(|e| format!("stdin: {e}"))?);
                }
            }
            if records.is_empty() {
                return Err("nothing to append: give records as arguments or on stdin".into());
            }
            let a = c.log_append(&stream, records).await.map_err(e)?;
            if json {
                println!("{}", json!({ "first_offset": a.first_offset, "last_offset": a.last_offset }));
            } else {
                println!("appended offsets {}..={}", a.first_offset, a.last_offset);
            }
        }
        LogCommand::Read { stream, from, max } => {
            let r = c.log_read(&stream, from, max).await.map_err(e)?;
            if json {
                let records: Vec<Value> = r.records.iter().map(record_json).collect();
                println!(
                    "{}",
                    json!({
                        "records": records,
                        "next_offset": r.next_offset,
                        "first_retained_offset": r.first_retained_offset,
                        "end_offset": r.end_offset,
                    })
                );
            } else {
                for rec in &r.records {
                    print_record(rec, false);
                }
            }
        }
        LogCommand::Tail { stream, from, count } => {
            let from = match from {
                Some(f) => f,
                None => c.log_info(&stream).await.map_err(e)?.end_offset,
            };
            let mut sub = c.log_subscribe(&stream, from).await.map_err(e)?;
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let r = tokio::select! {
                    r = sub.next() => r.map_err(e)?,
                    _ = crate::shutdown_signal() => return Ok(()),
                };
                seen += 1;
                print_record(&r, json);
            }
        }
        LogCommand::List => {
            let all = c.log_list().await.map_err(e)?;
            if json {
                println!("{}", json!({ "streams": all.iter().map(stream_json).collect::<Vec<_>>() }));
            } else {
                let mut rows =
                    vec![["STREAM", "FIRST", "END", "RECORDS", "BYTES"].map(String::from).to_vec()];
                for i in &all {
                    rows.push(vec![
                        i.stream.clone(),
                        i.first_retained_offset.to_string(),
                        i.end_offset.to_string(),
                        i.records.to_string(),
                        i.bytes.to_string(),
                    ]);
                }
                print!("{}", table(&rows));
            }
        }
        LogCommand::Info { stream } => {
            let i = c.log_info(&stream).await.map_err(e)?;
            if json {
                println!("{}", stream_json(&i));
            } else {
                print_stream(&i);
            }
        }
        LogCommand::Trim { stream, before } => {
            let i = c.log_trim(&stream, before).await.map_err(e)?;
            if json {
                println!("{}", stream_json(&i));
            } else {
                println!("stream {} now starts at offset {}", i.stream, i.first_retained_offset);
            }
        }
        LogCommand::Delete { stream } => {
            let i = c.log_delete(&stream).await.map_err(e)?;
            if json {
                println!("{}", stream_json(&i));
            } else {
                println!("stream {} deleted", i.stream);
            }
        }
    }
    Ok(())
}

async fn lease(command: LeaseCommand, client: ClientFlags) -> Result<(), String> {
    let c = client.connect().await?;
    let e = |e: balsa_client::Error| e.to_string();
    let json = client.json();
    match command {
        LeaseCommand::Grant { ttl } => {
            let g = c.lease_grant(ttl, 0).await.map_err(e)?;
            if json {
                println!("{}", json!({ "id": format!("{:x}", g.id), "ttl": g.ttl }));
            } else {
                println!("lease {:x} granted with TTL({}s)", g.id, g.ttl);
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = hex(&id, "lease")?;
            c.lease_revoke(id).await.map_err(e)?;
            if json {
                println!("{}", json!({ "id": format!("{id:x}"), "revoked": true }));
            } else {
                println!("lease {id:x} revoked");
            }
        }
        LeaseCommand::Ttl { id, keys } => {
            let id = hex(&id, "lease")?;
            let t = c.lease_time_to_live(id, keys).await.map_err(e)?;
            match (t, json) {
                (None, true) => println!("{}", json!({ "id": format!("{id:x}"), "ttl": -1 })),
                (None, false) => println!("lease {id:x} already expired"),
                (Some(t), true) => {
                    let keys: Vec<String> = t.keys.iter().map(|k| text(k)).collect();
                    println!(
                        "{}",
                        json!({ "id": format!("{id:x}"), "ttl": t.ttl, "granted_ttl": t.granted_ttl, "keys": keys })
                    )
                }
                (Some(t), false) => {
                    let mut line =
                        format!("lease {id:x} granted with TTL({}s), remaining({}s)", t.granted_ttl, t.ttl);
                    if keys {
                        let keys: Vec<String> = t.keys.iter().map(|k| text(k)).collect();
                        line += &format!(", attached keys([{}])", keys.join(" "));
                    }
                    println!("{line}");
                }
            }
        }
        LeaseCommand::KeepAlive { id, once } => keep_alive(&c, hex(&id, "lease")?, once, json).await?,
        LeaseCommand::List => {
            let ids = c.lease_list().await.map_err(e)?;
            if json {
                println!("{}", json!({ "leases": ids.iter().map(|i| format!("{i:x}")).collect::<Vec<_>>() }));
            } else {
                println!("found {} leases", ids.len());
                ids.iter().for_each(|i| println!("{i:x}"));
            }
        }
    }
    Ok(())
}

async fn keep_alive(c: &Client, id: i64, once: bool, json: bool) -> Result<(), String> {
    let say = |ttl: i64| {
        if json {
            println!("{}", json!({ "id": format!("{id:x}"), "ttl": ttl }));
        } else {
            println!("lease {id:x} keepalived with TTL({ttl})");
        }
    };
    if once {
        say(c.lease_keep_alive_once(id).await.map_err(|e| e.to_string())?);
        return Ok(());
    }
    let mut k = c.lease_keep_alive(id).await.map_err(|e| e.to_string())?;
    if let LeaseState::Alive { ttl } = k.state() {
        say(ttl);
    }
    tokio::select! {
        why = k.lost() => Err(why.to_string()),
        _ = crate::shutdown_signal() => Ok(()),
    }
}

async fn member(command: MemberCommand, client: ClientFlags) -> Result<(), String> {
    let c = client.connect().await?;
    let e = |e: balsa_client::Error| e.to_string();
    let (headline, members) = match command {
        MemberCommand::List => (None, c.member_list().await.map_err(e)?),
        MemberCommand::Add { peer_urls, learner } => {
            let (m, list) = c.member_add(&peer_urls, learner).await.map_err(e)?;
            let kind = if m.is_learner { "learner" } else { "member" };
            (Some(format!("added {kind} {:x} at {}", m.id, m.peer_ur_ls.join(","))), list)
        }
        MemberCommand::Remove { id } => {
            let id = hex(&id, "member")? as u64;
            (Some(format!("removed member {id:x}")), c.member_remove(id).await.map_err(e)?)
        }
        MemberCommand::Promote { id } => {
            let id = hex(&id, "member")? as u64;
            (Some(format!("promoted member {id:x}")), c.member_promote(id).await.map_err(e)?)
        }
    };
    if client.json() {
        let list: Vec<Value> = members
            .iter()
            .map(|m| {
                json!({ "id": format!("{:x}", m.id), "name": m.name, "peer_urls": m.peer_ur_ls,
                        "client_urls": m.client_ur_ls, "is_learner": m.is_learner })
            })
            .collect();
        println!("{}", json!({ "message": headline, "members": list }));
        return Ok(());
    }
    if let Some(h) = headline {
        println!("{h}");
    }
    let mut rows =
        vec![["ID", "NAME", "STATUS", "PEER URLS", "CLIENT URLS", "LEARNER"].map(String::from).to_vec()];
    for m in &members {
        let status = if m.name.is_empty() { "unstarted" } else { "started" };
        rows.push(vec![
            format!("{:x}", m.id),
            m.name.clone(),
            status.into(),
            m.peer_ur_ls.join(","),
            m.client_ur_ls.join(","),
            m.is_learner.to_string(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

async fn cluster_status(client: ClientFlags) -> Result<(), String> {
    let c = client.connect().await?;
    let rows = c.cluster_status().await.map_err(|e| e.to_string())?;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    if client.json() {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({ "name": r.name, "id": format!("{:x}", r.id), "endpoint": r.endpoint,
                        "role": r.role.map(|r| r.to_string()), "term": r.term, "commit": r.commit,
                        "applied": r.applied, "lag": r.lag, "error": r.error })
            })
            .collect();
        println!("{}", json!({ "members": list }));
        return Ok(());
    }
    let mut table_rows = vec![["NAME", "ID", "ENDPOINT", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]
        .map(String::from)
        .to_vec()];
    for r in &rows {
        if let Some(err) = &r.error {
            table_rows.push(vec!["-".into(), "-".into(), r.endpoint.clone(), format!("unreachable: {err}")]);
            continue;
        }
        table_rows.push(vec![
            r.name.clone(),
            format!("{:x}", r.id),
            r.endpoint.clone(),
            r.role.map_or("-".into(), |r| r.to_string()),
            r.term.to_string(),
            r.commit.to_string(),
            r.applied.to_string(),
            opt(r.lag),
        ]);
    }
    print!("{}", table(&table_rows));
    Ok(())
}

/// Left-aligned columns, two spaces apart; the first row is the header. A short row (an
/// unreachable endpoint) lets its last cell run on.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter(|r| r.len() == columns)
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(
                |(i, cell)| {
                    if i + 1 == r.len() {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}", w = widths[i])
                    }
                },
            )
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// `balsa snapshot save FILE`.
pub async fn snapshot_save(file: &std::path::Path, client: ClientFlags) -> Result<(), String> {
    let c = client.connect().await?;
    let saved = c.snapshot_save(file).await.map_err(|e| e.to_string())?;
    if client.json() {
        println!("{}", json!({ "path": file.display().to_string(), "bytes": saved.bytes }));
    } else {
        println!("Snapshot saved at {} ({} bytes)", file.display(), saved.bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["A".to_string(), "LONG HEADER".into(), "C".into()],
            vec!["wide value".into(), "x".into(), "y".into()],
        ];
        assert_eq!(table(&rows), "A           LONG HEADER  C\nwide value  x            y\n");
    }
}
