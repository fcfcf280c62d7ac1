//! The paxos-node daemon as a library.
//!
//! Layers, from the bottom: [`wire`] (what travels) and [`codec`] (its bytes), and
//! [`connection`] (handshake, framed stream, batched writer); [`storage`]
//! (RocksDB, whose records use the codec's encoding); [`driver`] owns the replica and runs
//! the Ready contract, and [`writer`] owns the storage and writes beside it; [`server`] and [`peer_link`] move frames between
//! sockets and the driver; [`metrics`] counts what happens and [`metrics_server`] serves it to
//! Prometheus; [`node`] wires them. [`client`] is what the CLI and the tests use
//! to talk to nodes.
//!
//! The client library, the wire types and the codec are the crate `paxos-client` (no RocksDB),
//! re-exported here under their old paths so the daemon's modules and the tests name them as
//! before.

pub use paxos_client::{certs, client, codec, connection, tls, wire};

pub mod config;
pub mod driver;
pub mod history_reader;
pub mod input;
pub mod inspect;
pub mod limits;
pub mod metrics;
pub mod metrics_server;
pub mod node;
pub mod peer_link;
pub mod server;
pub mod storage;
pub mod writer;

pub use config::NodeConfig;
pub use node::{NodeHandle, StartError};
