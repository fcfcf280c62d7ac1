//! Outbound links to peers: one task per peer, reconnecting with backoff.
//!
//! Messages queue in a bounded channel; while a peer is unreachable they are dropped (Paxos
//! retransmits what matters), so a dead peer costs a bounded amount of memory.

use crate::codec::FrameCodec;
use crate::wire::{Caller, Frame, Hello, PROTOCOL_VERSION};
use futures::{SinkExt, StreamExt};
use paxos_core::{Message, NodeId};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Messages written before one flush.
const MESSAGES_PER_FLUSH_MAX: usize = 512;

/// Identity of the link's two ends.
#[derive(Debug, Clone)]
pub struct LinkIdentity {
    pub node_id: NodeId,
    pub peer_id: NodeId,
    pub peer_addr: String,
    pub cluster: String,
}

/// Runs the link to one peer until shutdown.
pub async fn run(
    identity: LinkIdentity,
    mut messages: mpsc::Receiver<Message>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    loop {
        match connect(&identity).await {
            Ok(framed) => {
                tracing::debug!(peer = identity.peer_id, addr = %identity.peer_addr, "link up");
                backoff = BACKOFF_MIN;
                last_error.clear();
                tokio::select! {
                    result = pump(framed, &mut messages) => {
                        match result {
                            Ok(()) => return, // the driver is gone
                            Err(error) => tracing::debug!(peer = identity.peer_id, %error, "link down"),
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
            Err(error) => {
                // Log a changed reason once, not every retry.
                if error != last_error {
                    tracing::info!(peer = identity.peer_id, addr = %identity.peer_addr, %error, "cannot reach peer");
                    last_error = error;
                }
            }
        }
        // Messages queued while down are stale: drop them rather than replay them late.
        while messages.try_recv().is_ok() {}
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(identity: &LinkIdentity) -> Result<Framed<TcpStream, FrameCodec>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&identity.peer_addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::default());
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: identity.cluster.clone(),
        caller: Caller::Node(identity.node_id),
    };
    framed.send(Frame::Hello(hello)).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(CONNECT_TIMEOUT * 5, framed.next()).await {
        Ok(Some(Ok(Frame::Welcome(welcome)))) => {
            if welcome.node_id != identity.peer_id || welcome.cluster_id != identity.cluster {
                return Err(format!(
                    "{} is node {} of cluster {:?}, expected node {} of {:?}",
                    identity.peer_addr,
                    welcome.node_id,
                    welcome.cluster_id,
                    identity.peer_id,
                    identity.cluster
                ));
            }
            Ok(framed)
        }
        Ok(Some(Ok(Frame::Refused(reason)))) => Err(format!("refused: {reason}")),
        Ok(Some(Ok(_))) => Err("unexpected answer to Hello".into()),
        Ok(Some(Err(error))) => Err(error.to_string()),
        Ok(None) => Err("closed during handshake".into()),
        Err(_) => Err("no answer to Hello".into()),
    }
}

/// Sends queued messages, batching whatever is queued into one flush. Ok(()) when the queue's
/// sender is gone (shutdown).
async fn pump(
    mut framed: Framed<TcpStream, FrameCodec>,
    messages: &mut mpsc::Receiver<Message>,
) -> Result<(), crate::codec::CodecError> {
    loop {
        let Some(message) = messages.recv().await else {
            return Ok(());
        };
        framed.feed(Frame::Peer(message)).await?;
        for _ in 1..MESSAGES_PER_FLUSH_MAX {
            match messages.try_recv() {
                Ok(message) => framed.feed(Frame::Peer(message)).await?,
                Err(_) => break,
            }
        }
        framed.flush().await?;
    }
}
