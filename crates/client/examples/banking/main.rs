//! The banking example (deck 001): accounts, deposits, withdrawals, transfers and interest as
//! transactions over balsa-client. Start a cluster (`balsa dev`), then:
//!
//! ```sh
//! cargo run -p balsa-client --example banking -- 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
//! ```
//!
//! It opens accounts alice, bob and carol, deposits, withdraws, transfers from several tasks at
//! once, credits 1.5 % interest to every account in one transaction, and prints the balances and
//! the transfer journal.

mod bank;

use std::time::Duration;

use balsa_client::{Client, ClientOptions};
use bank::{Bank, BankError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:2379".into());
    let endpoints: Vec<&str> = arg.split(',').collect();
    let options = ClientOptions { retry_budget: Duration::from_secs(10), ..Default::default() };
    let client =
        tokio::time::timeout(Duration::from_secs(15), Client::connect(&endpoints, options)).await??;
    let bank = Bank::new(client.clone(), true).await?;

    for name in ["alice", "bob", "carol"] {
        bank.open(name, 0).await?;
    }
    bank.deposit("alice", 10_000).await?;
    bank.deposit("bob", 5_000).await?;
    bank.withdraw("bob", 500).await?;
    match bank.withdraw("carol", 100).await {
        Err(BankError::Insufficient { balance, .. }) => println!("carol cannot withdraw: balance {balance}"),
        other => println!("carol's withdrawal: {other:?}"),
    }

    // Three tasks transfer at once; conflicts are retried by each transfer.
    let tasks: Vec<_> = [("alice", "bob"), ("bob", "carol"), ("carol", "alice")]
        .into_iter()
        .map(|(from, to)| {
            let bank = bank.clone();
            tokio::spawn(async move {
                let mut done = 0;
                for _ in 0..10 {
                    match bank.transfer(from, to, 100).await {
                        Ok(_) => done += 1,
                        Err(BankError::Insufficient { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(done)
            })
        })
        .collect();
    for t in tasks {
        let done = t.await??;
        println!("a task made {done} transfers");
    }

    let at = bank.interest(150).await?;
    println!("interest credited at revision {at}");
    let (revision, balances) = bank.balances().await?;
    println!("balances at revision {revision}:");
    for (name, cents) in &balances {
        println!("  {name:<8} {:>6}.{:02}", cents / 100, cents % 100);
    }
    println!("total    {}", balances.values().sum::<i64>());
    let journal = bank.journal().await?;
    println!("journal: {} transfers", journal.len());
    client.close_sessions().await?;
    Ok(())
}
