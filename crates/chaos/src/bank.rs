//! The bank workload (deck 001's distributed banking): accounts under `bank/acct/`, and a
//! ledger `bank/total` holding what the bank owes in all. Transfers move money between two
//! accounts; deposits, withdrawals and interest change an account (or all) and the ledger in the
//! same transaction. Every change is a transaction that holds only if nothing it read has
//! changed since (compare on mod_revision), so the invariant holds at every revision:
//!
//! - the accounts sum to the ledger (money is neither made nor lost), and
//! - no account is negative.
//!
//! Every read checks it on one revision's state: linearizable reads through the leader, and
//! serializable reads from whichever member the client is on (those may be stale, but a stale
//! state must be a state the cluster really had, so the invariant holds there too).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use balsa_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use balsa_raft::rng::SplitMix64;

use crate::history::{push, Counts, Shared, OP_LIMIT};
use crate::register::Written;

/// Everything the bank keeps is under this prefix, so one range read sees one revision of all.
pub const PREFIX: &str = "bank/";
/// The ledger key.
pub const TOTAL: &str = "bank/total";
/// Cents each account opens with.
pub const OPENING_CENTS: i64 = 10_000;

fn account(i: usize) -> String {
    format!("{PREFIX}acct/{i}")
}

/// One consistent read of the bank: balances and the ledger, each with its mod_revision.
#[derive(Debug, Clone, Default)]
pub struct Books {
    /// The revision read at.
    pub revision: i64,
    /// Account key → (cents, mod_revision).
    pub accounts: BTreeMap<String, (i64, i64)>,
    /// The ledger (cents, mod_revision); `None` before the bank opens.
    pub total: Option<(i64, i64)>,
}

impl Books {
    /// The invariant, or what breaks it.
    pub fn check(&self) -> Result<(), String> {
        let Some((total, _)) = self.total else {
            return if self.accounts.is_empty() {
                Ok(())
            } else {
                Err(format!("at revision {}: accounts exist without the ledger", self.revision))
            };
        };
        let sum: i64 = self.accounts.values().map(|(c, _)| c).sum();
        if sum != total {
            return Err(format!(
                "at revision {}: the accounts sum to {sum} but the ledger says {total} ({:?})",
                self.revision, self.accounts
            ));
        }
        if let Some((k, (c, _))) = self.accounts.iter().find(|(_, (c, _))| *c < 0) {
            return Err(format!("at revision {}: {k} is negative ({c})", self.revision));
        }
        Ok(())
    }
}

/// Reads the books at one revision.
pub async fn read(client: &Client, serializable: bool) -> Result<Books, String> {
    let mut options = GetOptions::new().prefix();
    if serializable {
        options = options.serializable();
    }
    let resp = tokio::time::timeout(OP_LIMIT, client.get(PREFIX, options))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let mut books = Books { revision: resp.revision, ..Books::default() };
    for kv in resp.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let text = String::from_utf8_lossy(&kv.value).into_owned();
        let cents: i64 =
            text.parse().map_err(|_| format!("at revision {}: {key} holds {text:?}", resp.revision))?;
        if key == TOTAL {
            books.total = Some((cents, kv.mod_revision));
        } else {
            books.accounts.insert(key, (cents, kv.mod_revision));
        }
    }
    Ok(books)
}

/// Opens `accounts` accounts and the ledger in one transaction, if the bank is not open yet.
pub async fn open(client: &Client, accounts: usize) -> Result<(), String> {
    let mut puts: Vec<TxnOp> =
        (0..accounts).map(|i| TxnOp::put(account(i), OPENING_CENTS.to_string(), PutOptions::new())).collect();
    puts.push(TxnOp::put(TOTAL, (OPENING_CENTS * accounts as i64).to_string(), PutOptions::new()));
    let txn = Txn::new().when([Compare::version(TOTAL, CompareOp::Equal, 0)]).and_then(puts);
    client.txn(txn).await.map(|_| ()).map_err(|e| format!("opening the bank: {e}"))
}

/// A transaction that writes `changes` (key → new cents) if none of the keys read changed.
fn guarded(books: &Books, changes: &[(String, i64)]) -> Txn {
    let compares = changes.iter().map(|(k, _)| {
        let rev = if k == TOTAL {
            books.total.map_or(0, |t| t.1)
        } else {
            books.accounts.get(k).map_or(0, |a| a.1)
        };
        Compare::mod_revision(k.clone(), CompareOp::Equal, rev)
    });
    let puts = changes.iter().map(|(k, c)| TxnOp::put(k.clone(), c.to_string(), PutOptions::new()));
    Txn::new().when(compares.collect::<Vec<_>>()).and_then(puts.collect::<Vec<_>>())
}

/// The changes one random banking operation makes to `books`, or `None` if it has nothing to do.
fn plan(rng: &mut SplitMix64, books: &Books) -> Option<(&'static str, Vec<(String, i64)>)> {
    let (total, _) = books.total?;
    let keys: Vec<&String> = books.accounts.keys().collect();
    let pick = |rng: &mut SplitMix64| keys[rng.range(0, keys.len() as u64) as usize].clone();
    let cents = |k: &String| books.accounts[k].0;
    match rng.range(0, 10) {
        0..=5 => {
            let (from, to) = (pick(rng), pick(rng));
            if from == to || cents(&from) == 0 {
                return None;
            }
            let amount = rng.range(1, cents(&from) as u64 + 1) as i64;
            Some(("transfer", vec![(from.clone(), cents(&from) - amount), (to.clone(), cents(&to) + amount)]))
        }
        6 | 7 => {
            let to = pick(rng);
            let amount = rng.range(1, 500) as i64;
            Some(("deposit", vec![(to.clone(), cents(&to) + amount), (TOTAL.to_string(), total + amount)]))
        }
        8 => {
            let from = pick(rng);
            if cents(&from) == 0 {
                return None;
            }
            let amount = rng.range(1, cents(&from) as u64 + 1) as i64;
            Some((
                "withdraw",
                vec![(from.clone(), cents(&from) - amount), (TOTAL.to_string(), total - amount)],
            ))
        }
        _ => {
            // Interest of 1% on every account, rounded down, in one transaction.
            let mut changes: Vec<(String, i64)> =
                keys.iter().map(|k| ((*k).clone(), cents(k) + cents(k) / 100)).collect();
            let paid: i64 = keys.iter().map(|k| cents(k) / 100).sum();
            changes.push((TOTAL.to_string(), total + paid));
            Some(("interest", changes))
        }
    }
}

/// What the bank clients record.
#[derive(Clone, Default)]
pub struct Recorded {
    /// Books that broke the invariant (anomalies).
    pub violations: Shared<String>,
    /// Reads checked.
    pub reads_checked: Shared<u64>,
    /// Changes: committed or refused (`ok`), failed before sending (`failed`), or unknown.
    pub counts: Shared<Counts>,
    /// Every key a committed change wrote, with the value and the change's revision (checked
    /// for loss at the end, like every acknowledged write).
    pub acked: Shared<Written>,
}

/// One bank client: read, plan, commit; check every read. Runs until `stop`.
pub async fn client(client: Client, seed: u64, stop: Arc<AtomicBool>, rec: Recorded) {
    let mut rng = SplitMix64::new(seed);
    let mut counts = Counts::default();
    let mut reads = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let serializable = rng.chance(1, 3);
        let books = match read(&client, serializable).await {
            Ok(b) => b,
            Err(_) => {
                counts.failed += 1;
                continue;
            }
        };
        reads += 1;
        if let Err(e) = books.check() {
            let kind = if serializable { "serializable" } else { "linearizable" };
            push(&rec.violations, format!("bank ({kind} read): {e}"));
        }
        if serializable {
            continue; // plan only from up-to-date books, or most transactions would be refused
        }
        let Some((_, changes)) = plan(&mut rng, &books) else { continue };
        match tokio::time::timeout(OP_LIMIT, client.txn(guarded(&books, &changes))).await {
            Ok(Ok(t)) => {
                counts.ok += 1;
                if t.succeeded {
                    for (key, cents) in changes {
                        push(&rec.acked, Written { key, value: cents.to_string(), revision: t.revision });
                    }
                }
            }
            _ => counts.unknown += 1,
        }
    }
    push(&rec.counts, counts);
    push(&rec.reads_checked, reads);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn books(accounts: &[i64], total: Option<i64>) -> Books {
        Books {
            revision: 7,
            accounts: accounts.iter().enumerate().map(|(i, &c)| (account(i), (c, 1 + i as i64))).collect(),
            total: total.map(|t| (t, 1)),
        }
    }

    #[test]
    fn books_that_balance_pass() {
        assert_eq!(books(&[100, 0, 250], Some(350)).check(), Ok(()));
        // Before the bank opens: nothing at all.
        assert_eq!(books(&[], None).check(), Ok(()));
    }

    #[test]
    fn a_sum_that_differs_from_the_ledger_is_caught() {
        for total in [349, 351, 0] {
            let err = books(&[100, 0, 250], Some(total)).check().unwrap_err();
            assert!(err.contains(&format!("sum to 350 but the ledger says {total}")), "{err}");
            assert!(err.starts_with("at revision 7"), "{err}");
        }
    }

    #[test]
    fn a_negative_balance_is_caught() {
        let err = books(&[100, -5, 255], Some(350)).check().unwrap_err();
        assert!(err.contains("bank/acct/1 is negative (-5)"), "{err}");
    }

    #[test]
    fn accounts_without_the_ledger_are_caught() {
        let err = books(&[100], None).check().unwrap_err();
        assert!(err.contains("accounts exist without the ledger"), "{err}");
    }

    /// Applies `changes` as the guarded transaction would (puts of new balances).
    fn apply(books: &mut Books, changes: &[(String, i64)]) {
        for (k, c) in changes {
            if k == TOTAL {
                books.total = Some((*c, books.revision + 1));
            } else {
                let old = books.accounts.insert(k.clone(), (*c, books.revision + 1));
                assert!(old.is_some(), "a plan created account {k}");
            }
        }
        books.revision += 1;
    }

    /// Property: from any books satisfying the invariant, every plan keeps it, and touches the
    /// ledger exactly when money enters or leaves. Random books of one to six accounts, many of
    /// them empty (the edge of "none negative"), then a run of plans applied one after another.
    #[test]
    fn every_plan_keeps_the_invariant() {
        let mut rng = SplitMix64::new(0xba4c);
        let mut kinds = BTreeMap::new();
        for _ in 0..2_000 {
            let n = rng.range(1, 7) as usize;
            let cents: Vec<i64> = (0..n)
                .map(|_| if rng.chance(1, 4) { 0 } else { rng.range(0, 3 * OPENING_CENTS as u64) as i64 })
                .collect();
            let mut b = books(&cents, Some(cents.iter().sum()));
            assert_eq!(b.check(), Ok(()));
            for _ in 0..20 {
                let before = b.clone();
                let Some((kind, changes)) = plan(&mut rng, &b) else { continue };
                *kinds.entry(kind).or_insert(0) += 1;
                apply(&mut b, &changes);
                if let Err(e) = b.check() {
                    panic!("{kind} {changes:?} broke {before:?}: {e}");
                }
                let ledger_moved = b.total != before.total;
                assert_eq!(ledger_moved, kind != "transfer", "{kind} {changes:?} on {before:?}");
            }
        }
        // Every kind of operation was exercised.
        for kind in ["transfer", "deposit", "withdraw", "interest"] {
            assert!(kinds.get(kind).copied().unwrap_or(0) > 100, "{kinds:?}");
        }
    }

    #[test]
    fn no_plan_before_the_bank_opens() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..100 {
            assert!(plan(&mut rng, &books(&[], None)).is_none());
        }
    }
}
