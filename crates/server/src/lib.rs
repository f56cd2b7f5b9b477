//! # balsa-server
//!
//! The server side of balsa, as a library (the `balsa` command in `balsa-cli` is a thin layer
//! over it): the peer [`transport`], the [`node`] driver (core + storage + state machine), the
//! etcd v3 gRPC API ([`kv_service`], [`maintenance`]), [`config`] (flags, environment, TOML file),
//! a running [`member`], the operations endpoints ([`ops`], [`metrics`]), and the
//! snapshot file of Maintenance.Snapshot with its restore ([`snapshot_file`]).

#![warn(missing_docs)]

pub mod client_server;
pub mod cluster_service;
pub mod config;
pub mod flat_writes;
pub mod grpc_codec;
pub mod kv_service;
pub mod lease_clock;
pub mod lease_service;
pub mod log_service;
pub mod log_writer;
pub mod maintenance;
pub mod member;
pub mod metrics;
pub mod node;
pub mod ops;
mod payloads;
mod round_timer;
pub mod session;
pub mod snapshot_file;
mod snapshot_stream;
pub mod stream_hub;
pub mod transport;
pub mod unary;
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
    /// balsa's own services (client sessions, log streams): `balsapb`.
    pub mod balsapb {
        tonic::include_proto!("balsapb");
    }
}
