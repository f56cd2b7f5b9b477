//! Fault tests of real balsa clusters, after Jepsen.
//!
//! The simulator (balsa-sim) proves the consensus core; this proves the product: real `balsa`
//! processes, real sockets and disks, under the faults Jepsen uses, with every history checked.
//!
//! A run ([`run::run`]):
//!
//! 1. **Network** ([`net`]): one network namespace per host, each with its own address on a
//!    bridge; clients run in the root namespace and reach every host. Partitions are blackhole
//!    routes inside the namespaces, so a cut link drops packets silently. Needs root and
//!    iproute2 ([`net::Net::available`]).
//! 2. **Cluster** ([`cluster`]): five founding members plus spare hosts for membership changes.
//! 3. **Workloads**, each recording what it was told:
//!    - [`register`]: read, write and compare-and-swap on a few keys; the history is checked for
//!      linearizability by balsa-lincheck (an operation whose answer was lost may take effect
//!      at any point after its call, or never).
//!    - [`bank`]: deck 001's banking: transfers, deposits, withdrawals and interest as guarded
//!      transactions; every read (linearizable or serializable) must show the accounts summing
//!      to the ledger and none negative.
//!    - [`watch`]: watchers of the register keys from revision 1 must each see every revision
//!      once, in order, every acknowledged write among them, and agree with each other.
//!    - [`lost`]: across the register and bank workloads, every acknowledged write must be in
//!      the keyspace's history at its revision with its value.
//!    - [`stream`]: appenders and subscribers of a log stream: every acknowledged record at its
//!      offset, none twice, none invented, offsets dense; subscribers see the same sequence.
//! 4. **Nemesis** ([`nemesis`]): one fault at a time — kill -9 and restart, SIGSTOP and
//!    SIGCONT, partitions (minority/majority, isolated leader, a bridge, deck 003's quorum-loss,
//!    constrained-election and chained shapes), membership changes (add, remove, replace the
//!    leader) — held one to five seconds, then undone.
//! 5. **Heal and check**: the network heals, every member runs; a write must then succeed; the
//!    clients stop; final reads; the checks. A run passes only with zero anomalies and an "ok"
//!    (not "unknown") linearizability verdict. A failing run keeps its histories and node logs.
//!
//! `scripts/chaos --duration 30m --seed S` runs long; `cargo test -p balsa-cli --test chaos`
//! runs a short one.

pub mod bank;
pub mod check;
pub mod cluster;
pub mod history;
pub mod lost;
pub mod nemesis;
pub mod net;
pub mod register;
pub mod run;
pub mod stream;
pub mod watch;

pub use nemesis::FaultKind;
pub use run::{run, Config, Summary};
