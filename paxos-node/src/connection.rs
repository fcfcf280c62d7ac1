//! One TCP connection, as every part of the system uses it: the handshake, the framed stream,
//! and the batched writer. The server (both kinds of caller), the peer links and the client
//! library all go through this type, so the handshake rules and the write batching live once.

use crate::codec::{CodecError, FrameCodec};
use crate::wire::{Frame, Hello, Welcome};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::codec::Framed;

/// The write half of a connection.
pub type FrameSink = SplitSink<Framed<TcpStream, FrameCodec>, Frame>;
/// The read half of a connection.
pub type FrameStream = SplitStream<Framed<TcpStream, FrameCodec>>;

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("refused: {0}")]
    Refused(String),
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
}

/// A framed TCP connection to a peer or a client.
#[derive(Debug)]
pub struct Connection {
    framed: Framed<TcpStream, FrameCodec>,
}

impl Connection {
    fn new(stream: TcpStream) -> Connection {
        // Frames are small and latency matters more than packet count: the writer batches.
        let _ = stream.set_nodelay(true);
        Connection { framed: Framed::new(stream, FrameCodec::default()) }
    }

    /// Dials `addr` (within `connect_timeout`), says `hello`, and waits for the node's Welcome
    /// (within `handshake_timeout`). The caller checks that the Welcome names the node it
    /// meant to reach.
    pub async fn connect(
        addr: &str,
        hello: Hello,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<(Connection, Welcome), ConnectError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::ConnectTimeout)??;
        let mut connection = Connection::new(stream);
        connection.framed.send(Frame::Hello(hello)).await?;
        match tokio::time::timeout(handshake_timeout, connection.framed.next()).await {
            Ok(Some(Ok(Frame::Welcome(welcome)))) => Ok((connection, welcome)),
            Ok(Some(Ok(Frame::Refused(reason)))) => Err(ConnectError::Refused(reason)),
            Ok(Some(Ok(_))) => Err(ConnectError::UnexpectedAnswer),
            Ok(Some(Err(error))) => Err(error.into()),
            Ok(None) => Err(ConnectError::ClosedInHandshake),
            Err(_) => Err(ConnectError::NoWelcome),
        }
    }

    /// Takes an accepted stream and reads the caller's Hello (within `timeout`). `Ok(None)`: the
    /// caller closed without a word. The server answers with [`Connection::welcome`] or
    /// [`Connection::refuse`].
    pub async fn accept(
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<Option<(Connection, Hello)>, ConnectError> {
        let mut connection = Connection::new(stream);
        match tokio::time::timeout(timeout, connection.framed.next()).await {
            Err(_) => Err(ConnectError::NoHello),
            Ok(None) => Ok(None),
            Ok(Some(Err(error))) => Err(error.into()),
            Ok(Some(Ok(Frame::Hello(hello)))) => Ok(Some((connection, hello))),
            Ok(Some(Ok(_))) => Err(ConnectError::NotHello),
        }
    }

    pub async fn welcome(&mut self, welcome: Welcome) -> Result<(), CodecError> {
        self.framed.send(Frame::Welcome(welcome)).await
    }

    /// Tells the caller why it is refused; the connection is dropped afterwards.
    pub async fn refuse(mut self, reason: String) {
        let _ = self.framed.send(Frame::Refused(reason)).await;
    }

    /// The next frame; `None` when the other end closed.
    pub async fn read_frame(&mut self) -> Option<Result<Frame, CodecError>> {
        self.framed.next().await
    }

    pub fn split(self) -> (FrameSink, FrameStream) {
        self.framed.split()
    }
}

/// Writes what `queue` holds until every sender is gone, batching whatever is queued into one
/// flush of at most `frames_per_flush_max` frames. `to_frame` may return a permit with the
/// frame: it is released once the frame is written (flushed), not when it was queued, so a
/// permit bounds the answers waiting in memory as well as the requests being worked on.
pub async fn write_batches<T>(
    sink: &mut (impl Sink<Frame, Error = CodecError> + Unpin),
    queue: &mut mpsc::Receiver<T>,
    frames_per_flush_max: usize,
    to_frame: impl Fn(T) -> (Frame, Option<OwnedSemaphorePermit>),
) -> Result<(), CodecError> {
    assert!(frames_per_flush_max >= 1);
    let mut written = Vec::new();
    while let Some(item) = queue.recv().await {
        let (frame, permit) = to_frame(item);
        sink.feed(frame).await?;
        written.extend(permit);
        for _ in 1..frames_per_flush_max {
            let Ok(item) = queue.try_recv() else { break };
            let (frame, permit) = to_frame(item);
            sink.feed(frame).await?;
            written.extend(permit);
        }
        sink.flush().await?;
        written.clear();
    }
    Ok(())
}
