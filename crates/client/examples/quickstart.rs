//! A tour of balsa-client against a running cluster:
//!
//! ```sh
//! cargo run --release -p balsa-cli --bin balsa -- dev          # three members on 2379, 22379, 32379
//! cargo run -p balsa-client --example quickstart               # in another terminal
//! BALSA_ENDPOINTS=127.0.0.1:2379 cargo run -p balsa-client --example quickstart
//! ```
//!
//! It registers a service under a lease kept alive in the background, swaps a config value with
//! a transaction, and watches the config prefix while it changes it.

use std::time::Duration;

use balsa_client::{
    Client, ClientOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};

#[tokio::main]
async fn main() -> balsa_client::Result<()> {
    let endpoints = std::env::var("BALSA_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379".into());
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let client = Client::connect(&endpoints, ClientOptions::default()).await?;
    println!("connected; the leader is at {:?}", client.leader_endpoint());

    // A registration that lives as long as this process renews it.
    let lease = client.lease_grant(5, 0).await?;
    client.put("services/quickstart", "127.0.0.1:8080", PutOptions::new().lease(lease.id)).await?;
    let keep_alive = client.lease_keep_alive(lease.id).await?;
    println!("registered under lease {:x} (TTL {} s)", lease.id, lease.ttl);

    // Watch the config prefix from now on, in a task of its own.
    let mut watcher = client.watch("config/", WatchOptions::new().prefix()).await?;
    let printer = tokio::spawn(async move {
        for _ in 0..3 {
            match watcher.next().await {
                Ok(e) => println!(
                    "  watch: {:?} {} = {} (revision {})",
                    e.kind,
                    String::from_utf8_lossy(&e.kv.key),
                    String::from_utf8_lossy(&e.kv.value),
                    e.revision()
                ),
                Err(e) => return eprintln!("  watch ended: {e}"),
            }
        }
    });

    // Compare-and-swap: only the first of two competing swaps from "blue" wins.
    client.put("config/color", "blue", PutOptions::new()).await?;
    for to in ["green", "red"] {
        let swap = Txn::new()
            .when([Compare::value("config/color", CompareOp::Equal, "blue")])
            .and_then([TxnOp::put("config/color", to, PutOptions::new())])
            .or_else([TxnOp::get("config/color", GetOptions::new())]);
        let r = client.txn(swap).await?;
        println!("swap blue -> {to}: {}", if r.succeeded { "done" } else { "someone was first" });
    }
    client.delete("config/", DeleteOptions::new().prefix()).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;

    let services = client.get("services/", GetOptions::new().prefix()).await?;
    println!("{} service(s) registered at revision {}", services.count, services.revision);
    drop(keep_alive); // stop renewing: the registration expires within the TTL
    client.lease_revoke(lease.id).await?; // or end it now
    Ok(())
}
