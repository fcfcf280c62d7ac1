//! The client library of the Multi-Paxos cluster, and the wire it shares with the daemon.
//!
//! Layers, from the bottom: [`wire`] (what travels) and [`codec`] (its bytes); [`tls`] and
//! [`certs`] (mutual TLS and the certificates `paxos-cli certs` issues); [`connection`]
//! (handshake, framed stream, batched writer); [`client`] (sessions, retries, the leader's
//! whereabouts). The daemon, `paxos-node`, builds on the same modules; this crate has no
//! RocksDB, so `paxos-cli` and embedders stay small.
//!
//! Embedding the client: propose a value and read it back.
//!
//! ```no_run
//! use paxos_client::client::{Client, ClientOptions};
//! use paxos_client::tls::{CertFiles, Security, Tls};
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
pub mod connection;
pub mod tls;
pub mod wire;

/// The cluster name used when none is given.
pub const DEFAULT_CLUSTER: &str = "paxos";
