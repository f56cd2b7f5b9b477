//! No acknowledged write lost: after the heal, every write a client was told succeeded must be
//! in the keyspace's history at the revision it was given, with its value. The MVCC keeps every
//! revision (the runs never compact), so a read of the key at that revision answers exactly.

use std::sync::Arc;

use balsa_client::{Client, GetOptions};
use tokio::sync::Semaphore;

use crate::history::OP_LIMIT;
use crate::register::Written;

/// Reads in flight at once.
const PARALLEL: usize = 32;

/// The anomalies: writes missing or different at their revision, or reads that failed.
pub async fn check(client: &Client, writes: Vec<Written>) -> Vec<String> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for w in writes {
        let (client, permits) = (client.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            let read = tokio::time::timeout(OP_LIMIT, client.get(w.key.clone(), GetOptions::new().revision(w.revision)));
            let found = match read.await {
                Ok(Ok(r)) => r.kvs.into_iter().next(),
                Ok(Err(e)) => return Some(format!("lost-write check: reading {} at revision {}: {e}", w.key, w.revision)),
                Err(_) => return Some(format!("lost-write check: reading {} at revision {}: no answer", w.key, w.revision)),
            };
            let held = found.as_ref().map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision));
            (held.as_ref() != Some(&(w.value.clone(), w.revision))).then(|| {
                format!(
                    "acknowledged write lost: {}={} at revision {}; the key held {:?} (value, mod_revision) there",
                    w.key, w.value, w.revision, held
                )
            })
        });
    }
    let mut anomalies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some(a)) => anomalies.push(a),
            Ok(None) => {}
            Err(e) => anomalies.push(format!("lost-write check: a read task failed: {e}")),
        }
    }
    // One line per loss would drown the summary; keep the first few and the count.
    if anomalies.len() > 10 {
        let n = anomalies.len();
        anomalies.truncate(10);
        anomalies.push(format!("... {n} lost-write anomalies in all"));
    }
    anomalies
}
