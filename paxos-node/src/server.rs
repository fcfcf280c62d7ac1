//! Accepts connections from peers and clients.
//!
//! Every connection must open with a Hello of the right protocol version and cluster; a peer
//! must be a member other than this node. Anything malformed or unexpected closes that one
//! connection (and is logged); the node goes on serving everyone else.

use crate::codec::CodecError;
use crate::connection::{write_batches, ConnectError, Connection};
use crate::driver::{Input, Responder};
use crate::wire::{Caller, Frame, Hello, Response, Welcome, PROTOCOL_VERSION};
use futures::StreamExt;
use paxos_core::NodeId;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::task::TaskTracker;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Client requests in flight on one connection, answers not yet written included; the reader
/// waits when it is reached.
const CLIENT_REQUESTS_IN_FLIGHT_MAX: usize = 8192;
/// Answers written before one flush.
const RESPONSES_PER_FLUSH_MAX: usize = 512;
/// Connections served at once; further ones wait in the listen backlog.
const CONNECTIONS_MAX: usize = 1024;
/// How long a closing client connection may take to write the answers already queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection handler needs.
#[derive(Debug, Clone)]
pub struct ServerContext {
    pub node_id: NodeId,
    pub cluster: String,
    pub members: BTreeSet<NodeId>,
    pub inputs: SyncSender<Input>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("handshake: {0}")]
    Connect(#[from] ConnectError),
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    #[error("node is shutting down")]
    Closed,
}

/// Accepts connections until `shutdown` turns true, then waits for every connection task to
/// finish (each stops on the same signal).
pub async fn serve(listener: TcpListener, context: ServerContext, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, addr)) => {
                let context = context.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
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
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

async fn handle(
    stream: TcpStream,
    addr: SocketAddr,
    context: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let accepted = tokio::select! {
        accepted = Connection::accept(stream, HANDSHAKE_TIMEOUT) => accepted?,
        _ = shutdown.changed() => return Ok(()),
    };
    let Some((mut connection, hello)) = accepted else { return Ok(()) };
    if let Err(reason) = check_hello(&hello, &context) {
        connection.refuse(reason.clone()).await;
        return Err(SessionError::Handshake(reason));
    }
    connection.welcome(Welcome { node_id: context.node_id, cluster_id: context.cluster.clone() }).await?;
    match hello.caller {
        Caller::Node(peer) => {
            tracing::debug!(%addr, peer, "peer connected");
            peer_session(connection, peer, &context, shutdown).await
        }
        Caller::Client => client_session(connection, &context, shutdown).await,
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
    mut connection: Connection,
    peer: NodeId,
    context: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    loop {
        let frame = tokio::select! {
            frame = connection.read_frame() => frame,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        let Frame::Peer(message) = frame? else {
            return Err(SessionError::Unexpected("peers send only protocol messages"));
        };
        match context.inputs.try_send(Input::Peer { from: peer, message }) {
            Ok(()) => {}
            // The protocol tolerates loss; a full queue means the driver is behind.
            Err(TrySendError::Full(_)) => tracing::debug!(peer, "input queue full; peer message dropped"),
            Err(TrySendError::Disconnected(_)) => return Err(SessionError::Closed),
        }
    }
}

/// Reads requests and hands them to the driver; a writer task sends the answers back.
///
/// Each request takes one of `CLIENT_REQUESTS_IN_FLIGHT_MAX` permits, given back when its
/// answer is written: a client that pipelines requests and never reads the answers stops being
/// read once that many are waiting. The bound counts answers, not bytes: a history page can
/// be megabytes, so this alone does not bound the memory such a client holds.
async fn client_session(
    connection: Connection,
    context: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let (mut sink, mut stream) = connection.split();
    // Never full: every queued answer holds one of the permits, and there are as many
    // permits as places in the queue.
    let (frames_tx, mut frames_rx) = mpsc::channel(CLIENT_REQUESTS_IN_FLIGHT_MAX);
    let mut writer = tokio::spawn(async move {
        write_batches(&mut sink, &mut frames_rx, RESPONSES_PER_FLUSH_MAX, |answer| answer).await
    });
    let in_flight = Arc::new(Semaphore::new(CLIENT_REQUESTS_IN_FLIGHT_MAX));
    let result = loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = shutdown.changed() => break Ok(()),
            // Answers can no longer be written: stop reading requests that would go unanswered.
            written = &mut writer => break match written {
                Ok(Err(error)) => Err(error.into()),
                _ => Err(SessionError::Closed),
            },
        };
        let Some(frame) = frame else { break Ok(()) };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => break Err(error.into()),
        };
        let Frame::Request { id, request } = frame else {
            break Err(SessionError::Unexpected("clients send only requests"));
        };
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break Ok(()) },
            _ = shutdown.changed() => break Ok(()),
        };
        let respond = Responder { id, frames: frames_tx.clone(), permit };
        match context.inputs.try_send(Input::Client { request, respond }) {
            Ok(()) => {}
            Err(TrySendError::Full(Input::Client { respond, .. })) => {
                respond.send(Response::Unavailable("node overloaded: input queue full".into()))
            }
            Err(_) => break Err(SessionError::Closed),
        }
    };
    // Let answers already queued go out before closing, but not forever: a client that does
    // not read would otherwise keep the writer, its socket and its answers alive.
    drop(frames_tx);
    if !writer.is_finished() && tokio::time::timeout(DRAIN_TIMEOUT, &mut writer).await.is_err() {
        writer.abort();
        // Returns at once: the socket is closed when this returns.
        let _ = writer.await;
    }
    result
}
