//! Group commit under concurrent appenders.

mod common;

use std::sync::Arc;

use balsa_storage::group::GroupCommitLog;
use balsa_storage::{StdFs, Wal, WalOptions};
use bytes::Bytes;
use common::TempDir;

#[test]
fn concurrent_appenders_share_syncs_and_lose_nothing() {
    let d = TempDir::new("group");
    let wal = Wal::open(StdFs, &d.0, WalOptions::with_segment_bytes(256 << 10), 0).unwrap();
    let log = Arc::new(GroupCommitLog::new(wal));
    let threads: Vec<_> = (0..16u8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..100u32)
                    .map(|i| log.append_durable(1, &[Bytes::from(vec![t; 1 + (i % 300) as usize])]).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut indexes: Vec<u64> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (1..=1600).collect::<Vec<_>>(), "every append got its own index");
    let (appends, syncs) = log.counters();
    assert_eq!(appends, 1600);
    assert!(syncs < appends, "appends were grouped: {syncs} syncs for {appends} appends");
    let log = Arc::try_unwrap(log).ok().unwrap();
    drop(log.into_inner());
    let wal = Wal::open(StdFs, &d.0, WalOptions::with_segment_bytes(256 << 10), 0).unwrap();
    assert_eq!(wal.last_index(), 1600);
    assert_eq!(wal.entries(1, 1600).unwrap().len(), 1600);
}
