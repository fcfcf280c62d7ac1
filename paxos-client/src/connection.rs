//! One connection, as every part of the system uses it: TLS, the handshake, the framed stream
//! with its timeouts, and the batched writer. The server (both kinds of caller), the peer links and the client
//! library all go through this type, so the handshake rules and the write batching live once.

use crate::codec::{CodecError, FrameCodec};
use crate::tls::{Credentials, Security};
use crate::wire::{Frame, Hello, Welcome};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

/// A byte stream under the frames: TCP, or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}
type BoxedTransport = Box<dyn Transport>;

/// The write half of a connection.
pub type FrameSink = FramedWrite<WriteHalf<BoxedTransport>, FrameCodec>;

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("no answer to Hello")]
    NoWelcome,
    #[error("no Hello within the handshake timeout")]
    NoHello,
    #[error("closed during handshake")]
    ClosedInHandshake,
    #[error("unexpected answer to Hello")]
    UnexpectedAnswer,
    #[error("the first frame is not a Hello")]
    NotHello,
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

impl ConnectError {
    /// Will dialling again fail the same way? A refusal, or a certificate the other end (or
    /// this end) does not accept, does not change by retrying.
    pub fn is_permanent(&self) -> bool {
        let tls = |error: &std::io::Error| error.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
        match self {
            ConnectError::Refused(_) | ConnectError::ServerName(_) => true,
            ConnectError::Tls(error)
            | ConnectError::Io(error)
            | ConnectError::Codec(CodecError::Io(error)) => tls(error),
            _ => false,
        }
    }

    /// Did the TCP connection itself get refused: no process listens at the address (stopped,
    /// or not started yet)?
    pub fn is_nothing_listening(&self) -> bool {
        matches!(self, ConnectError::Io(error) if error.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// Why reading the next frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("a frame took longer than {0:?} to arrive")]
    SlowFrame(Duration),
}

/// How long a reader waits: for the next frame to begin, and for a begun frame to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTimeouts {
    pub idle: Duration,
    pub frame: Duration,
}

/// How long connections may stay silent, and take over one frame, by default.
pub const DEFAULT_TIMEOUTS: ReadTimeouts =
    ReadTimeouts { idle: Duration::from_secs(60), frame: Duration::from_secs(20) };

/// A read buffer larger than this is given back once it is empty.
const READ_BUFFER_KEPT_BYTES_MAX: usize = 1 << 20;
/// The same, for write buffers.
const WRITE_BUFFER_KEPT_BYTES_MAX: usize = 1 << 20;
/// What a replaced buffer starts with (tokio-util's own initial capacity).
const BUFFER_START_BYTES: usize = 8 << 10;
/// Largest frame before the Hello: a Hello is a few dozen bytes.
const HELLO_FRAME_BYTES_MAX: usize = 4 << 10;

/// The read half of a connection.
#[derive(Debug)]
pub struct FrameStream {
    framed: FramedRead<ReadHalf<BoxedTransport>, FrameCodec>,
    /// Checks the timeouts of [`FrameStream::next_within`]. One timer for the connection's
    /// life, not one per frame: reading a frame costs a clock read, not a timer registration.
    check: Option<tokio::time::Interval>,
    last_frame: Instant,
    partial_since: Option<Instant>,
}

impl FrameStream {
    fn new(framed: FramedRead<ReadHalf<BoxedTransport>, FrameCodec>) -> FrameStream {
        FrameStream { framed, check: None, last_frame: Instant::now(), partial_since: None }
    }

    /// The next frame; `None` when the other end closed.
    pub async fn next(&mut self) -> Option<Result<Frame, CodecError>> {
        self.framed.next().await
    }

    /// The next frame, but no waiting longer than `timeouts.idle` (since the last frame) for one
    /// to begin, or longer than `timeouts.frame` for a begun one to end: a peer that sends half
    /// a frame and stalls, or connects and says nothing, gives its slot back. Each limit is
    /// enforced within a quarter of itself.
    pub async fn next_within(&mut self, timeouts: ReadTimeouts) -> Option<Result<Frame, ReadError>> {
        let period = (timeouts.idle.min(timeouts.frame) / 4).max(Duration::from_millis(1));
        let check = self.check.get_or_insert_with(|| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        loop {
            tokio::select! {
                frame = self.framed.next() => {
                    self.last_frame = Instant::now();
                    self.partial_since = None;
                    // One large frame must not leave a large buffer for the connection's life.
                    if self.framed.read_buffer().is_empty()
                        && self.framed.decoder_mut().take_largest_frame_bytes() > READ_BUFFER_KEPT_BYTES_MAX
                    {
                        *self.framed.read_buffer_mut() = bytes::BytesMut::with_capacity(BUFFER_START_BYTES);
                    }
                    return frame.map(|f| f.map_err(ReadError::from));
                }
                // The read cannot tell "nothing yet" from "half a frame"; the buffer can.
                _ = check.tick() => {
                    let now = Instant::now();
                    if self.framed.read_buffer().is_empty() {
                        self.partial_since = None;
                        if now - self.last_frame >= timeouts.idle {
                            return Some(Err(ReadError::Idle(timeouts.idle)));
                        }
                    } else if now - *self.partial_since.get_or_insert(now) >= timeouts.frame {
                        return Some(Err(ReadError::SlowFrame(timeouts.frame)));
                    }
                }
            }
        }
    }
}

/// A framed connection to a peer or a client, over TLS unless plaintext was chosen.
#[derive(Debug)]
pub struct Connection {
    sink: FrameSink,
    stream: FrameStream,
}

impl std::fmt::Debug for dyn Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

fn prepare(stream: &TcpStream) {
    // Frames are small and latency matters more than packet count: the writer batches.
    let _ = stream.set_nodelay(true);
}

impl Connection {
    fn new(transport: BoxedTransport) -> Connection {
        let (read, write) = tokio::io::split(transport);
        Connection {
            sink: FramedWrite::new(write, FrameCodec::default()),
            stream: FrameStream::new(FramedRead::new(read, FrameCodec::default())),
        }
    }

    /// Dials `addr` (within `connect_timeout`), sets up TLS expecting the node to prove it is
    /// `server_name`, says `hello`, and waits for the node's Welcome (the TLS handshake and the
    /// Welcome within `handshake_timeout`). The caller checks that the Welcome names the node
    /// it meant to reach.
    pub async fn connect(
        addr: &str,
        hello: Hello,
        security: &Security,
        server_name: &str,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<(Connection, Welcome), ConnectError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::ConnectTimeout)??;
        prepare(&stream);
        let transport: BoxedTransport = match security {
            Security::InsecurePlaintext => Box::new(stream),
            Security::Tls(tls) => {
                let name = ServerName::try_from(server_name.to_owned())
                    .map_err(|_| ConnectError::ServerName(server_name.to_owned()))?;
                let tls_stream =
                    tokio::time::timeout(handshake_timeout, tls.connector().connect(name, stream))
                        .await
                        .map_err(|_| ConnectError::TlsTimeout)?
                        .map_err(ConnectError::Tls)?;
                Box::new(tls_stream)
            }
        };
        let mut connection = Connection::new(transport);
        connection.sink.send(Frame::Hello(hello)).await?;
        match tokio::time::timeout(handshake_timeout, connection.stream.next()).await {
            Ok(Some(Ok(Frame::Welcome(welcome)))) => Ok((connection, welcome)),
            Ok(Some(Ok(Frame::Refused(reason)))) => Err(ConnectError::Refused(reason)),
            Ok(Some(Ok(Frame::Busy(reason)))) => Err(ConnectError::Busy(reason)),
            Ok(Some(Ok(_))) => Err(ConnectError::UnexpectedAnswer),
            Ok(Some(Err(error))) => Err(error.into()),
            Ok(None) => Err(ConnectError::ClosedInHandshake),
            Err(_) => Err(ConnectError::NoWelcome),
        }
    }

    /// Takes an accepted stream, completes TLS (checking the caller's certificate against the
    /// cluster's CA) and reads the caller's Hello, all within `timeout`. `Ok(None)`: the caller
    /// closed without a word. The server checks the Hello against the credentials and answers
    /// with [`Connection::welcome`] or [`Connection::refuse`].
    pub async fn accept(
        stream: TcpStream,
        security: &Security,
        timeout: Duration,
    ) -> Result<Option<(Connection, Hello, Credentials)>, ConnectError> {
        let deadline = Instant::now() + timeout;
        prepare(&stream);
        let (transport, credentials): (BoxedTransport, Credentials) = match security {
            Security::InsecurePlaintext => (Box::new(stream), Credentials::Plaintext),
            Security::Tls(tls) => {
                let Some(acceptor) = tls.acceptor() else {
                    return Err(ConnectError::Tls(std::io::Error::other("this end cannot accept")));
                };
                let tls_stream = tokio::time::timeout_at(deadline, acceptor.accept(stream))
                    .await
                    .map_err(|_| ConnectError::TlsTimeout)?
                    .map_err(ConnectError::Tls)?;
                // The handshake required a certificate of the CA, so there is one.
                let certificate = tls_stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                let Some(certificate) = certificate.map(|c| c.clone().into_owned()) else {
                    return Err(ConnectError::Tls(std::io::Error::other("no client certificate")));
                };
                (Box::new(tls_stream), Credentials::Certificate(certificate))
            }
        };
        let mut connection = Connection::new(transport);
        connection.stream.framed.decoder_mut().set_limit(HELLO_FRAME_BYTES_MAX);
        match tokio::time::timeout_at(deadline, connection.stream.next()).await {
            Err(_) => Err(ConnectError::NoHello),
            Ok(None) => Ok(None),
            Ok(Some(Err(error))) => Err(error.into()),
            Ok(Some(Ok(Frame::Hello(hello)))) => {
                // The server lowers it again for clients (see `set_frame_limit`).
                connection.stream.framed.decoder_mut().set_limit(crate::wire::FRAME_BYTES_MAX);
                Ok(Some((connection, hello, credentials)))
            }
            Ok(Some(Ok(_))) => Err(ConnectError::NotHello),
        }
    }

    pub async fn welcome(&mut self, welcome: Welcome) -> Result<(), CodecError> {
        self.sink.send(Frame::Welcome(welcome)).await
    }

    /// Tells the caller why it is refused; the connection is dropped afterwards.
    pub async fn refuse(mut self, reason: String) {
        let _ = self.sink.send(Frame::Refused(reason)).await;
    }

    /// Tells the caller to come back later; the connection is dropped afterwards.
    pub async fn busy(mut self, reason: String) {
        let _ = self.sink.send(Frame::Busy(reason)).await;
    }

    /// From now on, refuse frames larger than `frame_bytes_max` (a client's requests are at
    /// most a value and a little overhead).
    pub fn set_frame_limit(&mut self, frame_bytes_max: usize) {
        self.stream.framed.decoder_mut().set_limit(frame_bytes_max);
    }

    /// From now on, large frames arriving here count against `budget` (see
    /// [`crate::codec::FrameCodec::set_read_budget`]).
    pub fn set_read_budget(&mut self, budget: std::sync::Arc<tokio::sync::Semaphore>) {
        self.stream.framed.decoder_mut().set_read_budget(budget);
    }

    /// The next frame within `timeouts`; `None` when the other end closed.
    pub async fn read_frame(&mut self, timeouts: ReadTimeouts) -> Option<Result<Frame, ReadError>> {
        self.stream.next_within(timeouts).await
    }

    pub fn split(self) -> (FrameSink, FrameStream) {
        (self.sink, self.stream)
    }
}

/// Writes what `queue` holds until every sender is gone, batching whatever is queued into one
/// flush of at most `frames_per_flush_max` frames. `to_frame` may return permits with the
/// frame: they are released once the frame is written (flushed), not when it was queued, so
/// they bound the answers waiting in memory as well as the requests being worked on.
///
/// A flush that takes longer than `flush_timeout` fails the writer: the other end is not
/// reading, and what waits for it must not stay in memory for ever.
pub async fn write_batches<T, P>(
    sink: &mut FrameSink,
    queue: &mut mpsc::Receiver<T>,
    frames_per_flush_max: usize,
    flush_timeout: Duration,
    to_frame: impl Fn(T) -> (Frame, Option<P>),
) -> Result<(), CodecError> {
    assert!(frames_per_flush_max >= 1);
    let mut written = Vec::new();
    while let Some(first) = queue.recv().await {
        let result = {
            let batch = async {
                let (frame, permit) = to_frame(first);
                sink.feed(frame).await?;
                written.extend(permit);
                for _ in 1..frames_per_flush_max {
                    let Ok(item) = queue.try_recv() else { break };
                    let (frame, permit) = to_frame(item);
                    sink.feed(frame).await?;
                    written.extend(permit);
                }
                sink.flush().await
            };
            // Most batches go straight into the socket's buffer: only one that has to wait for the
            // other end to read arms the timer.
            let mut batch = std::pin::pin!(batch);
            match futures::poll!(batch.as_mut()) {
                std::task::Poll::Ready(result) => result,
                std::task::Poll::Pending => {
                    tokio::time::timeout(flush_timeout, batch).await.unwrap_or_else(|_| {
                        Err(CodecError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the other end read nothing for {flush_timeout:?}"),
                        )))
                    })
                }
            }
        };
        result?;
        written.clear();
        // One large answer must not leave a large buffer for the connection's life.
        if sink.write_buffer().is_empty()
            && sink.encoder_mut().take_largest_frame_bytes() > WRITE_BUFFER_KEPT_BYTES_MAX
        {
            *sink.write_buffer_mut() = bytes::BytesMut::with_capacity(BUFFER_START_BYTES);
        }
    }
    Ok(())
}
