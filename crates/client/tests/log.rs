//! Log streams through balsa-client against in-process nodes: the calls, typed errors, and a
//! subscription that resumes on a survivor after the member serving it is killed, with no gap
//! and no duplicate, while appends (in sessions) go on.

mod common;

use std::time::Duration;

use balsa_client::*;
use common::{connect, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_append_read_info_trim_delete() {
    let cluster = Cluster::start("log-calls", 1).await;
    let c = connect(&cluster).await;
    let info = c.log_create("orders", Retention::default()).await.unwrap();
    assert_eq!((info.stream.as_str(), info.end_offset), ("orders", 0));
    let a = c.log_append("orders", ["o-1", "o-2"]).await.unwrap();
    assert_eq!((a.first_offset, a.last_offset), (0, 1));
    let a = c.log_append("orders", [b"o-3".to_vec()]).await.unwrap();
    assert_eq!(a.first_offset, 2);
    let r = c.log_read("orders", 1, 0).await.unwrap();
    assert_eq!(r.records.iter().map(|r| r.data.as_slice()).collect::<Vec<_>>(), [b"o-2", b"o-3"]);
    assert_eq!((r.next_offset, r.end_offset), (3, 3));
    assert_eq!(c.log_list().await.unwrap().len(), 1);
    assert_eq!(c.log_info("orders").await.unwrap().records, 3);

    let t = c.log_trim("orders", 2).await.unwrap();
    assert_eq!(t.first_retained_offset, 2);
    assert_eq!(
        c.log_read("orders", 0, 0).await,
        Err(Error::Retention { stream: "orders".into(), offset: 0, first_available: 2 })
    );
    let mut sub = c.log_subscribe("orders", 0).await.map(|_| ()).err();
    if sub.is_none() {
        // The server may accept the subscription and end it with the error on the stream.
        let mut s = c.log_subscribe("orders", 0).await.unwrap();
        sub = s.next().await.err();
    }
    assert!(matches!(sub, Some(Error::Retention { first_available: 2, .. })), "{sub:?}");

    c.log_delete("orders").await.unwrap();
    assert!(matches!(c.log_info("orders").await, Err(Error::StreamNotFound(_))));
    assert!(matches!(c.log_append("orders", ["x"]).await, Err(Error::StreamNotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_on_a_survivor_with_no_gap_and_no_duplicate() {
    let mut cluster = Cluster::start("log-resume", 3).await;
    let c = connect(&cluster).await;
    c.log_create("events", Retention::default()).await.unwrap();
    // The subscriber goes through the leader (the client's first choice), which is killed.
    let mut sub = c.log_subscribe("events", 0).await.unwrap();
    let victim = cluster.leader().await;

    const N: u64 = 60;
    let writer = c.clone();
    let writes = tokio::spawn(async move {
        for i in 0..N {
            writer.log_append("events", [format!("e-{i}")]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut got = Vec::new();
    let collect = async {
        while (got.len() as u64) < N {
            let r = sub.next().await.unwrap();
            got.push(r);
            if got.len() as u64 == N / 3 {
                cluster.kill(victim).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(40), collect).await.expect("every record within 40 s");
    tokio::time::timeout(Duration::from_secs(20), writes).await.unwrap().unwrap();

    assert!(sub.resumed() >= 1, "the subscription resumed elsewhere");
    // Offsets 0..N, each once, each record once (appends in sessions: applied once).
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..N).collect::<Vec<_>>());
    let data: Vec<String> = got.iter().map(|r| String::from_utf8(r.data.clone()).unwrap()).collect();
    assert_eq!(data, (0..N).map(|i| format!("e-{i}")).collect::<Vec<_>>());
    assert_eq!(c.log_info("events").await.unwrap().end_offset, N, "no append applied twice");
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");
}
