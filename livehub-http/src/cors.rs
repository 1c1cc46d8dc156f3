//! Cross-origin requests (CORS): one policy for every HTTP transport of the hub.
//!
//! By default ([`Cors::same_origin`]) no CORS header is sent: only pages of the server's own
//! origin can read the answers. [`Cors::allow_origins`] lets pages of the listed origins in:
//! answers to them carry `Access-Control-Allow-Origin: <origin>`,
//! `Access-Control-Allow-Credentials: true` (cookies and `Authorization` go along) and the
//! transport's exposed headers, with `Vary: Origin`; `"*"` in the list allows any origin, without
//! credentials. A preflight (`OPTIONS`) from an allowed origin (or without `Origin`) is answered
//! `204` with the transport's methods and request headers; from another origin, `403
//! origin_not_allowed`.
//!
//! This only tells browsers what a page may read. Who may connect at all is the hub's business
//! (its origin allow-list, `HubBuilder::allowed_origins`, and the authenticate hook).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use livehub_core::Rejection;

/// What one transport declares about its cross-origin requests: the methods and request
/// headers a preflight allows, and the answer headers a page may read.
#[derive(Debug, Clone, Copy)]
pub struct CorsRoutes {
    /// `Access-Control-Allow-Methods` (and `Allow`) of a preflight, e.g. `GET, POST, OPTIONS`.
    pub methods: &'static str,
    /// `Access-Control-Allow-Headers` of a preflight (lowercase names).
    pub request_headers: &'static str,
    /// `Access-Control-Expose-Headers` of the answers to allowed origins.
    pub expose_headers: &'static str,
}

/// A CORS policy (see the module docs). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Cors(Policy);

#[derive(Debug, Clone, Default)]
enum Policy {
    #[default]
    SameOrigin,
    Any,
    List(Arc<[String]>),
}

/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

impl Cors {
    /// No CORS headers: same-origin pages only (the default).
    pub fn same_origin() -> Cors {
        Cors(Policy::SameOrigin)
    }

    /// Pages of these origins (e.g. `https://dashboard.example`) may use the transport, with
    /// credentials; `"*"` among them allows any origin, without credentials.
    pub fn allow_origins<I, S>(origins: I) -> Cors
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = origins.into_iter().map(Into::into).collect();
        if list.iter().any(|o| o == "*") {
            Cors(Policy::Any)
        } else {
            Cors(Policy::List(list.into()))
        }
    }

    /// Whether a page of `origin` may read the answers.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        match &self.0 {
            Policy::SameOrigin => false,
            Policy::Any => true,
            Policy::List(list) => list.iter().any(|o| o.as_bytes() == origin.as_bytes()),
        }
    }

    /// Adds the CORS headers of an answer to a request from `origin` (nothing without one).
    pub fn apply(&self, origin: Option<&HeaderValue>, routes: &CorsRoutes, h: &mut HeaderMap) {
        let Some(origin) = origin else {
            return;
        };
        let expose = HeaderValue::from_static(routes.expose_headers);
        match &self.0 {
            Policy::SameOrigin => {}
            Policy::Any => {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
            }
            Policy::List(_) => {
                // The answer depends on the Origin: caches must keep one per origin.
                h.append(header::VARY, HeaderValue::from_static("Origin"));
                if self.allows(origin) {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                    h.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
                }
            }
        }
    }

    /// The answer to a preflight (`OPTIONS`) from `origin`: `204` with what `routes` allows,
    /// or `403 origin_not_allowed` for an origin this policy does not allow. (Add the CORS
    /// headers with [`Cors::apply`], as for any answer.)
    pub fn preflight(&self, origin: Option<&HeaderValue>, routes: &CorsRoutes) -> Response<Bytes> {
        if let Some(o) = origin.filter(|o| !self.allows(o)) {
            let o = String::from_utf8_lossy(o.as_bytes()).into_owned();
            return crate::refusal(&Rejection::origin_not_allowed(&o));
        }
        let mut resp = Response::new(Bytes::new());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(routes.methods),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(routes.request_headers),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        h.insert(header::ALLOW, HeaderValue::from_static(routes.methods));
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ROUTES: CorsRoutes = CorsRoutes {
        methods: "GET, OPTIONS",
        request_headers: "authorization",
        expose_headers: "x-seq",
    };

    fn answer(cors: &Cors, origin: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        cors.apply(Some(&HeaderValue::from_static(origin)), &ROUTES, &mut h);
        h
    }

    #[test]
    fn listed_origins_get_credentials_others_only_vary() {
        let cors = Cors::allow_origins(["https://a.example"]);
        let h = answer(&cors, "https://a.example");
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-seq");
        assert_eq!(h["vary"], "Origin");
        let h = answer(&cors, "https://b.example");
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(h["vary"], "Origin");
        let pre = cors.preflight(
            Some(&HeaderValue::from_static("https://b.example")),
            &ROUTES,
        );
        assert_eq!(pre.status(), StatusCode::FORBIDDEN);
        let pre = cors.preflight(
            Some(&HeaderValue::from_static("https://a.example")),
            &ROUTES,
        );
        assert_eq!(pre.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            pre.headers()["access-control-allow-methods"],
            "GET, OPTIONS"
        );
    }

    #[test]
    fn any_origin_has_no_credentials_and_same_origin_sends_nothing() {
        let h = answer(&Cors::allow_origins(["*"]), "https://x.example");
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(h.get("access-control-allow-credentials").is_none());
        assert!(answer(&Cors::same_origin(), "https://x.example").is_empty());
        let mut h = HeaderMap::new();
        Cors::allow_origins(["*"]).apply(None, &ROUTES, &mut h);
        assert!(h.is_empty(), "no Origin, no CORS headers");
    }
}
