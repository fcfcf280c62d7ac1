//! The one place that knows the byte format: length-prefixed frames of bincode 2.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of bincode. The length is
//! checked against `frame_bytes_max` before any buffer is reserved, and bincode decodes with the
//! same byte limit, so a hostile length field or vector length cannot make the node allocate
//! more than the limit. Trailing bytes after a decoded frame are an error.

use crate::wire::{Frame, FRAME_BYTES_MAX};
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// bincode's own limit, the same as the frame limit.
type Limit = bincode::config::Configuration<
    bincode::config::BigEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_BYTES_MAX>,
>;

fn config() -> Limit {
    bincode::config::standard().with_big_endian().with_limit::<FRAME_BYTES_MAX>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame of {size_bytes} bytes exceeds the limit of {FRAME_BYTES_MAX} bytes")]
    TooLarge { size_bytes: usize },
    /// The node's budget for frames being received is spent: the connection is closed, and the
    /// client retries.
    #[error("node busy: {0} bytes of large frames are being received already; retry")]
    ReadBudgetSpent(usize),
}

/// Frames larger than this draw on the node-wide read budget while they arrive (smaller ones fit
/// the buffer a connection starts with).
pub const LARGE_FRAME_BYTES: usize = 64 << 10;

/// A node-wide budget for the bytes of large frames being received, in units of this many
/// bytes (semaphores count in u32).
pub const READ_BUDGET_UNIT_BYTES: usize = 4 << 10;

/// Encodes a value with the project's bincode configuration (also used for storage records).
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes a whole buffer; leftover bytes are an error.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(value)
}

/// Bytes of the length field in front of every frame.
const LENGTH_BYTES: usize = 4;

/// Frames over a byte stream, for `tokio_util::codec::Framed`.
///
/// Decoding never reserves room for the length a header claims: the read buffer grows with the
/// bytes that actually arrive (the framed reader doubles it as they come), so a peer that sends
/// a header claiming 16 MiB and then stalls holds only what it sent.
#[derive(Debug)]
pub struct FrameCodec {
    /// Largest frame this reader takes now, at most `FRAME_BYTES_MAX`: a connection that has
    /// not said Hello yet may send only a small frame.
    frame_bytes_max: usize,
    /// The largest frame decoded or encoded since it was last taken: the buffer under this codec
    /// kept an allocation at least that large.
    largest_frame_bytes: usize,
    /// The node-wide budget a large frame's bytes are reserved from while it arrives (client
    /// connections of a node), and the reservation of the frame arriving now.
    read_budget: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    reserved: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::with_limit(FRAME_BYTES_MAX)
    }
}

impl FrameCodec {
    /// A codec that decodes frames of at most `frame_bytes_max` (capped at `FRAME_BYTES_MAX`).
    pub fn with_limit(frame_bytes_max: usize) -> FrameCodec {
        FrameCodec {
            frame_bytes_max: frame_bytes_max.min(FRAME_BYTES_MAX),
            largest_frame_bytes: 0,
            read_budget: None,
            reserved: None,
        }
    }

    /// The largest frame since the last call (and forget it). A `BytesMut`'s `capacity()` does
    /// not say how large its allocation is once bytes were consumed; this does.
    pub fn take_largest_frame_bytes(&mut self) -> usize {
        std::mem::take(&mut self.largest_frame_bytes)
    }

    pub fn set_limit(&mut self, frame_bytes_max: usize) {
        self.frame_bytes_max = frame_bytes_max.min(FRAME_BYTES_MAX);
    }

    /// From now on, a frame larger than `LARGE_FRAME_BYTES` reserves its bytes from `budget`
    /// once its header arrives, until it is decoded (or the connection drops): half-received
    /// frames count against a node-wide budget, and a frame that finds it spent is refused
    /// (`ReadBudgetSpent`, which closes the connection) rather than buffered. Before, 500
    /// client frames of 4 MiB missing their last byte held 2 GiB.
    pub fn set_read_budget(&mut self, budget: std::sync::Arc<tokio::sync::Semaphore>) {
        self.read_budget = Some(budget);
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(header) = src.get(..LENGTH_BYTES) else { return Ok(None) };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if length > self.frame_bytes_max {
            return Err(CodecError::Malformed(format!(
                "bad length field: a frame of {length} bytes exceeds the limit of {}",
                self.frame_bytes_max
            )));
        }
        if src.len() < LENGTH_BYTES + length {
            if length > LARGE_FRAME_BYTES && self.reserved.is_none() {
                if let Some(budget) = &self.read_budget {
                    let units = length.div_ceil(READ_BUDGET_UNIT_BYTES) as u32;
                    match budget.clone().try_acquire_many_owned(units) {
                        Ok(permit) => self.reserved = Some(permit),
                        Err(_) => return Err(CodecError::ReadBudgetSpent(length)),
                    }
                }
            }
            return Ok(None);
        }
        self.reserved = None;
        src.advance(LENGTH_BYTES);
        self.largest_frame_bytes = self.largest_frame_bytes.max(LENGTH_BYTES + length);
        let payload = src.split_to(length);
        decode(&payload).map(Some)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let bytes = encode(&frame)?;
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(CodecError::TooLarge { size_bytes: bytes.len() });
        }
        self.largest_frame_bytes = self.largest_frame_bytes.max(LENGTH_BYTES + bytes.len());
        dst.reserve(LENGTH_BYTES + bytes.len());
        dst.put_u32(bytes.len() as u32);
        dst.put_slice(&bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Caller, Hello, Request};
    use paxos_core::{Ballot, Message, RequestId, Value};
    use proptest::prelude::*;

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                protocol_version: 1,
                cluster_id: "c".into(),
                caller: Caller::Node(2, 2, paxos_core::MemberRole::Voter),
            }),
            Frame::Peer(Message::Accept {
                ballot: Ballot::new(3, 1),
                entries: vec![
                    (7, Value::Noop),
                    (
                        8,
                        Value::Command {
                            request_id: RequestId { client_id: 1, seq: 2 },
                            key: [9; 16],
                            payload: b"x".to_vec(),
                        },
                    ),
                ],
                commit_upto: 7,
            }),
            Frame::Request {
                id: 9,
                request: Request::Propose {
                    request_id: RequestId { client_id: 5, seq: 1 },
                    secret: [3; 16],
                    value: vec![0; 100],
                    floor_slot: 0,
                },
            },
        ]
    }

    fn encode_frame(frame: Frame) -> BytesMut {
        let mut buffer = BytesMut::new();
        FrameCodec::default().encode(frame, &mut buffer).expect("encodes");
        buffer
    }

    #[test]
    fn frames_round_trip() {
        for frame in sample_frames() {
            let mut buffer = encode_frame(frame.clone());
            let decoded = FrameCodec::default().decode(&mut buffer).expect("decodes").expect("complete");
            assert_eq!(decoded, frame);
            assert!(buffer.is_empty());
        }
    }

    /// Payloads are written as bytes (`serde_bytes`) for speed; the encoding must stay what
    /// a sequence of u8 gave (length, then the bytes), so disks and peers of earlier versions
    /// read the same records.
    #[test]
    fn payload_bytes_encode_as_a_sequence_of_u8_did() {
        #[derive(serde::Serialize)]
        enum ValueAsSequence {
            _Noop,
            Command { request_id: RequestId, key: [u8; 16], payload: Vec<u8> },
        }
        for length in [0usize, 1, 100, 250, 251, 70_000] {
            let payload: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
            let request_id = RequestId { client_id: 7, seq: 9 };
            let before =
                encode(&ValueAsSequence::Command { request_id, key: [5; 16], payload: payload.clone() })
                    .expect("encodes");
            let value = Value::Command { request_id, key: [5; 16], payload };
            assert_eq!(encode(&value).expect("encodes"), before, "{length} bytes");
            assert_eq!(decode::<Value>(&before).expect("decodes"), value);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buffer = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        buffer.extend_from_slice(&[0; 16]);
        let capacity_before = buffer.capacity();
        let result = FrameCodec::default().decode(&mut buffer);
        assert!(matches!(result, Err(CodecError::Malformed(_))), "{result:?}");
        assert!(buffer.capacity() <= capacity_before.max(64));
    }

    #[test]
    fn a_header_claiming_a_large_frame_reserves_nothing() {
        // The limit itself: legal, so the codec waits for the bytes, but without reserving them.
        let mut buffer = BytesMut::with_capacity(64);
        buffer.extend_from_slice(&(FRAME_BYTES_MAX as u32).to_be_bytes());
        buffer.extend_from_slice(&[0; 16]);
        assert!(matches!(FrameCodec::default().decode(&mut buffer), Ok(None)));
        assert!(buffer.capacity() <= 64, "reserved {} bytes", buffer.capacity());
    }

    #[test]
    fn a_lower_limit_refuses_larger_frames() {
        let mut buffer = encode_frame(sample_frames()[2].clone());
        assert!(buffer.len() > 100);
        assert!(FrameCodec::with_limit(100).decode(&mut buffer).is_err());
    }

    #[test]
    fn a_huge_vector_length_inside_a_small_frame_is_refused() {
        // A Propose whose value claims 2^60 bytes: bincode's limit stops it before allocating.
        let mut payload = encode(&Frame::Request {
            id: 1,
            request: Request::Propose {
                request_id: RequestId { client_id: 1, seq: 1 },
                secret: [0; 16],
                value: vec![],
                floor_slot: 0,
            },
        })
        .expect("encodes");
        payload.pop(); // the floor slot (0)
        payload.pop(); // the empty vector's length (0)
        payload.extend_from_slice(&[0xFD, 0x10, 0, 0, 0, 0, 0, 0, 0]); // varint u64 = 2^60
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buffer.extend_from_slice(&payload);
        assert!(FrameCodec::default().decode(&mut buffer).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Frame::Refused("x".into())).expect("encodes");
        bytes.push(0);
        assert!(decode::<Frame>(&bytes).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Arbitrary bytes never panic the decoder and never make it hold more than the limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buffer = BytesMut::from(&bytes[..]);
            let mut codec = FrameCodec::default();
            for _ in 0..64 {
                match codec.decode(&mut buffer) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            prop_assert!(buffer.capacity() <= FRAME_BYTES_MAX);
        }

        /// Valid frames cut short or corrupted byte by byte decode to an error or to nothing
        /// (waiting for more bytes), never to a panic.
        #[test]
        fn truncated_and_corrupted_frames_are_errors(index in 0usize..3, cut in 0usize..200, flip in 0usize..200, bit in 0u8..8) {
            let frame = sample_frames()[index].clone();
            let full = encode_frame(frame);
            let mut truncated = BytesMut::from(&full[..cut.min(full.len())]);
            let _ = FrameCodec::default().decode(&mut truncated);
            let mut corrupted = full.clone();
            let position = flip % corrupted.len();
            corrupted[position] ^= 1 << bit;
            let _ = FrameCodec::default().decode(&mut corrupted);
        }
    }
}
