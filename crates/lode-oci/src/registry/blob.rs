//! Layer blobs streamed from the registry: downloads run ahead of the layer
//! being applied (a bounded number at a time, each into a bounded buffer),
//! resume with `Range` after a dropped connection, and hand their bytes to
//! the synchronous [`crate::LayerReader`], which verifies digest and size.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use reqwest::header::CONTENT_RANGE;
use reqwest::StatusCode;
use tokio::sync::{mpsc, Semaphore};

use super::client::{backoff, Client, ATTEMPTS};
use super::{ProgressHook, RegistryError};
use crate::{LayerDesc, OciError};

/// Bytes handed over per message.
const PIECE: usize = 1 << 20;
/// Messages buffered per download: a download runs at most this many MiB
/// ahead of its reader, then waits (TCP backpressure).
const DEPTH: usize = 8;

/// Where a layer's download stands.
enum Slot {
    Idle,
    Running(mpsc::Receiver<Result<Bytes, RegistryError>>),
    Taken,
}

/// The downloads of one image's layers.
pub(crate) struct Fetcher {
    client: Arc<Client>,
    layers: Vec<(String, u64)>,
    slots: Mutex<Vec<Slot>>,
    permits: Arc<Semaphore>,
    window: usize,
    progress: Option<ProgressHook>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("reference", &self.client.reference.to_string())
            .field("layers", &self.layers.len())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher for `layers`, downloading up to `parallel` at once,
    /// reporting to `progress` (told the layers' total size now).
    pub(crate) fn new(
        client: Arc<Client>,
        layers: &[LayerDesc],
        parallel: usize,
        progress: Option<ProgressHook>,
    ) -> Fetcher {
        let parallel = parallel.max(1);
        if let Some(p) = &progress {
            p.0.start(layers.iter().map(|l| l.size).sum());
        }
        Fetcher {
            progress,
            client,
            layers: layers.iter().map(|l| (l.digest.clone(), l.size)).collect(),
            slots: Mutex::new(layers.iter().map(|_| Slot::Idle).collect()),
            permits: Arc::new(Semaphore::new(parallel)),
            window: parallel,
        }
    }

    /// The blob URL of layer `index`.
    pub(crate) fn url(&self, index: usize) -> String {
        let digest = self.layers.get(index).map_or("", |(d, _)| d.as_str());
        self.client.url("blobs", digest)
    }

    /// The stream of layer `index`, starting it (and the next layers, up to
    /// the window) if not yet running. Opening a layer a second time starts
    /// a download of its own outside the window.
    pub(crate) fn take(&self, index: usize) -> BlobStream {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let end = (index + self.window).min(slots.len());
        for j in index..end {
            if matches!(slots.get(j), Some(Slot::Idle)) {
                let rx = self.start(j, true);
                if let Some(s) = slots.get_mut(j) {
                    *s = Slot::Running(rx);
                }
            }
        }
        let rx = match slots
            .get_mut(index)
            .map(|s| std::mem::replace(s, Slot::Taken))
        {
            Some(Slot::Running(rx)) => rx,
            _ => self.start(index, false),
        };
        BlobStream {
            rx,
            cur: Bytes::new(),
            done: false,
        }
    }

    fn start(&self, index: usize, windowed: bool) -> mpsc::Receiver<Result<Bytes, RegistryError>> {
        let (tx, rx) = mpsc::channel(DEPTH);
        let (digest, size) = self.layers.get(index).cloned().unwrap_or_default();
        let client = self.client.clone();
        let permits = self.permits.clone();
        let progress = self.progress.clone();
        self.client.rt.handle().spawn(async move {
            let _permit = match windowed {
                true => permits.acquire_owned().await.ok(),
                false => None,
            };
            if let Err(e) = download(&client, &digest, size, &tx, progress.as_ref()).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}

/// Why one attempt at a blob's body ended early.
enum Broken {
    /// The body ended before the blob's size.
    Short,
    /// Nothing arrived for the timeout.
    Silent,
    /// The connection failed.
    Transport(reqwest::Error),
}

/// Streams one blob into `tx`, resuming with `Range` after a dropped
/// connection or a short body, up to [`ATTEMPTS`] times. The registry's
/// silence is bounded as a whole: once nothing has arrived for the timeout
/// (waits for a slow reader of `tx` aside), retries included, the download
/// fails as [`RegistryError::Stalled`].
async fn download(
    client: &Client,
    digest: &str,
    size: u64,
    tx: &mpsc::Sender<Result<Bytes, RegistryError>>,
    progress: Option<&ProgressHook>,
) -> Result<(), RegistryError> {
    let url = client.url("blobs", digest);
    let mut got = 0u64;
    let mut attempt = 0u32;
    let mut buf = BytesMut::with_capacity(PIECE);
    // The registry's last sign of life.
    let mut since = Instant::now();
    loop {
        attempt += 1;
        let mut resp = client.get_since(&url, None, Some(got), since).await?;
        since = Instant::now();
        // How many leading bytes of this answer we already have.
        let mut skip = 0u64;
        if got > 0 {
            if resp.status() == StatusCode::PARTIAL_CONTENT {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if !cr.starts_with(&format!("bytes {got}-")) {
                    return Err(RegistryError::BadRange {
                        url,
                        asked: got,
                        content_range: cr,
                    });
                }
            } else {
                skip = got; // the whole blob again: drop what we have
            }
        }
        let broken = loop {
            let left = (since + client.read_timeout).saturating_duration_since(Instant::now());
            let Ok(next) = tokio::time::timeout(left, resp.chunk()).await else {
                break Some(Broken::Silent);
            };
            match next {
                Ok(Some(mut chunk)) => {
                    if !chunk.is_empty() {
                        since = Instant::now();
                    }
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64) as usize;
                        skip -= n as u64;
                        let _ = chunk.split_to(n);
                    }
                    got += chunk.len() as u64;
                    if let Some(p) = progress {
                        p.0.advance(chunk.len() as u64);
                    }
                    buf.extend_from_slice(&chunk);
                    if buf.len() >= PIECE {
                        if tx.send(Ok(buf.split().freeze())).await.is_err() {
                            return Ok(()); // the reader is gone
                        }
                        // Time spent waiting for the reader is not silence.
                        since = Instant::now();
                        buf.reserve(PIECE);
                    }
                    if got > size {
                        // Longer than declared: hand it over, the reader
                        // reports the size mismatch.
                        break None;
                    }
                }
                Ok(None) if got >= size => break None,
                Ok(None) => break Some(Broken::Short),
                Err(e) => break Some(Broken::Transport(e)),
            }
        };
        let silent_for_long = Instant::now() + backoff(attempt) >= since + client.read_timeout;
        match broken {
            None => {
                if !buf.is_empty() {
                    let _ = tx.send(Ok(buf.split().freeze())).await;
                }
                return Ok(());
            }
            Some(Broken::Silent) => return Err(client.stalled(&url, attempt)),
            Some(Broken::Transport(e)) if e.is_timeout() && silent_for_long => {
                return Err(client.stalled(&url, attempt))
            }
            Some(_) if attempt < ATTEMPTS && !silent_for_long => {
                tracing::debug!(
                    url,
                    got,
                    size,
                    attempt,
                    "blob download interrupted, resuming"
                );
                tokio::time::sleep(backoff(attempt)).await;
            }
            Some(Broken::Short) => {
                return Err(RegistryError::Truncated {
                    url,
                    got,
                    expected: size,
                    attempts: attempt,
                })
            }
            Some(Broken::Transport(e)) if e.is_timeout() => {
                return Err(client.stalled(&url, attempt))
            }
            Some(Broken::Transport(e)) => return Err(RegistryError::transport("GET", &url, e)),
        }
    }
}

/// The synchronous end of a download: the stored (compressed) blob bytes.
pub(crate) struct BlobStream {
    rx: mpsc::Receiver<Result<Bytes, RegistryError>>,
    cur: Bytes,
    done: bool,
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.done {
                return Ok(0);
            }
            match futures::executor::block_on(self.rx.recv()) {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(io::Error::other(OciError::Registry(e)));
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}
