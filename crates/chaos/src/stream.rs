//! The log-stream workload: appenders add uniquely named records to one stream, subscribers
//! read it from offset 0 as it grows (resuming across faults). At the end the stream read back
//! in full must hold every acknowledged record at the offset it was given, no record twice, the
//! offsets dense from 0, each appender's acknowledged records in the order it appended them;
//! and every subscriber must have seen exactly that sequence.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use balsa_client::{Client, Retention};
use tokio::sync::watch;

use crate::history::{push, Counts, Shared, OP_LIMIT};

/// The stream's name.
pub const STREAM: &str = "chaos-log";

/// An acknowledged append: the record and the offset it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// `a{appender}-{seq}`.
    pub record: String,
    /// Its offset.
    pub offset: u64,
}

/// What the appenders record.
#[derive(Clone, Default)]
pub struct Recorded {
    /// Acknowledged appends.
    pub acked: Shared<Appended>,
    /// Every record any appender tried.
    pub attempted: Shared<String>,
    /// Outcome counts.
    pub counts: Shared<Counts>,
}

/// What a subscriber read: (offset, record) in order, and why it stopped early, if it did.
pub type SubscriberLog = (Vec<(u64, String)>, Option<String>);

/// Creates the stream with no retention limit (nothing may leave it during the run).
pub async fn create(client: &Client) -> Result<(), String> {
    let keep_all = Retention { bytes: Some(0), ms: Some(0) };
    client.log_create(STREAM, keep_all).await.map(|_| ()).map_err(|e| format!("creating the stream: {e}"))
}

/// One appender: runs until `stop`.
pub async fn appender(id: u64, client: Client, stop: Arc<AtomicBool>, rec: Recorded) {
    let mut counts = Counts::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let record = format!("a{id}-{seq}");
        push(&rec.attempted, record.clone());
        match tokio::time::timeout(OP_LIMIT, client.log_append(STREAM, [record.clone().into_bytes()])).await {
            Ok(Ok(a)) => {
                counts.ok += 1;
                push(&rec.acked, Appended { record, offset: a.first_offset });
            }
            _ => counts.unknown += 1,
        }
    }
    push(&rec.counts, counts);
}

/// Subscribes from offset 0 until it has read up to `until` (exclusive; sent at the end), or
/// `limit` passes after that.
pub async fn subscriber(
    client: Client,
    mut until: watch::Receiver<Option<u64>>,
    limit: Duration,
) -> SubscriberLog {
    let mut seen = Vec::new();
    let mut sub = match client.log_subscribe(STREAM, 0).await {
        Ok(s) => s,
        Err(e) => return (seen, Some(format!("could not subscribe: {e}"))),
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let target = *until.borrow();
        if let Some(t) = target {
            if seen.len() as u64 >= t {
                return (seen, None);
            }
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
        }
        let wait = crate::history::sleep_until(deadline);
        tokio::select! {
            r = sub.next() => match r {
                Ok(r) => seen.push((r.offset, String::from_utf8_lossy(&r.data).into_owned())),
                Err(e) => return (seen, Some(format!("the subscription ended: {e}"))),
            },
            _ = until.changed() => {}
            _ = wait => {
                let why = format!("read {} records, not {target:?}, within {limit:?} of the end", seen.len());
                return (seen, Some(why));
            }
        }
    }
}

/// Reads the whole stream (after the heal).
pub async fn read_all(client: &Client) -> Result<Vec<(u64, String)>, String> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = tokio::time::timeout(OP_LIMIT, client.log_read(STREAM, from, 1000))
            .await
            .map_err(|_| "reading the stream: no answer".to_string())?
            .map_err(|e| format!("reading the stream: {e}"))?;
        if page.first_retained_offset > 0 {
            return Err(format!(
                "the stream lost offsets below {} (it has no retention limit)",
                page.first_retained_offset
            ));
        }
        all.extend(page.records.iter().map(|r| (r.offset, String::from_utf8_lossy(&r.data).into_owned())));
        if page.next_offset >= page.end_offset {
            return Ok(all);
        }
        from = page.next_offset;
    }
}

/// The checks; returns the anomalies.
pub fn check(
    all: &[(u64, String)],
    acked: &[Appended],
    attempted: &[String],
    subscribers: &[SubscriberLog],
) -> Vec<String> {
    let mut anomalies = Vec::new();
    if let Some((i, (o, _))) = all.iter().enumerate().find(|(i, (o, _))| *o != *i as u64) {
        anomalies.push(format!("stream: offset {o} at position {i} (offsets must be dense from 0)"));
    }
    let mut first: BTreeMap<&str, u64> = BTreeMap::new();
    for (o, r) in all {
        if let Some(earlier) = first.insert(r, *o) {
            anomalies.push(format!("stream: record {r} at offsets {earlier} and {o} (duplicated)"));
        }
    }
    let tried: std::collections::BTreeSet<&str> = attempted.iter().map(String::as_str).collect();
    if let Some((o, r)) = all.iter().find(|(_, r)| !tried.contains(r.as_str())) {
        anomalies.push(format!("stream: record {r:?} at offset {o} was never appended"));
    }
    let lost: Vec<&Appended> =
        acked.iter().filter(|a| all.get(a.offset as usize).map(|(_, r)| r) != Some(&a.record)).collect();
    if let Some(a) = lost.first() {
        anomalies.push(format!(
            "stream: {} acknowledged appends lost or moved, e.g. {} acknowledged at offset {} (the stream has {:?} there)",
            lost.len(),
            a.record,
            a.offset,
            all.get(a.offset as usize)
        ));
    }
    // Each appender's acknowledged records in the order it appended them.
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for a in acked {
        let (who, seq) = a.record.split_once('-').unwrap_or((&a.record, "0"));
        let seq: u64 = seq.parse().unwrap_or(0);
        if let Some(&(prev_seq, prev_offset)) = last.get(who) {
            if seq > prev_seq && a.offset <= prev_offset {
                anomalies.push(format!(
                    "stream: {} at offset {} is before {who}'s earlier record at {prev_offset}",
                    a.record, a.offset
                ));
            }
        }
        last.insert(who, (seq, a.offset));
    }
    for (i, (seen, stopped)) in subscribers.iter().enumerate() {
        if let Some(why) = stopped {
            anomalies.push(format!("subscriber {i}: {why}"));
        }
        let n = seen.len().min(all.len());
        if seen[..n] != all[..n] {
            let at = (0..n).find(|&j| seen[j] != all[j]).unwrap_or(0);
            anomalies
                .push(format!("subscriber {i}: record {at} is {:?}, the stream has {:?}", seen[at], all[at]));
        }
        if seen.len() > all.len() {
            anomalies.push(format!(
                "subscriber {i}: saw {} records, the stream holds {}",
                seen.len(),
                all.len()
            ));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(o: u64, r: &str) -> (u64, String) {
        (o, r.to_string())
    }

    fn app(r: &str, offset: u64) -> Appended {
        Appended { record: r.into(), offset }
    }

    /// Two appenders; a1-2 was appended but its answer was lost, a2-2 never reached the stream.
    fn clean() -> (Vec<(u64, String)>, Vec<Appended>, Vec<String>) {
        let all = vec![rec(0, "a1-1"), rec(1, "a2-1"), rec(2, "a1-2"), rec(3, "a1-3")];
        let acked = vec![app("a1-1", 0), app("a2-1", 1), app("a1-3", 3)];
        let attempted = ["a1-1", "a2-1", "a1-2", "a2-2", "a1-3"].iter().map(|s| s.to_string()).collect();
        (all, acked, attempted)
    }

    fn run(all: &[(u64, String)], acked: &[Appended]) -> Vec<String> {
        let (_, _, attempted) = clean();
        check(all, acked, &attempted, &[(all.to_vec(), None)])
    }

    /// Some anomaly mentions every one of `words`.
    fn caught(anomalies: &[String], words: &[&str]) {
        assert!(
            anomalies.iter().any(|a| words.iter().all(|w| a.contains(w))),
            "no anomaly mentions all of {words:?}: {anomalies:?}"
        );
    }

    #[test]
    fn a_clean_stream_gives_no_anomaly() {
        let (all, acked, attempted) = clean();
        let subscribers = vec![(all.clone(), None), (all[..2].to_vec(), None), (vec![], None)];
        assert_eq!(check(&all, &acked, &attempted, &subscribers), Vec::<String>::new());
        assert!(check(&[], &[], &[], &[]).is_empty());
    }

    #[test]
    fn a_gap_in_the_offsets_is_caught() {
        let (mut all, _, _) = clean();
        all.remove(2); // offsets 0, 1, 3
        let anomalies = run(&all, &[app("a1-1", 0), app("a2-1", 1)]);
        assert_eq!(anomalies, vec!["stream: offset 3 at position 2 (offsets must be dense from 0)"]);
        let anomalies = run(&[rec(1, "a1-1")], &[]);
        caught(&anomalies, &["offset 1 at position 0"]);
    }

    #[test]
    fn a_duplicated_record_is_caught() {
        let (mut all, acked, _) = clean();
        all.push(rec(4, "a1-2"));
        assert_eq!(run(&all, &acked), vec!["stream: record a1-2 at offsets 2 and 4 (duplicated)"]);
    }

    #[test]
    fn an_invented_record_is_caught() {
        let (mut all, acked, _) = clean();
        all.push(rec(4, "a9-1"));
        assert_eq!(run(&all, &acked), vec!["stream: record \"a9-1\" at offset 4 was never appended"]);
    }

    #[test]
    fn a_lost_acknowledged_append_is_caught() {
        let (all, mut acked, _) = clean();
        // a1-3 acknowledged at 3, the stream ends before.
        let anomalies = run(&all[..3], &acked);
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        caught(
            &anomalies,
            &["1 acknowledged appends lost or moved", "a1-3 acknowledged at offset 3", "None"],
        );
        // a2-1 acknowledged at offset 2, where the stream has a1-2 (a2-1 is at 1).
        acked[1] = app("a2-1", 2);
        caught(&run(&all, &acked), &["a2-1 acknowledged at offset 2", "a1-2"]);
    }

    #[test]
    fn an_appender_out_of_order_is_caught() {
        // a1-3 acknowledged before a1-1 in the stream, each at its real offset.
        let all = vec![rec(0, "a1-3"), rec(1, "a2-1"), rec(2, "a1-1")];
        let acked = vec![app("a1-1", 2), app("a2-1", 1), app("a1-3", 0)];
        assert_eq!(run(&all, &acked), vec!["stream: a1-3 at offset 0 is before a1's earlier record at 2"]);
        // Another appender's order says nothing about a1's.
        let acked = vec![app("a2-1", 1), app("a1-1", 2)];
        assert!(run(&all, &acked).is_empty());
    }

    #[test]
    fn a_diverging_subscriber_is_caught() {
        let (all, acked, attempted) = clean();
        let mut swapped = all.clone();
        swapped[1].1 = "a1-2".into();
        swapped[2].1 = "a2-1".into();
        let subscribers = vec![(all.clone(), None), (swapped, None)];
        assert_eq!(
            check(&all, &acked, &attempted, &subscribers),
            vec!["subscriber 1: record 1 is (1, \"a1-2\"), the stream has (1, \"a2-1\")"]
        );
        // One record beyond the stream's end.
        let mut longer = all.clone();
        longer.push(rec(4, "a2-2"));
        let anomalies = check(&all, &acked, &attempted, &[(longer, None)]);
        assert_eq!(anomalies, vec!["subscriber 0: saw 5 records, the stream holds 4"]);
        // Stopped early, saying why.
        let anomalies =
            check(&all, &acked, &attempted, &[(all[..1].to_vec(), Some("read 1 records".into()))]);
        assert_eq!(anomalies, vec!["subscriber 0: read 1 records"]);
    }
}
