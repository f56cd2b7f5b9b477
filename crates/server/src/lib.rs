//! # balsa-server
//!
//! The server side of balsa. Today: the peer [`transport`] that carries Raft messages between
//! servers. Next (issue 5): the node driver (core + storage + state machine), the etcd v3 gRPC
//! API, and operations endpoints.

#![warn(missing_docs)]

pub mod node;
pub mod transport;

pub use node::{NodeConfig, NodeError, NodeHandle};
pub use transport::{Transport, TransportConfig, TransportSender};
