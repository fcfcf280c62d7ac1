//! What the network hands the driver: an [`Input`], and for a client request the [`Responder`]
//! that carries its answer back to the connection, with the permits that bound what the
//! request holds meanwhile. A file of its own, below both: the server (server.rs) and the
//! history reader (history_reader.rs) make inputs, the driver (driver.rs) takes them, and
//! neither side imports the other.

use crate::storage::StorageError;
use crate::wire::{Frame, Request, Response};
use paxos_core::NodeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// Something for the driver to do.
#[derive(Debug)]
pub enum Input {
    /// A message from a peer; `from` comes from the connection's handshake.
    Peer {
        from: NodeId,
        /// As the peer's Hello gave them.
        incarnation: paxos_core::Incarnation,
        role: paxos_core::MemberRole,
        message: paxos_core::Message,
    },
    Client {
        request: Request,
        respond: Responder,
    },
    /// The history reader met a storage error (a record failing its checksum): fatal.
    StorageFailed(StorageError),
    /// The writer thread completed a write (see `writer.rs`): the driver collects it.
    Written,
    Shutdown,
}

/// Where the answer to one client request goes (its connection's writer), with the permit that
/// bounds the requests in flight on that connection.
#[derive(Debug)]
pub struct Responder {
    pub id: u64,
    /// The connection's answer queue; the permit travels with the answer and is released
    /// when the writer has written it.
    pub frames: mpsc::Sender<(Frame, Option<AnswerPermit>)>,
    pub permit: AnswerPermit,
    /// The request's own bytes (a proposal's value), reserved while the node holds them: given
    /// back when the answer is handed to the writer, with the value no longer needed.
    pub request_bytes: Option<RequestBytes>,
    /// Counts the request in the driver's input queue until it is handled.
    pub queued: Option<QueuedInput>,
}

impl Responder {
    pub fn send(self, response: Response) {
        // Never full (one place per permit); the client may have gone away, and then its
        // answer is simply dropped.
        let _ = self.frames.try_send((Frame::Response { id: self.id, response }, Some(self.permit)));
    }
}

/// A request's bytes, reserved from its connection and from the node while the node holds it.
#[derive(Debug)]
pub struct RequestBytes {
    _connection: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl RequestBytes {
    pub(crate) fn new(connection: OwnedSemaphorePermit, node: OwnedSemaphorePermit) -> RequestBytes {
        RequestBytes { _connection: connection, _node: node }
    }
}

/// A client request in the driver's input queue (see `CLIENT_INPUTS_QUEUED_MAX`); dropped
/// when the driver takes it.
#[derive(Debug)]
pub struct QueuedInput(Arc<AtomicU64>);

impl QueuedInput {
    /// Takes over one count of `queued`, which the server added when it queued the input.
    pub(crate) fn new(queued: Arc<AtomicU64>) -> QueuedInput {
        QueuedInput(queued)
    }
}

impl Drop for QueuedInput {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes reserved for one answer, from its connection and from the node; given back when the
/// answer is written (or dropped).
#[derive(Debug)]
pub struct AnswerPermit {
    _connection: OwnedSemaphorePermit,
    _node: Option<OwnedSemaphorePermit>,
}

impl AnswerPermit {
    pub(crate) fn new(connection: OwnedSemaphorePermit, node: Option<OwnedSemaphorePermit>) -> AnswerPermit {
        AnswerPermit { _connection: connection, _node: node }
    }
}
