//! Accepts connections from peers and clients.
//!
//! Every connection completes TLS with a certificate of the cluster's CA (unless the node runs
//! with `--insecure-plaintext`) and opens with a Hello of the right protocol version and
//! cluster. A peer's Hello must name the node its certificate names; a client needs a client
//! certificate, and an admin one for gc. Anything malformed or unexpected closes that one
//! connection (and is logged); the node goes on serving everyone else.
//!
//! # Limits
//!
//! Every resource a connection can hold has a bound, so no caller (authenticated or not) can
//! exhaust the node:
//! - handshakes in progress: at most `handshakes_max`, each for at most `HANDSHAKE_TIMEOUT`,
//!   with a first frame (the Hello) of at most 4 KiB; when full, one chosen at random is closed
//!   to make room, so a flood of silent connections cannot keep honest callers out for its
//!   timeout;
//! - established connections: clients at most `client_connections_max` (both caps come from the
//!   file-descriptor budget, `limits.rs`; when full, the client idle the longest is closed if
//!   it has been idle for `CLIENT_EVICTION_IDLE_MIN`, else the newcomer is told it is busy and
//!   retries later: clients at work are never closed for newcomers); members have their own `PEER_CONNECTIONS_PER_MEMBER` slots,
//!   which clients cannot take (when a member's are full, its connection silent the longest is
//!   closed: a member dials again only when its old link is dead to it);
//! - reading: a client's frame must begin within the idle timeout (members have no idle limit:
//!   a follower's link to another follower is silent between elections) and, once begun, end
//!   within the frame timeout; a client's frames are at most a value and its request; read
//!   buffers grow with the bytes that arrive (see the codec) and shrink after a large frame;
//! - answers: each request reserves the most bytes its answer can take, from its connection's
//!   `CONNECTION_ANSWER_BYTES_MAX` (waiting) and from the node's `NODE_ANSWER_BYTES_MAX` (not
//!   waiting: `Unavailable` when spent), and gives them back once the answer is written; a
//!   client that does not read stops being read, and one that cannot take a batch of answers
//!   within the frame timeout is closed.

use crate::connection::{write_batches, ConnectError, Connection, ReadError, ReadTimeouts};
use crate::input::{AnswerPermit, Input, QueuedInput, RequestBytes, Responder};
use crate::tls::{Credentials, Security};
use crate::wire::{Caller, Frame, Hello, Request, Response, Welcome, PROTOCOL_VERSION};
use paxos_core::NodeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client connection is closed for a newcomer only if it has had nothing in flight for this
/// long. Without it, 2,000 benchmark clients against 1,024 slots closed each other between
/// requests, and every closed one came back through a new TLS handshake: 9,954 writes/s instead
/// of 34,745, p99 1.7 s.
const CLIENT_EVICTION_IDLE_MIN: Duration = Duration::from_secs(1);
/// Connections one member may hold to this node (a restarted member's old connection may still
/// look open when it dials again: when full, the one silent the longest is closed).
const PEER_CONNECTIONS_PER_MEMBER: usize = 4;
/// Answers waiting to be written on one client connection, in bytes reserved (see
/// [`Request::answer_bytes_max`]).
const CONNECTION_ANSWER_BYTES_MAX: usize = 32 << 20;
/// The same, for all client connections together.
const NODE_ANSWER_BYTES_MAX: usize = 64 << 20;
/// The same, for all client connections together; past it a request is answered
/// `Unavailable` at once (clients retry). Before the budget, 4 connections pipelining 1 MiB
/// proposals unread grew the leader to 3.0 GiB.
const NODE_REQUEST_BYTES_MAX: usize = 16 << 20;
/// Bytes of large frames (a value's request) being received from all client connections at
/// once: past it, a new large frame closes its connection (clients retry).
const NODE_READ_BYTES_MAX: usize = 64 << 20;
/// Client requests in the driver's input queue at once: the other half of the queue is the
/// members', so a client flood never crowds out a heartbeat or a vote.
const CLIENT_INPUTS_QUEUED_MAX: usize = 8_192;
/// Reservations count in units of this many bytes (semaphores count in u32).
const ANSWER_UNIT_BYTES: usize = 4 << 10;
/// Client requests in flight on one connection: every request reserves at least one unit.
const CLIENT_REQUESTS_IN_FLIGHT_MAX: usize = CONNECTION_ANSWER_BYTES_MAX / ANSWER_UNIT_BYTES;
/// Answers written before one flush.
const RESPONSES_PER_FLUSH_MAX: usize = 512;
/// How long a closing client connection may take to write the answers already queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

const _: () = assert!(crate::wire::HISTORY_PAGE_FRAME_BYTES_MAX * 2 <= CONNECTION_ANSWER_BYTES_MAX);
const _: () = assert!(CONNECTION_ANSWER_BYTES_MAX <= NODE_ANSWER_BYTES_MAX);
// One frame of the largest size a client may send fits the node's read budget.
const _: () = assert!(crate::wire::VALUE_BYTES_LIMIT + (64 << 10) <= NODE_READ_BYTES_MAX);
// The largest value a node may be configured for fits the node's request budget.
const _: () = assert!(crate::wire::VALUE_BYTES_LIMIT <= NODE_REQUEST_BYTES_MAX);

/// What every connection handler needs.
#[derive(Debug, Clone)]
pub struct ServerContext {
    pub node_id: NodeId,
    pub cluster: String,
    pub inputs: SyncSender<Input>,
    pub security: Security,
    pub timeouts: ReadTimeouts,
    /// Largest frame a client may send: a value at the node's limit and the request around it.
    pub client_frame_bytes_max: usize,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Who may connect as a peer (kept up to date by the driver).
    pub allowed_peers: crate::peer_link::AllowedPeers,
    /// Bytes of requests (a proposal's value) one client connection may have in the node, from
    /// the frame read until the answer: past it the connection is not read (TCP pushes back on
    /// the client). Two of the node's largest values: a client pipelines small values freely,
    /// and it takes many connections to fill the node's budget.
    pub connection_request_bytes_max: usize,
    /// See [`crate::NodeConfig::client_connections_max`].
    pub client_connections_max: usize,
    pub handshakes_max: usize,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("writing answers: {0}")]
    Write(#[from] crate::codec::CodecError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("handshake: {0}")]
    Connect(#[from] ConnectError),
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    #[error("closed to make room for a newer connection")]
    Evicted,
    #[error("handshake cut short to make room for a newer connection")]
    HandshakeEvicted,
    #[error("node is shutting down")]
    Closed,
}

impl SessionError {
    /// The other end closed or reset the connection, with or without a TLS close_notify.
    fn is_hang_up(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            SessionError::Read(ReadError::Codec(crate::codec::CodecError::Io(error)))
            | SessionError::Write(crate::codec::CodecError::Io(error)) => matches!(
                error.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// Connections of one kind that may be closed to make room for a newer one: the one with the
/// oldest `last_active` among those `idle`.
#[derive(Debug, Default)]
struct Roster {
    entries: Mutex<BTreeMap<u64, RosterEntry>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct RosterEntry {
    last_active: Arc<Mutex<Instant>>,
    /// The connection's answer budget: full means nothing is in flight.
    budget: Option<Arc<Semaphore>>,
    evict: CancellationToken,
}

/// A connection's place in a [`Roster`]; leaves it when dropped.
struct RosterPlace {
    roster: Arc<Roster>,
    id: u64,
    last_active: Arc<Mutex<Instant>>,
    evicted: CancellationToken,
}

impl Roster {
    fn join(self: &Arc<Self>, budget: Option<Arc<Semaphore>>) -> RosterPlace {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let last_active = Arc::new(Mutex::new(Instant::now()));
        let evicted = CancellationToken::new();
        let entry = RosterEntry { last_active: last_active.clone(), budget, evict: evicted.clone() };
        lock(&self.entries).insert(id, entry);
        RosterPlace { roster: self.clone(), id, last_active, evicted }
    }

    /// Closes the connection idle the longest (nothing in flight, and no activity for
    /// `idle_min`); false if there is none.
    fn evict_idlest(&self, idle_min: Duration) -> bool {
        let entries = lock(&self.entries);
        let full = budget_units(CONNECTION_ANSWER_BYTES_MAX);
        let now = Instant::now();
        let idle = entries.values().filter(|entry| {
            !entry.evict.is_cancelled()
                && entry.budget.as_ref().is_none_or(|b| b.available_permits() == full)
                && now.saturating_duration_since(*lock(&entry.last_active)) >= idle_min
        });
        match idle.min_by_key(|entry| *lock(&entry.last_active)) {
            Some(entry) => {
                entry.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes one connection chosen at random. Oldest-first would let a flood faster than one
    /// handshake per slot per round trip close every honest handshake before it ends; at random,
    /// an honest one survives with a fair chance however fast the flood is.
    fn evict_random(&self) -> bool {
        use std::hash::{BuildHasher, Hasher};
        let entries = lock(&self.entries);
        let open: Vec<&RosterEntry> = entries.values().filter(|entry| !entry.evict.is_cancelled()).collect();
        if open.is_empty() {
            return false;
        }
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.next_id.load(Ordering::Relaxed));
        open[hasher.finish() as usize % open.len()].evict.cancel();
        true
    }
}

impl RosterPlace {
    fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }
}

impl Drop for RosterPlace {
    fn drop(&mut self) {
        lock(&self.roster.entries).remove(&self.id);
    }
}

/// The lock holders never panic while holding these locks, so a poisoned one is still sound.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn budget_units(bytes: usize) -> usize {
    bytes.div_ceil(ANSWER_UNIT_BYTES)
}

/// The node's connection slots and answer budget.
#[derive(Debug)]
struct Slots {
    handshakes: Arc<Semaphore>,
    handshaking: Arc<Roster>,
    clients: Arc<Semaphore>,
    client_roster: Arc<Roster>,
    /// Per node id, made at its first connection: members come and go with the configuration,
    /// and any node of the cluster (its certificate says so) may be one the configuration this
    /// node has applied does not list yet. At most `PEER_IDS_MAX` ids.
    peers: std::sync::Mutex<BTreeMap<NodeId, PeerSlots>>,
    answer_budget: Arc<Semaphore>,
    /// Request bytes of all client connections (see `NODE_REQUEST_BYTES_MAX`).
    request_budget: Arc<Semaphore>,
    /// Client requests in the driver's input queue.
    client_inputs: Arc<AtomicU64>,
    /// Bytes of large client frames being received (see `NODE_READ_BYTES_MAX`).
    read_budget: Arc<Semaphore>,
}

/// A node's connection slots and the roster of its connections.
type PeerSlots = (Arc<Semaphore>, Arc<Roster>);

/// Distinct node ids this node keeps connection slots for (members, and nodes about to be).
const PEER_IDS_MAX: usize = 64;

/// The connection slots of node `peer`, made at its first connection.
fn peer_slots(slots: &Slots, peer: NodeId) -> Option<PeerSlots> {
    let mut peers = slots.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !peers.contains_key(&peer) && peers.len() >= PEER_IDS_MAX {
        return None;
    }
    let (semaphore, roster) = peers
        .entry(peer)
        .or_insert_with(|| (Arc::new(Semaphore::new(PEER_CONNECTIONS_PER_MEMBER)), Arc::default()));
    Some((semaphore.clone(), roster.clone()))
}

/// Accepts connections until `shutdown` turns true, then waits for every connection task to
/// finish (each stops on the same signal).
pub async fn serve(listener: TcpListener, context: ServerContext, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Slots {
        handshakes: Arc::new(Semaphore::new(context.handshakes_max)),
        handshaking: Arc::default(),
        clients: Arc::new(Semaphore::new(context.client_connections_max)),
        client_roster: Arc::default(),
        peers: std::sync::Mutex::default(),
        answer_budget: Arc::new(Semaphore::new(budget_units(NODE_ANSWER_BYTES_MAX))),
        request_budget: Arc::new(Semaphore::new(budget_units(NODE_REQUEST_BYTES_MAX))),
        client_inputs: Arc::default(),
        read_budget: Arc::new(Semaphore::new(NODE_READ_BYTES_MAX / crate::codec::READ_BUDGET_UNIT_BYTES)),
    });
    let context = Arc::new(context);
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Never wait for a handshake slot: close a handshake chosen at random instead. An honest caller
        // finishes its handshake in milliseconds, so only a flood far faster than that can
        // displace one.
        let handshake = match slots.handshakes.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                slots.handshaking.evict_random();
                tokio::select! {
                    permit = slots.handshakes.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
                    _ = shutdown.changed() => break,
                }
            }
        };
        // Joined here, not in the task, so the next accept can already evict it.
        let place = slots.handshaking.join(None);
        let context = context.clone();
        let slots = slots.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            match handle(stream, (handshake, place), &slots, &context, shutdown).await {
                Ok(()) => {}
                // A flood of silent connections makes one of these per connection: not worth a
                // line each by default. A handshake that fails (a wrong certificate, garbage)
                // is worth one: it is how an operator finds a misconfigured client.
                Err(
                    error @ (SessionError::HandshakeEvicted
                    | SessionError::Connect(ConnectError::NoHello | ConnectError::TlsTimeout)),
                ) => {
                    tracing::debug!(%addr, %error, "connection closed")
                }
                // A client that hangs up (every `paxos-cli` call does, most without a TLS
                // close_notify) is no event: at INFO it was nearly all of a node's log.
                Err(error) if error.is_hang_up() => tracing::debug!(%addr, %error, "connection closed"),
                Err(error) => tracing::info!(%addr, %error, "connection closed"),
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

async fn handle(
    stream: TcpStream,
    (handshake, place): (OwnedSemaphorePermit, RosterPlace),
    slots: &Slots,
    context: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let accepted = tokio::select! {
        accepted = Connection::accept(stream, &context.security, HANDSHAKE_TIMEOUT) => accepted?,
        _ = place.evicted.cancelled() => return Err(SessionError::HandshakeEvicted),
        _ = shutdown.changed() => return Ok(()),
    };
    drop(place);
    drop(handshake);
    let Some((mut connection, hello, credentials)) = accepted else { return Ok(()) };
    if let Err(reason) = check_hello(&hello, &credentials, context) {
        connection.refuse(reason.clone()).await;
        return Err(SessionError::Handshake(reason));
    }
    match hello.caller {
        Caller::Node(peer, incarnation, role) => {
            let Some((member_slots, roster)) = peer_slots(slots, peer) else {
                let reason = format!("this node already knows {PEER_IDS_MAX} other node ids");
                connection.refuse(reason.clone()).await;
                return Err(SessionError::Handshake(reason));
            };
            let (member_slots, roster) = (&member_slots, &roster);
            let slot = match member_slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                // Full: the member's certificate proved who dials, and a member dials again
                // only when its old link is dead to it, however alive it looks here (its host
                // rebooted, a NAT forgot the flow). The newest connection is the live one: close
                // the one silent the longest rather than refuse the member for good.
                Err(_) if roster.evict_idlest(Duration::ZERO) => {
                    let waited =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, member_slots.clone().acquire_owned());
                    tokio::select! {
                        waited = waited => waited.ok().and_then(|slot| slot.ok()),
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Err(_) => None,
            };
            let Some(slot) = slot else {
                let reason = format!("node {peer} already holds {PEER_CONNECTIONS_PER_MEMBER} connections");
                connection.busy(reason.clone()).await;
                return Err(SessionError::Handshake(reason));
            };
            let place = roster.join(None);
            connection.welcome(welcome(context)).await?;
            tracing::debug!(peer, "peer connected");
            let result = peer_session(connection, (peer, incarnation, role), &place, context, shutdown).await;
            drop(slot);
            result
        }
        Caller::Client => {
            let slot = match slots.clients.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                // Full: make room by closing the client idle the longest, if one is idle.
                Err(_) if slots.client_roster.evict_idlest(CLIENT_EVICTION_IDLE_MIN) => {
                    let waited =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, slots.clients.clone().acquire_owned());
                    tokio::select! {
                        waited = waited => waited.ok().and_then(|slot| slot.ok()),
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Err(_) => None,
            };
            let Some(slot) = slot else {
                let reason = format!(
                    "too many client connections ({}), all busy: retry later",
                    context.client_connections_max
                );
                connection.busy(reason.clone()).await;
                return Err(SessionError::Handshake(reason));
            };
            connection.set_frame_limit(context.client_frame_bytes_max);
            connection.set_read_budget(slots.read_budget.clone());
            connection.welcome(welcome(context)).await?;
            let result = client_session(connection, credentials, slots, context, shutdown).await;
            drop(slot);
            result
        }
    }
}

fn welcome(context: &ServerContext) -> Welcome {
    // The gauge trails the driver's applied prefix (it is set after each batch, and before the
    // node listens), so it is a floor a client's first proposal may carry.
    let applied_upto = context.metrics.applied_upto.get();
    Welcome { node_id: context.node_id, cluster_id: context.cluster.clone(), applied_upto }
}

fn check_hello(hello: &Hello, credentials: &Credentials, context: &ServerContext) -> Result<(), String> {
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
    match hello.caller {
        Caller::Node(peer, ..) => {
            if peer == context.node_id || peer == 0 {
                return Err(format!("node {peer} cannot be a peer of node {}", context.node_id));
            }
            if !credentials.is_node(&context.cluster, peer) {
                return Err(format!(
                    "the certificate presented is not node {peer}'s (it does not name {})",
                    crate::tls::node_name(&context.cluster, peer)
                ));
            }
            // A valid node certificate says who dials, not that it belongs: the configuration
            // this node applied (or its --peer flags) must name it. A member this node has not
            // heard of yet is refused until it applies the change, and dials again meanwhile.
            let allowed = context.allowed_peers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !allowed.contains(&peer) {
                return Err(format!(
                    "node {peer} is neither a member of the configuration node {} has applied nor named by its \
                     --peer flags (if it was removed, stop it; to add it, `paxos-cli member add`)",
                    context.node_id
                ));
            }
        }
        Caller::Client => {
            if !credentials.is_client(&context.cluster) {
                return Err(format!(
                    "the certificate presented is not a client's of cluster {:?} (it does not name {})",
                    context.cluster,
                    crate::tls::client_name(&context.cluster)
                ));
            }
        }
    }
    Ok(())
}

async fn peer_session(
    mut connection: Connection,
    (peer, incarnation, role): (NodeId, paxos_core::Incarnation, paxos_core::MemberRole),
    place: &RosterPlace,
    context: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    loop {
        // No idle limit for members: a follower's link to another follower carries nothing
        // between elections, and closing it would lose the next election's first message.
        // Members have their own slots, and a begun frame must still end in time.
        let timeouts = ReadTimeouts { idle: Duration::MAX / 4, frame: context.timeouts.frame };
        let frame = tokio::select! {
            frame = connection.read_frame(timeouts) => frame,
            _ = shutdown.changed() => return Ok(()),
            _ = place.evicted.cancelled() => return Err(SessionError::Evicted),
        };
        let Some(frame) = frame else { return Ok(()) };
        place.touch();
        let Frame::Peer(message) = frame? else {
            return Err(SessionError::Unexpected("peers send only protocol messages"));
        };
        match context.inputs.try_send(Input::Peer { from: peer, incarnation, role, message }) {
            Ok(()) => {}
            // The protocol tolerates loss; a full queue means the driver is behind.
            Err(TrySendError::Full(_)) => tracing::debug!(peer, "input queue full; peer message dropped"),
            Err(TrySendError::Disconnected(_)) => return Err(SessionError::Closed),
        }
    }
}

/// May `credentials` make `request`? `Err` is the refusal the client prints.
fn authorise(request: &Request, credentials: &Credentials, cluster: &str) -> Result<(), String> {
    match request {
        Request::Gc { .. } if !credentials.is_admin(cluster) => Err(format!(
            "gc and truncation need an admin certificate (one naming {}); this one is a client's",
            crate::tls::admin_name(cluster)
        )),
        Request::ChangeMembership { .. } if !credentials.is_admin(cluster) => Err(format!(
            "membership changes need an admin certificate (one naming {}); this one is a client's",
            crate::tls::admin_name(cluster)
        )),
        Request::TransferLeader { .. } if !credentials.is_admin(cluster) => Err(format!(
            "a leadership transfer needs an admin certificate (one naming {}); this one is a client's",
            crate::tls::admin_name(cluster)
        )),
        // The handshake already required a client certificate for everything else.
        _ => Ok(()),
    }
}

/// Reads requests and hands them to the driver; a writer task sends the answers back.
///
/// Each request first reserves the bytes its answer may take (see the module's limits),
/// given back when its answer is written: a client that pipelines requests and never reads
/// the answers stops being read once its budget is spent, and is closed when it has read
/// nothing for the frame timeout.
async fn client_session(
    connection: Connection,
    credentials: Credentials,
    slots: &Slots,
    context: &ServerContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let (mut sink, mut stream) = connection.split();
    let budget = Arc::new(Semaphore::new(budget_units(CONNECTION_ANSWER_BYTES_MAX)));
    let request_budget = Arc::new(Semaphore::new(budget_units(context.connection_request_bytes_max)));
    let place = slots.client_roster.join(Some(budget.clone()));
    context.metrics.client_connections.inc();
    // Counted down however the session ends.
    let _counted = GaugeDecrement(context.metrics.client_connections.clone());
    // Never full: every queued answer holds at least one unit of the budget, and there are as
    // many places in the queue as units.
    let (frames_tx, mut frames_rx) = mpsc::channel(CLIENT_REQUESTS_IN_FLIGHT_MAX);
    let flush_timeout = context.timeouts.frame;
    let mut writer = tokio::spawn(async move {
        write_batches(&mut sink, &mut frames_rx, RESPONSES_PER_FLUSH_MAX, flush_timeout, |answer| answer)
            .await
    });
    let result = loop {
        let frame = tokio::select! {
            frame = stream.next_within(context.timeouts) => frame,
            _ = shutdown.changed() => break Ok(()),
            _ = place.evicted.cancelled() => break Err(SessionError::Evicted),
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
        place.touch();
        let Frame::Request { id, request } = frame else {
            break Err(SessionError::Unexpected("clients send only requests"));
        };
        let units = budget_units(request.answer_bytes_max()) as u32;
        let permit = tokio::select! {
            permit = reserve(&budget, &slots.answer_budget, units) => match permit {
                Ok(permit) => permit,
                Err(Reserve::Closed) => break Ok(()),
                Err(Reserve::NodeBusy(connection)) => {
                    let permit = AnswerPermit::new(connection, None);
                    let busy = "node busy: its answer budget is spent by other clients; retry".to_owned();
                    let respond =
                        Responder { id, frames: frames_tx.clone(), permit, request_bytes: None, queued: None };
                    respond.send(Response::Unavailable(busy));
                    continue;
                }
            },
            _ = shutdown.changed() => break Ok(()),
            written = &mut writer => break match written {
                Ok(Err(error)) => Err(error.into()),
                _ => Err(SessionError::Closed),
            },
        };
        let mut respond =
            Responder { id, frames: frames_tx.clone(), permit, request_bytes: None, queued: None };
        if let Err(reason) = authorise(&request, &credentials, &context.cluster) {
            tracing::info!(request = request_name(&request), %reason, "request forbidden");
            respond.send(Response::Forbidden(reason));
            continue;
        }
        // The request's own bytes: from the connection waiting (not reading more until they
        // are free), then from the node without waiting.
        // A value larger than the node takes (refused as too large once it reaches the core)
        // counts as the whole connection budget: waiting for more would wait for ever.
        let units = budget_units(request.request_bytes())
            .min(budget_units(context.connection_request_bytes_max)) as u32;
        let connection_bytes = tokio::select! {
            permit = request_budget.clone().acquire_many_owned(units) => match permit {
                Ok(permit) => permit,
                Err(_) => break Ok(()),
            },
            _ = shutdown.changed() => break Ok(()),
            _ = place.evicted.cancelled() => break Err(SessionError::Evicted),
        };
        match slots.request_budget.clone().try_acquire_many_owned(units) {
            Ok(node_bytes) => {
                respond.request_bytes = Some(RequestBytes::new(connection_bytes, node_bytes));
            }
            Err(_) => {
                let busy =
                    "node busy: the requests of other clients hold its request budget; retry".to_owned();
                respond.send(Response::Unavailable(busy));
                continue;
            }
        }
        if slots.client_inputs.fetch_add(1, Ordering::Relaxed) >= CLIENT_INPUTS_QUEUED_MAX as u64 {
            slots.client_inputs.fetch_sub(1, Ordering::Relaxed);
            respond.send(Response::Unavailable("node overloaded: too many client requests queued".into()));
            continue;
        }
        respond.queued = Some(QueuedInput::new(slots.client_inputs.clone()));
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

/// Why no answer bytes could be reserved.
enum Reserve {
    /// The node is closing.
    Closed,
    /// The node's budget is spent: the request is answered `Unavailable` at once, with the
    /// connection's own units.
    NodeBusy(OwnedSemaphorePermit),
}

/// Reserves `units` from the connection's budget (waiting: a connection that does not read its
/// answers stops being read), then from the node's without waiting. Waiting there would queue
/// every connection behind the largest request in line (tokio's semaphore is fair), so a few
/// clients reading slowly could stall everyone's proposals.
async fn reserve(
    connection: &Arc<Semaphore>,
    node: &Arc<Semaphore>,
    units: u32,
) -> Result<AnswerPermit, Reserve> {
    let connection = connection.clone().acquire_many_owned(units).await.map_err(|_| Reserve::Closed)?;
    match node.clone().try_acquire_many_owned(units) {
        Ok(node) => Ok(AnswerPermit::new(connection, Some(node))),
        Err(tokio::sync::TryAcquireError::Closed) => Err(Reserve::Closed),
        Err(tokio::sync::TryAcquireError::NoPermits) => Err(Reserve::NodeBusy(connection)),
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Propose { .. } => "propose",
        Request::History { .. } => "history",
        Request::Status => "status",
        Request::Gc { .. } => "gc",
        Request::ChangeMembership { .. } => "member",
        Request::TransferLeader { .. } => "leader transfer",
    }
}

/// Decrements its gauge when dropped.
#[derive(Debug)]
struct GaugeDecrement(crate::metrics::GaugeU64);

impl Drop for GaugeDecrement {
    fn drop(&mut self) {
        self.0.dec();
    }
}
