//! The NBD transmission phase: requests in, simple or structured replies out.
//!
//! The request loop reads one header at a time, checks its range into a
//! [`BlockRange`], waits for the session's admission (a slot and the bytes
//! of the memory budget) and the volume's order, then runs reads
//! concurrently in tasks and writes, flushes and trims inline. A reply that
//! cannot be written within [`REPLY_TIMEOUT`] (a client that stopped
//! reading) ends the connection.

use super::proto::*;
use crate::range::BlockRange;
use crate::session::{RequestError, Session};
use crate::volume::Volume;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Longest a reply may take to be written before the client is dropped.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// The sending half of a connection and how it replies.
pub(crate) struct Replies {
    wr: tokio::sync::Mutex<Writer>,
    /// Structured replies were negotiated.
    structured: bool,
    /// The `base:allocation` context was selected.
    base_allocation: bool,
    /// Set when a reply failed or timed out: the connection is over.
    dead: watch::Sender<bool>,
}

/// A piece of a structured reply.
enum Piece {
    /// Data at an offset.
    Data(u64, Bytes),
    /// A hole (reads as zeros) at an offset, of a length.
    Hole(u64, u32),
}

fn errno(e: &RequestError) -> u32 {
    match e {
        RequestError::Range(_) => EINVAL,
        RequestError::ReadOnly(_) => EPERM,
        RequestError::Read(_) | RequestError::Overlay(_) => EIO,
    }
}

impl Replies {
    pub(crate) fn new(wr: Writer, structured: bool, base_allocation: bool) -> Replies {
        Replies {
            wr: tokio::sync::Mutex::new(wr),
            structured,
            base_allocation,
            dead: watch::channel(false).0,
        }
    }

    /// Writes `parts` as one reply, within [`REPLY_TIMEOUT`] (the timer is
    /// armed only when the write does not complete at once).
    async fn send_parts(&self, parts: &[&[u8]]) -> std::io::Result<()> {
        let write = async {
            let mut w = self.wr.lock().await;
            for p in parts {
                if !p.is_empty() {
                    w.write_all(p).await?;
                }
            }
            w.flush().await
        };
        tokio::pin!(write);
        let sent = match futures::poll!(write.as_mut()) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => tokio::time::timeout(REPLY_TIMEOUT, write)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client did not read its replies",
                    ))
                }),
        };
        if sent.is_err() {
            self.dead.send_replace(true);
        }
        sent
    }

    async fn simple(&self, handle: u64, error: u32, data: &[u8]) -> std::io::Result<()> {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&error.to_be_bytes());
        h[8..].copy_from_slice(&handle.to_be_bytes());
        let data = if error == 0 { data } else { &[] };
        self.send_parts(&[&h, data]).await
    }

    fn chunk_head(handle: u64, flags: u16, kind: u16, head: &[u8], data_len: usize) -> Vec<u8> {
        let mut h = Vec::with_capacity(20 + head.len());
        h.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&handle.to_be_bytes());
        h.extend_from_slice(&((head.len() + data_len) as u32).to_be_bytes());
        h.extend_from_slice(head);
        h
    }

    /// Sends an error (simple or structured, as negotiated).
    async fn error(&self, handle: u64, error: u32) -> std::io::Result<()> {
        if !self.structured {
            return self.simple(handle, error, &[]).await;
        }
        let mut head = error.to_be_bytes().to_vec();
        head.extend_from_slice(&0u16.to_be_bytes());
        let h = Self::chunk_head(handle, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, &head, 0);
        self.send_parts(&[&h]).await
    }

    /// Sends the pieces of a READ as structured chunks, the last one DONE.
    async fn pieces(&self, handle: u64, pieces: &[Piece]) -> std::io::Result<()> {
        let mut heads: Vec<Vec<u8>> = Vec::new();
        let mut parts: Vec<&[u8]> = Vec::new();
        for (k, p) in pieces.iter().enumerate() {
            let flags = if k + 1 == pieces.len() {
                REPLY_FLAG_DONE
            } else {
                0
            };
            heads.push(match p {
                Piece::Data(off, b) => Self::chunk_head(
                    handle,
                    flags,
                    REPLY_TYPE_OFFSET_DATA,
                    &off.to_be_bytes(),
                    b.len(),
                ),
                Piece::Hole(off, len) => {
                    let mut head = off.to_be_bytes().to_vec();
                    head.extend_from_slice(&len.to_be_bytes());
                    Self::chunk_head(handle, flags, REPLY_TYPE_OFFSET_HOLE, &head, 0)
                }
            });
        }
        if pieces.is_empty() {
            heads.push(Self::chunk_head(
                handle,
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                &[],
                0,
            ));
        }
        for (k, h) in heads.iter().enumerate() {
            parts.push(h);
            if let Some(Piece::Data(_, b)) = pieces.get(k) {
                parts.push(b);
            }
        }
        self.send_parts(&parts).await
    }
}

/// Splits `range` into runs that read as zeros without a fetch (holes of
/// the image not written in the overlay, merged) and data, one run per
/// chunk: each data run is then a slice of one chunk's buffer, sent as its
/// own structured reply chunk, never copied into one buffer for the range.
fn runs(volume: &Volume, range: BlockRange) -> Vec<(BlockRange, bool)> {
    let mut out: Vec<(BlockRange, bool)> = Vec::new();
    for (i, piece) in range.split(volume.image.chunk_size()) {
        let hole = volume.image.is_hole(i)
            && !volume
                .overlay()
                .is_some_and(|o| o.any_written(piece.offset(), piece.end()));
        match out.last_mut() {
            Some((r, true)) if hole => *r = range.clip(r.offset(), piece.end()).unwrap_or(*r),
            _ => out.push((piece, hole)),
        }
    }
    out
}

/// What a READ answers.
enum ReadReply {
    Simple(Bytes),
    Pieces(Vec<Piece>),
    Error(u32),
}

/// Reads what one READ answers (the caller holds the volume's read turn;
/// the reply is sent after it is released, so a client that reads its
/// replies slowly never holds up writers).
async fn read(volume: &Volume, structured: bool, range: BlockRange) -> ReadReply {
    let failed = |e: &RequestError, r: BlockRange| {
        tracing::warn!(error = %e, offset = r.offset(), len = r.len(), "read failed");
        ReadReply::Error(errno(e))
    };
    if !structured {
        return match volume.read(range).await {
            Ok(b) => ReadReply::Simple(b),
            Err(e) => failed(&e, range),
        };
    }
    let runs = runs(volume, range);
    // The chunks of one request are read concurrently, as ImageHandle::read does.
    let data = futures::future::try_join_all(
        runs.iter()
            .filter(|(_, hole)| !hole)
            .map(|(r, _)| async move { volume.read(*r).await.map_err(|e| (e, *r)) }),
    )
    .await;
    let mut data = match data {
        Ok(d) => d.into_iter(),
        Err((e, r)) => return failed(&e, r),
    };
    let pieces = runs
        .into_iter()
        .map(|(r, hole)| match hole {
            true => Piece::Hole(r.offset(), r.len() as u32),
            false => Piece::Data(r.offset(), data.next().unwrap_or_default()),
        })
        .collect();
    ReadReply::Pieces(pieces)
}

/// Sends what [`read`] produced.
async fn send_read(replies: &Replies, handle: u64, r: ReadReply) -> std::io::Result<()> {
    match r {
        ReadReply::Simple(b) => replies.simple(handle, 0, &b).await,
        ReadReply::Pieces(p) => replies.pieces(handle, &p).await,
        ReadReply::Error(e) if replies.structured => replies.error(handle, e).await,
        ReadReply::Error(e) => replies.simple(handle, e, &[]).await,
    }
}

/// Answers BLOCK_STATUS for `base:allocation`.
async fn block_status(
    volume: &Volume,
    replies: &Replies,
    handle: u64,
    flags: u16,
    range: Option<BlockRange>,
) -> std::io::Result<()> {
    let Some(range) = range.filter(|_| replies.base_allocation) else {
        let e = if replies.base_allocation {
            EINVAL
        } else {
            ENOTSUP
        };
        return replies.error(handle, e).await;
    };
    let mut runs = runs(volume, range);
    if flags & CMD_FLAG_REQ_ONE != 0 {
        runs.truncate(1);
    }
    let mut payload = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
    for (r, hole) in runs {
        payload.extend_from_slice(&(r.len() as u32).to_be_bytes());
        payload.extend_from_slice(&(if hole { STATE_HOLE_ZERO } else { 0 }).to_be_bytes());
    }
    let h = Replies::chunk_head(
        handle,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        &payload,
        0,
    );
    replies.send_parts(&[&h]).await
}

/// Awaits `fut` unless the connection is stopped (shutdown or a dead reply path).
async fn unless_stopped<T>(
    dead: &mut watch::Receiver<bool>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = crate::serve::stopped(dead) => None,
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection stopped")
}

/// Serves requests until the client disconnects, breaks the protocol,
/// stops reading replies, or `stop` turns true; returns once every admitted
/// request has finished.
pub(crate) async fn transmission<R: AsyncRead + Unpin>(
    session: &Session,
    replies: Arc<Replies>,
    rd: &mut R,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut stop = stop;
    let volume = session.volume().clone();
    let size = volume.size();
    let mut dead = replies.dead.subscribe();
    // One signal to watch per request: shutdown is forwarded into `dead`.
    let forward = {
        let r = replies.clone();
        tokio::spawn(async move {
            crate::serve::stopped(&mut stop).await;
            r.dead.send_replace(true);
        })
    };
    let result = loop {
        let mut hdr = [0u8; 28];
        match unless_stopped(&mut dead, rd.read_exact(&mut hdr)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(e),
            None => break Err(closed()),
        }
        let magic = u32::from_be_bytes(hdr[0..4].try_into().expect("4"));
        if magic != REQUEST_MAGIC {
            break Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bad request magic",
            ));
        }
        let flags = u16::from_be_bytes(hdr[4..6].try_into().expect("2"));
        let cmd = u16::from_be_bytes(hdr[6..8].try_into().expect("2"));
        let handle = u64::from_be_bytes(hdr[8..16].try_into().expect("8"));
        let offset = u64::from_be_bytes(hdr[16..24].try_into().expect("8"));
        let len = u32::from_be_bytes(hdr[24..28].try_into().expect("4"));
        let range = BlockRange::new(offset, u64::from(len), size);
        let step: std::io::Result<()> = async {
            match cmd {
                CMD_READ => {
                    let Ok(range) = range else {
                        return replies.error(handle, EINVAL).await;
                    };
                    let ticket = unless_stopped(&mut dead, session.admit(range.len()))
                        .await
                        .ok_or_else(closed)?;
                    let turn = volume.read_turn().await;
                    let (v, r) = (volume.clone(), replies.clone());
                    tokio::spawn(async move {
                        let answer = read(&v, r.structured, range).await;
                        drop((turn, v));
                        let sent = send_read(&r, handle, answer).await;
                        drop(ticket);
                        if let Err(e) = sent {
                            tracing::debug!(error = %e, "reply failed");
                        }
                    });
                    Ok(())
                }
                CMD_WRITE => {
                    if len > crate::range::MAX_REQUEST {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "write larger than 32 MiB",
                        ));
                    }
                    let ticket = unless_stopped(&mut dead, session.admit(u64::from(len)))
                        .await
                        .ok_or_else(closed)?;
                    let mut data = vec![0u8; len as usize];
                    rd.read_exact(&mut data).await?;
                    let Ok(range) = range else {
                        return replies.simple(handle, EINVAL, &[]).await;
                    };
                    let turn = volume.write_turn().await;
                    let mut r = volume.write(range, Bytes::from(data)).await;
                    if r.is_ok() && flags & CMD_FLAG_FUA != 0 {
                        r = volume.flush_request().await;
                    }
                    drop(turn);
                    let e = match &r {
                        Ok(()) => 0,
                        Err(e) => {
                            tracing::warn!(error = %e, offset, len, "write failed");
                            errno(e)
                        }
                    };
                    let sent = replies.simple(handle, e, &[]).await;
                    drop(ticket);
                    sent
                }
                CMD_FLUSH => {
                    let turn = volume.write_turn().await;
                    let r = volume.flush_request().await;
                    drop(turn);
                    replies
                        .simple(handle, if r.is_ok() { 0 } else { EIO }, &[])
                        .await
                }
                CMD_TRIM => {
                    // Advisory: the overlay keeps its pages.
                    let e = match range {
                        Err(_) => EINVAL,
                        Ok(_) if volume.read_only => EPERM,
                        Ok(_) => 0,
                    };
                    replies.simple(handle, e, &[]).await
                }
                CMD_BLOCK_STATUS => {
                    // The whole length is checked; the answer may cover less
                    // (the first 32 MiB), as the protocol allows.
                    let whole = offset
                        .checked_add(u64::from(len))
                        .is_some_and(|e| e <= size && len > 0);
                    let range = whole
                        .then(|| {
                            let n = u64::from(len.min(crate::range::MAX_REQUEST));
                            BlockRange::new(offset, n, size).ok()
                        })
                        .flatten();
                    // Waits for writes like a read; answers inline (no I/O).
                    let turn = volume.read_turn().await;
                    let r = block_status(&volume, &replies, handle, flags, range).await;
                    drop(turn);
                    r
                }
                CMD_DISC => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "client disconnected",
                )),
                _ => replies.error(handle, EINVAL).await,
            }
        }
        .await;
        if let Err(e) = step {
            break Err(e);
        }
    };
    forward.abort();
    session.drain().await;
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        r => r,
    }
}
