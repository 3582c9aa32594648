//! A minimal HTTP endpoint serving Prometheus text at any path.

use crate::nbd::Server;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Extra metrics a caller adds (e.g. the cache fleet's).
pub type Extra = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Renders all metrics of the agent.
pub fn render(server: &Server, extra: Option<&Extra>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# lode agent metrics");
    server.exports().reader().render_metrics(&mut out);
    if let Some(f) = extra {
        f(&mut out);
    }
    let _ = writeln!(
        out,
        "lode_nbd_connections_total {}",
        server.connections.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "lode_vhost_user_sessions_total {}",
        server.vhost_sessions.load(Ordering::Relaxed)
    );
    out
}

/// Serves metrics on `listener` until the task is dropped. Each client gets
/// 5 s to send its request; requests are not parsed beyond that.
pub async fn serve(listener: TcpListener, server: Arc<Server>, extra: Option<Extra>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let server = server.clone();
        let extra = extra.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
            let body = render(&server, extra.as_ref());
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
