//! The paxos-node daemon as a library: storage, transport, driver, and the client library.
//!
//! Layers, from the bottom: [`storage`] (RocksDB) and [`codec`] (bytes on the wire) know
//! nothing of each other; [`driver`] owns the replica and the storage and runs the Ready
//! contract; [`server`] and [`peer_link`] move frames between sockets and the driver;
//! [`node`] wires them; [`client`] is what the CLI and the tests use to talk to nodes.

pub mod client;
pub mod codec;
pub mod config;
pub mod driver;
pub mod node;
pub mod peer_link;
pub mod server;
pub mod storage;
pub mod wire;

pub use config::NodeConfig;
pub use node::{NodeHandle, StartError};
