//! hub.js, the browser client, served by the hub itself.
//!
//! `hub.js` is one JavaScript file with no dependencies and no build step (it lives at
//! `js/hub.js` in this repository). It speaks all three transports of PROTOCOL.md: WebSocket,
//! falling back to server-sent events, then long-polling; it reconnects with backoff and
//! resumes every subscription from its last position. Mount [`HubJs`] beside the transports:
//!
//! | path (suggested) | service | for |
//! | --- | --- | --- |
//! | `/hub.js` | [`HubJs::script`] | `<script src="/hub.js"></script>`: defines the global `Hub` |
//! | `/hub.mjs` | [`HubJs::module`] | `import Hub from "/hub.mjs"`: the same file as an ES module |
//!
//! Both answer `GET` and `HEAD` (anything else is `405`) with
//! `Content-Type: text/javascript; charset=utf-8`, a strong `ETag` (a hash of the content:
//! `304 Not Modified` on a matching `If-None-Match`) and `Cache-Control: public,
//! max-age=3600`. A page that names the version, `/hub.js?v=<version()>`, gets
//! `Cache-Control: public, max-age=31536000, immutable` instead: a new release has a new
//! version, hence a new URL. The files are compiled into the binary ([`HUB_JS`], [`HUB_MJS`]),
//! so there is nothing to deploy beside it.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http_body_util::{BodyExt, Empty};
//! use livehub::js::HubJs;
//! use hyper::service::Service;
//!
//! // In a router: `.route_service("/hub.js", HubJs::script())`. Called directly here:
//! let svc = HubJs::script();
//! let req = http::Request::get("/hub.js").body(Empty::<bytes::Bytes>::new()).unwrap();
//! let res = svc.call(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["content-type"], "text/javascript; charset=utf-8");
//! let etag = res.headers()["etag"].clone();
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, livehub::js::HUB_JS.as_bytes());
//!
//! // The browser asks again with the ETag it has: nothing is sent.
//! let again = http::Request::get("/hub.js")
//!     .header("if-none-match", etag)
//!     .body(Empty::<bytes::Bytes>::new())
//!     .unwrap();
//! assert_eq!(svc.call(again).await.unwrap().status(), 304);
//! # }
//! ```

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

/// hub.js as a classic script: `<script src="/hub.js">` defines the global `Hub`; under
/// CommonJS (`require`) it is `module.exports`.
pub const HUB_JS: &str = include_str!("../js/hub.js");

/// hub.js as an ES module: the same file with `export default Hub; export { Hub };` appended
/// (its top-level `var Hub` is then module-scoped: no global is set).
pub const HUB_MJS: &str = concat!(
    include_str!("../js/hub.js"),
    "\nexport default Hub;\nexport { Hub };\n"
);

/// The body type of [`HubJs`]'s responses.
pub type Body = Full<Bytes>;

/// `Cache-Control` of an unversioned URL: an hour, then revalidated with the `ETag`.
const CACHE: &str = "public, max-age=3600";

/// `Cache-Control` of a URL that names the current version (`?v=...`).
const CACHE_VERSIONED: &str = "public, max-age=31536000, immutable";

/// FNV-1a, 64 bits: enough to tell two versions of one file apart (this is a cache key, not a
/// defence against anyone).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// The version of hub.js compiled in: 16 hex digits, a hash of [`HUB_JS`]. Put it in the
/// page's URL (`/hub.js?v=...`) to let browsers cache the file for good.
pub fn version() -> String {
    format!("{:016x}", fnv1a(HUB_JS.as_bytes()))
}

/// Serves hub.js: [`HubJs::script`] (`/hub.js`) or [`HubJs::module`] (`/hub.mjs`).
///
/// It implements both `hyper::service::Service` and `tower::Service` (for axum's
/// `route_service`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubJs {
    body: &'static str,
    etag: HeaderValue,
    version: HeaderValue,
}

impl HubJs {
    /// Serves [`HUB_JS`], the classic script.
    pub fn script() -> HubJs {
        HubJs::serving(HUB_JS)
    }

    /// Serves [`HUB_MJS`], the ES module.
    pub fn module() -> HubJs {
        HubJs::serving(HUB_MJS)
    }

    fn serving(body: &'static str) -> HubJs {
        let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
        HubJs {
            body,
            // Hex digits and quotes: always a valid header value.
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"hub\"")),
            version: HeaderValue::from_str(&version()).unwrap_or(HeaderValue::from_static("")),
        }
    }

    /// Answers one request.
    fn answer<B>(&self, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = Response::new(Full::new(Bytes::from_static(
                br#"{"code":"method_not_allowed","message":"GET or HEAD"}"#,
            )));
            *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            let h = res.headers_mut();
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return res;
        }
        // The version is hex digits: no percent-decoding to do.
        let versioned = req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.strip_prefix("v=").map(str::as_bytes) == Some(self.version.as_bytes()))
        });
        let cache = if versioned { CACHE_VERSIONED } else { CACHE };
        let fresh = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag.as_bytes() == self.etag.as_bytes());
        let (status, body) = if fresh {
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else if req.method() == Method::HEAD {
            (StatusCode::OK, Bytes::new())
        } else {
            (StatusCode::OK, Bytes::from_static(self.body.as_bytes()))
        };
        let mut res = Response::new(Full::new(body));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(header::ETAG, self.etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        if !fresh {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        res
    }
}

impl<B> tower_service::Service<Request<B>> for HubJs {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(&req)))
    }
}

impl<B> hyper::service::Service<Request<B>> for HubJs {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(&req)))
    }
}
