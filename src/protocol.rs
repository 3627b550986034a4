//! The messages roles exchange, and their wire format: a small typed header plus raw little-endian payloads.
//!
//! A message on the wire is `[payload bytes][header JSON][from u32][to u32][header_len u32]`. Headers are
//! tiny (a few hundred bytes at most); token ids, row ids and embeddings travel as raw `u32`/`u64`/`f32`
//! arrays in the payload, never serialized per row.

use serde::{Deserialize, Serialize};

pub use crate::encoder::TokenBatch;
pub use crate::layout::Endpoint;
use crate::manifest::ShardEntry;
use crate::plan::{ChunkSpec, Plan};

/// What a message says. The bulk data a variant refers to lives in [`Message::payload`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Header {
    /// Controller -> every role: what to run. Sent once, before any work.
    Plan(Box<Plan>),
    /// Controller -> loader: read the rows `todo` (sub-ranges of `chunk`) and send them to `writer`, who
    /// writes them as shard number `shard`.
    Assign { chunk: ChunkSpec, todo: Vec<(u64, u64)>, writer: Endpoint, shard: u64 },
    /// Loader -> encoder: `rows` tokenized rows. Payload: row ids `u64[rows]`, lengths `u32[rows]`, then
    /// all token ids `u32[sum(lengths)]` back to back (a flat token batch).
    Batch { chunk: u64, writer: Endpoint, rows: u32 },
    /// Encoder -> loader: one batch of this loader's is done (returns one credit). `starved`: the encoder
    /// has no other batch queued, so it now waits for the next one to arrive (the loader's window to this
    /// encoder may be too small; see `roles::Credits`).
    Credit { starved: bool },
    /// Encoder -> writer: embeddings. Payload: row ids `u64[rows]`, then `f32[rows * dim]` row-major.
    Embedded { chunk: u64, rows: u32, dim: u32 },
    /// Loader -> writer: the rows of a chunk that will be embedded, with their text and source columns.
    /// Payload: row ids `u64[rows]`, then an Arrow IPC stream holding one record batch of `rows` rows.
    ChunkData { chunk: u64, shard: u64, todo: Vec<(u64, u64)>, rows: u32, skipped: u64 },
    /// Loader -> controller: a chunk has been read and fully handed out; `truncated` rows were cut at the
    /// model's length, and `lengths` counts rows per length bin ([`crate::tokenize::length_bin`]).
    ChunkLoaded {
        chunk: u64,
        rows: u64,
        skipped: u64,
        tokens: u64,
        #[serde(default)]
        truncated: u64,
        #[serde(default)]
        lengths: Vec<u64>,
    },
    /// Encoder -> controller: a batch was embedded in `seconds`.
    Progress { rows: u64, tokens: u64, padded_tokens: u64, seconds: f64 },
    /// Writer -> controller: a shard is durable on disk (fsynced and renamed) and may be committed.
    ShardWritten(Box<ShardEntry>),
    /// Writer or loader -> controller: an assigned chunk ended (drain) with nothing to commit.
    Released { chunk: u64 },
    /// Controller -> loaders and encoders: stop sending (loaders) or starting (encoders) batches.
    Drain,
    /// Loader or encoder -> writer (drain): these rows of the chunk (payload `u64[rows]`) will not come.
    Cut { chunk: u64, rows: u32 },
    /// A rank's router -> controller: the rank got a signal (`count` signals so far).
    Signal { rank: u32, signal: i32, count: u32 },
    /// Any role -> controller: this role cannot go on.
    Failed { role: String, message: String },
    /// Controller -> every role: the run is over (roles have nothing left in flight); the rank exits with
    /// `code` after a normal MPI shutdown.
    Shutdown { code: i32 },
    /// Router -> router, every second: this rank is alive (rank 0 to every rank, every rank to rank 0).
    /// Routers consume it; roles never see it.
    Heartbeat,
    /// Rank 0's router -> controller: nothing came from `ranks` for `silent_seconds` (see `--rank-timeout`).
    RankLost { ranks: Vec<u32>, silent_seconds: f64 },
    /// Controller -> every rank (failure, second signal, drain timeout): roles may be mid-batch or stuck, so
    /// the receiving rank's router exits the process with `code` at once, without waiting for its roles.
    /// Committed shards and the manifest are already safe. This replaces MPI_Abort, which can hang in the
    /// launcher (seen with Debian's Open MPI 4.1 and its external PMIx).
    Abort { code: i32 },
}

impl Header {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Header::Plan(_) => "Plan",
            Header::Assign { .. } => "Assign",
            Header::Batch { .. } => "Batch",
            Header::Credit { .. } => "Credit",
            Header::Embedded { .. } => "Embedded",
            Header::ChunkData { .. } => "ChunkData",
            Header::ChunkLoaded { .. } => "ChunkLoaded",
            Header::Progress { .. } => "Progress",
            Header::ShardWritten(_) => "ShardWritten",
            Header::Released { .. } => "Released",
            Header::Drain => "Drain",
            Header::Cut { .. } => "Cut",
            Header::Signal { .. } => "Signal",
            Header::Failed { .. } => "Failed",
            Header::Shutdown { .. } => "Shutdown",
            Header::Abort { .. } => "Abort",
            Header::Heartbeat => "Heartbeat",
            Header::RankLost { .. } => "RankLost",
        }
    }
}

/// One message between two endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub from: Endpoint,
    pub to: Endpoint,
    pub header: Header,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message too short ({0} bytes)")]
    Short(usize),
    #[error("bad message header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("payload of {what} has {got} bytes, expected {expected}")]
    PayloadSize { what: &'static str, got: usize, expected: usize },
    #[error("message header of {0} bytes is larger than the 4 GiB the wire format holds")]
    HeaderTooLarge(usize),
}

impl Envelope {
    pub fn new(from: Endpoint, to: Endpoint, header: Header) -> Self {
        Envelope { from, to, header, payload: Vec::new() }
    }

    pub fn with_payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    /// Serializes for a transport that moves bytes (MPI): the payload first, so it is neither copied here
    /// nor in [`Envelope::decode`] (only the small header is appended, into the payload's spare capacity).
    pub fn encode(self) -> Result<Vec<u8>, ProtocolError> {
        let header = serde_json::to_vec(&self.header).expect("headers always serialize; this is a bug");
        let header_len = u32::try_from(header.len()).map_err(|_| ProtocolError::HeaderTooLarge(header.len()))?;
        let mut out = self.payload;
        out.reserve_exact(header.len() + 12);
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.to.to_le_bytes());
        out.extend_from_slice(&header_len.to_le_bytes());
        Ok(out)
    }

    pub fn decode(mut bytes: Vec<u8>) -> Result<Self, ProtocolError> {
        let n = bytes.len();
        if n < 12 {
            return Err(ProtocolError::Short(n));
        }
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let (from, to, hlen) = (word(n - 12), word(n - 8), word(n - 4) as usize);
        if n < 12 + hlen {
            return Err(ProtocolError::Short(n));
        }
        let header: Header = serde_json::from_slice(&bytes[n - 12 - hlen..n - 12])?;
        bytes.truncate(n - 12 - hlen);
        Ok(Envelope { from, to, header, payload: bytes })
    }
}

/// Spare capacity payload builders leave for the encoded header, so that `encode` does not reallocate.
pub const HEADER_ROOM: usize = 512;

/// Appends a slice of plain numbers to a payload as raw bytes.
pub fn put<T: bytemuck::Pod>(buf: &mut Vec<u8>, values: &[T]) {
    buf.extend_from_slice(bytemuck::cast_slice(values));
}

/// Reads payload sections in order.
pub struct PayloadReader<'a> {
    bytes: &'a [u8],
}

impl<'a> PayloadReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        PayloadReader { bytes }
    }

    /// Takes `n` values of `T` (copied, since the buffer need not be aligned).
    pub fn take<T: bytemuck::Pod>(&mut self, what: &'static str, n: usize) -> Result<Vec<T>, ProtocolError> {
        let size = n * std::mem::size_of::<T>();
        if self.bytes.len() < size {
            return Err(ProtocolError::PayloadSize { what, got: self.bytes.len(), expected: size });
        }
        let (head, rest) = self.bytes.split_at(size);
        self.bytes = rest;
        Ok(bytemuck::pod_collect_to_vec(head))
    }

    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }

    /// Errors unless every byte was consumed.
    pub fn finish(self, what: &'static str) -> Result<(), ProtocolError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::PayloadSize { what, got: self.bytes.len(), expected: 0 })
        }
    }
}

/// A token batch's wire form (the type is the encoder contract's).
impl TokenBatch {
    pub fn to_payload(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.rows() * 12 + self.ids.len() * 4 + HEADER_ROOM);
        put(&mut buf, &self.row_ids);
        put(&mut buf, &self.lengths);
        put(&mut buf, &self.ids);
        buf
    }

    pub fn from_payload(rows: usize, payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = PayloadReader::new(payload);
        let row_ids = r.take::<u64>("batch row ids", rows)?;
        let lengths = r.take::<u32>("batch lengths", rows)?;
        let total: usize = lengths.iter().map(|&l| l as usize).sum();
        let ids = r.take::<u32>("batch token ids", total)?;
        r.finish("batch")?;
        Ok(TokenBatch { row_ids, lengths, ids })
    }
}

/// Embeddings as they travel from an encoder to a writer.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub row_ids: Vec<u64>,
    pub dim: usize,
    /// Row-major `rows x dim`.
    pub values: Vec<f32>,
}

impl Embeddings {
    pub fn to_payload(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.row_ids.len() * 8 + self.values.len() * 4 + HEADER_ROOM);
        put(&mut buf, &self.row_ids);
        put(&mut buf, &self.values);
        buf
    }

    pub fn from_payload(rows: usize, dim: usize, payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = PayloadReader::new(payload);
        let row_ids = r.take::<u64>("embedding row ids", rows)?;
        let values = r.take::<f32>("embeddings", rows * dim)?;
        r.finish("embeddings")?;
        Ok(Embeddings { row_ids, dim, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_keeps_header_and_payload() {
        let batch = TokenBatch { row_ids: vec![7, 3], lengths: vec![2, 3], ids: vec![101, 102, 101, 5, 102] };
        let env = Envelope::new(2, 5, Header::Batch { chunk: 9, writer: 5, rows: 2 }).with_payload(batch.to_payload());
        let back = Envelope::decode(env.clone().encode().unwrap()).unwrap();
        assert_eq!(back, env);
        let Header::Batch { rows, .. } = back.header else { panic!("wrong header") };
        assert_eq!(TokenBatch::from_payload(rows as usize, &back.payload).unwrap(), batch);
    }

    #[test]
    fn embeddings_round_trip_is_bit_exact() {
        let e = Embeddings { row_ids: vec![1, 2], dim: 3, values: vec![0.1, -2.5, f32::MIN_POSITIVE, 1e-30, 3.0, -0.0] };
        let back = Embeddings::from_payload(2, 3, &e.to_payload()).unwrap();
        assert_eq!(back.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), e.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert_eq!(back.row_ids, e.row_ids);
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        let e = Embeddings { row_ids: vec![1, 2], dim: 3, values: vec![0.0; 6] };
        let mut p = e.to_payload();
        p.truncate(p.len() - 1);
        assert!(Embeddings::from_payload(2, 3, &p).is_err());
        assert!(Envelope::decode(vec![1, 2, 3]).is_err());
        let mut bad = Envelope::new(0, 1, Header::Credit { starved: false }).encode().unwrap();
        let n = bad.len();
        bad[n - 4] = 200; // header length beyond the buffer
        assert!(Envelope::decode(bad).is_err());
    }
}
