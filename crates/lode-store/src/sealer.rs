//! The CPU stage of a push: one thread per core seals chunks (SHA-256,
//! zstd, AES-256-CTR with the name's hash in the same sweep) handed over by
//! the push's I/O tasks, which read ahead and upload behind it.
//!
//! Fixed threads rather than tokio's blocking pool: at most one seal per
//! core runs at a time (no oversubscription of the 16 chunks in flight),
//! and each thread keeps its compressor context and buffers warm.

use crate::error::{Result, StoreError};
use lode_chunk::{seal_chunk_buf_with, Compression, Salt, SealedChunk};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

struct Job {
    salt: Arc<Salt>,
    plain: Vec<u8>,
    reply: oneshot::Sender<SealedChunk>,
}

/// A pool of sealing threads; they end when it is dropped.
pub(crate) struct Sealer {
    tx: mpsc::Sender<Job>,
}

impl Sealer {
    /// Starts one sealing thread per core, sealing under `compression`.
    /// `queue` bounds the chunks waiting for a thread (the push's chunks in
    /// flight).
    pub(crate) fn start(queue: usize, compression: Compression) -> Result<Sealer> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("lode-seal-{n}"))
                .spawn(move || loop {
                    // A plain thread: the lock is held while it waits for
                    // the next job, which is what hands jobs out one by one.
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    let Some(job) = job else { return };
                    // The push may have given up on the chunk: nothing to do.
                    let sealed = seal_chunk_buf_with(&job.salt, job.plain, compression);
                    let _ = job.reply.send(sealed);
                })
                .map_err(|source| StoreError::Io {
                    path: "a chunk-sealing thread".into(),
                    source,
                })?;
        }
        Ok(Sealer { tx })
    }

    /// Seals `plain` under `salt` on one of the pool's threads.
    pub(crate) async fn seal(&self, salt: Arc<Salt>, plain: Vec<u8>) -> Result<SealedChunk> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Task("the chunk-sealing threads stopped".into());
        self.tx
            .send(Job { salt, plain, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seals_like_seal_chunk_and_ends_with_the_pool() {
        let sealer = Sealer::start(4, Compression::Auto).unwrap();
        let salt = Arc::new(Salt([5; 32]));
        let chunks: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 4096 + usize::from(i)]).collect();
        let sealed = futures::future::try_join_all(
            chunks.iter().map(|c| sealer.seal(salt.clone(), c.clone())),
        )
        .await
        .unwrap();
        for (c, s) in chunks.iter().zip(&sealed) {
            let want = lode_chunk::seal_chunk(&salt, c);
            assert_eq!((s.name, s.secret), (want.name, want.secret));
        }
        drop(sealer);
    }

    #[tokio::test]
    async fn never_stores_compressible_chunks_raw() {
        let salt = Arc::new(Salt([6; 32]));
        let text = b"compressible text ".repeat(4000);
        let auto = Sealer::start(1, Compression::Auto).unwrap();
        let never = Sealer::start(1, Compression::Never).unwrap();
        let a = auto.seal(salt.clone(), text.clone()).await.unwrap();
        let n = never.seal(salt.clone(), text.clone()).await.unwrap();
        assert_eq!(a.secret.codec, lode_chunk::Codec::Zstd);
        assert_eq!(n.secret.codec, lode_chunk::Codec::Raw);
        assert_eq!(n.ciphertext.len(), text.len());
        assert_eq!(n.secret.plain_sha, a.secret.plain_sha);
        let back = lode_chunk::open_chunk(0, &n.name, &n.secret, n.ciphertext).unwrap();
        assert_eq!(back, text);
    }
}
