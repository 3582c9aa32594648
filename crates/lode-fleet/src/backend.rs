//! How the client talks to cache nodes: lode's own nodes over HTTP/2, or
//! plain memcached servers over the meta protocol.

use crate::error::{BackendError, ReplyError};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::fmt;
use std::sync::Mutex;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// A protocol to a list of nodes that store stripes by key.
pub trait StripeBackend: Send + Sync + fmt::Debug {
    /// The nodes as configured (`HOST:PORT` or `NAME=HOST:PORT`, see
    /// [`crate::parse_spec`]), in configuration order.
    fn nodes(&self) -> &[String];
    /// Reads a stripe; `Ok(None)` when the node does not have it.
    fn get<'a>(
        &'a self,
        node: usize,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BackendError>>;
    /// Stores a stripe.
    fn put<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
    /// Asks `node` for the fill lease `key` for `ttl`: [`Lease::Won`] (this
    /// client should fetch the chunk from the store and fill it) or
    /// [`Lease::Held`] (another client is filling it). The default: leases
    /// are not supported, and every miss goes to the store uncoordinated.
    fn lease<'a>(
        &'a self,
        _node: usize,
        _key: &'a str,
        _ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Lease, BackendError>> {
        Box::pin(async { Err(BackendError::NoLeases) })
    }
    /// Waits at most `max` for the lease `key` to end (released or expired):
    /// `true` if it ended, `false` if it is still held.
    fn lease_wait<'a>(
        &'a self,
        _node: usize,
        _key: &'a str,
        _max: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async { Err(BackendError::NoLeases) })
    }
    /// Ends the lease `key` if `token` (from [`Lease::Won`]) still holds it.
    fn release<'a>(
        &'a self,
        _node: usize,
        _key: &'a str,
        _token: u64,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Err(BackendError::NoLeases) })
    }
}

/// A node's answer to a fill-lease request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// The caller holds the lease; the token ends it ([`StripeBackend::release`]).
    Won(u64),
    /// Another client holds it.
    Held,
}

/// First and longest pause between polls of a memcached lease.
const POLL_MIN: std::time::Duration = std::time::Duration::from_millis(5);
const POLL_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// lode cache nodes over HTTP/2 (one multiplexed connection per node).
pub struct Http2Nodes {
    nodes: Vec<String>,
    key: Option<crate::auth::WriteKey>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for Http2Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Nodes")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Http2Nodes {
    /// Nodes given as `HOST:PORT`.
    pub fn new(nodes: Vec<String>) -> Self {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(std::time::Duration::from_secs(1)));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(conn);
        Http2Nodes {
            nodes,
            key: None,
            client,
        }
    }

    /// Signs every write (stripe PUTs, lease requests) with `key`.
    pub fn with_key(mut self, key: crate::auth::WriteKey) -> Self {
        self.key = Some(key);
        self
    }

    /// A request with the write MAC when a key is set (and the request writes).
    fn request(
        &self,
        method: hyper::Method,
        node: usize,
        pq: &str,
        body: Bytes,
    ) -> Result<hyper::Request<Full<Bytes>>, BackendError> {
        let mut b = hyper::Request::builder()
            .method(method.clone())
            .uri(format!(
                "http://{}{pq}",
                crate::node_addr(&self.nodes[node])
            ));
        if let Some(k) = self.key.as_ref().filter(|_| method != hyper::Method::GET) {
            b = b.header(crate::auth::HEADER, k.sign(method.as_str(), pq, &body));
        }
        b.body(Full::new(body))
            .map_err(|source| BackendError::Request {
                node: self.nodes[node].clone(),
                source,
            })
    }

    /// Sends `req` to `node`.
    async fn send(
        &self,
        node: usize,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, BackendError> {
        self.client
            .request(req)
            .await
            .map_err(|source| BackendError::Http {
                node: self.nodes[node].clone(),
                source,
            })
    }

    /// The body of `resp`, at most `limit` bytes.
    async fn body(
        &self,
        node: usize,
        resp: hyper::Response<hyper::body::Incoming>,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        Ok(http_body_util::Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|source| BackendError::Body {
                node: self.nodes[node].clone(),
                source,
            })?
            .to_bytes())
    }

    /// A status `what` does not allow.
    fn status(&self, node: usize, what: &'static str, status: hyper::StatusCode) -> BackendError {
        BackendError::Status {
            node: self.nodes[node].clone(),
            what,
            status,
        }
    }
}

impl StripeBackend for Http2Nodes {
    fn nodes(&self) -> &[String] {
        &self.nodes
    }

    fn get<'a>(
        &'a self,
        node: usize,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BackendError>> {
        Box::pin(async move {
            let req = self.request(hyper::Method::GET, node, &format!("/s/{key}"), Bytes::new())?;
            let resp = self.send(node, req).await?;
            match resp.status() {
                // A node is not trusted: never buffer more than a stripe.
                hyper::StatusCode::OK => {
                    Ok(Some(self.body(node, resp, crate::node::MAX_STRIPE).await?))
                }
                hyper::StatusCode::NOT_FOUND => Ok(None),
                s => Err(self.status(node, "stripe get", s)),
            }
        })
    }

    fn put<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let req = self.request(hyper::Method::PUT, node, &format!("/s/{key}"), value)?;
            let resp = self.send(node, req).await?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.status(node, "stripe put", resp.status()))
            }
        })
    }

    fn lease<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Lease, BackendError>> {
        Box::pin(async move {
            let path = format!("/l/{key}?ttl_ms={}", ttl.as_millis());
            let (status, body) = self.call(node, hyper::Method::POST, &path).await?;
            match status {
                hyper::StatusCode::CREATED => std::str::from_utf8(&body)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .map(Lease::Won)
                    .ok_or_else(|| BackendError::NoToken {
                        node: self.nodes[node].clone(),
                    }),
                hyper::StatusCode::CONFLICT => Ok(Lease::Held),
                s => Err(self.status(node, "lease", s)),
            }
        })
    }

    fn lease_wait<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        max: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let path = format!("/l/{key}?wait_ms={}", max.as_millis());
            match self.call(node, hyper::Method::GET, &path).await?.0 {
                hyper::StatusCode::NOT_FOUND => Ok(true),
                hyper::StatusCode::OK => Ok(false),
                s => Err(self.status(node, "lease wait", s)),
            }
        })
    }

    fn release<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        token: u64,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let path = format!("/l/{key}?token={token}");
            match self.call(node, hyper::Method::DELETE, &path).await?.0 {
                s if s.is_success() || s == hyper::StatusCode::NOT_FOUND => Ok(()),
                s => Err(self.status(node, "lease release", s)),
            }
        })
    }
}

impl Http2Nodes {
    /// One bodiless request; the reply's status and (bounded) body.
    async fn call(
        &self,
        node: usize,
        method: hyper::Method,
        path: &str,
    ) -> Result<(hyper::StatusCode, Bytes), BackendError> {
        let req = self.request(method, node, path, Bytes::new())?;
        let resp = self.send(node, req).await?;
        let status = resp.status();
        let body = self.body(node, resp, 1024).await?;
        Ok((status, body))
    }
}

/// Plain memcached servers, meta protocol (`mg KEY v`, `ms KEY LEN`), with a
/// small pool of connections per node. memcached must allow items of at least
/// a stripe (`-I 1m`).
///
/// A GET runs in a task of its own: when the fleet cancels the 5th stripe's
/// request, the task still reads the reply (bounded by [`DRAIN`]) and returns
/// the connection to the pool instead of dropping it mid-reply.
#[derive(Debug)]
pub struct Memcached {
    inner: std::sync::Arc<McNodes>,
}

/// The nodes and their connection pools, shared with running GETs.
#[derive(Debug)]
struct McNodes {
    nodes: Vec<String>,
    // std Mutex: only to take or return a connection, never held across an await.
    pools: Vec<Mutex<Vec<BufStream<TcpStream>>>>,
}

/// Connections kept per memcached node.
const POOL: usize = 16;
/// Longest a connection to a memcached node may take.
const CONNECT: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest a GET may run after its caller stopped waiting.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Memcached {
    /// Nodes given as `HOST:PORT`.
    pub fn new(nodes: Vec<String>) -> Self {
        let pools = nodes.iter().map(|_| Mutex::new(Vec::new())).collect();
        Memcached {
            inner: std::sync::Arc::new(McNodes { nodes, pools }),
        }
    }
}

impl McNodes {
    async fn get(&self, node: usize, key: &str) -> Result<Option<Bytes>, BackendError> {
        let mut c = self.conn(node).await?;
        let cmd = format!("mg lode:{key} v\r\n");
        self.send(node, &mut c, &[cmd.as_bytes()]).await?;
        let out = read_get_reply(&mut c)
            .await
            .map_err(|e| self.reply(node, e))?;
        self.give_back(node, c);
        Ok(out)
    }

    /// Writes `parts` to `c` and flushes.
    async fn send(
        &self,
        node: usize,
        c: &mut BufStream<TcpStream>,
        parts: &[&[u8]],
    ) -> Result<(), BackendError> {
        let io = |source| BackendError::Io {
            node: self.nodes[node].clone(),
            what: "send",
            source,
        };
        for p in parts {
            c.write_all(p).await.map_err(io)?;
        }
        c.flush().await.map_err(io)
    }

    /// A reply out of protocol from `node`.
    fn reply(&self, node: usize, source: ReplyError) -> BackendError {
        BackendError::Reply {
            node: self.nodes[node].clone(),
            source,
        }
    }

    async fn conn(&self, node: usize) -> Result<BufStream<TcpStream>, BackendError> {
        if let Some(c) = self.pools[node]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
        {
            return Ok(c);
        }
        let s = tokio::time::timeout(
            CONNECT,
            TcpStream::connect(crate::node_addr(&self.nodes[node])),
        )
        .await
        .map_err(|_| BackendError::ConnectTimeout {
            node: self.nodes[node].clone(),
            after: CONNECT,
        })?
        .map_err(|source| BackendError::Io {
            node: self.nodes[node].clone(),
            what: "connect",
            source,
        })?;
        let _ = s.set_nodelay(true);
        Ok(BufStream::new(s))
    }

    /// Sends one command line and reads its one-line reply.
    async fn line(&self, node: usize, cmd: &str) -> Result<String, BackendError> {
        let mut c = self.conn(node).await?;
        self.send(node, &mut c, &[cmd.as_bytes()]).await?;
        let line = read_reply_line(&mut c)
            .await
            .map_err(|e| self.reply(node, e))?;
        self.give_back(node, c);
        Ok(line)
    }

    fn give_back(&self, node: usize, c: BufStream<TcpStream>) {
        let mut p = self.pools[node].lock().unwrap_or_else(|p| p.into_inner());
        if p.len() < POOL {
            p.push(c);
        }
    }
}

impl StripeBackend for Memcached {
    fn nodes(&self) -> &[String] {
        &self.inner.nodes
    }

    fn get<'a>(
        &'a self,
        node: usize,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BackendError>> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        Box::pin(async move {
            tokio::spawn(async move {
                tokio::time::timeout(DRAIN, inner.get(node, &key))
                    .await
                    .unwrap_or_else(|_| {
                        Err(BackendError::Timeout {
                            node: inner.nodes[node].clone(),
                            after: DRAIN,
                        })
                    })
            })
            .await
            .map_err(|source| BackendError::Task {
                node: self.inner.nodes[node].clone(),
                source,
            })?
        })
    }

    fn put<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let this = &self.inner;
        Box::pin(async move {
            let mut c = this.conn(node).await?;
            let cmd = format!("ms lode:{key} {} T0\r\n", value.len());
            this.send(node, &mut c, &[cmd.as_bytes(), &value, b"\r\n"])
                .await?;
            read_set_reply(&mut c)
                .await
                .map_err(|e| this.reply(node, e))?;
            this.give_back(node, c);
            Ok(())
        })
    }

    /// `mg lode:KEY N<ttl> c`: memcached's vivify-on-miss lease. The first
    /// client gets `W` (win) and the item's CAS value as its token; the others
    /// get `Z` (someone else won). memcached TTLs are whole seconds (at least 1).
    fn lease<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Lease, BackendError>> {
        let secs = ttl.as_millis().div_ceil(1000).max(1);
        let (inner, cmd) = (self.inner.clone(), format!("mg lode:{key} N{secs} c\r\n"));
        Box::pin(async move {
            parse_lease_reply(&inner.line(node, &cmd).await?).map_err(|e| inner.reply(node, e))
        })
    }

    /// Polls `mg lode:KEY` (5 ms doubling to 50 ms) until `EN` or `max`.
    fn lease_wait<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        max: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let (inner, cmd) = (self.inner.clone(), format!("mg lode:{key}\r\n"));
        Box::pin(async move {
            let until = tokio::time::Instant::now() + max;
            let mut pause = POLL_MIN;
            loop {
                let line = inner.line(node, &cmd).await?;
                if line.starts_with("EN") {
                    return Ok(true);
                }
                if !line.starts_with("HD") {
                    return Err(inner.reply(node, unexpected(&line)));
                }
                let now = tokio::time::Instant::now();
                if now >= until {
                    return Ok(false);
                }
                tokio::time::sleep(pause.min(until - now)).await;
                pause = (pause * 2).min(POLL_MAX);
            }
        })
    }

    /// `md lode:KEY C<token>`: deletes the lease only if it is still ours.
    fn release<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        token: u64,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let (inner, cmd) = (self.inner.clone(), format!("md lode:{key} C{token}\r\n"));
        Box::pin(async move {
            let line = inner.line(node, &cmd).await?;
            // HD deleted; NF already gone; EX someone else's lease now.
            if ["HD", "NF", "EX"].iter().any(|p| line.starts_with(p)) {
                Ok(())
            } else {
                Err(inner.reply(node, unexpected(&line)))
            }
        })
    }
}

/// Parses memcached's reply to `mg KEY N<ttl> c`: `HD c<cas> W` won, `HD ...`
/// with `Z` (or without `W`: a real item under the key) held.
pub fn parse_lease_reply(line: &str) -> Result<Lease, ReplyError> {
    let mut words = line.split_whitespace();
    if words.next() != Some("HD") {
        return Err(unexpected(line));
    }
    let flags: Vec<&str> = words.collect();
    if !flags.contains(&"W") {
        return Ok(Lease::Held);
    }
    flags
        .iter()
        .find_map(|f| f.strip_prefix('c').and_then(|c| c.parse().ok()))
        .map(Lease::Won)
        .ok_or_else(|| ReplyError::NoCas {
            line: line.trim().to_string(),
        })
}

/// A reply line the command does not expect.
fn unexpected(line: &str) -> ReplyError {
    ReplyError::Unexpected {
        line: line.trim().to_string(),
    }
}

/// Longest reply line accepted from memcached (a status line, not a value).
pub const MAX_LINE: u64 = 1024;

/// Reads one `\n`-terminated reply line of at most [`MAX_LINE`] bytes.
async fn read_reply_line<R: AsyncBufRead + Unpin>(c: &mut R) -> Result<String, ReplyError> {
    let mut line = String::new();
    (&mut *c).take(MAX_LINE).read_line(&mut line).await?;
    if !line.ends_with('\n') {
        return Err(if line.len() as u64 >= MAX_LINE {
            ReplyError::LineTooLong { limit: MAX_LINE }
        } else {
            ReplyError::Closed
        });
    }
    Ok(line)
}

/// Reads memcached's reply to `mg KEY v`: `EN` (miss, `None`) or
/// `VA <len> ...` followed by the value and `\r\n`. An error means the
/// connection is not reusable.
pub async fn read_get_reply<R: AsyncBufRead + Unpin>(
    c: &mut R,
) -> Result<Option<Bytes>, ReplyError> {
    let line = read_reply_line(c).await?;
    if line.starts_with("EN") {
        Ok(None)
    } else if let Some(rest) = line.strip_prefix("VA ") {
        let len: usize = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ReplyError::BadValueLine {
                line: line.trim().to_string(),
            })?;
        if len > crate::node::MAX_STRIPE {
            return Err(ReplyError::TooLarge {
                len,
                limit: crate::node::MAX_STRIPE,
            });
        }
        let mut v = vec![0u8; len + 2];
        c.read_exact(&mut v).await?;
        if v[len..] != *b"\r\n" {
            return Err(ReplyError::NoCrlf);
        }
        v.truncate(len);
        Ok(Some(Bytes::from(v)))
    } else {
        Err(unexpected(&line))
    }
}

/// Reads memcached's reply to `ms KEY LEN`: `HD` is success.
pub async fn read_set_reply<R: AsyncBufRead + Unpin>(c: &mut R) -> Result<(), ReplyError> {
    let line = read_reply_line(c).await?;
    if line.starts_with("HD") {
        Ok(())
    } else {
        Err(unexpected(&line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memcached_replies() {
        let mut r: &[u8] = b"VA 2 f\r\nab\r\nEN\r\n";
        assert_eq!(
            read_get_reply(&mut r).await.unwrap(),
            Some(Bytes::from_static(b"ab"))
        );
        assert_eq!(read_get_reply(&mut r).await.unwrap(), None);
        assert!(r.is_empty());
        let mut r: &[u8] = b"HD\r\n";
        assert!(read_set_reply(&mut r).await.is_ok());
        // The server's own words are kept.
        let mut r: &[u8] = b"SERVER_ERROR out of memory\r\n";
        let e = read_set_reply(&mut r).await.unwrap_err();
        assert!(
            matches!(&e, ReplyError::Unexpected { line } if line == "SERVER_ERROR out of memory"),
            "{e:?}"
        );
    }

    #[test]
    fn memcached_lease_replies() {
        assert_eq!(parse_lease_reply("HD c17 W\r\n").unwrap(), Lease::Won(17));
        assert_eq!(parse_lease_reply("HD c17 Z\r\n").unwrap(), Lease::Held);
        assert_eq!(parse_lease_reply("HD c3\r\n").unwrap(), Lease::Held);
        assert!(matches!(
            parse_lease_reply("HD W\r\n"),
            Err(ReplyError::NoCas { .. })
        ));
        assert!(matches!(
            parse_lease_reply("SERVER_ERROR out of memory\r\n"),
            Err(ReplyError::Unexpected { .. })
        ));
    }

    /// Found by fuzzing (fleet_memcached_reply): the two bytes after a value
    /// were dropped unchecked, so a reply with a wrong length left the pooled
    /// connection out of step and the next request read the wrong bytes.
    #[tokio::test]
    async fn value_must_end_with_crlf() {
        let mut r: &[u8] = b"VA 2\r\nabXYEN\r\n";
        assert!(matches!(
            read_get_reply(&mut r).await,
            Err(ReplyError::NoCrlf)
        ));
        let mut r: &[u8] = b"VA 1\r\nab\r\n";
        assert!(matches!(
            read_get_reply(&mut r).await,
            Err(ReplyError::NoCrlf)
        ));
    }

    /// Found by review while fuzzing: a reply line was read without bound
    /// (a misbehaving node could grow the agent's memory at will), and a
    /// truncated line (connection closed) was taken for a reply.
    #[tokio::test]
    async fn reply_lines_are_bounded_and_complete() {
        let long = vec![b'A'; 64 << 10];
        let mut r: &[u8] = &long;
        assert!(matches!(
            read_get_reply(&mut r).await,
            Err(ReplyError::LineTooLong { .. })
        ));
        assert!(long.len() - r.len() <= MAX_LINE as usize);
        let mut r: &[u8] = b"EN";
        assert!(matches!(
            read_get_reply(&mut r).await,
            Err(ReplyError::Closed)
        ));
        let mut r: &[u8] = b"HD";
        assert!(matches!(
            read_set_reply(&mut r).await,
            Err(ReplyError::Closed)
        ));
    }
}
