//! Outbound links to peers: one task per peer, reconnecting with backoff.
//!
//! Messages queue in a bounded channel; while a peer is unreachable they are dropped (Paxos
//! retransmits what matters), so a dead peer costs a bounded amount of memory.

use crate::codec::CodecError;
use crate::connection::{write_batches, Connection};
use crate::tls::Security;
use crate::wire::{Caller, Frame, Hello, PROTOCOL_VERSION};
use paxos_core::{Message, NodeId};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer under load may take a while to answer the Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Messages written before one flush.
const MESSAGES_PER_FLUSH_MAX: usize = 512;
/// Bytes of messages queued for one peer (`Message::size_bytes`); past it a message is dropped,
/// which the protocol tolerates (retransmission, catch-up), rather than held: with 1 MiB values
/// a slow follower's queue of 16,384 messages could hold gigabytes. One message always fits.
const LINK_QUEUE_BYTES_MAX: usize = 8 << 20;

/// A queued message's bytes, counted for its link until the message is written (or dropped).
#[derive(Debug)]
struct QueuedBytes {
    bytes: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Identity of the link's two ends.
#[derive(Debug, Clone)]
pub struct LinkIdentity {
    pub node_id: NodeId,
    /// This node's data directory's incarnation, presented in the Hello.
    pub incarnation: paxos_core::Incarnation,
    /// This node's `--role`, presented in the Hello.
    pub role: paxos_core::MemberRole,
    pub peer_id: NodeId,
    pub peer_addr: String,
    pub cluster: String,
    pub security: Security,
    /// A peer that reads nothing for this long is disconnected (and dialled again).
    pub flush_timeout: Duration,
}

/// The outbound links of a node, one per other member of the configuration in force: the
/// driver makes and drops them as the configuration changes.
pub struct PeerLinks {
    /// This node's side of every link (the peer's id and address are filled in per link).
    template: LinkIdentity,
    runtime: tokio::runtime::Handle,
    tasks: tokio_util::task::TaskTracker,
    shutdown: watch::Receiver<bool>,
    queue_max: usize,
    links: std::collections::BTreeMap<NodeId, Link>,
    /// The nodes whose connections the server accepts: see [`PeerLinks::allow`].
    allowed: AllowedPeers,
}

/// The node ids the server accepts peer connections from, shared with it: the members of the
/// configuration this node has applied, and the ids its `--peer` flags name (a brand-new
/// cluster's members, or the cluster a joining node was pointed at). Any other node is refused
/// at the handshake, whatever certificate it presents: a certificate says who a node is, the
/// configuration says whether it belongs.
pub type AllowedPeers = Arc<std::sync::RwLock<std::collections::BTreeSet<NodeId>>>;

/// The driver's end of one link.
#[derive(Debug)]
struct Link {
    addr: String,
    messages: mpsc::Sender<(Message, QueuedBytes)>,
    /// Bytes of the messages queued for this link (see `LINK_QUEUE_BYTES_MAX`).
    queued_bytes: Arc<AtomicUsize>,
    /// Set by the link's task while it is connected (for the metrics).
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for PeerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks").field("peers", &self.links.keys().collect::<Vec<_>>()).finish()
    }
}

impl PeerLinks {
    pub fn new(
        template: LinkIdentity,
        runtime: tokio::runtime::Handle,
        tasks: tokio_util::task::TaskTracker,
        shutdown: watch::Receiver<bool>,
        queue_max: usize,
    ) -> Self {
        PeerLinks {
            template,
            runtime,
            tasks,
            shutdown,
            queue_max,
            links: Default::default(),
            allowed: Default::default(),
        }
    }

    /// The set the server checks peers against (see [`AllowedPeers`]).
    pub fn allowed_peers(&self) -> AllowedPeers {
        self.allowed.clone()
    }

    /// From now on, accept peer connections from `ids` only (see [`AllowedPeers`]).
    pub fn allow(&self, ids: impl IntoIterator<Item = NodeId>) {
        let ids = ids.into_iter().collect();
        *self.allowed.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = ids;
    }

    /// Makes the set of links match `members` (id, address): a link per member but this node,
    /// redialled when its address changed; links of nodes no longer members close.
    pub fn follow(&mut self, members: impl IntoIterator<Item = (NodeId, String)>) {
        let wanted: std::collections::BTreeMap<NodeId, String> = members
            .into_iter()
            .filter(|(id, addr)| *id != self.template.node_id && !addr.is_empty())
            .collect();
        self.links.retain(|id, link| wanted.get(id) == Some(&link.addr));
        for (id, addr) in wanted {
            if self.links.contains_key(&id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(self.queue_max);
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            let identity = LinkIdentity { peer_id: id, peer_addr: addr.clone(), ..self.template.clone() };
            let _guard = self.runtime.enter();
            let up = Arc::new(AtomicBool::new(false));
            self.tasks.spawn(run(identity, rx, self.shutdown.clone(), up.clone()));
            self.links.insert(id, Link { addr, messages: tx, queued_bytes, up });
        }
    }

    /// Queues `message` for `to`; false if there is no link or its queue is full (the protocol
    /// tolerates loss).
    pub fn send(&self, to: NodeId, message: Message) -> bool {
        let Some(link) = self.links.get(&to) else {
            return false;
        };
        let bytes = message.size_bytes();
        let before = link.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let queued = QueuedBytes { bytes, queued: link.queued_bytes.clone() };
        if before > 0 && before + bytes > LINK_QUEUE_BYTES_MAX {
            return false; // `queued` gives the bytes back
        }
        link.messages.try_send((message, queued)).is_ok()
    }

    /// Each linked member, and whether its link is connected now.
    pub fn link_states(&self) -> impl Iterator<Item = (NodeId, bool)> + '_ {
        self.links.iter().map(|(id, link)| (*id, link.up.load(Ordering::Relaxed)))
    }

    /// The address of a member this node links to.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.links.get(&id).map(|link| link.addr.as_str())
    }
}

/// Runs the link to one peer until shutdown.
async fn run(
    identity: LinkIdentity,
    mut messages: mpsc::Receiver<(Message, QueuedBytes)>,
    mut shutdown: watch::Receiver<bool>,
    up: Arc<AtomicBool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    loop {
        // Dialling takes up to the connect and handshake timeouts: not a reason to hold up
        // shutdown.
        let connected = tokio::select! {
            connected = connect(&identity) => connected,
            _ = shutdown.changed() => return,
        };
        match connected {
            Ok(connection) => {
                tracing::debug!(peer = identity.peer_id, addr = %identity.peer_addr, "link up");
                backoff = BACKOFF_MIN;
                last_error.clear();
                up.store(true, Ordering::Relaxed);
                let pumped = tokio::select! {
                    result = pump(connection, &mut messages, identity.flush_timeout) => Some(result),
                    _ = shutdown.changed() => None,
                };
                up.store(false, Ordering::Relaxed);
                match pumped {
                    None => return,
                    Some(Ok(())) => return, // the driver is gone
                    Some(Err(error)) => tracing::debug!(peer = identity.peer_id, %error, "link down"),
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
        // Messages queued while down are stale: drop them rather than replay them late. A
        // closed queue means the driver dropped this link (the peer left the configuration).
        loop {
            match messages.try_recv() {
                Ok(_) => continue,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(identity: &LinkIdentity) -> Result<Connection, String> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: identity.cluster.clone(),
        caller: Caller::Node(identity.node_id, identity.incarnation, identity.role),
    };
    let (connection, welcome) = Connection::connect(
        &identity.peer_addr,
        hello,
        &identity.security,
        &crate::tls::node_name(&identity.cluster, identity.peer_id),
        CONNECT_TIMEOUT,
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    if welcome.node_id != identity.peer_id || welcome.cluster_id != identity.cluster {
        return Err(format!(
            "{} is node {} of cluster {:?}, expected node {} of {:?}",
            identity.peer_addr, welcome.node_id, welcome.cluster_id, identity.peer_id, identity.cluster
        ));
    }
    Ok(connection)
}

/// Sends queued messages, batching whatever is queued into one flush. Ok(()) when the queue's
/// sender is gone (shutdown).
async fn pump(
    connection: Connection,
    messages: &mut mpsc::Receiver<(Message, QueuedBytes)>,
    flush_timeout: Duration,
) -> Result<(), CodecError> {
    // Peer links are one-way: the peer never writes, so anything on the read half means the
    // link is gone (closed, reset). Noticing at once beats finding out by losing a message.
    let (mut sink, mut stream) = connection.split();
    tokio::select! {
        written = write_batches(&mut sink, messages, MESSAGES_PER_FLUSH_MAX, flush_timeout, |(message, queued)| {
            (Frame::Peer(message), Some(queued))
        }) => written,
        _ = stream.next() => Err(CodecError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the peer closed the link",
        ))),
    }
}
