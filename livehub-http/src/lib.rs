//! HTTP pieces shared by the hub's HTTP transports, livehub-sse and livehub-poll. Not meant to be used
//! directly: its API is what those two transports need, and changes with them.
//!
//! The transports must not depend on each other, and livehub-core stays transport-independent (no
//! HTTP server logic), so what they have in common lives here:
//!
//! - [`seq`]: per-session command numbers (`Hub-Command-Seq`): the rules, and the answers they
//!   lead to;
//! - [`json_error`] and [`refusal`]: error answers with the JSON body `{"code", "message"}`,
//!   each marked ([`Refused`]) so that the transport counts and logs it ([`note_refusal`]);
//! - [`read_body`]: a command's body, within the hub's frame size limit;
//! - [`connect_request`] and [`peer`]: what the hub's hooks judge an HTTP request by, the
//!   client's address included (under bare hyper, axum, and behind trusted proxies);
//! - [`cors`]: the one CORS policy of livehub-sse and livehub-poll;
//! - [`secret`]: session secrets in hex, compared in constant time.
//!
//! livehub-ws uses the peer and the refusals.
//!
//! Answers are built as `Response<Bytes>`: each transport puts the bytes in its own body type
//! (`Response::map`) and adds headers of its own (livehub-poll's no-store headers, CORS).
//!
//! # Features
//!
//! | feature | what |
//! | --- | --- |
//! | `axum` (off; on by default in the `livehub` facade) | find the client's address in axum's `ConnectInfo<SocketAddr>` too |
//!
//! # Example
//!
//! ```
//! use http::StatusCode;
//! use livehub_http::seq::{parse_seq, BAD_SEQ};
//!
//! // A refusal as every HTTP transport of the hub answers it.
//! let resp = livehub_http::json_error(StatusCode::CONFLICT, BAD_SEQ, "expected command 3");
//! assert_eq!(resp.status(), StatusCode::CONFLICT);
//! assert_eq!(resp.headers()["content-type"], "application/json");
//! let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
//! assert_eq!(body["code"], "bad_seq");
//!
//! // Command numbers: decimal, from 1, within u64; nothing else.
//! assert_eq!(parse_seq("42"), Some(42));
//! assert_eq!(parse_seq("0"), None);
//! assert_eq!(parse_seq("+1"), None);
//! ```

#![warn(missing_docs)]

pub mod cors;
pub mod peer;
pub mod secret;
pub mod seq;

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use livehub_core::{Codec, ConnectRequest, Hub, Rejection, TransportInfo};

/// The media type of JSON answers.
const JSON_TYPE: &str = "application/json";

/// What an error answer says, kept in its extensions so that the transport can count and log
/// the refusal without reading its own body back ([`note_refusal`]).
#[derive(Debug, Clone)]
pub struct Refused {
    /// The stable code of the answer's body.
    pub code: &'static str,
    /// The body's message.
    pub message: String,
}

/// An error answer: `status`, with the JSON body `{"code": code, "message": message}` (marked
/// [`Refused`]).
pub fn json_error(status: StatusCode, code: &'static str, message: &str) -> Response<Bytes> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    resp.extensions_mut().insert(Refused {
        code,
        message: message.to_owned(),
    });
    resp
}

/// The answer to a request the hub refused (its hooks, its limits): the rejection's status
/// (403 if that is not a valid status code), code and message, as a [`json_error`].
pub fn refusal(rej: &Rejection) -> Response<Bytes> {
    let status = StatusCode::from_u16(rej.status()).unwrap_or(StatusCode::FORBIDDEN);
    json_error(status, rej.code(), rej.message())
}

/// Counts and logs (at debug) the refusal an answer carries, if it is one ([`Refused`]): under
/// its code in the hub's [`livehub_core::StatsSnapshot::refusals`]. Each transport calls it once
/// per answer.
pub fn note_refusal<B>(
    hub: &Hub,
    transport: &'static str,
    request: &RequestLine,
    resp: &Response<B>,
) {
    if let Some(r) = resp.extensions().get::<Refused>() {
        hub.record_refusal(r.code);
        tracing::debug!(
            transport,
            status = resp.status().as_u16(),
            code = r.code,
            // Debug-quoted: a message may quote what the client sent (an Origin, a topic).
            message = ?r.message,
            method = %request.method,
            path = %request.path,
            peer = ?request.peer,
            "refused a request"
        );
    }
}

/// What [`note_refusal`] logs of the request (taken before the request is consumed).
#[derive(Debug, Clone)]
pub struct RequestLine {
    /// The method.
    pub method: http::Method,
    /// The path (without the query, which may hold credentials).
    pub path: String,
    /// The connection's peer, if known.
    pub peer: Option<SocketAddr>,
}

impl RequestLine {
    /// The request's method, path and connection peer ([`peer::socket_peer`]).
    pub fn of<B>(req: &Request<B>, configured: Option<SocketAddr>) -> RequestLine {
        RequestLine {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            peer: peer::socket_peer(req.extensions(), configured),
        }
    }
}

/// What the hub's hooks judge an HTTP request by ([`livehub_core::Hub::connect`],
/// [`livehub_core::Hub::authenticate`]): the request's headers and URI, and the client's address
/// ([`peer`]: the connection's peer, `configured` or found in the request's extensions; behind
/// a trusted proxy, the client its forwarding headers name).
pub fn connect_request<B>(
    hub: &Hub,
    req: &Request<B>,
    transport: TransportInfo,
    codec: Codec,
    configured: Option<SocketAddr>,
) -> ConnectRequest {
    let socket = peer::socket_peer(req.extensions(), configured);
    ConnectRequest {
        transport,
        codec,
        headers: req.headers().clone(),
        uri: req.uri().clone(),
        peer: peer::client_addr(hub, req.headers(), socket),
    }
}

/// Why [`read_body`] has no body to give.
#[derive(Debug)]
pub enum BodyError {
    /// The body is over the limit: by its `Content-Length`, or found while reading it.
    TooLarge,
    /// The body could not be read (e.g. the client went away mid-body).
    Unreadable(Box<dyn Error + Send + Sync>),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("the body is over the size limit"),
            BodyError::Unreadable(e) => write!(f, "could not read the body: {e}"),
        }
    }
}

impl Error for BodyError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BodyError::TooLarge => None,
            BodyError::Unreadable(e) => Some(&**e),
        }
    }
}

/// Reads a request's whole body, at most `max` bytes. A request whose `Content-Length` says
/// more is refused before anything is read; one that sends more than it said (or says nothing)
/// is refused as soon as it passes `max`.
pub async fn read_body<B>(req: Request<B>, max: usize) -> Result<Bytes, BodyError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Unreadable(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use http_body_util::Full;

    fn request(body: &'static str, content_length: Option<&str>) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
        if let Some(n) = content_length {
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, n.parse().unwrap());
        }
        req
    }

    #[test]
    fn errors_are_json_code_and_message() {
        let resp = json_error(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no \"such\" session",
        );
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": "unknown_session", "message": "no \"such\" session"})
        );
        let rej = Rejection::origin_not_allowed("https://evil.example");
        let resp = refusal(&rej);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(&resp.body()[..], rej.body().as_bytes());
        // Marked, so that the transport counts it under its code.
        let refused = resp.extensions().get::<Refused>().unwrap();
        assert_eq!(refused.code, "origin_not_allowed");
        assert_eq!(refused.message, rej.message());
    }

    #[tokio::test]
    async fn bodies_are_read_within_the_limit() {
        assert_eq!(&read_body(request("{}", None), 2).await.unwrap()[..], b"{}");
        assert!(matches!(
            read_body(request("{}", Some("3")), 2).await,
            Err(BodyError::TooLarge)
        ));
        assert!(matches!(
            read_body(request("{ }", None), 2).await,
            Err(BodyError::TooLarge)
        ));
    }
}
