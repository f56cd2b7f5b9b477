//! The banking example under fire: a three-member in-process cluster, six clients making random
//! transfers while the leader is killed once, and an auditor reading every account at one
//! revision throughout. Money is conserved exactly, no balance is ever negative, and every
//! acknowledged transfer is journaled once. Then deposits and interest: the total is what the
//! acknowledged operations say.

mod common;

#[path = "../examples/banking/bank.rs"]
mod bank;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use balsa_client::{Client, ClientOptions};
use bank::{Bank, BankError};
use common::Cluster;

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(2),
        retry_budget: Duration::from_secs(15),
        ..Default::default()
    }
}

async fn connect(cluster: &Cluster) -> Client {
    common::connect_with(cluster, options()).await
}

/// A tiny deterministic generator per task (no RNG dependency).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const ACCOUNTS: usize = 8;
const OPENING: i64 = 100_000; // cents: $1,000.00

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_conserve_money_across_a_leader_kill() {
    let mut cluster = Cluster::start("bank-transfers", 3).await;
    let setup = Bank::new(connect(&cluster).await, true).await.unwrap();
    let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("a{i}")).collect();
    for n in &names {
        assert!(setup.open(n, OPENING).await.unwrap());
    }
    let total = OPENING * ACCOUNTS as i64;

    let stop = Arc::new(AtomicBool::new(false));
    // Six clients, each with its own connection and sessions.
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let bank = Bank::new(connect(&cluster).await, true).await.unwrap();
        let (names, stop) = (names.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            let (mut acked, mut insufficient) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let from = rng.below(ACCOUNTS as u64) as usize;
                let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                let cents = 1 + rng.below(30_000) as i64;
                match bank.transfer(&names[from], &names[to], cents).await {
                    Ok(_) => acked += 1,
                    Err(BankError::Insufficient { .. }) => insufficient += 1,
                    Err(e) => panic!("worker {w}: transfer failed: {e}"),
                }
            }
            (acked, insufficient)
        }));
    }
    // The auditor: every read is at one revision; the total must hold at every one of them.
    let auditor = {
        let bank = Bank::new(connect(&cluster).await, false).await.unwrap();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut audits = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (revision, balances) = bank.balances().await.expect("the auditor reads");
                assert_eq!(balances.len(), ACCOUNTS);
                for (name, cents) in &balances {
                    assert!(*cents >= 0, "account {name} negative ({cents}) at revision {revision}");
                }
                assert_eq!(balances.values().sum::<i64>(), total, "total at revision {revision}");
                audits += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            audits
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.leader().await;
    cluster.kill(leader).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = 0;
    for w in workers {
        let (a, _) = tokio::time::timeout(Duration::from_secs(40), w).await.expect("workers stop").unwrap();
        acked += a;
    }
    let audits =
        tokio::time::timeout(Duration::from_secs(40), auditor).await.expect("auditor stops").unwrap();
    assert!(acked > 0, "some transfers were made");
    assert!(audits > 0, "the auditor read");

    let check = Bank::new(connect(&cluster).await, true).await.unwrap();
    let (_, balances) = check.balances().await.unwrap();
    assert_eq!(balances.values().sum::<i64>(), total, "money conserved exactly");
    assert!(balances.values().all(|c| *c >= 0));
    let journal = check.journal().await.unwrap();
    assert_eq!(journal.len() as u64, acked, "one journal record per acknowledged transfer");
    // Each transfer committed at its own revision: no record twice.
    let mut revisions: Vec<i64> = journal.iter().map(|t| t.revision).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), journal.len(), "no transfer journaled twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_and_interest_give_the_expected_total() {
    let cluster = Cluster::start("bank-interest", 3).await;
    let bank = Bank::new(connect(&cluster).await, false).await.unwrap();
    let names = ["ann", "ben", "cho", "dev"];
    for n in names {
        bank.open(n, 0).await.unwrap();
    }
    // Concurrent deposits from three clients; each acknowledged one is counted.
    let mut tasks = Vec::new();
    for t in 0..3u64 {
        let bank = Bank::new(connect(&cluster).await, false).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x1234_5678 ^ (t + 1));
            let mut deposited = std::collections::BTreeMap::<String, i64>::new();
            for _ in 0..20 {
                let name = names[rng.below(names.len() as u64) as usize];
                let cents = 1 + rng.below(10_000) as i64;
                bank.deposit(name, cents).await.unwrap();
                *deposited.entry(name.to_string()).or_default() += cents;
            }
            deposited
        }));
    }
    let mut expected = std::collections::BTreeMap::<String, i64>::new();
    for t in tasks {
        for (name, cents) in t.await.unwrap() {
            *expected.entry(name).or_default() += cents;
        }
    }
    if expected.get("ann").copied().unwrap_or(0) > 0 {
        bank.withdraw("ann", 1).await.unwrap();
        *expected.get_mut("ann").unwrap() -= 1;
    }
    assert!(matches!(bank.withdraw("ben", i64::MAX / 2).await, Err(BankError::Insufficient { .. })));

    let at = bank.interest(250).await.unwrap();
    let (revision, balances) = bank.balances().await.unwrap();
    assert!(revision >= at);
    let want: i64 = names
        .iter()
        .map(|n| {
            let c = expected.get(*n).copied().unwrap_or(0);
            c + c * 250 / 10_000
        })
        .sum();
    assert_eq!(balances.values().sum::<i64>(), want, "total after deposits and 2.5 % interest");
    for n in names {
        let c = expected.get(n).copied().unwrap_or(0);
        assert_eq!(balances[n], c + c * 250 / 10_000, "account {n}");
    }
    // The interest was one transaction: every account changed at revision `at`.
    let r = bank.client().get(bank::PREFIX, balsa_client::GetOptions::new().prefix()).await.unwrap();
    assert!(r.kvs.iter().all(|kv| kv.mod_revision == at), "every account written at revision {at}");
}
