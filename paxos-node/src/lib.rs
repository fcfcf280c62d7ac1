//! The paxos-node daemon as a library, and the client library that talks to it.
//!
//! Layers, from the bottom: [`wire`] (what travels) and [`codec`] (its bytes), and
//! [`connection`] (handshake, framed stream, batched writer); [`storage`]
//! (RocksDB, whose records use the codec's encoding); [`driver`] owns the replica and the
//! storage and runs the Ready contract; [`server`] and [`peer_link`] move frames between
//! sockets and the driver; [`metrics`] counts what happens and [`metrics_server`] serves it to
//! Prometheus; [`node`] wires them. [`client`] is what the CLI and the tests use
//! to talk to nodes.
//!
//! The daemon parts sit behind the default `daemon` feature. Without it the crate is the
//! client library, the wire types and the codec only, and builds without RocksDB:
//!
//! ```toml
//! [dependencies]
//! paxos-node = { path = "paxos-node", default-features = false }
//! ```
//!
//! Embedding the client: propose a value and read it back.
//!
//! ```no_run
//! use paxos_node::client::{Client, ClientOptions};
//! use paxos_node::tls::{CertFiles, Security, Tls};
//! use std::sync::Arc;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // The client identity `paxos-cli certs` issued: paxos-certs/client/ (ca.pem, cert.pem, key.pem).
//! let files = CertFiles::identity(std::path::Path::new("paxos-certs/client"));
//! let security = Security::Tls(Arc::new(Tls::for_client(&files, "paxos")?));
//! let client = Client::new(ClientOptions::new(vec!["127.0.0.1:7001".into()], security))?;
//! let slot = client.propose(b"hello".to_vec()).await?;
//! let page = client.history(slot, 1).await?;
//! assert_eq!(page.entries[0], (slot, Some(b"hello".to_vec())));
//! # Ok(())
//! # }
//! ```

pub mod certs;
pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod tls;
pub mod wire;

#[cfg(feature = "daemon")]
pub mod driver;
#[cfg(feature = "daemon")]
pub mod history_reader;
#[cfg(feature = "daemon")]
pub mod inspect;
#[cfg(feature = "daemon")]
pub mod limits;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod metrics_server;
#[cfg(feature = "daemon")]
pub mod node;
#[cfg(feature = "daemon")]
pub mod peer_link;
#[cfg(feature = "daemon")]
pub mod server;
#[cfg(feature = "daemon")]
pub mod storage;

pub use config::NodeConfig;
#[cfg(feature = "daemon")]
pub use node::{NodeHandle, StartError};
