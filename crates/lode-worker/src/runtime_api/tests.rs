//! The Runtime API driven by a real HTTP client over its unix socket.

use super::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Api {
    api: Arc<RuntimeApi>,
    sock: PathBuf,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rt.sock");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    let api = Arc::new(RuntimeApi::new());
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve(l, api.clone(), rx));
    Api {
        api,
        sock,
        _stop: stop,
        _dir: dir,
    }
}

struct Got {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn call(
    sock: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Got {
    let s = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "10.0.2.100:9001");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

fn inv(id: &str) -> Invocation {
    Invocation {
        request_id: id.into(),
        payload: Bytes::from_static(b"{\"n\":1}"),
        deadline_ms: 1_700_000_000_000,
        arn: "arn:aws:lambda:us-east-1:acme:function:f".into(),
        trace_id: "Root=1-x".into(),
    }
}

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

#[tokio::test]
async fn next_waits_for_an_event_and_a_response_answers_it() {
    let a = start();
    let mut ready = a.api.ready();
    let sock = a.sock.clone();
    let next = tokio::spawn(async move { call(&sock, "GET", NEXT, &[], vec![]).await });
    ready.wait_for(|r| r.is_some()).await.unwrap();
    assert!(matches!(*ready.borrow(), Some(Ready::Next(_))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !next.is_finished(),
        "next must block until there is an event"
    );
    let answer = a.api.submit(inv("r1"));
    let got = next.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"{\"n\":1}");
    let h = |k: &str| got.headers.get(k).unwrap().to_str().unwrap().to_string();
    assert_eq!(h("Lambda-Runtime-Aws-Request-Id"), "r1");
    assert_eq!(h("Lambda-Runtime-Deadline-Ms"), "1700000000000");
    assert_eq!(
        h("Lambda-Runtime-Invoked-Function-Arn"),
        "arn:aws:lambda:us-east-1:acme:function:f"
    );
    assert_eq!(h("Lambda-Runtime-Trace-Id"), "Root=1-x");
    // Another id is refused, the right one is accepted once.
    let r = call(
        &a.sock,
        "POST",
        "/2018-06-01/runtime/invocation/r2/response",
        &[],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["errorType"].as_str()),
        (400, Some("InvalidRequestID"))
    );
    let r = call(
        &a.sock,
        "POST",
        "/2018-06-01/runtime/invocation/r1/response",
        &[],
        b"\"ok\"".to_vec(),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        answer.await.unwrap(),
        Answer::Response(Bytes::from_static(b"\"ok\""))
    );
    let r = call(
        &a.sock,
        "POST",
        "/2018-06-01/runtime/invocation/r1/response",
        &[],
        b"again".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["errorType"].as_str()),
        (403, Some("InvalidStateTransition"))
    );
    // init/error once the runtime is past init is refused.
    let r = call(
        &a.sock,
        "POST",
        "/2018-06-01/runtime/init/error",
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn errors_carry_their_type_and_oversized_responses_fail_the_invocation() {
    let a = start();
    for (id, header, body, want) in [
        (
            "e1",
            Some("Unhandled"),
            br#"{"errorType":"ValueError"}"#.to_vec(),
            "ValueError",
        ),
        (
            "e2",
            None,
            br#"{"errorMessage":"x","errorType":"ValueError"}"#.to_vec(),
            "ValueError",
        ),
        (
            "e3",
            Some("Custom.Boom"),
            b"not json".to_vec(),
            "Custom.Boom",
        ),
        ("e4", None, b"not json".to_vec(), "Unhandled"),
    ] {
        let answer = a.api.submit(inv(id));
        let got = call(&a.sock, "GET", NEXT, &[], vec![]).await;
        assert_eq!(got.status, 200);
        let headers: Vec<(&str, &str)> = header
            .map(|h| ("Lambda-Runtime-Function-Error-Type", h))
            .into_iter()
            .collect();
        let r = call(
            &a.sock,
            "POST",
            &format!("/2018-06-01/runtime/invocation/{id}/error"),
            &headers,
            body.clone(),
        )
        .await;
        assert_eq!(r.status, 202);
        assert_eq!(
            answer.await.unwrap(),
            Answer::Error {
                error_type: want.into(),
                body: Bytes::from(body)
            }
        );
    }
    let answer = a.api.submit(inv("big"));
    call(&a.sock, "GET", NEXT, &[], vec![]).await;
    let r = call(
        &a.sock,
        "POST",
        "/2018-06-01/runtime/invocation/big/response",
        &[],
        vec![b'x'; MAX_PAYLOAD + 1],
    )
    .await;
    assert_eq!(r.status, 413);
    match answer.await.unwrap() {
        Answer::Error { error_type, .. } => assert_eq!(error_type, "Function.ResponseSizeTooLarge"),
        a => panic!("{a:?}"),
    }
    // Asking for the next event without answering abandons the current one.
    let answer = a.api.submit(inv("dropped"));
    call(&a.sock, "GET", NEXT, &[], vec![]).await;
    let sock = a.sock.clone();
    let waiting = tokio::spawn(async move { call(&sock, "GET", NEXT, &[], vec![]).await });
    assert_eq!(answer.await.unwrap(), Answer::Abandoned);
    waiting.abort();
}

#[tokio::test]
async fn init_errors_and_bad_requests() {
    let a = start();
    let mut ready = a.api.ready();
    let r = call(
        &a.sock,
        "POST",
        "/2018-06-01/runtime/init/error",
        &[(
            "Lambda-Runtime-Function-Error-Type",
            "Runtime.ImportModuleError",
        )],
        br#"{"errorMessage":"no module named app"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, 202);
    ready.wait_for(|r| r.is_some()).await.unwrap();
    match ready.borrow().clone() {
        Some(Ready::InitError { error_type, body }) => {
            assert_eq!(error_type, "Runtime.ImportModuleError");
            assert!(body.starts_with(b"{\"errorMessage\""));
        }
        r => panic!("{r:?}"),
    }
    let r = call(&a.sock, "GET", "/2018-06-01/runtime/nope", &[], vec![]).await;
    assert_eq!(r.status, 404);
    let r = call(&a.sock, "DELETE", NEXT, &[], vec![]).await;
    assert_eq!(r.status, 405);
    let r = call(&a.sock, "GET", "/other", &[], vec![]).await;
    assert_eq!(r.status, 404);
    let r = call(
        &a.sock,
        "POST",
        "/2018-06-01/runtime/invocation/none/error",
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 400);
}
