//! Request bodies under one memory budget for the whole node.
//!
//! A client can open hundreds of HTTP/2 streams per connection, each a PUT
//! that sends most of a stripe and then nothing. Every byte of a body that
//! has arrived but not finished is counted against one budget shared by
//! all connections ([`BodyBudget`]); a body that would go over it is refused
//! at once (503), not queued, so a slow client cannot pin memory beyond the
//! budget nor make other clients wait for it. What HTTP/2 itself buffers
//! before the node reads it is bounded per connection by its flow-control
//! window (see [`super::Limits`]).

use super::MAX_STRIPE;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of unfinished request bodies the node holds at most, all
/// connections together.
#[derive(Debug)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    total: usize,
}

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than a stripe.
    #[error("body over the limit of {MAX_STRIPE} bytes (one stripe)")]
    TooLarge,
    /// The budget has no room for it now.
    #[error("the node's memory budget for unfinished request bodies is exhausted")]
    Busy,
    /// It did not finish in time.
    #[error("body not finished in time")]
    Timeout,
    /// The client went away or broke the protocol.
    #[error("body aborted")]
    Aborted,
}

/// A body read under the budget; its bytes stay counted until it is dropped.
#[derive(Debug)]
pub struct Body {
    /// The bytes.
    pub bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            sem: Arc::new(Semaphore::new(bytes)),
            total: bytes,
        }
    }

    /// Bytes held by bodies in progress.
    pub fn in_use(&self) -> usize {
        self.total - self.sem.available_permits()
    }

    fn take(&self, n: usize, held: &mut Option<OwnedSemaphorePermit>) -> Result<(), BodyError> {
        if n == 0 {
            return Ok(());
        }
        let p = self
            .sem
            .clone()
            .try_acquire_many_owned(u32::try_from(n).map_err(|_| BodyError::TooLarge)?)
            .map_err(|_| BodyError::Busy)?;
        match held {
            Some(h) => h.merge(p),
            None => *held = Some(p),
        }
        Ok(())
    }

    /// Reads a request body of at most [`MAX_STRIPE`] bytes within `timeout`,
    /// counting every byte against the budget as it arrives (all of a
    /// declared `Content-Length` up front).
    pub async fn read<B>(
        &self,
        mut body: B,
        declared: Option<u64>,
        timeout: Duration,
    ) -> Result<Body, BodyError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        let mut held = None;
        let mut reserved = 0usize;
        if let Some(n) = declared {
            if n > MAX_STRIPE as u64 {
                return Err(BodyError::TooLarge);
            }
            reserved = n as usize;
            self.take(reserved, &mut held)?;
        }
        let mut buf = BytesMut::with_capacity(reserved);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(BodyError::Timeout),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err(BodyError::Aborted),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len > MAX_STRIPE {
                return Err(BodyError::TooLarge);
            }
            if len > reserved {
                self.take(len - reserved, &mut held)?;
                reserved = len;
            }
            buf.extend_from_slice(&data);
        }
        Ok(Body {
            bytes: buf.freeze(),
            _permit: held,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn bodies_share_one_budget() {
        let b = BodyBudget::new(1000);
        let first = b
            .read(
                Full::new(Bytes::from(vec![1u8; 600])),
                None,
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert_eq!(b.in_use(), 600);
        assert_eq!(
            b.read(
                Full::new(Bytes::from(vec![1u8; 600])),
                None,
                Duration::from_secs(1)
            )
            .await
            .unwrap_err(),
            BodyError::Busy
        );
        assert_eq!(
            b.read(Full::new(Bytes::new()), Some(500), Duration::from_secs(1))
                .await
                .unwrap_err(),
            BodyError::Busy,
            "a declared length is reserved up front"
        );
        drop(first);
        assert_eq!(b.in_use(), 0);
        assert_eq!(
            b.read(
                Full::new(Bytes::new()),
                Some(MAX_STRIPE as u64 + 1),
                Duration::from_secs(1)
            )
            .await
            .unwrap_err(),
            BodyError::TooLarge
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out_and_gives_its_bytes_back() {
        let b = BodyBudget::new(1000);
        let stream = futures::stream::iter(vec![Ok::<_, std::convert::Infallible>(
            hyper::body::Frame::data(Bytes::from(vec![0u8; 300])),
        )])
        .chain(futures::stream::pending());
        use futures::StreamExt;
        let r = b
            .read(StreamBody::new(stream), None, Duration::from_millis(100))
            .await;
        assert_eq!(r.unwrap_err(), BodyError::Timeout);
        assert_eq!(b.in_use(), 0);
    }
}
