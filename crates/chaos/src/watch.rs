//! The watch workload: watchers on the register keys from revision 1, resuming across faults
//! (the client re-creates a broken watch from the next revision it has not seen). At the end,
//! every watcher must have seen every revision of those keys exactly once, in order: the same
//! events as every other watcher, every acknowledged write at its revision, and nothing that
//! no client ever wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use balsa_client::{Client, EventKind, WatchOptions};
use tokio::sync::watch;

use crate::register::{Written, PREFIX};

/// One event as a watcher saw it: (revision, key, value; `None` for a delete).
pub type Seen = (i64, String, Option<String>);

/// Watches the register keys from revision 1 until it has seen an event at `until` (sent once
/// the run is over) or `limit` passes after that. Returns what it saw, or why it stopped.
pub async fn watcher(
    client: Client,
    mut until: watch::Receiver<Option<i64>>,
    limit: Duration,
) -> (Vec<Seen>, Option<String>) {
    let mut seen = Vec::new();
    let mut w = match client.watch(PREFIX, WatchOptions::new().prefix().start_revision(1)).await {
        Ok(w) => w,
        Err(e) => return (seen, Some(format!("could not start: {e}"))),
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let target = *until.borrow();
        if let Some(t) = target {
            if seen.last().is_some_and(|(r, _, _): &Seen| *r >= t) || t == 0 {
                return (seen, None);
            }
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
        }
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = w.next() => match event {
                Ok(e) => {
                    let value = (e.kind == EventKind::Put).then(|| String::from_utf8_lossy(&e.kv.value).into_owned());
                    seen.push((e.revision(), String::from_utf8_lossy(&e.kv.key).into_owned(), value));
                }
                Err(e) => return (seen, Some(format!("the watch ended: {e}"))),
            },
            _ = until.changed() => {}
            _ = wait => {
                let last = seen.last().map_or(0, |s| s.0);
                return (seen, Some(format!("saw up to revision {last}, not {target:?}, within {limit:?} of the end")));
            }
        }
    }
}

/// The checks over every watcher's events; returns the anomalies.
pub fn check(
    watchers: &[(Vec<Seen>, Option<String>)],
    acked: &[Written],
    attempted: &[(String, String)],
) -> Vec<String> {
    let mut anomalies = Vec::new();
    let written: BTreeSet<(&str, &str)> = attempted.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (i, (seen, stopped)) in watchers.iter().enumerate() {
        if let Some(why) = stopped {
            anomalies.push(format!("watcher {i}: {why}"));
        }
        // In order, each once: revisions strictly increase (a register write touches one key).
        for pair in seen.windows(2) {
            if pair[1].0 <= pair[0].0 {
                anomalies.push(format!(
                    "watcher {i}: revision {} after {} (out of order or repeated)",
                    pair[1].0, pair[0].0
                ));
                break;
            }
        }
        // Nothing invented.
        if let Some((rev, key, value)) = seen
            .iter()
            .find(|(_, k, v)| v.as_ref().is_some_and(|v| !written.contains(&(k.as_str(), v.as_str()))))
        {
            anomalies.push(format!("watcher {i}: {key}={value:?} at revision {rev} was never written"));
        }
        // Nothing acknowledged missed.
        let at: BTreeMap<i64, (&String, &Option<String>)> =
            seen.iter().map(|(r, k, v)| (*r, (k, v))).collect();
        let missing: Vec<&Written> =
            acked.iter().filter(|w| at.get(&w.revision) != Some(&(&w.key, &Some(w.value.clone())))).collect();
        if let Some(w) = missing.first() {
            anomalies.push(format!(
                "watcher {i}: {} acknowledged writes missing or different, e.g. {}={} at revision {} (saw {:?})",
                missing.len(),
                w.key,
                w.value,
                w.revision,
                at.get(&w.revision)
            ));
        }
    }
    // Every watcher saw the same history, over the revisions all of them covered.
    if let Some(shortest) = watchers.iter().map(|(s, _)| s.len()).min() {
        for (i, (seen, _)) in watchers.iter().enumerate().skip(1) {
            if seen[..shortest] != watchers[0].0[..shortest] {
                let at = (0..shortest).find(|&j| seen[j] != watchers[0].0[j]).unwrap_or(0);
                anomalies.push(format!(
                    "watchers 0 and {i} differ at event {at}: {:?} vs {:?}",
                    watchers[0].0[at], seen[at]
                ));
            }
        }
    }
    anomalies
}

/// A channel telling watchers the last revision to wait for.
pub fn target() -> (watch::Sender<Option<i64>>, watch::Receiver<Option<i64>>) {
    watch::channel(None)
}
