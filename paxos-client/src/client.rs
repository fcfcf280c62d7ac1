//! The async client library that `paxos-cli` and the tests use.
//!
//! A [`Client`] holds one connection at a time to one of its endpoints and pipelines every
//! request over it (responses are matched by id). It follows leader hints, moves to the next
//! endpoint when one fails, and retries a proposal with the same request id until it is
//! answered or the timeout passes, so a retried proposal is never chosen twice.
//!
//! A client's first proposal opens its session in the same log entry (a `Register` entry that
//! carries the value): the session's id is that slot, and the client's later request ids are
//! `(session, seq)` from seq 2. So a one-shot proposal writes one entry. The cluster keeps a
//! bounded table of sessions; a client whose session was evicted gets
//! [`ClientError::SessionExpired`] for a proposal whose outcome can no longer be told, and
//! opens a new session with the next one.

use crate::connection::{write_batches, ConnectError, Connection, FrameStream};
use crate::tls::Security;
use crate::wire::{
    new_session_secret, Caller, Frame, GcError, GcReport, Hello, HistoryError, HistoryPage, ProposeError,
    ReadConsistency, Request, Response, SessionSecret, StatusReport, TransferError, TransferReport,
    PROTOCOL_VERSION,
};
use futures::{Stream, StreamExt};
use paxos_core::{ProposalError, RequestId, Slot};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Redirects to the leader a node named that are followed at once, without the backoff: a
/// leader that handed over (`leader transfer`) names its successor, and waiting would only add
/// to the time clients see no leader. More than this in one call back off as usual (two nodes
/// naming each other while an election settles).
const REDIRECTS_AT_ONCE_MAX: u32 = 2;
/// How long a call keeps dialling when every endpoint refuses the connection (nothing listens
/// there) and none has answered during the call: long enough for a node being restarted to bind
/// its port again, short enough that a script pointed at a stopped cluster hears so at once.
/// A cluster that listens but has no quorum keeps the whole `ClientOptions::timeout`.
pub const NOTHING_LISTENS_GRACE: Duration = Duration::from_secs(2);

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub endpoints: Vec<String>,
    pub cluster: String,
    /// How long one operation (with all its retries) may take.
    pub timeout: Duration,
    /// On connecting, ask the node for the leader and connect to the leader instead. Saves the
    /// forwarding hop for proposals; `history` and `status` then answer from the leader, so
    /// clients that read one node's view leave this off.
    pub prefer_leader: bool,
    /// Largest value the client sends, checked before anything goes out (the nodes check
    /// their own limit too): set it to the nodes' `--value-bytes-max`.
    pub value_bytes_max: usize,
    /// TLS with this client's certificate, or plaintext to nodes that run without TLS.
    pub security: Security,
}

impl ClientOptions {
    /// Options for the default cluster name. With TLS, the cluster is the one `security` was
    /// set up for.
    pub fn new(endpoints: Vec<String>, security: Security) -> Self {
        let cluster = match &security {
            Security::Tls(tls) => tls.cluster().to_owned(),
            Security::InsecurePlaintext => crate::DEFAULT_CLUSTER.to_owned(),
        };
        ClientOptions {
            endpoints,
            security,
            cluster,
            timeout: Duration::from_secs(10),
            prefer_leader: false,
            value_bytes_max: paxos_core::Config::VALUE_BYTES_MAX_DEFAULT,
        }
    }
}

/// Why an operation failed. Each has a one-line message meant for a terminal.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    #[error("no endpoint reachable ({0})")]
    Unreachable(String),
    #[error("no quorum answered within {:.1} s (last error: {last_error})", timeout.as_secs_f64())]
    Timeout { timeout: Duration, last_error: String },
    /// The cluster refused the proposal for good (retrying the same request cannot help).
    #[error("refused: {0}")]
    Refused(ProposalError),
    /// The node could not serve the history read.
    #[error("history: {0}")]
    History(HistoryError),
    /// The leader refused the garbage collection.
    #[error("gc refused: {0}")]
    Gc(GcError),
    /// The leader refused the leadership transfer, or it did not complete.
    #[error("leader transfer: {0}")]
    Transfer(TransferError),
    #[error("history below slot {history_start} was truncated (asked from slot {requested})")]
    Truncated { requested: Slot, history_start: Slot },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The node refused this client: its certificate, cluster or version is not accepted.
    #[error("{0}")]
    Rejected(String),
    /// This client's certificate does not allow the request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("value of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge { size_bytes: usize, limit_bytes: usize },
    /// The session was evicted from the cluster's session table before the proposal was
    /// answered: it may or may not have been chosen (it is never chosen twice). The next
    /// proposal opens a new session.
    #[error(
        "session {session} expired before the proposal was answered: it may or may not have been chosen"
    )]
    SessionExpired { session: u64 },
    /// A client's first proposal (which opens its session) was retried after so many other
    /// sessions opened that the one its first attempt may have opened could be evicted: it may
    /// or may not have been chosen (it is never chosen twice). The next proposal opens a new
    /// session.
    #[error(
        "the first proposal was retried too late to tell whether it was chosen: it may or may not have been"
    )]
    RegistrationExpired,
}

impl ClientError {
    /// Will the same request fail the same way however often it is retried? (A value over the
    /// limit, a certificate not admitted, a forbidden request.) Loops that propose many values,
    /// such as `paxos-cli bench`, stop at the first such error rather than count it again and
    /// again.
    pub fn is_final(&self) -> bool {
        match self {
            ClientError::Refused(error) => !error.is_retryable(),
            ClientError::Rejected(_)
            | ClientError::Forbidden(_)
            | ClientError::TooLarge { .. }
            | ClientError::Protocol(_) => true,
            ClientError::Unreachable(_)
            | ClientError::Timeout { .. }
            | ClientError::History(_)
            | ClientError::Gc(_)
            | ClientError::Transfer(_)
            | ClientError::Truncated { .. }
            | ClientError::SessionExpired { .. }
            | ClientError::RegistrationExpired => false,
        }
    }
}

/// Why no connection could be opened; `permanent` when retrying cannot help, `nothing_listens`
/// when every address tried refused the TCP connection itself.
#[derive(Debug)]
struct OpenError {
    message: String,
    permanent: bool,
    nothing_listens: bool,
}

enum CallError {
    Closed(String),
    Timeout,
}

/// Requests queued for one connection's writer; `call` waits when it is full.
const REQUESTS_QUEUED_MAX: usize = 4096;
/// Requests written before one flush.
const REQUESTS_PER_FLUSH_MAX: usize = 512;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// One connection to one node, with requests pipelined over it: a writer task batches them,
/// a reader task hands each answer to the caller waiting for its id.
struct Pipeline {
    endpoint: String,
    /// The node's applied prefix when it welcomed this connection (see `Welcome`).
    applied_upto: Slot,
    frames: mpsc::Sender<Frame>,
    pending: Waiters,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
}

impl Pipeline {
    async fn open(endpoint: &str, options: &ClientOptions) -> Result<Pipeline, OpenError> {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: options.cluster.clone(),
            caller: Caller::Client,
        };
        let server_name = crate::tls::any_node_name(&options.cluster);
        let connected = Connection::connect(
            endpoint,
            hello,
            &options.security,
            &server_name,
            CONNECT_TIMEOUT,
            CONNECT_TIMEOUT,
        )
        .await;
        let (connection, welcome) = connected.map_err(|error| {
            let permanent = error.is_permanent();
            let nothing_listens = error.is_nothing_listening();
            let message = match error {
                ConnectError::Refused(reason) => format!("{endpoint} refused this client: {reason}"),
                error if permanent => format!(
                    "{endpoint}: {error} (is it a node of cluster {:?}, whose CA issued this client's certificate?)",
                    options.cluster
                ),
                error => format!("{endpoint}: {error}"),
            };
            OpenError { message, permanent, nothing_listens }
        })?;
        let (mut sink, stream) = connection.split();
        let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(REQUESTS_QUEUED_MAX);
        let pending: Waiters = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let writer_alive = alive.clone();
        let writer_pending = pending.clone();
        tokio::spawn(async move {
            // A node that reads nothing for a minute is as good as gone.
            let flush_timeout = crate::connection::DEFAULT_TIMEOUTS.idle;
            let _ =
                write_batches(&mut sink, &mut frames_rx, REQUESTS_PER_FLUSH_MAX, flush_timeout, |frame| {
                    (frame, None::<()>)
                })
                .await;
            writer_alive.store(false, Ordering::SeqCst);
            // Requests that will never be written fail now rather than at their timeout.
            if let Ok(mut pending) = writer_pending.lock() {
                pending.clear();
            }
            // The pipeline was dropped (or writing failed): close our side, so that the node
            // ends the session and frees its slot, and our reader then sees the end too.
            let _ = futures::SinkExt::close(&mut sink).await;
        });
        tokio::spawn(read_responses(stream, pending.clone(), alive.clone()));
        Ok(Pipeline {
            endpoint: endpoint.to_owned(),
            applied_upto: welcome.applied_upto,
            frames: frames_tx,
            pending,
            next_id: AtomicU64::new(1),
            alive,
        })
    }

    async fn call(&self, request: Request, timeout: Duration) -> Result<Response, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = || CallError::Closed(format!("{}: connection closed", self.endpoint));
        if !self.alive.load(Ordering::SeqCst) {
            return Err(closed());
        }
        let (tx, rx) = oneshot::channel();
        match self.pending.lock() {
            Ok(mut pending) => pending.insert(id, tx),
            Err(_) => return Err(CallError::Closed("connection state poisoned".into())),
        };
        let answer = async {
            // Queued at once when there is room (as calls are made, so pipelined proposals go
            // out in order: an awaited send can yield to the scheduler and let a later call
            // pass it); waits for room only when the queue is full.
            match self.frames.try_send(Frame::Request { id, request }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    self.frames.send(frame).await.map_err(|_| closed())?
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
            }
            rx.await.map_err(|_| closed())
        };
        let result = tokio::time::timeout(timeout, answer).await.unwrap_or(Err(CallError::Timeout));
        if result.is_err() {
            // No answer will come for this id: do not keep waiting for it.
            if let Ok(mut pending) = self.pending.lock() {
                pending.remove(&id);
            }
        }
        result
    }
}

/// Hands each answer to whoever waits for its id, until the connection ends.
async fn read_responses(mut stream: FrameStream, pending: Waiters, alive: Arc<AtomicBool>) {
    while let Some(Ok(Frame::Response { id, response })) = stream.next().await {
        let waiter = pending.lock().map(|mut p| p.remove(&id)).ok().flatten();
        if let Some(waiter) = waiter {
            let _ = waiter.send(response);
        }
    }
    alive.store(false, Ordering::SeqCst);
    // Dropping the waiters tells every caller the connection is gone.
    if let Ok(mut pending) = pending.lock() {
        pending.clear();
    }
}

struct ConnectionState {
    /// Index of the endpoint to try next.
    next_endpoint: usize,
    /// A leader address learned from a hint, tried before the endpoints.
    preferred: Option<String>,
    current: Option<Arc<Pipeline>>,
}

/// A client of the cluster. Cheap to clone; clones share the connection and the request ids.
#[derive(Clone)]
pub struct Client {
    options: Arc<ClientOptions>,
    /// The open session (its id is the slot of its `Register` entry, which holds the first
    /// value), with the secret it was opened with (a new one for each session).
    session: Arc<tokio::sync::Mutex<Option<(u64, SessionSecret)>>>,
    next_seq: Arc<AtomicU64>,
    state: Arc<tokio::sync::Mutex<ConnectionState>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoints", &self.options.endpoints).finish()
    }
}

/// A registration nonce unlikely to collide with any other client's: it routes the answer.
fn random_nonce() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    hasher.finish().max(1)
}

enum Attempt<T> {
    Done(Result<T, ClientError>),
    /// Retry after a pause, on the same connection unless `rotate`.
    Retry {
        error: String,
        rotate: bool,
    },
}

impl Client {
    pub fn new(options: ClientOptions) -> Result<Client, ClientError> {
        if options.endpoints.is_empty() {
            return Err(ClientError::Unreachable("no endpoint given".into()));
        }
        Ok(Client {
            options: Arc::new(options),
            session: Arc::new(tokio::sync::Mutex::new(None)),
            next_seq: Arc::new(AtomicU64::new(1)),
            state: Arc::new(tokio::sync::Mutex::new(ConnectionState {
                next_endpoint: 0,
                preferred: None,
                current: None,
            })),
        })
    }

    /// A new client with the same options but its own session and connection (a clone shares
    /// them).
    pub fn clone_fresh(&self) -> Client {
        Client::new((*self.options).clone()).expect("options were valid")
    }

    /// The session this client's proposals use, with its secret, once its first proposal has
    /// opened one.
    pub async fn session(&self) -> Option<(u64, SessionSecret)> {
        *self.session.lock().await
    }

    /// The live connection, or a new one to the preferred address or the next endpoint.
    async fn connection(&self) -> Result<Arc<Pipeline>, OpenError> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.current {
            if connection.alive.load(Ordering::SeqCst) {
                return Ok(connection.clone());
            }
        }
        state.current = None;
        let mut errors = Vec::new();
        if let Some(preferred) = state.preferred.take() {
            match Pipeline::open(&preferred, &self.options).await {
                Ok(connection) => {
                    let connection = Arc::new(connection);
                    state.current = Some(connection.clone());
                    return Ok(connection);
                }
                Err(error) => errors.push(error),
            }
        }
        let count = self.options.endpoints.len();
        for _ in 0..count {
            let endpoint = self.options.endpoints[state.next_endpoint % count].clone();
            state.next_endpoint = (state.next_endpoint + 1) % count;
            match self.open(&endpoint).await {
                Ok(connection) => {
                    // Stay on this endpoint until it fails.
                    state.next_endpoint = (state.next_endpoint + count - 1) % count;
                    let connection = Arc::new(connection);
                    state.current = Some(connection.clone());
                    return Ok(connection);
                }
                Err(error) => errors.push(error),
            }
        }
        Err(OpenError {
            // Every endpoint refused for good: retrying until the timeout would only hide why.
            permanent: errors.iter().all(|e| e.permanent),
            nothing_listens: errors.iter().all(|e| e.nothing_listens),
            message: errors.into_iter().map(|e| e.message).collect::<Vec<_>>().join("; "),
        })
    }

    /// Opens a connection to `endpoint`, or to the leader it names when `prefer_leader`.
    async fn open(&self, endpoint: &str) -> Result<Pipeline, OpenError> {
        let connection = Pipeline::open(endpoint, &self.options).await?;
        if !self.options.prefer_leader {
            return Ok(connection);
        }
        let leader_addr = match connection.call(Request::Status, CONNECT_TIMEOUT).await {
            Ok(Response::Status(status)) => status
                .leader
                .filter(|leader| *leader != status.node)
                .and_then(|leader| status.members.iter().find(|m| m.id == leader).map(|m| m.addr.clone())),
            _ => None,
        };
        match leader_addr {
            Some(addr) => Ok(Pipeline::open(&addr, &self.options).await.unwrap_or(connection)),
            None => Ok(connection),
        }
    }

    /// Drops `connection` (if still current) so the next call moves to the next endpoint.
    async fn rotate(&self, connection: &Arc<Pipeline>) {
        let mut state = self.state.lock().await;
        if state.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            state.current = None;
            state.next_endpoint = (state.next_endpoint + 1) % self.options.endpoints.len();
        }
    }

    async fn prefer(&self, addr: String, connection: &Arc<Pipeline>) {
        if addr == connection.endpoint {
            return;
        }
        let mut state = self.state.lock().await;
        state.preferred = Some(addr);
        if state.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            state.current = None;
        }
    }

    /// Sends `request` until `interpret` says done, the timeout passes, or no endpoint answers.
    async fn run<T>(
        &self,
        request: Request,
        mut interpret: impl FnMut(Response) -> (Attempt<T>, Option<String>),
    ) -> Result<T, ClientError> {
        let timeout = self.options.timeout;
        let deadline = Instant::now() + timeout;
        let mut backoff = BACKOFF_MIN;
        let mut ever_connected = false;
        let mut redirects_at_once = 0;
        let mut last_error = String::from("none");
        // Since when every endpoint has refused the connection, while none answered this call.
        let mut nothing_listens_since: Option<Instant> = None;
        let mut floor_slot: Option<Slot> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if ever_connected {
                    ClientError::Timeout { timeout, last_error }
                } else {
                    ClientError::Unreachable(last_error)
                });
            }
            let connection = match self.connection().await {
                Ok(connection) => connection,
                Err(error) if error.permanent => return Err(ClientError::Rejected(error.message)),
                Err(error) => {
                    if error.nothing_listens && !ever_connected {
                        let since = *nothing_listens_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= NOTHING_LISTENS_GRACE {
                            return Err(ClientError::Unreachable(format!(
                                "{}; nothing listens at any endpoint (is the cluster running?)",
                                error.message
                            )));
                        }
                    } else {
                        nothing_listens_since = None;
                    }
                    last_error = error.message;
                    tokio::time::sleep(backoff.min(remaining)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            ever_connected = true;
            let request = match &request {
                // A registration's floor is what the node its first attempt reached had
                // applied when it welcomed this client, the same in every retry (see
                // `paxos_core::Value::Register`).
                Request::Propose { request_id, secret, value, .. }
                    if request_id.client_id == RequestId::REGISTER_CLIENT_ID =>
                {
                    let floor_slot = *floor_slot.get_or_insert(connection.applied_upto);
                    Request::Propose {
                        request_id: *request_id,
                        secret: *secret,
                        value: value.clone(),
                        floor_slot,
                    }
                }
                other => other.clone(),
            };
            match connection.call(request, remaining).await {
                Ok(Response::Forbidden(reason)) => return Err(ClientError::Forbidden(reason)),
                Ok(Response::Unavailable(reason)) => {
                    last_error = format!("{}: {reason}", connection.endpoint);
                    self.rotate(&connection).await;
                }
                Ok(response) => match interpret(response) {
                    (Attempt::Done(result), _) => return result,
                    (Attempt::Retry { error, rotate }, leader_addr) => {
                        last_error = format!("{}: {error}", connection.endpoint);
                        if let Some(addr) = leader_addr {
                            let elsewhere = addr != connection.endpoint;
                            self.prefer(addr, &connection).await;
                            if elsewhere && redirects_at_once < REDIRECTS_AT_ONCE_MAX {
                                redirects_at_once += 1;
                                continue;
                            }
                        } else if rotate {
                            self.rotate(&connection).await;
                        }
                    }
                },
                Err(CallError::Closed(error)) => {
                    last_error = error;
                    self.rotate(&connection).await;
                }
                Err(CallError::Timeout) => {
                    last_error = format!("{}: no answer", connection.endpoint);
                    continue;
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Proposes one value; returns the slot it was chosen at.
    pub async fn propose(&self, value: Vec<u8>) -> Result<Slot, ClientError> {
        if value.len() > self.options.value_bytes_max {
            return Err(ClientError::TooLarge {
                size_bytes: value.len(),
                limit_bytes: self.options.value_bytes_max,
            });
        }
        let mut open = self.session.lock().await;
        let Some((session, secret)) = *open else {
            // The first value opens the session, in one entry: the session's request 1.
            // Concurrent proposals wait for it (they hold the lock's queue) and use it.
            let secret = new_session_secret().map_err(ClientError::Unreachable)?;
            let request_id = RequestId { client_id: RequestId::REGISTER_CLIENT_ID, seq: random_nonce() };
            // The floor is filled in by `run` from the connection the first attempt takes.
            let request = Request::Propose { request_id, secret, value, floor_slot: 0 };
            let slot = self.run(request, interpret_proposed).await?;
            *open = Some((slot, secret));
            self.next_seq.store(RequestId::FIRST_SEQ + 1, Ordering::Relaxed);
            return Ok(slot);
        };
        drop(open);
        let request_id = RequestId { client_id: session, seq: self.next_seq.fetch_add(1, Ordering::Relaxed) };
        let request = Request::Propose { request_id, secret, value, floor_slot: 0 };
        let result = self.run(request, interpret_proposed).await;
        if let Err(ClientError::SessionExpired { session: expired }) = &result {
            // The next proposal registers anew; this one's outcome stays unknown.
            let mut current = self.session.lock().await;
            if current.is_some_and(|(id, _)| id == *expired) {
                *current = None;
            }
        }
        result
    }

    /// Proposes every value of `values`, keeping up to `window` in flight on the connection;
    /// yields the outcomes in input order.
    pub fn propose_stream<'a>(
        &'a self,
        values: impl Stream<Item = Vec<u8>> + 'a,
        window: usize,
    ) -> impl Stream<Item = Result<Slot, ClientError>> + 'a {
        values.map(move |value| self.propose(value)).buffered(window.max(1))
    }

    /// Chosen history from `from_slot`, linearizable: it holds every value acknowledged
    /// before the call (see [`ReadConsistency::Linearizable`]).
    pub async fn history(&self, from_slot: Slot, limit: u64) -> Result<HistoryPage, ClientError> {
        self.history_with(from_slot, limit, ReadConsistency::Linearizable).await
    }

    /// Chosen history from `from_slot`, read as `consistency` says: `Serializable` is the
    /// node's own applied prefix, at once and without a quorum (it may trail the leader).
    pub async fn history_with(
        &self,
        from_slot: Slot,
        limit: u64,
        consistency: ReadConsistency,
    ) -> Result<HistoryPage, ClientError> {
        let request = Request::History { from_slot, limit, consistency };
        self.run(request, |response| match response {
            Response::History(Ok(page)) => (Attempt::Done(Ok(page)), None),
            // No leader confirmed the read (yet): ask again, at the leader if one is named.
            Response::History(Err(HistoryError::NotConfirmed { error, leader_addr })) => {
                let rotate = leader_addr.is_none();
                (Attempt::Retry { error: format!("read not confirmed: {error}"), rotate }, leader_addr)
            }
            Response::History(Err(HistoryError::Truncated { requested, history_start })) => {
                (Attempt::Done(Err(ClientError::Truncated { requested, history_start })), None)
            }
            Response::History(Err(error)) => (Attempt::Done(Err(ClientError::History(error))), None),
            other => {
                (Attempt::Done(Err(ClientError::Protocol(format!("unexpected answer {other:?}")))), None)
            }
        })
        .await
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.run(Request::Status, |response| match response {
            Response::Status(report) => (Attempt::Done(Ok(*report)), None),
            other => {
                (Attempt::Done(Err(ClientError::Protocol(format!("unexpected answer {other:?}")))), None)
            }
        })
        .await
    }

    /// A configuration change through the leader; the slot of the configuration entry once
    /// the leader has applied it. One change at a time: while another is in progress the
    /// leader says so and this retries until the timeout.
    pub async fn change_membership(&self, change: paxos_core::MembershipChange) -> Result<Slot, ClientError> {
        // Not a session's request: the id only routes the answer (the log does not
        // deduplicate configuration entries, and a retry of an applied change is refused as
        // such: "already a member", "not a member").
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 40;
        let request_id = RequestId { client_id: ADMIN_CLIENT_ID, seq };
        self.run(Request::ChangeMembership { request_id, change }, interpret_proposed).await
    }

    /// Garbage collection through the leader (truncation needs the leader's view of members).
    pub async fn gc(&self, truncate_below: Option<Slot>, force: bool) -> Result<GcReport, ClientError> {
        self.run(Request::Gc { truncate_below, force }, |response| match response {
            Response::Gc(Ok(report)) => (Attempt::Done(Ok(report)), None),
            Response::Gc(Err(GcError::NotLeader { leader_addr })) => not_leader(leader_addr),
            Response::Gc(Err(error)) => (Attempt::Done(Err(ClientError::Gc(error))), None),
            other => unexpected(other),
        })
        .await
    }

    /// Hands leadership to member `target`, through the leader; answered once the target
    /// leads. A refusal (the target cannot lead, is not heard, a change is in progress) or a
    /// transfer that did not complete is final: the cluster's state is then worth a look
    /// before asking again.
    pub async fn transfer_leader(&self, target: paxos_core::NodeId) -> Result<TransferReport, ClientError> {
        self.run(Request::TransferLeader { target }, |response| match response {
            Response::Transfer(Ok(report)) => (Attempt::Done(Ok(report)), None),
            Response::Transfer(Err(TransferError::NotLeader { leader_addr })) => not_leader(leader_addr),
            Response::Transfer(Err(error)) => (Attempt::Done(Err(ClientError::Transfer(error))), None),
            other => unexpected(other),
        })
        .await
    }
}

/// A request that goes through the leader reached another node: retry at the leader it names,
/// or at another endpoint if it names none.
fn not_leader<T>(leader_addr: Option<String>) -> (Attempt<T>, Option<String>) {
    let rotate = leader_addr.is_none();
    (Attempt::Retry { error: "not the leader".into(), rotate }, leader_addr)
}

fn unexpected<T>(response: Response) -> (Attempt<T>, Option<String>) {
    (Attempt::Done(Err(ClientError::Protocol(format!("unexpected answer {response:?}")))), None)
}

/// The client id of configuration changes (no session has it: a session's id is a slot).
const ADMIN_CLIENT_ID: u64 = u64::MAX - 1;

/// What a `Proposed` answer means for a proposal (or a registration): done, or retry where.
fn interpret_proposed(response: Response) -> (Attempt<Slot>, Option<String>) {
    match response {
        Response::Proposed(Ok(slot)) => (Attempt::Done(Ok(slot)), None),
        Response::Proposed(Err(error)) if error.is_retryable() => {
            let leader_addr = match &error {
                ProposeError::Protocol { leader_addr, .. } => leader_addr.clone(),
                _ => None,
            };
            // Without a hint, another node may know the leader (or be in the majority).
            let rotate = leader_addr.is_none();
            (Attempt::Retry { error: error.to_string(), rotate }, leader_addr)
        }
        Response::Proposed(Err(ProposeError::Protocol {
            error: ProposalError::SessionExpired(session),
            ..
        })) => (Attempt::Done(Err(ClientError::SessionExpired { session })), None),
        Response::Proposed(Err(ProposeError::Protocol {
            error: ProposalError::RegistrationExpired { .. },
            ..
        })) => (Attempt::Done(Err(ClientError::RegistrationExpired)), None),
        Response::Proposed(Err(ProposeError::Protocol { error, .. })) => {
            (Attempt::Done(Err(ClientError::Refused(error))), None)
        }
        // Overloaded and ShuttingDown are retryable: handled above.
        Response::Proposed(Err(error)) => {
            (Attempt::Done(Err(ClientError::Protocol(format!("unexpected refusal {error}")))), None)
        }
        other => unexpected(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Welcome;
    use futures::SinkExt;

    /// A dropped client closes its connection, so the node ends the session and frees its
    /// slot (the node's side of the test is a bare listener speaking the protocol).
    #[tokio::test]
    async fn a_dropped_client_closes_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let node = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (mut connection, _hello, _) =
                Connection::accept(stream, &Security::InsecurePlaintext, Duration::from_secs(2))
                    .await
                    .expect("hello")
                    .expect("a hello");
            let welcome = Welcome { node_id: 1, cluster_id: "paxos".into(), applied_upto: 0 };
            connection.welcome(welcome).await.expect("welcome");
            let (mut sink, mut stream) = connection.split();
            let Some(Ok(Frame::Request { id, .. })) = stream.next().await else { panic!("no request") };
            let page = HistoryPage { entries: Vec::new(), history_start: 0, applied_upto: 0 };
            sink.send(Frame::Response { id, response: Response::History(Ok(page)) }).await.expect("answer");
            // What the node sees next, once the client is gone.
            tokio::time::timeout(Duration::from_secs(2), stream.next()).await
        });
        let client =
            Client::new(ClientOptions::new(vec![addr], Security::InsecurePlaintext)).expect("client");
        client.history(0, 1).await.expect("history");
        drop(client);
        let after_drop = node.await.expect("node task");
        assert!(
            matches!(after_drop, Ok(None) | Ok(Some(Err(_)))),
            "the connection stayed open after the client was dropped: {after_drop:?}"
        );
    }
}
