//! A bank over balsa-client (deck 001's distributed banking): accounts are keys
//! `bank/acct/<name>` holding integer cents; every operation is one etcd transaction guarded by
//! the `mod_revision`s it read (optimistic concurrency: if anything it read changed, the
//! transaction does nothing and the operation reads again and retries). With the client's
//! sessions (on by default) a transaction retried after a lost answer is applied once.
//!
//! Shared by the `banking` example and the tests in `tests/banking.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use balsa_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Retention, Txn, TxnOp};

/// Where accounts live.
pub const PREFIX: &str = "bank/acct/";
/// The log stream each transfer is recorded in (after its transaction, in the same session pool).
pub const JOURNAL: &str = "bank/journal";
/// Optimistic retries before giving up on a hot account.
const MAX_CONFLICTS: usize = 1000;

/// The key of account `name`.
pub fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BankError {
    /// The client gave up (see balsa_client::Error).
    Client(balsa_client::Error),
    /// Not enough money: the balance read, and the amount asked for.
    Insufficient { account: String, balance: i64, wanted: i64 },
    /// No such account.
    NoSuchAccount(String),
    /// A negative amount, a transfer to oneself, ...
    Invalid(String),
    /// Conflicts kept happening.
    TooMuchContention,
    /// A stored balance is not an integer.
    Corrupt(String),
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::Client(e) => write!(f, "{e}"),
            BankError::Insufficient { account, balance, wanted } => {
                write!(f, "account {account}: balance {balance} < {wanted}")
            }
            BankError::NoSuchAccount(a) => write!(f, "no account {a}"),
            BankError::Invalid(m) => write!(f, "{m}"),
            BankError::TooMuchContention => write!(f, "too many conflicting transactions"),
            BankError::Corrupt(m) => write!(f, "corrupt balance: {m}"),
        }
    }
}

impl std::error::Error for BankError {}

impl From<balsa_client::Error> for BankError {
    fn from(e: balsa_client::Error) -> Self {
        BankError::Client(e)
    }
}

pub type BankResult<T> = Result<T, BankError>;

/// A balance as read: cents and the key's mod_revision (0: no account).
#[derive(Debug, Clone, Copy)]
struct Seen {
    cents: i64,
    mod_revision: i64,
}

/// A committed transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub cents: i64,
    /// The revision the transaction committed at.
    pub revision: i64,
}

impl Transfer {
    /// The journal record: `from,to,cents,revision`.
    pub fn record(&self) -> String {
        format!("{},{},{},{}", self.from, self.to, self.cents, self.revision)
    }
}

/// The bank: a client and the journal switch.
#[derive(Clone)]
pub struct Bank {
    client: Client,
    journal: bool,
}

fn parse(name: &str, value: &[u8]) -> BankResult<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BankError::Corrupt(format!("{name}: {:?}", String::from_utf8_lossy(value))))
}

impl Bank {
    /// A bank over `client`; with `journal`, transfers are also appended to [`JOURNAL`] (created
    /// here if missing).
    pub async fn new(client: Client, journal: bool) -> BankResult<Bank> {
        if journal {
            client.log_create(JOURNAL, Retention { bytes: Some(0), ms: Some(0) }).await?;
        }
        Ok(Bank { client, journal })
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn read(&self, name: &str) -> BankResult<Seen> {
        let r = self.client.get(key(name), GetOptions::new()).await?;
        match r.kvs.first() {
            Some(kv) => Ok(Seen { cents: parse(name, &kv.value)?, mod_revision: kv.mod_revision }),
            None => Ok(Seen { cents: 0, mod_revision: 0 }),
        }
    }

    async fn existing(&self, name: &str) -> BankResult<Seen> {
        let seen = self.read(name).await?;
        if seen.mod_revision == 0 {
            return Err(BankError::NoSuchAccount(name.to_string()));
        }
        Ok(seen)
    }

    /// Opens an account with `cents` (does nothing if it exists). Returns whether it was created.
    pub async fn open(&self, name: &str, cents: i64) -> BankResult<bool> {
        if cents < 0 {
            return Err(BankError::Invalid(format!("negative opening balance {cents}")));
        }
        let r = self
            .client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key(name), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key(name), cents.to_string(), PutOptions::new())]),
            )
            .await?;
        Ok(r.succeeded)
    }

    /// Adds `cents` to an account; returns the new balance.
    pub async fn deposit(&self, name: &str, cents: i64) -> BankResult<i64> {
        if cents < 0 {
            return Err(BankError::Invalid(format!("negative deposit {cents}")));
        }
        self.adjust(name, cents).await
    }

    /// Takes `cents` from an account, never below zero; returns the new balance.
    pub async fn withdraw(&self, name: &str, cents: i64) -> BankResult<i64> {
        if cents < 0 {
            return Err(BankError::Invalid(format!("negative withdrawal {cents}")));
        }
        self.adjust(name, -cents).await
    }

    /// Read, check, write-if-unchanged, until the write holds.
    async fn adjust(&self, name: &str, delta: i64) -> BankResult<i64> {
        for _ in 0..MAX_CONFLICTS {
            let seen = self.existing(name).await?;
            let new = seen.cents + delta;
            if new < 0 {
                return Err(BankError::Insufficient {
                    account: name.to_string(),
                    balance: seen.cents,
                    wanted: -delta,
                });
            }
            let r = self
                .client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(key(name), CompareOp::Equal, seen.mod_revision)])
                        .and_then([TxnOp::put(key(name), new.to_string(), PutOptions::new())]),
                )
                .await?;
            if r.succeeded {
                return Ok(new);
            }
        }
        Err(BankError::TooMuchContention)
    }

    /// Moves `cents` from one account to another in one transaction (both balances change at
    /// one revision, or neither). Journals it if the bank keeps a journal.
    pub async fn transfer(&self, from: &str, to: &str, cents: i64) -> BankResult<Transfer> {
        if from == to {
            return Err(BankError::Invalid("transfer to the same account".into()));
        }
        if cents <= 0 {
            return Err(BankError::Invalid(format!("transfer of {cents}")));
        }
        for _ in 0..MAX_CONFLICTS {
            let (a, b) = (self.existing(from).await?, self.existing(to).await?);
            if a.cents < cents {
                return Err(BankError::Insufficient {
                    account: from.to_string(),
                    balance: a.cents,
                    wanted: cents,
                });
            }
            let r = self
                .client
                .txn(
                    Txn::new()
                        .when([
                            Compare::mod_revision(key(from), CompareOp::Equal, a.mod_revision),
                            Compare::mod_revision(key(to), CompareOp::Equal, b.mod_revision),
                        ])
                        .and_then([
                            TxnOp::put(key(from), (a.cents - cents).to_string(), PutOptions::new()),
                            TxnOp::put(key(to), (b.cents + cents).to_string(), PutOptions::new()),
                        ]),
                )
                .await?;
            if r.succeeded {
                let t = Transfer { from: from.into(), to: to.into(), cents, revision: r.revision };
                if self.journal {
                    self.client.log_append(JOURNAL, [t.record()]).await?;
                }
                return Ok(t);
            }
        }
        Err(BankError::TooMuchContention)
    }

    /// Credits interest at `basis_points` (1/100 of a percent; rounded down to the cent) to every
    /// account, in one transaction at one revision: it reads all accounts at one revision and
    /// commits only if no account changed or appeared since. Returns the revision it committed at.
    pub async fn interest(&self, basis_points: i64) -> BankResult<i64> {
        if basis_points < 0 {
            return Err(BankError::Invalid(format!("negative rate {basis_points}")));
        }
        for _ in 0..MAX_CONFLICTS {
            let (revision, accounts) = self.balances().await?;
            let puts: Vec<TxnOp> = accounts
                .iter()
                .map(|(name, cents)| {
                    TxnOp::put(
                        key(name),
                        (cents + cents * basis_points / 10_000).to_string(),
                        PutOptions::new(),
                    )
                })
                .collect();
            let r = self
                .client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(PREFIX, CompareOp::Less, revision + 1).prefix()])
                        .and_then(puts),
                )
                .await?;
            if r.succeeded {
                return Ok(r.revision);
            }
        }
        Err(BankError::TooMuchContention)
    }

    /// Every account's balance, read at one revision (returned with it).
    pub async fn balances(&self) -> BankResult<(i64, BTreeMap<String, i64>)> {
        let r = self.client.get(PREFIX, GetOptions::new().prefix()).await?;
        let mut out = BTreeMap::new();
        for kv in &r.kvs {
            let name = String::from_utf8_lossy(&kv.key[PREFIX.len()..]).into_owned();
            let cents = parse(&name, &kv.value)?;
            out.insert(name, cents);
        }
        Ok((r.revision, out))
    }

    /// Every journal record, parsed.
    pub async fn journal(&self) -> BankResult<Vec<Transfer>> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let r = self.client.log_read(JOURNAL, from, 0).await?;
            for rec in &r.records {
                let text = String::from_utf8_lossy(&rec.data);
                let f: Vec<&str> = text.split(',').collect();
                if f.len() != 4 {
                    return Err(BankError::Corrupt(format!("journal record {}: {text}", rec.offset)));
                }
                out.push(Transfer {
                    from: f[0].into(),
                    to: f[1].into(),
                    cents: f[2].parse().map_err(|_| BankError::Corrupt(text.to_string()))?,
                    revision: f[3].parse().map_err(|_| BankError::Corrupt(text.to_string()))?,
                });
            }
            if r.records.is_empty() || r.next_offset >= r.end_offset {
                return Ok(out);
            }
            from = r.next_offset;
        }
    }
}
