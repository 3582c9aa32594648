//! The worker's Runtime API, which a sandbox's guest (untrusted: it runs the
//! tenant's code) talks to.

use crate::support::runtime_paused;
use bytes::Bytes;
use lode_worker::runtime_api::{serve_connection, Answer, Invocation, RuntimeApi};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The request id of the invocation [`runtime_api`] hands out.
pub const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";

/// Arbitrary bytes as one runtime connection, with one invocation waiting:
/// whatever the guest sends, the worker gets at most one answer for it, a
/// response of at most 6 MB, an error type of at most 256 characters, and
/// the connection ends (time is paused: a request that would wait forever
/// ends at the runtime's first idle moment).
pub fn runtime_api(data: &[u8]) {
    runtime_exchange(data);
}

/// What the guest of [`runtime_api`] reads back.
pub fn runtime_exchange(data: &[u8]) -> Vec<u8> {
    let rt = runtime_paused();
    rt.block_on(async {
        let api = Arc::new(RuntimeApi::new());
        let answer = api.submit(Invocation {
            request_id: REQUEST_ID.into(),
            payload: Bytes::from_static(b"{\"key\":\"value\"}"),
            deadline_ms: 1_542_409_706_888,
            arn: "arn:aws:lambda:us-east-2:123456789012:function:custom-runtime".into(),
            trace_id: "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1"
                .into(),
        });
        let (client, server) = tokio::io::duplex(64 << 10);
        let conn = tokio::spawn(serve_connection(server, api.clone()));
        let (mut cr, mut cw) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = cr.read_to_end(&mut out).await;
            out
        });
        let _ = cw.write_all(data).await;
        // Let the server answer what it can before the guest hangs up (a
        // hang-up ends a connection at once: a runtime that goes away must
        // not leave a `next` behind to swallow the next event).
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = cw.shutdown().await;
        // A `next` with no event waits forever, by design: paused time
        // ends it once nothing else can happen.
        let _ = tokio::time::timeout(Duration::from_secs(3600), conn).await;
        let out = tokio::time::timeout(Duration::from_secs(3600), drain)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        api.cancel();
        match tokio::time::timeout(Duration::from_secs(1), answer).await {
            Ok(Ok(Answer::Response(b))) => assert!(b.len() <= lode_lambda::MAX_PAYLOAD),
            Ok(Ok(Answer::Error { error_type, .. })) => {
                assert!(!error_type.is_empty() && error_type.chars().count() <= 256)
            }
            _ => {}
        }
        out
    })
}
