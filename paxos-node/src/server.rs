//! Accepts connections from peers and clients.
//!
//! Every connection must open with a Hello of the right protocol version and cluster; a peer
//! must be a member other than this node. Anything malformed or unexpected closes that one
//! connection (and is logged); the node goes on serving everyone else.

use crate::codec::{CodecError, FrameCodec};
use crate::driver::{Input, Responder};
use crate::wire::{Caller, Frame, Hello, Response, Welcome, PROTOCOL_VERSION};
use futures::{SinkExt, StreamExt};
use paxos_core::NodeId;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::codec::Framed;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Client requests in flight on one connection; the reader waits when it is reached.
const CLIENT_REQUESTS_IN_FLIGHT_MAX: usize = 8192;
/// Connections served at once; further ones wait in the listen backlog.
const CONNECTIONS_MAX: usize = 1024;

/// What every connection handler needs.
#[derive(Debug, Clone)]
pub struct ServerContext {
    pub node_id: NodeId,
    pub cluster: String,
    pub members: BTreeSet<NodeId>,
    pub inputs: SyncSender<Input>,
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    #[error("node is shutting down")]
    Closed,
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(listener: TcpListener, context: ServerContext, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                let context = context.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(error) = handle(stream, addr, context, shutdown).await {
                        tracing::info!(%addr, %error, "connection closed");
                    }
                    drop(permit);
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    stream: TcpStream,
    addr: SocketAddr,
    context: ServerContext,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::default());
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await {
        Err(_) => return Err(ConnectionError::Handshake("no Hello within 5 s".into())),
        Ok(None) => return Ok(()),
        Ok(Some(frame)) => frame?,
    };
    let Frame::Hello(hello) = hello else {
        return Err(ConnectionError::Handshake("the first frame is not a Hello".into()));
    };
    if let Err(reason) = check_hello(&hello, &context) {
        let _ = framed.send(Frame::Refused(reason.clone())).await;
        return Err(ConnectionError::Handshake(reason));
    }
    framed
        .send(Frame::Welcome(Welcome { node_id: context.node_id, cluster_id: context.cluster.clone() }))
        .await?;
    match hello.caller {
        Caller::Node(peer) => {
            tracing::debug!(%addr, peer, "peer connected");
            peer_session(framed, peer, &context, shutdown).await
        }
        Caller::Client => client_session(framed, &context, shutdown).await,
    }
}

fn check_hello(hello: &Hello, context: &ServerContext) -> Result<(), String> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
            hello.protocol_version
        ));
    }
    if hello.cluster_id != context.cluster {
        return Err(format!(
            "this node belongs to cluster {:?}, not {:?}",
            context.cluster, hello.cluster_id
        ));
    }
    if let Caller::Node(peer) = hello.caller {
        if peer == context.node_id || !context.members.contains(&peer) {
            return Err(format!("node {peer} is not a peer of node {} in this cluster", context.node_id));
        }
    }
    Ok(())
}

async fn peer_session(
    mut framed: Framed<TcpStream, FrameCodec>,
    peer: NodeId,
    context: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    loop {
        let frame = tokio::select! {
            frame = framed.next() => frame,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        let Frame::Peer(message) = frame? else {
            return Err(ConnectionError::Unexpected("peers send only protocol messages"));
        };
        match context.inputs.try_send(Input::Peer { from: peer, message }) {
            Ok(()) => {}
            // The protocol tolerates loss; a full queue means the driver is behind.
            Err(TrySendError::Full(_)) => tracing::debug!(peer, "input queue full; peer message dropped"),
            Err(TrySendError::Disconnected(_)) => return Err(ConnectionError::Closed),
        }
    }
}

async fn client_session(
    framed: Framed<TcpStream, FrameCodec>,
    context: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let (mut sink, mut stream) = framed.split();
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<Frame>();
    // The writer batches whatever answers are ready into one flush.
    let writer = tokio::spawn(async move {
        while let Some(frame) = frames_rx.recv().await {
            sink.feed(frame).await?;
            while let Ok(frame) = frames_rx.try_recv() {
                sink.feed(frame).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, CodecError>(())
    });
    let in_flight = Arc::new(Semaphore::new(CLIENT_REQUESTS_IN_FLIGHT_MAX));
    let result = loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = shutdown.changed() => break Ok(()),
        };
        let Some(frame) = frame else { break Ok(()) };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => break Err(error.into()),
        };
        let Frame::Request { id, request } = frame else {
            break Err(ConnectionError::Unexpected("clients send only requests"));
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break Ok(());
        };
        let respond = Responder { id, frames: frames_tx.clone(), permit: Some(permit) };
        match context.inputs.try_send(Input::Client { request, respond }) {
            Ok(()) => {}
            Err(TrySendError::Full(Input::Client { respond, .. })) => {
                respond.send(Response::Unavailable("node overloaded: input queue full".into()))
            }
            Err(_) => break Err(ConnectionError::Closed),
        }
    };
    // Let answers already queued go out before closing.
    drop(frames_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    result
}
