//! The file Maintenance.Snapshot streams (and `etcdctl snapshot save` writes), and restoring a
//! data dir from it (`balsa snapshot restore`).
//!
//! It is balsa's own format, not etcd's bolt database, so `etcdctl snapshot status` and
//! `etcdctl snapshot restore` cannot read it. Layout (integers little-endian):
//!
//! | offset | size | content |
//! | --- | --- | --- |
//! | 0 | 8 | magic `BALSASNP` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | zero |
//! | 16 | 8 | last applied log index the state includes |
//! | 24 | 8 | its term |
//! | 32 | 8 | keyspace revision |
//! | 40 | 8 | payload length `n` |
//! | 48 | n | payload: balsa-kv's `StateMachine::encode()` (keys with history, leases, members) |
//! | 48 + n | pad | zeros, so that everything so far is a multiple of 512 bytes |
//! | end - 32 | 32 | SHA-256 of everything before it |
//!
//! The padding and the trailing digest are what etcd's client expects of a snapshot stream
//! (it checks that the size is a multiple of 512 plus 32 before keeping the file).

use std::path::{Path, PathBuf};

use balsa_kv::StateMachine;
use balsa_raft::{HardState, Membership, PersistBatch, Snapshot, SnapshotMeta};
use balsa_storage::{DiskStore, LogStore, StoreOptions};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::config::ServerConfig;
use crate::node::SnapshotImage;

const MAGIC: &[u8; 8] = b"BALSASNP";
const VERSION: u32 = 1;
const HEADER: usize = 48;
const DIGEST: usize = 32;
/// The stream's body (all but the digest) is a multiple of this, as etcd's client checks.
const SECTOR: usize = 512;

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotFileError {
    /// Too short, or not a multiple of 512 plus the 32-byte digest.
    #[error("not a balsa snapshot: {0}")]
    Format(String),
    /// The digest does not match the content.
    #[error("snapshot is corrupt: sha256 mismatch (expected {expected}, computed {computed})")]
    Checksum {
        /// The digest stored at the end of the file.
        expected: String,
        /// The digest of the content.
        computed: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The whole file for `image`: header, payload, padding, digest.
pub fn encode(image: &SnapshotImage) -> Vec<u8> {
    let body_len = (HEADER + image.data.len()).div_ceil(SECTOR) * SECTOR;
    let mut out = Vec::with_capacity(body_len + DIGEST);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&image.index.to_le_bytes());
    out.extend_from_slice(&image.term.to_le_bytes());
    out.extend_from_slice(&image.revision.to_le_bytes());
    out.extend_from_slice(&(image.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&image.data);
    out.resize(body_len, 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the digest first (any damage is reported as corruption), then the layout.
pub fn decode(bytes: &[u8]) -> Result<SnapshotImage, SnapshotFileError> {
    if bytes.len() < HEADER + DIGEST || !(bytes.len() - DIGEST).is_multiple_of(SECTOR) {
        return Err(SnapshotFileError::Format(format!(
            "{} bytes is not a multiple of {SECTOR} plus a {DIGEST}-byte sha256",
            bytes.len()
        )));
    }
    let (body, stored) = bytes.split_at(bytes.len() - DIGEST);
    let computed = Sha256::digest(body);
    if computed[..] != stored[..] {
        return Err(SnapshotFileError::Checksum { expected: hex(stored), computed: hex(&computed) });
    }
    if &body[..8] != MAGIC {
        return Err(SnapshotFileError::Format("no BALSASNP magic (an etcd bolt snapshot?)".into()));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SnapshotFileError::Format(format!(
            "format version {version}, this balsa reads {VERSION}"
        )));
    }
    let len = u64_at(body, 40);
    if len > (body.len() - HEADER) as u64 {
        return Err(SnapshotFileError::Format(format!("payload of {len} bytes runs past the end")));
    }
    let data = Bytes::copy_from_slice(&body[HEADER..HEADER + len as usize]);
    Ok(SnapshotImage {
        data,
        index: u64_at(body, 16),
        term: u64_at(body, 24),
        revision: u64_at(body, 32) as i64,
    })
}

/// Reads and checks a snapshot file.
pub fn read(path: &Path) -> Result<SnapshotImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Decodes the state machine of a snapshot's payload: (live keys, leases).
pub fn decode_state(data: &[u8]) -> Result<(usize, usize), String> {
    let sm = StateMachine::decode(Bytes::copy_from_slice(data))
        .map_err(|e| format!("state does not decode: {e}"))?;
    let keys = sm.mvcc.range(&balsa_kv::KeyRange::prefix(""), 0).map_err(|e| e.to_string())?.len();
    Ok((keys, sm.leases.len()))
}

/// What a restore wrote.
#[derive(Debug)]
pub struct Restored {
    /// The data dir.
    pub data_dir: PathBuf,
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Log index of the snapshot the store now starts from.
    pub index: u64,
    /// Keyspace revision restored.
    pub revision: i64,
}

/// Writes a fresh data dir for the member `config` describes, whose storage holds the snapshot
/// in `file` under the membership of `--initial-cluster` (as `etcdctl snapshot restore` founds
/// a new cluster from a backup). Every member of the new cluster is restored from the same file
/// with the same `--initial-cluster` and token, then started with `balsa server` and the same
/// settings. The old member table is dropped (members publish themselves again); keys, history
/// and leases are kept. Refuses a data dir that exists and is not empty.
pub fn restore(file: &Path, config: &ServerConfig) -> Result<Restored, String> {
    let image = read(file)?;
    let mut sm = StateMachine::decode(image.data.clone())
        .map_err(|e| format!("{}: sha256 matches but the state does not decode: {e}", file.display()))?;
    sm.members.clear();
    let node = config.node_config().map_err(|e| e.to_string())?;
    if node.join {
        return Err("--initial-cluster-state existing: a restore founds a new cluster; use new".into());
    }
    let dir = &node.data_dir;
    let occupied = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if occupied {
        return Err(format!(
            "--data-dir {}: exists and is not empty; restore into a new directory",
            dir.display()
        ));
    }
    let io = |e: &dyn std::fmt::Display| format!("--data-dir {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
    // Index and term as recorded, at least 1 each: every member restored from this file starts
    // from the same point, so their logs agree.
    let (index, term) = (image.index.max(1), image.term.max(1));
    let membership = Membership::new(node.peers.keys().copied());
    let snapshot = Snapshot {
        meta: SnapshotMeta { last_included_index: index, last_included_term: term, membership },
        data: sm.encode().into(),
    };
    let mut store = DiskStore::open(dir, StoreOptions::default()).map_err(|e| io(&e))?;
    let mut batch = PersistBatch::default();
    batch.snapshot = Some(snapshot);
    batch.hard_state = Some(HardState { current_term: term, voted_for: None, commit_index: index });
    store.write(&batch).map_err(|e| io(&e))?;
    store.sync().map_err(|e| io(&e))?;
    drop(store);
    let member_id = crate::member::claim_data_dir(config, node.id).map_err(|e| e.to_string())?;
    Ok(Restored {
        data_dir: dir.clone(),
        member_id,
        cluster_id: node.cluster_id,
        index,
        revision: sm.mvcc.revision(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize) -> SnapshotImage {
        SnapshotImage { data: Bytes::from(vec![7u8; n]), index: 42, term: 3, revision: 17 }
    }

    #[test]
    fn round_trips_with_etcds_size_rule() {
        for n in [0, 1, 463, 464, 465, 5000] {
            let bytes = encode(&image(n));
            assert_eq!(bytes.len() % SECTOR, DIGEST, "{n}");
            let back = decode(&bytes).unwrap();
            assert_eq!((back.data, back.index, back.term, back.revision), (image(n).data, 42, 3, 17));
        }
    }

    #[test]
    fn refuses_damage_and_foreign_files() {
        let mut bytes = encode(&image(1000));
        bytes[100] ^= 1;
        assert!(matches!(decode(&bytes), Err(SnapshotFileError::Checksum { .. })));
        bytes[100] ^= 1;
        let len = bytes.len();
        bytes[len - 1] ^= 0x80;
        assert!(matches!(decode(&bytes), Err(SnapshotFileError::Checksum { .. })));
        assert!(matches!(decode(&bytes[..len - 1]), Err(SnapshotFileError::Format(_))));
        let mut other = vec![0u8; 512];
        let digest = Sha256::digest(&other);
        other.extend_from_slice(&digest);
        assert!(matches!(decode(&other), Err(SnapshotFileError::Format(m)) if m.contains("magic")));
    }
}
