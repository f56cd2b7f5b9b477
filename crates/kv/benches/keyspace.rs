//! The keyspace's speed: puts applied the way a server applies them (keys and values are slices
//! of shared payload chunks, in the order applied; the history kept, as etcd keeps it without
//! compaction), gets of random keys, and the snapshot of the result encoded as the driver does it,
//! a step at a time, side by side with its floor: a plain copy of the encoding into a fresh buffer
//! (which pays the page faults an encoding pays) and into one already touched.
//!
//! ```text
//! cargo bench -p balsa-kv --bench keyspace -- [--keys N] [--puts N] [--value-bytes N] [--runs N]
//! ```

use std::time::Instant;

use balsa_kv::{Command, PutRequest, StateMachine};
use bytes::{BufMut, Bytes, BytesMut};

struct Args {
    keys: u64,
    puts: u64,
    value_bytes: usize,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args { keys: 10_000, puts: 300_000, value_bytes: 256, runs: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{flag} N"));
        match flag.as_str() {
            "--keys" => a.keys = num(),
            "--puts" => a.puts = num(),
            "--value-bytes" => a.value_bytes = num() as usize,
            "--runs" => a.runs = num() as usize,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// A small deterministic generator (xorshift), so every run writes the same keys.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() {
    let a = args();
    let mut sm = StateMachine::default();
    let mut chunk = BytesMut::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    for _ in 0..a.puts {
        // Payload chunks of 64 KiB, as the server packs the commands it applies.
        if chunk.capacity() - chunk.len() < a.value_bytes + 32 {
            chunk = BytesMut::with_capacity(64 << 10);
        }
        let key = format!("bench/{:010}", next(&mut rng) % a.keys);
        chunk.put_slice(key.as_bytes());
        chunk.put_bytes(b'v', a.value_bytes);
        let packed: Bytes = chunk.split_to(chunk.len()).freeze();
        let put = PutRequest {
            key: packed.slice(..key.len()),
            value: packed.slice(key.len()..),
            ..Default::default()
        };
        sm.apply(&Command::Put(put)).expect("a put applies");
    }
    let apply_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut found = 0;
    for _ in 0..a.puts {
        let key = format!("bench/{:010}", next(&mut rng) % a.keys);
        let range = balsa_kv::KeyRange::single(Bytes::from(key));
        let get = balsa_kv::RangeRequest::of(range);
        found += sm.range(&get).expect("a get").kvs.len();
    }
    let get_secs = start.elapsed().as_secs_f64();
    println!(
        "apply {:.0} ns per put, get {:.0} ns per get ({found} found)",
        apply_secs * 1e9 / a.puts as f64,
        get_secs * 1e9 / a.puts as f64
    );
    let (mut best, mut best_fresh, mut best_touched) = (f64::MAX, f64::MAX, f64::MAX);
    let mut bytes = 0;
    for _ in 0..a.runs {
        let start = Instant::now();
        let mut encoder = sm.begin_snapshot(bytes);
        while !encoder.step(&sm, 1 << 20) {}
        let encoded = encoder.finish();
        let secs = start.elapsed().as_secs_f64();
        bytes = encoded.len();
        best = best.min(secs);
        let start = Instant::now();
        let mut copy = encoded.to_vec();
        best_fresh = best_fresh.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        copy.copy_from_slice(&encoded);
        best_touched = best_touched.min(start.elapsed().as_secs_f64());
    }
    println!(
        "keys {} puts {} value {} B: snapshot {:.1} MB encoded in {:.1} ms (best of {}), {:.0} MB/s, {:.0} ns per version",
        a.keys,
        a.puts,
        a.value_bytes,
        bytes as f64 / 1e6,
        best * 1e3,
        a.runs,
        bytes as f64 / 1e6 / best,
        best * 1e9 / a.puts as f64
    );
    println!(
        "floor: a plain copy of the encoding into a fresh buffer {:.1} ms, into a touched one {:.1} ms",
        best_fresh * 1e3,
        best_touched * 1e3
    );
}
