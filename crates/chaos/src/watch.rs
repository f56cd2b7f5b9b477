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
        let wait = crate::history::sleep_until(deadline);
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
        // Nothing invented: every put is of a value some client wrote to that key, and there
        // are no deletes (the register clients never delete).
        let invented = |(_, k, v): &&Seen| match v {
            Some(v) => !written.contains(&(k.as_str(), v.as_str())),
            None => true,
        };
        if let Some((rev, key, value)) = seen.iter().find(invented) {
            let what = value.as_ref().map_or_else(|| "a delete".to_string(), |v| format!("{key}={v}"));
            anomalies.push(format!("watcher {i}: {what} of {key} at revision {rev}: no client asked for it"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: i64, key: &str, value: Option<&str>) -> Seen {
        (rev, key.to_string(), value.map(String::from))
    }

    fn written(key: &str, value: &str, revision: i64) -> Written {
        Written { key: key.into(), value: value.into(), revision }
    }

    /// Four writes (one never acknowledged, at revision 5, one never answered at 7), with other keys'
    /// revisions in between (the watched revisions need not be dense).
    fn clean() -> (Vec<Seen>, Vec<Written>, Vec<(String, String)>) {
        let events = vec![
            ev(2, "r/x", Some("c1-1")),
            ev(3, "r/y", Some("c2-1")),
            ev(5, "r/x", Some("c1-2")),
            ev(7, "r/y", Some("c3-9")),
            ev(9, "r/x", Some("c2-2")),
        ];
        let acked = vec![written("r/x", "c1-1", 2), written("r/y", "c2-1", 3), written("r/x", "c2-2", 9)];
        let attempted = [("r/x", "c1-1"), ("r/y", "c2-1"), ("r/x", "c1-2"), ("r/x", "c2-2"), ("r/y", "c3-9")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (events, acked, attempted)
    }

    fn run(watchers: Vec<Vec<Seen>>) -> Vec<String> {
        let (_, acked, attempted) = clean();
        let watchers: Vec<_> = watchers.into_iter().map(|w| (w, None)).collect();
        check(&watchers, &acked, &attempted)
    }

    /// Exactly one anomaly, mentioning every one of `words`.
    fn one(anomalies: &[String], words: &[&str]) {
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        for w in words {
            assert!(anomalies[0].contains(w), "{:?} does not mention {w:?}", anomalies[0]);
        }
    }

    #[test]
    fn clean_watchers_give_no_anomaly() {
        let (events, _, _) = clean();
        assert_eq!(run(vec![events.clone(), events.clone(), events]), Vec::<String>::new());
        // No watchers, or watchers that saw nothing while nothing was acknowledged: nothing to say.
        assert!(check(&[], &[], &[]).is_empty());
        assert!(check(&[(vec![], None)], &[], &[]).is_empty());
    }

    #[test]
    fn a_repeated_revision_is_caught() {
        let (mut events, _, _) = clean();
        events.insert(2, events[1].clone());
        let anomalies = run(vec![events]);
        assert!(anomalies.iter().any(|a| a.contains("watcher 0: revision 3 after 3")), "{anomalies:?}");
    }

    #[test]
    fn events_out_of_order_are_caught() {
        let (mut events, _, _) = clean();
        events.swap(1, 2);
        let anomalies = run(vec![events]);
        assert!(anomalies.iter().any(|a| a.contains("watcher 0: revision 3 after 5")), "{anomalies:?}");
    }

    #[test]
    fn a_missing_acknowledged_write_is_caught() {
        let (mut events, _, _) = clean();
        events.remove(1); // r/y=c2-1 at 3, acknowledged
        one(&run(vec![events]), &["watcher 0", "1 acknowledged writes missing", "r/y=c2-1 at revision 3"]);
    }

    #[test]
    fn an_acknowledged_write_at_another_revision_or_value_is_caught() {
        let (events, _, _) = clean();
        let mut moved = events.clone();
        moved[4].0 = 10; // r/x=c2-2 acknowledged at 9
        one(&run(vec![moved]), &["r/x=c2-2 at revision 9", "saw None"]);
        let mut changed = events;
        changed[0].2 = Some("c1-2".into()); // written, but not the value acknowledged at 2
        one(&run(vec![changed]), &["r/x=c1-1 at revision 2"]);
    }

    #[test]
    fn an_invented_value_is_caught() {
        let (mut events, _, _) = clean();
        events.push(ev(11, "r/x", Some("nobody")));
        one(
            &run(vec![events.clone()]),
            &["watcher 0", "r/x=nobody of r/x at revision 11: no client asked for it"],
        );
        // A value written to another key is invented on this one.
        events[5] = ev(11, "r/x", Some("c3-9"));
        one(&run(vec![events.clone()]), &["r/x=c3-9"]);
        // No client deletes: a delete is invented too.
        events[5] = ev(11, "r/x", None);
        one(&run(vec![events]), &["a delete of r/x at revision 11"]);
    }

    #[test]
    fn watchers_that_disagree_are_caught() {
        let (events, _, _) = clean();
        // The unacknowledged write at 5 seen by one watcher only.
        let mut other = events.clone();
        other.remove(2);
        one(&run(vec![events.clone(), other]), &["watchers 0 and 1 differ at event 2"]);
        // The same revisions, a different (but written) value.
        let mut other = events.clone();
        other[3].2 = Some("c2-1".into());
        one(&run(vec![events.clone(), events.clone(), other]), &["watchers 0 and 2 differ at event 3"]);
    }

    #[test]
    fn a_watcher_that_stopped_early_is_caught() {
        let (events, acked, attempted) = clean();
        // It says why it stopped.
        let watchers =
            vec![(events.clone(), None), (events[..3].to_vec(), Some("the watch ended: gone".into()))];
        let anomalies = check(&watchers, &acked, &attempted);
        assert!(anomalies.contains(&"watcher 1: the watch ended: gone".to_string()), "{anomalies:?}");
        // Even without a reason, it missed an acknowledged write.
        one(&run(vec![events.clone(), events[..3].to_vec()]), &["watcher 1", "r/x=c2-2 at revision 9"]);
    }
}
