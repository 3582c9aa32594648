//! How the client talks to cache nodes: lode's own nodes over HTTP/2, or
//! plain memcached servers over the meta protocol.

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
    /// Node addresses, in configuration order.
    fn nodes(&self) -> &[String];
    /// Reads a stripe; `Ok(None)` when the node does not have it.
    fn get<'a>(&'a self, node: usize, key: &'a str)
        -> BoxFuture<'a, Result<Option<Bytes>, String>>;
    /// Stores a stripe.
    fn put<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// lode cache nodes over HTTP/2 (one multiplexed connection per node).
pub struct Http2Nodes {
    nodes: Vec<String>,
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
        Http2Nodes { nodes, client }
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
    ) -> BoxFuture<'a, Result<Option<Bytes>, String>> {
        Box::pin(async move {
            let uri = format!("http://{}/s/{key}", self.nodes[node]);
            let req = hyper::Request::get(uri)
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            match resp.status() {
                hyper::StatusCode::OK => {
                    // A node is not trusted: never buffer more than a stripe.
                    let b = http_body_util::Limited::new(resp.into_body(), crate::node::MAX_STRIPE)
                        .collect()
                        .await
                        .map_err(|e| format!("stripe body: {e}"))?
                        .to_bytes();
                    Ok(Some(b))
                }
                hyper::StatusCode::NOT_FOUND => Ok(None),
                s => Err(format!("status {s}")),
            }
        })
    }

    fn put<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let uri = format!("http://{}/s/{key}", self.nodes[node]);
            let req = hyper::Request::put(uri)
                .body(Full::new(value))
                .map_err(|e| e.to_string())?;
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("status {}", resp.status()))
            }
        })
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
    async fn get(&self, node: usize, key: &str) -> Result<Option<Bytes>, String> {
        let mut c = self.conn(node).await?;
        c.write_all(format!("mg lode:{key} v\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        c.flush().await.map_err(|e| e.to_string())?;
        let out = read_get_reply(&mut c).await?;
        self.give_back(node, c);
        Ok(out)
    }

    async fn conn(&self, node: usize) -> Result<BufStream<TcpStream>, String> {
        if let Some(c) = self.pools[node]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
        {
            return Ok(c);
        }
        let s = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            TcpStream::connect(&self.nodes[node]),
        )
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        Ok(BufStream::new(s))
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
    ) -> BoxFuture<'a, Result<Option<Bytes>, String>> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        Box::pin(async move {
            tokio::spawn(async move {
                tokio::time::timeout(DRAIN, inner.get(node, &key))
                    .await
                    .unwrap_or_else(|_| Err("memcached GET timed out".into()))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }

    fn put<'a>(
        &'a self,
        node: usize,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<(), String>> {
        let this = &self.inner;
        Box::pin(async move {
            let mut c = this.conn(node).await?;
            c.write_all(format!("ms lode:{key} {} T0\r\n", value.len()).as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(&value).await.map_err(|e| e.to_string())?;
            c.write_all(b"\r\n").await.map_err(|e| e.to_string())?;
            c.flush().await.map_err(|e| e.to_string())?;
            read_set_reply(&mut c).await?;
            this.give_back(node, c);
            Ok(())
        })
    }
}

/// Longest reply line accepted from memcached (a status line, not a value).
const MAX_LINE: u64 = 1024;

/// Reads one `\n`-terminated reply line of at most [`MAX_LINE`] bytes.
async fn read_reply_line<R: AsyncBufRead + Unpin>(c: &mut R) -> Result<String, String> {
    let mut line = String::new();
    (&mut *c)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    if !line.ends_with('\n') {
        return Err(if line.len() as u64 >= MAX_LINE {
            format!("memcached: reply line over the limit of {MAX_LINE} bytes")
        } else {
            "memcached: connection closed mid-reply".into()
        });
    }
    Ok(line)
}

/// Reads memcached's reply to `mg KEY v`: `EN` (miss, `None`) or
/// `VA <len> ...` followed by the value and `\r\n`. An error means the
/// connection is not reusable.
pub async fn read_get_reply<R: AsyncBufRead + Unpin>(c: &mut R) -> Result<Option<Bytes>, String> {
    let line = read_reply_line(c).await?;
    if line.starts_with("EN") {
        Ok(None)
    } else if let Some(rest) = line.strip_prefix("VA ") {
        let len: usize = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or("bad VA line")?;
        if len > crate::node::MAX_STRIPE {
            return Err(format!(
                "memcached: value of {len} bytes, over the limit of {} bytes (one stripe)",
                crate::node::MAX_STRIPE
            ));
        }
        let mut v = vec![0u8; len + 2];
        c.read_exact(&mut v).await.map_err(|e| e.to_string())?;
        if v[len..] != *b"\r\n" {
            return Err("memcached: value not followed by \\r\\n".into());
        }
        v.truncate(len);
        Ok(Some(Bytes::from(v)))
    } else {
        Err(format!("memcached: {}", line.trim()))
    }
}

/// Reads memcached's reply to `ms KEY LEN`: `HD` is success.
pub async fn read_set_reply<R: AsyncBufRead + Unpin>(c: &mut R) -> Result<(), String> {
    let line = read_reply_line(c).await?;
    if line.starts_with("HD") {
        Ok(())
    } else {
        Err(format!("memcached: {}", line.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memcached_replies() {
        let mut r: &[u8] = b"VA 2 f\r\nab\r\nEN\r\n";
        assert_eq!(
            read_get_reply(&mut r).await,
            Ok(Some(Bytes::from_static(b"ab")))
        );
        assert_eq!(read_get_reply(&mut r).await, Ok(None));
        assert!(r.is_empty());
        let mut r: &[u8] = b"HD\r\n";
        assert_eq!(read_set_reply(&mut r).await, Ok(()));
    }

    /// Found by fuzzing (fleet_memcached_reply): the two bytes after a value
    /// were dropped unchecked, so a reply with a wrong length left the pooled
    /// connection out of step and the next request read the wrong bytes.
    #[tokio::test]
    async fn value_must_end_with_crlf() {
        let mut r: &[u8] = b"VA 2\r\nabXYEN\r\n";
        assert!(read_get_reply(&mut r).await.is_err());
        let mut r: &[u8] = b"VA 1\r\nab\r\n";
        assert!(read_get_reply(&mut r).await.is_err());
    }

    /// Found by review while fuzzing: a reply line was read without bound
    /// (a misbehaving node could grow the agent's memory at will), and a
    /// truncated line (connection closed) was taken for a reply.
    #[tokio::test]
    async fn reply_lines_are_bounded_and_complete() {
        let long = vec![b'A'; 64 << 10];
        let mut r: &[u8] = &long;
        assert!(read_get_reply(&mut r).await.is_err());
        assert!(long.len() - r.len() <= MAX_LINE as usize);
        let mut r: &[u8] = b"EN";
        assert!(read_get_reply(&mut r).await.is_err());
        let mut r: &[u8] = b"HD";
        assert!(read_set_reply(&mut r).await.is_err());
    }
}
