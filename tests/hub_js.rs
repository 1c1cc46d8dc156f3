//! hub.js served over real HTTP: `livehub::js::HubJs` mounted in an axum router on a free port,
//! asked with raw HTTP/1.1 requests as a browser would: the content, its headers, `304` on a
//! matching `If-None-Match`, `HEAD`, the versioned URL's long cache, and refused methods.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{raw_request, serve_router};
use livehub::js::{version, HubJs, HUB_JS, HUB_MJS};

const WAIT: Duration = Duration::from_secs(5);

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn ask(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Answer {
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    let raw = raw_request(addr, &req, WAIT).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn serve() -> SocketAddr {
    serve_router(
        axum::Router::new()
            .route_service("/hub.js", HubJs::script())
            .route_service("/hub.mjs", HubJs::module()),
    )
    .await
}

#[tokio::test]
async fn serves_the_script_with_caching_headers() {
    let addr = serve().await;
    let a = ask(addr, "GET", "/hub.js", "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, HUB_JS.as_bytes());
    assert_eq!(a.headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(a.headers["cache-control"], "public, max-age=3600");
    assert_eq!(a.headers["x-content-type-options"], "nosniff");
    assert_eq!(a.headers["content-length"], HUB_JS.len().to_string());
    let etag = a.headers["etag"].clone();
    assert!(
        etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'),
        "{etag}"
    );

    // Revalidation: the same tag (alone, in a list, weak) is 304 without a body.
    for header in [
        format!("If-None-Match: {etag}\r\n"),
        format!("If-None-Match: \"other\", W/{etag}\r\n"),
        "If-None-Match: *\r\n".to_owned(),
    ] {
        let b = ask(addr, "GET", "/hub.js", &header).await;
        assert_eq!(b.status, 304, "{header}");
        assert!(b.body.is_empty());
        assert_eq!(b.headers["etag"], etag);
        assert_eq!(b.headers["cache-control"], "public, max-age=3600");
    }
    // Another tag: the file again.
    let c = ask(
        addr,
        "GET",
        "/hub.js",
        "If-None-Match: \"0000000000000000\"\r\n",
    )
    .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.body, HUB_JS.as_bytes());
}

#[tokio::test]
async fn head_answers_the_headers_only() {
    let addr = serve().await;
    let a = ask(addr, "HEAD", "/hub.js", "").await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
    assert_eq!(a.headers["content-length"], HUB_JS.len().to_string());
    assert_eq!(a.headers["content-type"], "text/javascript; charset=utf-8");
}

#[tokio::test]
async fn the_versioned_url_is_cached_for_good() {
    let addr = serve().await;
    let v = version();
    assert_eq!(v.len(), 16);
    let a = ask(addr, "GET", &format!("/hub.js?v={v}"), "").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    // A stale version in the page's URL must not be cached for good.
    let b = ask(addr, "GET", "/hub.js?v=0123456789abcdef", "").await;
    assert_eq!(b.headers["cache-control"], "public, max-age=3600");
    assert_eq!(b.body, HUB_JS.as_bytes());
}

#[tokio::test]
async fn the_module_is_the_script_plus_its_exports() {
    let addr = serve().await;
    let a = ask(addr, "GET", "/hub.mjs", "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, HUB_MJS.as_bytes());
    assert!(HUB_MJS.starts_with(HUB_JS));
    assert!(HUB_MJS.ends_with("export default Hub;\nexport { Hub };\n"));
    let script = ask(addr, "GET", "/hub.js", "").await;
    assert_ne!(
        a.headers["etag"], script.headers["etag"],
        "two files, two tags"
    );
}

#[tokio::test]
async fn other_methods_are_refused() {
    let addr = serve().await;
    for method in ["POST", "PUT", "DELETE"] {
        let a = ask(addr, method, "/hub.js", "Content-Length: 0\r\n").await;
        assert_eq!(a.status, 405, "{method}");
        assert_eq!(a.headers["allow"], "GET, HEAD");
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["code"], "method_not_allowed");
    }
}
