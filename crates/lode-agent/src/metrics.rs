//! A minimal HTTP endpoint serving Prometheus text at any path (bound to
//! loopback unless the operator names another address).

use crate::control::Registry;
use crate::exports::Exports;
use lode_common::prom;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Extra metrics a caller adds (e.g. the cache fleet's).
pub type Extra = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Metrics connections served at once.
const METRICS_CONNECTIONS: usize = 32;

/// Renders all metrics of the agent.
pub async fn render(
    exports: &Exports,
    registry: Option<&Registry>,
    extra: Option<&Extra>,
) -> String {
    let mut out = String::new();
    exports.reader().render_metrics(&mut out);
    if let Some(f) = extra {
        f(&mut out);
    }
    let s = &exports.stats;
    for (name, v) in [
        ("lode_nbd_connections_total", &s.nbd_connections),
        ("lode_vhost_user_sessions_total", &s.vhost_sessions),
        ("lode_connections_accepted_total", &s.accept.accepted),
        ("lode_connections_shed_total", &s.accept.shed),
        ("lode_accept_errors_total", &s.accept.errors),
    ] {
        prom::sample(&mut out, name, "", prom::load(v));
    }
    prom::sample(&mut out, "lode_images_open", "", exports.open_images());
    prom::sample(
        &mut out,
        "lode_images_read_remembered",
        "",
        exports.read_log().len(),
    );
    prom::sample(
        &mut out,
        "lode_demand_fetches_in_flight",
        "",
        exports.reader().demand_in_flight(),
    );
    prom::sample(
        &mut out,
        "lode_tasks_alive",
        "",
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    );
    if let Some(r) = registry {
        r.render_metrics(&mut out).await;
    }
    out
}

/// Serves metrics on `listener` until `stop`. Each client gets 5 s to send
/// its request; requests are not parsed beyond that.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<Exports>,
    registry: Option<Arc<Registry>>,
    extra: Option<Extra>,
    stop: watch::Receiver<bool>,
) {
    let stats = exports.stats.accept.clone();
    crate::serve::run(listener, METRICS_CONNECTIONS, stop, stats, move |mut sock, _| {
        let (exports, registry, extra) = (exports.clone(), registry.clone(), extra.clone());
        async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
            let body = render(&exports, registry.as_deref(), extra.as_ref()).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await
            })
            .await;
        }
    })
    .await;
}
