//! etcd's keyspace model (in progress).

/// Placeholder until the model lands.
pub struct Kv;
