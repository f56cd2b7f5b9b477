//! The simulated state machine: a tiny key-value register store with the client sessions of
//! Raft thesis section 6.3, so a retried write is applied exactly once.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Identifies a simulated client.
pub type ClientId = u32;

/// A write a client asked for. Values are unique per run (`client << 32 | seq`), which is what
/// lets the checker tell every write apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Put {
    /// The client that asked.
    pub client: ClientId,
    /// The client's request number; retries reuse it.
    pub seq: u32,
    /// Which register.
    pub key: u8,
    /// The unique value written.
    pub value: u64,
}

impl Put {
    /// Serializes the command into a log entry's payload.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(17);
        b.put_u32(self.client);
        b.put_u32(self.seq);
        b.put_u8(self.key);
        b.put_u64(self.value);
        b.freeze()
    }

    /// Parses a payload; `None` if it is not a well-formed command.
    pub fn decode(mut data: &[u8]) -> Option<Self> {
        if data.len() != 17 {
            return None;
        }
        Some(Self { client: data.get_u32(), seq: data.get_u32(), key: data.get_u8(), value: data.get_u64() })
    }
}

/// What applying a command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The write took effect at this index.
    Written,
    /// A retry of a write already applied: skipped (thesis 6.3).
    Duplicate,
}

/// Registers plus, per client, the highest request number applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    /// Current value of each register.
    pub values: BTreeMap<u8, u64>,
    /// Session table: last applied request number per client.
    pub sessions: BTreeMap<ClientId, u32>,
    /// Highest log index applied.
    pub applied_index: u64,
    /// Opaque bulk state that only travels in snapshots: lets a scenario give the state machine
    /// a realistic size (shared, never copied in memory).
    pub ballast: Bytes,
}

impl KvStore {
    /// Applies a command committed at `index`. Clients issue one request at a time, so any
    /// request number at or below the last applied one is a retry.
    pub fn apply(&mut self, index: u64, put: &Put) -> Applied {
        assert!(index > self.applied_index, "entries are applied in order, once");
        self.applied_index = index;
        let last = self.sessions.get(&put.client).copied().unwrap_or(0);
        if put.seq <= last {
            return Applied::Duplicate;
        }
        self.sessions.insert(put.client, put.seq);
        self.values.insert(put.key, put.value);
        Applied::Written
    }

    /// Advances past an entry that carries no command (a leader's no-op).
    pub fn skip(&mut self, index: u64) {
        assert!(index > self.applied_index, "entries are applied in order, once");
        self.applied_index = index;
    }

    /// Serializes the whole state for a snapshot.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u64(self.applied_index);
        b.put_u32(self.values.len() as u32);
        for (&k, &v) in &self.values {
            b.put_u8(k);
            b.put_u64(v);
        }
        b.put_u32(self.sessions.len() as u32);
        for (&c, &s) in &self.sessions {
            b.put_u32(c);
            b.put_u32(s);
        }
        b.put_u64(self.ballast.len() as u64);
        b.extend_from_slice(&self.ballast);
        b.freeze()
    }

    /// Restores a state serialized by [`KvStore::encode`]. Panics on malformed input: snapshots
    /// in the simulator are only ever produced by `encode`.
    pub fn decode(bytes: &Bytes) -> Self {
        let mut data = &bytes[..];
        let applied_index = data.get_u64();
        let mut store = Self { applied_index, ..Self::default() };
        for _ in 0..data.get_u32() {
            let k = data.get_u8();
            store.values.insert(k, data.get_u64());
        }
        for _ in 0..data.get_u32() {
            let c = data.get_u32();
            store.sessions.insert(c, data.get_u32());
        }
        let len = data.get_u64() as usize;
        assert_eq!(data.len(), len, "snapshot ballast length");
        store.ballast = bytes.slice(bytes.len() - len..);
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_apply_once() {
        let mut kv = KvStore::default();
        let p = Put { client: 1, seq: 1, key: 0, value: 7 };
        assert_eq!(kv.apply(1, &p), Applied::Written);
        let q = Put { client: 2, seq: 1, key: 0, value: 9 };
        assert_eq!(kv.apply(2, &q), Applied::Written);
        assert_eq!(kv.apply(3, &p), Applied::Duplicate);
        assert_eq!(kv.values[&0], 9, "a retry must not resurrect an overwritten value");
    }

    #[test]
    fn codec_round_trips() {
        let p = Put { client: 3, seq: 9, key: 2, value: u64::MAX - 1 };
        assert_eq!(Put::decode(&p.encode()), Some(p));
        assert_eq!(Put::decode(b"short"), None);
        let mut kv = KvStore::default();
        kv.apply(1, &p);
        kv.skip(2);
        assert_eq!(KvStore::decode(&kv.encode()), kv);
        kv.ballast = Bytes::from(vec![3u8; 1000]);
        assert_eq!(KvStore::decode(&kv.encode()), kv);
    }
}
