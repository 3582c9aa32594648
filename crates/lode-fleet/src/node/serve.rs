//! Serving connections so that no client holds more than its share.
//!
//! * **First-byte timeout**: a connection that sends nothing is closed after
//!   [`Limits::first_byte_timeout`] (HTTP/1 headers must then arrive within
//!   [`HEADER_TIMEOUT`]).
//! * **Idle timeout**: a connection with no request in flight for
//!   [`Limits::idle_timeout`] is closed (HTTP/2: GOAWAY, then closed), whatever
//!   it does meanwhile: answering keep-alive pings is not a request.
//! * **A cap on connections**: at [`Limits::max_connections`], the connection
//!   idle longest is closed to make room for a new one; when every connection
//!   is busy the node stops accepting until one finishes or goes idle.
//! * **Accept errors** (`EMFILE` when the process is out of descriptors, ...)
//!   are survived: the node closes its longest-idle connection to free a
//!   descriptor and backs off (10 ms doubling to 1 s) instead of spinning.

use super::{Limits, Node};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Longest an HTTP/1 request header may take once its first byte arrived.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection closed for idleness may finish what it is doing.
const GRACE: Duration = Duration::from_secs(1);
/// First and longest back-off after a failed accept.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One open connection, as the accept loop sees it.
#[derive(Debug)]
pub(super) struct Conn {
    id: u64,
    /// When it was accepted (ms since the node started).
    accepted_ms: u64,
    /// Requests in flight.
    busy: AtomicUsize,
    /// When it last went idle: accepted, or its last request ended.
    idle_since_ms: AtomicU64,
    /// Whether any byte arrived yet.
    got_byte: AtomicBool,
    /// Set when the node closes it to make room.
    shed: AtomicBool,
    close: Notify,
}

/// Why a connection was closed by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// Nothing arrived within the first-byte timeout.
    FirstByte,
    /// No request in flight for the idle timeout.
    Idle,
    /// Shed to make room for a new connection (the cap).
    Cap,
    /// Shed to free a descriptor after an accept error.
    Descriptors,
}

impl Closed {
    pub(super) const ALL: [Closed; 4] = [
        Closed::FirstByte,
        Closed::Idle,
        Closed::Cap,
        Closed::Descriptors,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Closed::FirstByte => "first_byte_timeout",
            Closed::Idle => "idle_timeout",
            Closed::Cap => "connection_cap",
            Closed::Descriptors => "accept_error",
        }
    }
}

/// The open connections (std Mutex: map operations only, never held across
/// an await).
#[derive(Debug)]
pub(super) struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    epoch: Instant,
    /// Signalled when a connection ends or goes idle.
    changed: Notify,
}

impl Registry {
    pub(super) fn new() -> Self {
        Registry {
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) -> Arc<Conn> {
        let now = self.now_ms();
        let c = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            accepted_ms: now,
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now),
            got_byte: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            close: Notify::new(),
        });
        self.map().insert(c.id, c.clone());
        c
    }

    fn remove(&self, id: u64) {
        self.map().remove(&id);
        self.changed.notify_waiters();
    }

    /// Connections open (those being shed excluded).
    pub(super) fn len(&self) -> usize {
        self.map()
            .values()
            .filter(|c| !c.shed.load(Ordering::Relaxed))
            .count()
    }

    /// The connection idle longest, if any is idle.
    fn oldest_idle(&self) -> Option<Arc<Conn>> {
        self.map()
            .values()
            .filter(|c| c.busy.load(Ordering::Relaxed) == 0 && !c.shed.load(Ordering::Relaxed))
            .min_by_key(|c| (c.idle_since_ms.load(Ordering::Relaxed), c.id))
            .cloned()
    }

    /// Closes the connection idle longest; false when none is idle.
    fn shed_oldest_idle(&self) -> bool {
        match self.oldest_idle() {
            Some(c) => {
                c.shed.store(true, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks a request in flight on a connection until dropped.
pub(super) struct Busy {
    conn: Arc<Conn>,
    node: Arc<Node>,
}

impl Busy {
    pub(super) fn new(node: Arc<Node>, conn: Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        Busy { conn, node }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let reg = &self.node.conns;
        self.conn
            .idle_since_ms
            .store(reg.now_ms(), Ordering::Relaxed);
        if self.conn.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            reg.changed.notify_waiters();
        }
    }
}

/// A connection's socket, noting when its first byte arrives.
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.got_byte.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// When `conn` must next be looked at, and whether it has expired. Its
/// deadlines only ever move later (a first byte, a request ending), so
/// waking at the earliest one and looking again is enough.
fn check(conn: &Conn, limits: &Limits, now_ms: u64) -> (u64, Option<Closed>) {
    let ms = |d: Duration| d.as_millis() as u64;
    let idle_at = conn.idle_since_ms.load(Ordering::Relaxed) + ms(limits.idle_timeout);
    if !conn.got_byte.load(Ordering::Relaxed) {
        let first_at = conn.accepted_ms + ms(limits.first_byte_timeout);
        let expired = if now_ms >= first_at {
            Some(Closed::FirstByte)
        } else {
            (now_ms >= idle_at).then_some(Closed::Idle)
        };
        return (first_at.min(idle_at), expired);
    }
    if conn.busy.load(Ordering::Relaxed) > 0 {
        return (now_ms + ms(limits.idle_timeout), None);
    }
    (idle_at, (now_ms >= idle_at).then_some(Closed::Idle))
}

/// True for accept errors that mean "out of descriptors or memory".
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Node {
    /// Serves `listener` until the future is dropped (see the module docs for
    /// the bounds on each connection).
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let mut backoff = MIN_BACKOFF;
        loop {
            // At the cap with every connection busy: accept nothing until one
            // finishes or goes idle (clients wait in the kernel's backlog).
            while self.conns.len() >= self.limits.max_connections
                && self.conns.oldest_idle().is_none()
            {
                let changed = self.conns.changed.notified();
                let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
            }
            let sock = match listener.accept().await {
                Ok((sock, _)) => {
                    backoff = MIN_BACKOFF;
                    sock
                }
                Err(e) => {
                    self.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if backoff == MIN_BACKOFF {
                        tracing::warn!(error = %e, "accept failed; backing off");
                    }
                    if exhausted(&e) && self.conns.shed_oldest_idle() {
                        self.metrics.closed(Closed::Descriptors);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if self.conns.len() >= self.limits.max_connections {
                if self.conns.shed_oldest_idle() {
                    self.metrics.closed(Closed::Cap);
                } else {
                    // Every connection went busy meanwhile: refuse this one.
                    self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            let _ = sock.set_nodelay(true);
            // Registered before the task runs, so the cap counts it at once.
            let conn = self.conns.add();
            let node = self.clone();
            tokio::spawn(async move {
                node.run_conn(sock, conn.clone()).await;
                node.conns.remove(conn.id);
            });
        }
    }

    /// Serves one client connection (HTTP/2 or HTTP/1.1) to its end, or until
    /// the node closes it (timeouts, shedding).
    pub async fn serve_io<S>(self: Arc<Self>, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self.conns.add();
        self.run_conn(io, conn.clone()).await;
        self.conns.remove(conn.id);
    }

    async fn run_conn<S>(self: &Arc<Self>, io: S, conn: Arc<Conn>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (node, c) = (self.clone(), conn.clone());
        let svc = hyper::service::service_fn(move |req| {
            let busy = Busy::new(node.clone(), c.clone());
            let node = node.clone();
            async move {
                let r = node.handle(req).await;
                drop(busy);
                r
            }
        });
        let builder = self.builder();
        let io = hyper_util::rt::TokioIo::new(Tracked {
            inner: io,
            conn: conn.clone(),
        });
        let serving = builder.serve_connection(io, svc);
        tokio::pin!(serving);
        loop {
            let (at, expired) = check(&conn, &self.limits, self.conns.now_ms());
            if let Some(why) = expired {
                self.metrics.closed(why);
                if why == Closed::Idle {
                    serving.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GRACE, serving.as_mut()).await;
                }
                return;
            }
            let wake = self.conns.epoch + Duration::from_millis(at);
            tokio::select! {
                _ = serving.as_mut() => return,
                _ = conn.close.notified() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn builder(&self) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
        let mut b =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        b.http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        b.http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_streams(super::MAX_STREAMS)
            .initial_stream_window_size(super::WINDOW)
            .initial_connection_window_size(super::WINDOW);
        b
    }
}
