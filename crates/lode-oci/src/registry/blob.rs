//! Layer blobs streamed from the registry: downloads run ahead of the layer
//! being applied (a bounded number at a time, each into a bounded buffer),
//! resume with `Range` after a dropped connection, and hand their bytes to
//! the synchronous [`crate::LayerReader`], which verifies digest and size.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use reqwest::header::CONTENT_RANGE;
use reqwest::StatusCode;
use tokio::sync::{mpsc, Semaphore};

use super::client::{backoff, Client, ATTEMPTS};
use super::RegistryError;
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
    /// A fetcher for `layers`, downloading up to `parallel` at once.
    pub(crate) fn new(client: Arc<Client>, layers: &[LayerDesc], parallel: usize) -> Fetcher {
        let parallel = parallel.max(1);
        Fetcher {
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
        self.client.rt.handle().spawn(async move {
            let _permit = match windowed {
                true => permits.acquire_owned().await.ok(),
                false => None,
            };
            if let Err(e) = download(&client, &digest, size, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}

/// Streams one blob into `tx`, resuming with `Range` after a dropped
/// connection, a stall or a short body, up to [`ATTEMPTS`] times.
async fn download(
    client: &Client,
    digest: &str,
    size: u64,
    tx: &mpsc::Sender<Result<Bytes, RegistryError>>,
) -> Result<(), RegistryError> {
    let url = client.url("blobs", digest);
    let mut got = 0u64;
    let mut attempt = 0u32;
    let mut buf = BytesMut::with_capacity(PIECE);
    loop {
        attempt += 1;
        let mut resp = client.get(&url, None, Some(got)).await?;
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
        let failure = loop {
            match resp.chunk().await {
                Ok(Some(mut chunk)) => {
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64) as usize;
                        skip -= n as u64;
                        let _ = chunk.split_to(n);
                    }
                    got += chunk.len() as u64;
                    buf.extend_from_slice(&chunk);
                    if buf.len() >= PIECE {
                        if tx.send(Ok(buf.split().freeze())).await.is_err() {
                            return Ok(()); // the reader is gone
                        }
                        buf.reserve(PIECE);
                    }
                    if got > size {
                        // Longer than declared: hand it over, the reader
                        // reports the size mismatch.
                        break None;
                    }
                }
                Ok(None) if got >= size => break None,
                Ok(None) => break Some(None),
                Err(e) => break Some(Some(e)),
            }
        };
        match failure {
            None => {
                if !buf.is_empty() {
                    let _ = tx.send(Ok(buf.split().freeze())).await;
                }
                return Ok(());
            }
            Some(_) if attempt < ATTEMPTS => {
                tracing::debug!(
                    url,
                    got,
                    size,
                    attempt,
                    "blob download interrupted, resuming"
                );
                tokio::time::sleep(backoff(attempt)).await;
            }
            Some(None) => {
                return Err(RegistryError::Truncated {
                    url,
                    got,
                    expected: size,
                    attempts: attempt,
                })
            }
            Some(Some(e)) if e.is_timeout() => {
                return Err(RegistryError::Stalled {
                    url,
                    secs: client.read_timeout.as_secs(),
                    attempts: attempt,
                })
            }
            Some(Some(e)) => return Err(RegistryError::transport("GET", &url, e)),
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
