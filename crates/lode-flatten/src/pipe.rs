//! The layer's tar bytes, decompressed and verified on a thread of their own
//! so that decompression and hashing overlap with parsing and writing (two
//! cores), and counted against the flatten's limits as they arrive.

use crate::limits::Limit;
use lode_oci::LayerBlob;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// Bytes moved per message between the decompressing thread and the writer.
const PIPE_BLOCK: usize = 1 << 20;
/// Messages in flight: bounds the memory of the pipe to about 8 MiB.
const PIPE_DEPTH: usize = 8;
/// How often a reader waiting for data checks whether it was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(100);

enum Msg {
    /// The blob could not be opened.
    OpenFailed(lode_oci::OciError),
    Data(Vec<u8>),
    Failed(std::io::Error),
    /// End of stream: uncompressed size and the verification result.
    End(u64, Result<(), lode_oci::OciError>),
}

/// Why the pipe stopped short of the layer's end on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A limit was hit after this many bytes of the layer.
    Limit(Limit, u64),
    /// The flatten was cancelled.
    Cancelled,
}

/// What the pipe may deliver: the bytes left under the image's budget, the
/// bytes this layer may decompress to, and the cancel flag.
pub(crate) struct Bounds<'a> {
    /// Bytes the image may still read (decompressed size limit).
    pub image_left: u64,
    /// Bytes this layer may reach (ratio limit).
    pub layer_max: u64,
    /// Set when the caller wants the flatten to stop.
    pub cancel: Option<&'a AtomicBool>,
}

/// The receiving end: a `Read` of the layer's tar bytes.
pub(crate) struct Piped<'a> {
    rx: std::sync::mpsc::Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    end: Option<(u64, Result<(), lode_oci::OciError>)>,
    /// Bytes of the layer delivered so far.
    pub count: u64,
    bounds: Bounds<'a>,
    /// Set when a limit or a cancel stopped the pipe.
    pub stopped: Option<Stop>,
    /// Why the blob could not be opened, once a read found out.
    pub open_error: Option<lode_oci::OciError>,
}

impl<'a> Piped<'a> {
    /// Opens `blob` and streams it on a thread of its own: the caller never
    /// blocks in the blob's I/O (an open may block, on a FIFO or a slow
    /// network file system) and so always notices a cancel.
    pub(crate) fn spawn(blob: LayerBlob, bounds: Bounds<'a>) -> Piped<'a> {
        let (tx, rx) = std::sync::mpsc::sync_channel(PIPE_DEPTH);
        std::thread::spawn(move || {
            let mut reader = match blob.open() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Msg::OpenFailed(e));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; PIPE_BLOCK];
                let mut n = 0;
                while n < buf.len() {
                    match reader.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Msg::Failed(e));
                            return;
                        }
                    }
                }
                if n == 0 {
                    let bytes = reader.uncompressed_bytes();
                    let _ = tx.send(Msg::End(bytes, reader.finish()));
                    return;
                }
                buf.truncate(n);
                // A closed receiver means the parser stopped: stop too.
                if tx.send(Msg::Data(buf)).is_err() {
                    return;
                }
            }
        });
        Piped {
            rx,
            cur: Vec::new(),
            pos: 0,
            end: None,
            count: 0,
            bounds,
            stopped: None,
            open_error: None,
        }
    }

    /// Reads to the end of the stream and returns the verification result.
    pub(crate) fn finish(mut self) -> (u64, Result<(), lode_oci::OciError>) {
        let mut sink = [0u8; 64 << 10];
        loop {
            match self.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return (
                        0,
                        Err(lode_oci::OciError::Io {
                            path: "layer stream".into(),
                            source: e,
                        }),
                    )
                }
            }
        }
        self.end.take().unwrap_or((0, Ok(())))
    }

    fn stop(&mut self, why: Stop) -> std::io::Error {
        self.stopped = Some(why);
        std::io::Error::other(match why {
            Stop::Limit(limit, _) => format!("over {limit}"),
            Stop::Cancelled => "interrupted".to_string(),
        })
    }

    fn cancelled(&self) -> bool {
        self.bounds
            .cancel
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

impl Read for Piped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(why) = self.stopped {
            return Err(self.stop(why));
        }
        while self.pos == self.cur.len() {
            if self.end.is_some() {
                return Ok(0);
            }
            match self.rx.recv_timeout(CANCEL_POLL) {
                Ok(Msg::Data(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Ok(Msg::Failed(e)) => return Err(e),
                Ok(Msg::OpenFailed(e)) => {
                    let msg = e.to_string();
                    self.open_error = Some(e);
                    return Err(std::io::Error::other(msg));
                }
                Ok(Msg::End(n, r)) => self.end = Some((n, r)),
                Err(RecvTimeoutError::Timeout) if self.cancelled() => {
                    return Err(self.stop(Stop::Cancelled))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(std::io::Error::other("layer reader thread ended"))
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        let count = self.count + n as u64;
        if count > self.bounds.layer_max {
            return Err(self.stop(Stop::Limit(Limit::Ratio, count)));
        }
        if count > self.bounds.image_left {
            return Err(self.stop(Stop::Limit(Limit::Bytes, count)));
        }
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.count = count;
        Ok(n)
    }
}
