//! vhost-user-blk: a volume served as a VM's virtio-blk disk.
//!
//! The agent is the vhost-user *backend*; QEMU, the frontend, connects to the
//! volume's unix socket (`-chardev socket,path=SOCKET,reconnect-ms=N -device
//! vhost-user-blk,chardev=...`, guest RAM shared). Each frontend connection
//! is one [`Session`] of the volume: its protocol thread ([`backend`])
//! handles the set-up messages, its worker task ([`queue`]) serves the
//! virtqueue through the same read path as NBD. Split by phase:
//! [`device`] (features, config space), [`backend`] (protocol), [`chain`]
//! (descriptor chains), [`queue`] (requests), [`inflight`] (requests in
//! flight across a restart).
//!
//! **Restarts.** With `INFLIGHT_SHMFD` the agent keeps a shared record of the
//! requests it popped and has not completed. When the agent dies (crash,
//! SIGKILL, upgrade) QEMU's chardev reconnects to the re-created socket and
//! hands the record to the new agent, which resubmits those requests before
//! anything else; the guest sees a pause, not an error. An orderly stop
//! (detach, SIGTERM) first completes every request in flight, then closes.
//!
//! ## Device
//!
//! Features: `VERSION_1`, `RING_F_INDIRECT_DESC`, `RING_F_EVENT_IDX`,
//! `BLK_F_SIZE_MAX`, `BLK_F_SEG_MAX`, `BLK_F_BLK_SIZE`, `BLK_F_TOPOLOGY`,
//! `BLK_F_FLUSH`, and either `BLK_F_RO` (read-only) or `BLK_F_DISCARD` +
//! `BLK_F_WRITE_ZEROES`. One queue. Protocol features: `CONFIG`, `MQ`
//! (reports one queue), `REPLY_ACK`, `INFLIGHT_SHMFD`.
//!
//! Status bytes: `OK`; `IOERR` for a failed read (never wrong bytes), an
//! out-of-range or misaligned request, a write to a read-only device, or a
//! malformed chain whose status byte is still addressable; `UNSUPP` for an
//! unknown request type or unsupported flags. A chain without an addressable
//! status byte is returned to the guest with a used length of 0.

pub mod backend;
pub mod chain;
pub mod device;
pub mod inflight;
pub mod queue;

use crate::exports::Exports;
use crate::session::Session;
use crate::volume::Volume;
use backend::Frontend;
use queue::Device;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use vhost::vhost_user::BackendReqHandler;

/// Serves one frontend connection of `volume` until the frontend hangs up
/// or `stop` turns true (then every request in flight completes before the
/// connection closes).
pub async fn serve_frontend(
    volume: Arc<Volume>,
    conn: tokio::net::UnixStream,
    mut stop: watch::Receiver<bool>,
) {
    volume
        .exports
        .stats
        .vhost_sessions
        .fetch_add(1, Ordering::Relaxed);
    let id = volume.id.clone();
    let session = Session::start(volume).await;
    let std = match conn
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|_| s))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, volume = %id, "vhost-user connection unusable");
            session.end().await;
            return;
        }
    };
    let closer = std.try_clone();
    let dev = match Device::new(
        session,
        tokio::runtime::Handle::current(),
        device::MAX_QUEUE_SIZE,
    ) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::warn!(error = %e, volume = %id, "vhost-user queue");
            return;
        }
    };
    tracing::info!(volume = %id, "vhost-user frontend connected");
    let mut handler =
        BackendReqHandler::from_stream(std, Arc::new(Mutex::new(Frontend::new(dev.clone()))));
    let proto = tokio::task::spawn_blocking(move || loop {
        if let Err(e) = handler.handle_request() {
            return e;
        }
    });
    tokio::pin!(proto);
    tokio::select! {
        r = &mut proto => {
            if let Ok(e) = r {
                tracing::debug!(error = %e, volume = %id, "vhost-user frontend gone");
            }
        }
        _ = crate::serve::stopped(&mut stop) => {
            // Complete what is in flight while the frontend still listens,
            // then hang up.
            dev.stop_async().await;
            if let Ok(c) = &closer {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            let _ = proto.await;
        }
    }
    dev.stop_async().await;
    tracing::info!(volume = %id, "vhost-user frontend disconnected");
    // The protocol thread and the worker are gone and every request task
    // ended: this is the last reference (request tasks drop it before
    // their admission ticket, which the drain waited for).
    let mut dev = dev;
    for _ in 0..500 {
        match Arc::try_unwrap(dev) {
            Ok(d) => {
                d.session.end().await;
                return;
            }
            Err(d) => dev = d,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(volume = %id, "vhost-user device still referenced at the end of its session");
}

/// Serves a static `--vhost-user SOCKET=EXPORT` socket: each frontend gets
/// the export's current image with a private overlay (deleted when it
/// disconnects; kept when named), one frontend at a time.
pub async fn serve_client(
    exports: Arc<Exports>,
    export: String,
    read_only: bool,
    conn: tokio::net::UnixStream,
    stop: watch::Receiver<bool>,
) {
    match Volume::for_client(&exports, &export, read_only).await {
        Ok(v) => serve_frontend(Arc::new(v), conn, stop).await,
        Err(e) => tracing::warn!(error = %e, export, "vhost-user frontend refused"),
    }
}
