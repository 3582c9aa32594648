//! The NBD server: fixed newstyle handshake, simple and structured replies,
//! on tokio.
//!
//! Options: `EXPORT_NAME`, `LIST`, `INFO`, `GO`, `ABORT`, `STRUCTURED_REPLY`,
//! `LIST_META_CONTEXT` and `SET_META_CONTEXT` (context `base:allocation`);
//! others answer `ERR_UNSUP`. Commands: `READ`, `WRITE`, `FLUSH`, `TRIM`,
//! `DISC`, and with structured replies `BLOCK_STATUS`. Under structured
//! replies a READ sends holes of the image (all-zero chunks, never written in
//! the overlay) as `OFFSET_HOLE` chunks instead of zero bytes. Every
//! client-supplied length and offset goes through [`check_range`] before any
//! I/O. A client that breaks the protocol is dropped; the others keep going.

use crate::exports::{ExportError, Exports};
use crate::image::ImageHandle;
use crate::overlay::{Overlay, OverlayError};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CFLAG_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_POLICY: u32 = (1 << 31) + 2;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_SEND_FLUSH: u16 = 4;
const TFLAG_SEND_TRIM: u16 = 32;
/// Transmission flags of every export.
const EXPORT_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_TRIM;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag of BLOCK_STATUS: one extent is enough.
const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// The one metadata context served, and its id.
const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;
/// `base:allocation` flags of an extent that is a hole reading as zeros.
const STATE_HOLE_ZERO: u32 = 3;

const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOTSUP: u32 = 95;

/// Largest READ or WRITE accepted.
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option payload accepted during the handshake.
const MAX_OPTION: u32 = 64 << 10;
/// Time a client has to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests of one connection processed at once.
const PER_CONN_REQUESTS: usize = 16;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory of copy-on-write overlays.
    pub overlay_dir: PathBuf,
}

/// What the handshake settled: the export and the reply style.
struct Chosen {
    name: String,
    image: Arc<ImageHandle>,
    overlay: Option<String>,
    structured: bool,
    base_allocation: bool,
}

/// State shared by all connections.
#[derive(Debug)]
pub struct Server {
    exports: Arc<Exports>,
    config: ServerConfig,
    named_in_use: Mutex<HashSet<String>>,
    conn_seq: AtomicU64,
    /// NBD connections served so far.
    pub connections: AtomicU64,
    /// vhost-user-blk sessions (one per VM that connected) served so far.
    pub vhost_sessions: AtomicU64,
    /// When the first READ request of any connection arrived.
    pub first_read: Arc<std::sync::OnceLock<std::time::Instant>>,
}

/// Checks a request range: non-empty, at most [`MAX_REQUEST`], inside `size`.
pub fn check_range(offset: u64, len: u32, size: u64) -> Result<(), u32> {
    if len == 0 || len > MAX_REQUEST {
        return Err(EINVAL);
    }
    match offset.checked_add(u64::from(len)) {
        Some(end) if end <= size => Ok(()),
        _ => Err(EINVAL),
    }
}

impl Server {
    /// A server over `exports`.
    pub fn new(exports: Arc<Exports>, config: ServerConfig) -> Self {
        Server {
            exports,
            config,
            named_in_use: Mutex::new(HashSet::new()),
            conn_seq: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            vhost_sessions: AtomicU64::new(0),
            first_read: Arc::default(),
        }
    }

    /// The exports.
    pub fn exports(&self) -> &Arc<Exports> {
        &self.exports
    }

    /// Serves one client connection to its end. Errors end only this client.
    pub async fn serve<S>(self: Arc<Self>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let chosen =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut rd, &mut wr)).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "handshake ended");
                    return;
                }
                Err(_) => {
                    tracing::debug!("handshake timed out");
                    return;
                }
            };
        let Chosen {
            name: export,
            image,
            overlay: overlay_name,
            structured,
            base_allocation,
        } = chosen;
        self.exports.activate(&image).await;
        let overlay = match self.attach_overlay(&export, &image, overlay_name.as_deref()) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, export, "cannot create overlay");
                self.release(&overlay_name);
                return;
            }
        };
        let conn = Arc::new(Conn {
            image: image.clone(),
            overlay,
            wr: tokio::sync::Mutex::new(Box::new(wr)),
            first_read: self.first_read.clone(),
            structured,
            base_allocation,
        });
        if let Err(e) = conn.clone().transmission(&mut rd).await {
            tracing::debug!(error = %e, export, "connection ended");
        }
        if let Err(e) = self.exports.save_working_set(&image).await {
            tracing::warn!(error = %e, export, "cannot store the working set");
        }
        self.release(&overlay_name);
    }

    /// Creates the overlay of one client: kept under its name when `named`,
    /// else a fresh anonymous file removed when the overlay is dropped.
    pub(crate) fn attach_overlay(
        &self,
        export: &str,
        image: &Arc<ImageHandle>,
        named: Option<&str>,
    ) -> std::io::Result<Overlay> {
        let path = match named {
            // `TENANT/NAME@OVERLAY`: one directory per tenant, so names never collide.
            Some(n) => self.config.overlay_dir.join(format!("{n}.overlay")),
            None => {
                let id = self.conn_seq.fetch_add(1, Ordering::Relaxed);
                self.config
                    .overlay_dir
                    .join(format!("conn-{}-{id}.overlay", std::process::id()))
            }
        };
        Overlay::open(path, image.size(), named.is_some())
            .map_err(|e| std::io::Error::other(format!("{export}: {e}")))
    }

    /// Runs the option haggling; returns the chosen export, or `None` when the
    /// client aborted or asked for an unknown export the old way.
    async fn handshake<R, W>(&self, rd: &mut R, wr: &mut W) -> std::io::Result<Option<Chosen>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        wr.write_u64(NBDMAGIC).await?;
        wr.write_u64(IHAVEOPT).await?;
        wr.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
        wr.flush().await?;
        let cflags = rd.read_u32().await?;
        let no_zeroes = cflags & CFLAG_NO_ZEROES != 0;
        let mut structured = false;
        let mut base_allocation = false;
        loop {
            if rd.read_u64().await? != IHAVEOPT {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bad option magic",
                ));
            }
            let opt = rd.read_u32().await?;
            let len = rd.read_u32().await?;
            if len > MAX_OPTION {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "option too large",
                ));
            }
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data).await?;
            match opt {
                OPT_ABORT => {
                    let _ = reply(wr, opt, REP_ACK, &[]).await;
                    return Ok(None);
                }
                OPT_LIST => {
                    if len != 0 {
                        reply(wr, opt, REP_ERR_INVALID, b"LIST takes no data").await?;
                        continue;
                    }
                    match self.exports.list().await {
                        Ok(names) => {
                            for n in names {
                                let mut d = (n.len() as u32).to_be_bytes().to_vec();
                                d.extend_from_slice(n.as_bytes());
                                reply(wr, opt, REP_SERVER, &d).await?;
                            }
                            reply(wr, opt, REP_ACK, &[]).await?;
                        }
                        Err(e) => reply(wr, opt, REP_ERR_POLICY, e.to_string().as_bytes()).await?,
                    }
                }
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    let Ok((parsed, image)) = self.exports.open(&name).await else {
                        return Ok(None);
                    };
                    let key = overlay_key(&parsed);
                    if !self.claim(&key) {
                        return Ok(None);
                    }
                    let claim = ClaimGuard::new(self, &key);
                    wr.write_u64(image.size()).await?;
                    wr.write_u16(EXPORT_FLAGS).await?;
                    if !no_zeroes {
                        wr.write_all(&[0u8; 124]).await?;
                    }
                    wr.flush().await?;
                    claim.keep();
                    return Ok(Some(Chosen {
                        name,
                        image,
                        overlay: key,
                        structured,
                        base_allocation,
                    }));
                }
                OPT_INFO | OPT_GO => {
                    let Some((name, requests)) = parse_info(&data) else {
                        reply(wr, opt, REP_ERR_INVALID, b"malformed INFO/GO request").await?;
                        continue;
                    };
                    let (parsed, image) = match self.exports.open(&name).await {
                        Ok(x) => x,
                        Err(e) => {
                            if !matches!(e, ExportError::Unknown(_)) {
                                tracing::warn!(error = %e, "export failed to open");
                            }
                            reply(wr, opt, REP_ERR_UNKNOWN, e.to_string().as_bytes()).await?;
                            continue;
                        }
                    };
                    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                    info.extend_from_slice(&image.size().to_be_bytes());
                    info.extend_from_slice(&EXPORT_FLAGS.to_be_bytes());
                    reply(wr, opt, REP_INFO, &info).await?;
                    if requests.contains(&INFO_BLOCK_SIZE) {
                        let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        for v in [1u32, 4096, MAX_REQUEST] {
                            b.extend_from_slice(&v.to_be_bytes());
                        }
                        reply(wr, opt, REP_INFO, &b).await?;
                    }
                    if opt == OPT_GO {
                        let key = overlay_key(&parsed);
                        if !self.claim(&key) {
                            reply(
                                wr,
                                opt,
                                REP_ERR_POLICY,
                                b"named overlay in use by another connection",
                            )
                            .await?;
                            continue;
                        }
                        let claim = ClaimGuard::new(self, &key);
                        reply(wr, opt, REP_ACK, &[]).await?;
                        claim.keep();
                        return Ok(Some(Chosen {
                            name,
                            image,
                            overlay: key,
                            structured,
                            base_allocation,
                        }));
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                OPT_STRUCTURED_REPLY => {
                    if len != 0 {
                        reply(wr, opt, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data").await?;
                    } else {
                        structured = true;
                        reply(wr, opt, REP_ACK, &[]).await?;
                    }
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    let Some((_export, queries)) = parse_meta_context(&data) else {
                        reply(wr, opt, REP_ERR_INVALID, b"malformed META_CONTEXT request").await?;
                        continue;
                    };
                    if !structured {
                        reply(
                            wr,
                            opt,
                            REP_ERR_INVALID,
                            b"negotiate STRUCTURED_REPLY first",
                        )
                        .await?;
                        continue;
                    }
                    let matched = meta_context_matches(opt == OPT_LIST_META_CONTEXT, &queries);
                    if opt == OPT_SET_META_CONTEXT {
                        base_allocation = matched;
                    }
                    if matched {
                        let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                        reply(wr, opt, REP_META_CONTEXT, &d).await?;
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                _ => reply(wr, opt, REP_ERR_UNSUP, b"option not supported").await?,
            }
        }
    }

    /// Releases a named overlay claimed with [`Server::claim`].
    pub(crate) fn release(&self, overlay: &Option<String>) {
        if let Some(n) = overlay {
            self.named_in_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(n);
        }
    }

    /// Marks a named overlay as in use; false if another connection has it.
    pub(crate) fn claim(&self, overlay: &Option<String>) -> bool {
        match overlay {
            Some(n) => self
                .named_in_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n.clone()),
            None => true,
        }
    }
}

/// Releases a named-overlay claim taken during the handshake unless the
/// handshake completes ([`ClaimGuard::keep`]): a client that vanishes while
/// the reply is written (error) or stalls it (timeout) must not leave the
/// overlay claimed for ever.
struct ClaimGuard<'a> {
    server: &'a Server,
    overlay: Option<String>,
}

impl<'a> ClaimGuard<'a> {
    fn new(server: &'a Server, overlay: &Option<String>) -> Self {
        ClaimGuard {
            server,
            overlay: overlay.clone(),
        }
    }

    /// The handshake completed: the connection owns the claim now.
    fn keep(mut self) {
        self.overlay = None;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        let overlay = self.overlay.take();
        self.server.release(&overlay);
    }
}

/// The identity of a kept overlay: the whole `TENANT/NAME@OVERLAY`, so equal
/// overlay names of different tenants or images never share pages.
pub(crate) fn overlay_key(e: &crate::exports::ExportName) -> Option<String> {
    e.overlay.as_ref().map(|o| format!("{}@{o}", e.image()))
}

/// Parses INFO/GO data: `u32 name length, name, u16 count, count × u16`.
pub fn parse_info(d: &[u8]) -> Option<(String, Vec<u16>)> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let rest = &d[4 + n..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let reqs = rest.get(2..)?;
    if reqs.len() != count * 2 {
        return None;
    }
    let list = reqs
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((String::from_utf8_lossy(name).into_owned(), list))
}

/// Parses LIST/SET_META_CONTEXT data: `u32 export name length, name, u32
/// query count, count × (u32 length, query)`.
pub fn parse_meta_context(d: &[u8]) -> Option<(String, Vec<String>)> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let mut rest = &d[4 + n..];
    let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest = &rest[4..];
    // Every query takes at least 4 bytes: a bogus count cannot allocate.
    if count > rest.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let l = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let q = rest.get(4..4usize.checked_add(l)?)?;
        queries.push(String::from_utf8_lossy(q).into_owned());
        rest = &rest[4 + l..];
    }
    if !rest.is_empty() {
        return None;
    }
    Some((String::from_utf8_lossy(name).into_owned(), queries))
}

/// Whether `base:allocation` answers these queries. LIST with no query, or
/// with the namespace query `base:`, lists every context; SET needs the exact
/// name.
fn meta_context_matches(list: bool, queries: &[String]) -> bool {
    if list && queries.is_empty() {
        return true;
    }
    queries
        .iter()
        .any(|q| q == BASE_ALLOCATION || (list && q == "base:"))
}

async fn reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    wr.write_all(&b).await?;
    wr.flush().await
}

type Writer = Box<dyn AsyncWrite + Unpin + Send>;

struct Conn {
    image: Arc<ImageHandle>,
    overlay: Overlay,
    wr: tokio::sync::Mutex<Writer>,
    first_read: Arc<std::sync::OnceLock<std::time::Instant>>,
    /// Structured replies were negotiated.
    structured: bool,
    /// The `base:allocation` context was selected.
    base_allocation: bool,
}

/// A piece of a structured reply.
enum Piece {
    /// Data at an offset.
    Data(u64, bytes::Bytes),
    /// A hole (reads as zeros) at an offset, of a length.
    Hole(u64, u32),
}

impl Conn {
    /// Writes one structured reply chunk.
    async fn chunk(
        w: &mut Writer,
        handle: u64,
        flags: u16,
        kind: u16,
        head: &[u8],
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut h = Vec::with_capacity(20 + head.len());
        h.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&handle.to_be_bytes());
        h.extend_from_slice(&((head.len() + data.len()) as u32).to_be_bytes());
        h.extend_from_slice(head);
        w.write_all(&h).await?;
        if !data.is_empty() {
            w.write_all(data).await?;
        }
        Ok(())
    }

    /// Sends an error (simple or structured, as negotiated).
    async fn send_error(&self, handle: u64, error: u32) -> std::io::Result<()> {
        if !self.structured {
            return self.send(handle, error, &[]).await;
        }
        let mut w = self.wr.lock().await;
        let mut head = error.to_be_bytes().to_vec();
        head.extend_from_slice(&0u16.to_be_bytes());
        Self::chunk(
            &mut w,
            handle,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            &head,
            &[],
        )
        .await?;
        w.flush().await
    }

    /// Sends the pieces of a READ as structured chunks, the last one DONE.
    async fn send_pieces(&self, handle: u64, pieces: &[Piece]) -> std::io::Result<()> {
        let mut w = self.wr.lock().await;
        for (k, p) in pieces.iter().enumerate() {
            let flags = if k + 1 == pieces.len() {
                REPLY_FLAG_DONE
            } else {
                0
            };
            match p {
                Piece::Data(off, b) => {
                    Self::chunk(
                        &mut w,
                        handle,
                        flags,
                        REPLY_TYPE_OFFSET_DATA,
                        &off.to_be_bytes(),
                        b,
                    )
                    .await?
                }
                Piece::Hole(off, len) => {
                    let mut head = off.to_be_bytes().to_vec();
                    head.extend_from_slice(&len.to_be_bytes());
                    Self::chunk(&mut w, handle, flags, REPLY_TYPE_OFFSET_HOLE, &head, &[]).await?
                }
            }
        }
        if pieces.is_empty() {
            Self::chunk(&mut w, handle, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[], &[]).await?;
        }
        w.flush().await
    }

    /// Splits `[offset, offset+len)` into runs that read as zeros without a
    /// fetch (holes of the image not written in the overlay) and the rest.
    fn runs(&self, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
        let cs = self.image.chunk_size();
        let end = offset + len;
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = pos / cs;
            let cend = ((i + 1) * cs).min(end);
            let hole = self.image.is_hole(i) && !self.overlay.any_written(pos, cend);
            match out.last_mut() {
                Some((_, e, h)) if *h == hole => *e = cend,
                _ => out.push((pos, cend, hole)),
            }
            pos = cend;
        }
        out
    }

    /// A READ under structured replies: holes as `OFFSET_HOLE`, the rest read.
    async fn read_structured(&self, offset: u64, len: u32) -> Result<Vec<Piece>, OverlayError> {
        let mut pieces = Vec::new();
        for (s, e, hole) in self.runs(offset, u64::from(len)) {
            if hole {
                pieces.push(Piece::Hole(s, (e - s) as u32));
            } else {
                let b = self.overlay.read(&self.image, s, e - s).await?;
                pieces.push(Piece::Data(s, b));
            }
        }
        Ok(pieces)
    }

    /// Answers BLOCK_STATUS for `base:allocation`.
    async fn block_status(
        &self,
        handle: u64,
        flags: u16,
        offset: u64,
        len: u32,
    ) -> std::io::Result<()> {
        let size = self.image.size();
        let valid = len > 0
            && offset
                .checked_add(u64::from(len))
                .is_some_and(|e| e <= size);
        if !self.base_allocation || !valid {
            let e = if self.base_allocation {
                EINVAL
            } else {
                ENOTSUP
            };
            return self.send_error(handle, e).await;
        }
        let mut runs = self.runs(offset, u64::from(len));
        if flags & CMD_FLAG_REQ_ONE != 0 {
            runs.truncate(1);
        }
        let mut payload = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        for (s, e, hole) in runs {
            payload.extend_from_slice(&((e - s) as u32).to_be_bytes());
            payload.extend_from_slice(&(if hole { STATE_HOLE_ZERO } else { 0 }).to_be_bytes());
        }
        let mut w = self.wr.lock().await;
        Self::chunk(
            &mut w,
            handle,
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            &payload,
            &[],
        )
        .await?;
        w.flush().await
    }

    async fn send(&self, handle: u64, error: u32, data: &[u8]) -> std::io::Result<()> {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&error.to_be_bytes());
        h[8..].copy_from_slice(&handle.to_be_bytes());
        let mut w = self.wr.lock().await;
        w.write_all(&h).await?;
        if error == 0 && !data.is_empty() {
            w.write_all(data).await?;
        }
        w.flush().await
    }

    async fn transmission<R: AsyncRead + Unpin>(
        self: Arc<Self>,
        rd: &mut R,
    ) -> std::io::Result<()> {
        let size = self.image.size();
        let limit = Arc::new(Semaphore::new(PER_CONN_REQUESTS));
        loop {
            let mut hdr = [0u8; 28];
            rd.read_exact(&mut hdr).await?;
            let magic = u32::from_be_bytes(hdr[0..4].try_into().expect("4"));
            if magic != REQUEST_MAGIC {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bad request magic",
                ));
            }
            let cmd_flags = u16::from_be_bytes(hdr[4..6].try_into().expect("2"));
            let cmd = u16::from_be_bytes(hdr[6..8].try_into().expect("2"));
            let handle = u64::from_be_bytes(hdr[8..16].try_into().expect("8"));
            let offset = u64::from_be_bytes(hdr[16..24].try_into().expect("8"));
            let len = u32::from_be_bytes(hdr[24..28].try_into().expect("4"));
            match cmd {
                CMD_READ => {
                    self.first_read.get_or_init(std::time::Instant::now);
                    if let Err(e) = check_range(offset, len, size) {
                        self.send_error(handle, e).await?;
                        continue;
                    }
                    let permit = limit
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(std::io::Error::other)?;
                    let conn = self.clone();
                    tokio::spawn(async move {
                        let sent = if conn.structured {
                            match conn.read_structured(offset, len).await {
                                Ok(pieces) => conn.send_pieces(handle, &pieces).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, offset, len, "read failed");
                                    conn.send_error(handle, EIO).await
                                }
                            }
                        } else {
                            match conn.overlay.read(&conn.image, offset, u64::from(len)).await {
                                Ok(b) => conn.send(handle, 0, &b).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, offset, len, "read failed");
                                    conn.send(handle, EIO, &[]).await
                                }
                            }
                        };
                        drop(permit);
                        if let Err(e) = sent {
                            tracing::debug!(error = %e, "reply failed");
                        }
                    });
                }
                CMD_WRITE => {
                    if len > MAX_REQUEST {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "write larger than 32 MiB",
                        ));
                    }
                    let mut data = vec![0u8; len as usize];
                    rd.read_exact(&mut data).await?;
                    if let Err(e) = check_range(offset, len, size) {
                        self.send(handle, e, &[]).await?;
                        continue;
                    }
                    // Wait for reads in flight so a write never races a read of the same pages.
                    let all = limit
                        .clone()
                        .acquire_many_owned(PER_CONN_REQUESTS as u32)
                        .await
                        .map_err(std::io::Error::other)?;
                    let r = self.overlay.write(&self.image, offset, &data).await;
                    drop(all);
                    match r {
                        Ok(()) => self.send(handle, 0, &[]).await?,
                        Err(e) => {
                            tracing::warn!(error = %e, offset, len, "write failed");
                            self.send(handle, EIO, &[]).await?
                        }
                    }
                }
                CMD_FLUSH => {
                    let all = limit
                        .clone()
                        .acquire_many_owned(PER_CONN_REQUESTS as u32)
                        .await
                        .map_err(std::io::Error::other)?;
                    let r = self.overlay.flush();
                    drop(all);
                    self.send(handle, if r.is_ok() { 0 } else { EIO }, &[])
                        .await?;
                }
                CMD_TRIM => {
                    // Advisory: the overlay keeps its pages; nothing to do.
                    let e = check_range(offset, len.max(1), size).err().unwrap_or(0);
                    self.send(handle, e, &[]).await?;
                }
                CMD_BLOCK_STATUS => {
                    // Waits for writes like a read; answers inline (no I/O).
                    let permit = limit
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(std::io::Error::other)?;
                    self.block_status(handle, cmd_flags, offset, len).await?;
                    drop(permit);
                }
                CMD_DISC => {
                    let _ = limit.acquire_many(PER_CONN_REQUESTS as u32).await;
                    return Ok(());
                }
                _ => self.send_error(handle, EINVAL).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(check_range(0, 4096, 8192), Ok(()));
        assert_eq!(check_range(4096, 4096, 8192), Ok(()));
        assert_eq!(check_range(4097, 4096, 8192), Err(EINVAL));
        assert_eq!(check_range(0, 0, 8192), Err(EINVAL));
        assert_eq!(check_range(u64::MAX, 1, 8192), Err(EINVAL));
        assert_eq!(check_range(0, MAX_REQUEST + 1, u64::MAX), Err(EINVAL));
    }

    /// Found by review while writing the NBD fuzz target: when the reply to
    /// EXPORT_NAME (or the ACK of GO) could not be written because the client
    /// had gone, the named overlay stayed claimed, and every later
    /// connection to it was refused until the agent restarted.
    #[tokio::test]
    async fn vanished_client_releases_its_named_overlay() {
        use crate::{ChunkReader, Exports};
        use lode_chunk::KeyProvider;
        use tokio::io::AsyncWriteExt;
        let d = tempfile::tempdir().unwrap();
        let store = lode_store::Store::open("memory://").unwrap();
        let keys: Arc<dyn KeyProvider> = Arc::new(lode_chunk::Keyring::new(d.path().join("k")));
        let img = d.path().join("img");
        std::fs::write(&img, vec![1u8; 8192]).unwrap();
        lode_store::push_file(&store, keys.clone(), &img, "t", "img", &Default::default())
            .await
            .unwrap();
        let tier: Arc<dyn lode_cache::ChunkTier> =
            Arc::new(lode_cache::StoreTier::new(store.clone()));
        let reader = Arc::new(ChunkReader::new(1 << 20, None, vec![tier]));
        let server = Arc::new(Server::new(
            Arc::new(Exports::new(store, keys, reader)),
            ServerConfig {
                overlay_dir: d.path().join("ov"),
            },
        ));
        let opt = |code: u32, data: &[u8]| {
            let mut v = IHAVEOPT.to_be_bytes().to_vec();
            v.extend_from_slice(&code.to_be_bytes());
            v.extend_from_slice(&(data.len() as u32).to_be_bytes());
            v.extend_from_slice(data);
            v
        };
        // Reads the greeting, asks for the overlay, and is gone before the reply.
        let (mut c, s) = tokio::io::duplex(1 << 16);
        let serve = tokio::spawn(server.clone().serve(s));
        let mut greeting = [0u8; 18];
        c.read_exact(&mut greeting).await.unwrap();
        c.write_all(&CFLAG_NO_ZEROES.to_be_bytes()).await.unwrap();
        c.write_all(&opt(OPT_EXPORT_NAME, b"t/img@vm"))
            .await
            .unwrap();
        drop(c);
        serve.await.unwrap();
        // The next client gets the overlay.
        let (mut c, s) = tokio::io::duplex(1 << 16);
        let serve = tokio::spawn(server.clone().serve(s));
        c.read_exact(&mut greeting).await.unwrap();
        c.write_all(&CFLAG_NO_ZEROES.to_be_bytes()).await.unwrap();
        let mut info = 8u32.to_be_bytes().to_vec();
        info.extend_from_slice(b"t/img@vm\0\0");
        c.write_all(&opt(OPT_GO, &info)).await.unwrap();
        let mut kinds = Vec::new();
        loop {
            let mut h = [0u8; 20];
            c.read_exact(&mut h).await.unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut body = vec![0u8; len as usize];
            c.read_exact(&mut body).await.unwrap();
            kinds.push(kind);
            if kind != REP_INFO {
                break;
            }
        }
        assert_eq!(kinds.last(), Some(&REP_ACK), "replies {kinds:x?}");
        c.write_all(&REQUEST_MAGIC.to_be_bytes()).await.unwrap();
        c.write_all(&[0, 0]).await.unwrap();
        c.write_all(&CMD_DISC.to_be_bytes()).await.unwrap();
        c.write_all(&[0u8; 20]).await.unwrap();
        serve.await.unwrap();
    }

    #[test]
    fn info_parsing() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"a/b");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info(&d), Some(("a/b".into(), vec![3])));
        assert_eq!(parse_info(&d[..5]), None);
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"xx");
        assert_eq!(parse_info(&huge), None);
    }
}
