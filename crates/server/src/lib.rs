//! # balsa-server
//!
//! The server side of balsa. Today: the peer [`transport`] that carries Raft messages between
//! servers. Next (issue 5): the node driver (core + storage + state machine), the etcd v3 gRPC
//! API, and operations endpoints.

#![warn(missing_docs)]

pub mod cluster_service;
pub mod config;
pub mod kv_service;
pub mod lease_clock;
pub mod lease_service;
pub mod maintenance;
pub mod node;
pub mod transport;
pub mod watch_hub;
pub mod watch_service;

pub use node::{MemberInfo, NodeConfig, NodeError, NodeHandle};
pub use transport::{Transport, TransportConfig, TransportSender};
pub use watch_hub::{WatchFeed, WatchSpec, WatchUpdate};

/// Generated from `proto/` (etcd's wire format): `etcdserverpb` and `mvccpb`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// etcd's `mvccpb` package.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's `etcdserverpb` package.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}
