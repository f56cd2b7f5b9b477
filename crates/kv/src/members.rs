//! The member table: what the cluster knows of each server besides its Raft id (name, peer and
//! client URLs). It is replicated through the log like any write, so every server can reach a
//! member added at any other one, and a restarted or new server learns the addresses from a
//! snapshot. The Raft configuration (who votes, who learns) stays with the Raft core; this table
//! only describes members.

use std::collections::BTreeMap;

/// One member's attributes, as etcd's `Member` message shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberAttrs {
    /// The member's Raft id.
    pub id: u64,
    /// Its name; empty until the member has started and published it.
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it; empty until it has started.
    pub client_urls: Vec<String>,
}

/// Members by id.
pub type MemberTable = BTreeMap<u64, MemberAttrs>;
