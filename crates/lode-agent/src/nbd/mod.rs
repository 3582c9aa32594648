//! The NBD server: fixed newstyle handshake, STARTTLS, simple and structured
//! replies, on tokio.
//!
//! Split by protocol phase: [`proto`] (wire constants, option parsers),
//! [`handshake`] (option haggling, TLS, the choice of volume), and
//! [`transmission`] (requests and replies). A connection runs as one
//! [`Session`] of the chosen volume.
//!
//! Options: `EXPORT_NAME`, `LIST`, `INFO`, `GO`, `ABORT`, `STARTTLS`,
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT` (context
//! `base:allocation`); others answer `ERR_UNSUP`. Commands: `READ`, `WRITE`
//! (with `FUA`), `FLUSH`, `TRIM`, `DISC`, and with structured replies
//! `BLOCK_STATUS`. Under structured replies a READ sends holes of the image
//! (all-zero chunks, never written in the overlay) as `OFFSET_HOLE` chunks
//! instead of zero bytes. Every client-supplied length and offset becomes a
//! [`crate::range::BlockRange`] before any I/O. A client that breaks the
//! protocol is dropped; the others keep going.

pub mod handshake;
pub mod proto;
pub mod transmission;

pub use handshake::{BoxStream, Catalog, Stream};
pub use proto::{parse_info, parse_meta_context};

use crate::session::Session;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Time a client has to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What an NBD listener needs: what it serves and, for TCP, mutual TLS.
#[derive(Clone)]
pub struct NbdService {
    /// What the listener serves.
    pub catalog: Catalog,
    /// TLS (required before any export is named) when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for NbdService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdService")
            .field("catalog", &self.catalog)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl NbdService {
    /// Serves one client connection to its end (or until `stop` turns
    /// true, after draining). Errors end only this client.
    pub async fn serve<S: Stream + 'static>(
        self: Arc<Self>,
        stream: S,
        stop: watch::Receiver<bool>,
    ) {
        let stats = match &self.catalog {
            Catalog::Volume(v) => &v.exports.stats,
            Catalog::Open(e) => &e.stats,
        };
        stats.nbd_connections.fetch_add(1, Ordering::Relaxed);
        let shaken = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake::handshake(&self.catalog, self.tls.as_ref(), Box::new(stream)),
        )
        .await;
        let (chosen, stream) = match shaken {
            Ok(Ok((Some(c), s))) => (c, s),
            Ok(Ok((None, _))) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "handshake ended");
                return;
            }
            Err(_) => {
                tracing::debug!("handshake timed out");
                return;
            }
        };
        let export = chosen.volume.export.to_string();
        let session = Session::start(chosen.volume).await;
        let (mut rd, wr) = tokio::io::split(stream);
        let replies = Arc::new(transmission::Replies::new(
            Box::new(wr),
            chosen.structured,
            chosen.base_allocation,
        ));
        if let Err(e) = transmission::transmission(&session, replies, &mut rd, stop).await {
            tracing::debug!(error = %e, export, "connection ended");
        }
        session.end().await;
    }
}
