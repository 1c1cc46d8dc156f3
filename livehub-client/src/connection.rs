//! Opening one connection: the WebSocket handshake with the encoding's subprotocol, a refusal
//! read from its HTTP answer, and the server's `welcome`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use livehub_protocol::{Code, Codec, ServerFrame, SessionId};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{
    HeaderName, HeaderValue, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::Error;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The client's settings, fixed when it is built.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) codec: Codec,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) floor: Duration,
    pub(crate) ceiling: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) ack_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) liveness: Option<Duration>,
    pub(crate) offline_queue: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) subscription_buffer: usize,
    pub(crate) server_events_buffer: usize,
    pub(crate) max_frame_size: usize,
    /// The TLS settings of `wss://` URLs (`None`: rustls with webpki's roots).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Config {
    pub(crate) fn new(url: String) -> Config {
        Config {
            url,
            codec: Codec::Json,
            headers: Vec::new(),
            floor: Duration::from_millis(500),
            ceiling: Duration::from_secs(20),
            max_attempts: None,
            ack_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            liveness: None,
            offline_queue: 256,
            max_in_flight: 1024,
            subscription_buffer: 1024,
            server_events_buffer: 256,
            max_frame_size: 1 << 20,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// What the `welcome` said.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Welcome {
    pub(crate) session: SessionId,
    pub(crate) timeout_ms: u64,
}

/// Opens a connection and reads its `welcome`, all within the connect timeout.
pub(crate) async fn open(cfg: &Config) -> Result<(Ws, Welcome), Error> {
    let mut req = cfg
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Config(format!("{}: {e}", cfg.url)))?;
    #[cfg(not(feature = "tls"))]
    if req.uri().scheme_str() == Some("wss") {
        return Err(Error::Config(format!(
            "{}: wss:// needs livehub-client's `tls` feature",
            cfg.url
        )));
    }
    let headers = req.headers_mut();
    for (name, value) in &cfg.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(cfg.codec.subprotocol()),
    );
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(cfg.max_frame_size))
        .max_frame_size(Some(cfg.max_frame_size))
        // A client reads one connection: no need for the server-sized default (128 KiB).
        .read_buffer_size(16 * 1024);
    let connect = async {
        #[cfg(feature = "tls")]
        let connected = tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(ws_config),
            true,
            cfg.tls.clone().map(tokio_tungstenite::Connector::Rustls),
        )
        .await;
        // Without TLS, a `wss://` URL fails here (`Error::Config`: the feature is off).
        #[cfg(not(feature = "tls"))]
        let connected =
            tokio_tungstenite::connect_async_with_config(req, Some(ws_config), true).await;
        let (mut ws, _response) = connected.map_err(connect_error)?;
        let welcome = read_welcome(&mut ws, cfg.codec).await?;
        Ok((ws, welcome))
    };
    tokio::time::timeout(cfg.connect_timeout, connect)
        .await
        .map_err(|_| {
            Error::Connect(format!(
                "no welcome within {} ms",
                cfg.connect_timeout.as_millis()
            ))
        })?
}

/// The first frame: it must be a `welcome` in our encoding.
async fn read_welcome(ws: &mut Ws, codec: Codec) -> Result<Welcome, Error> {
    loop {
        let msg = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(Error::Connect(e.to_string())),
            None => return Err(Error::Connect("closed before the welcome".into())),
        };
        let Some((frame_codec, bytes)) = frame_bytes(msg.clone()) else {
            if let WsMessage::Close(close) = msg {
                let (code, reason) = close
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(Error::Connect(format!(
                    "closed before the welcome: {code} {reason}"
                )));
            }
            continue; // ping, pong
        };
        return match ServerFrame::decode(frame_codec, &bytes) {
            Ok(ServerFrame::Welcome {
                session,
                encoding,
                timeout_ms,
                ..
            }) if encoding == codec => Ok(Welcome {
                session,
                timeout_ms,
            }),
            Ok(ServerFrame::Welcome { encoding, .. }) => Err(Error::Protocol(format!(
                "the server speaks {}, not {}",
                encoding.name(),
                codec.name()
            ))),
            Ok(other) => Err(Error::Protocol(format!(
                "the first frame is {:?}, not welcome",
                other.kind()
            ))),
            Err(e) => Err(Error::Protocol(format!("an unreadable welcome: {e}"))),
        };
    }
}

/// A data message's bytes and the encoding its kind says (text: JSON, binary: MessagePack).
pub(crate) fn frame_bytes(msg: WsMessage) -> Option<(Codec, Bytes)> {
    match msg {
        WsMessage::Text(t) => Some((Codec::Json, Bytes::from(t))),
        WsMessage::Binary(b) => Some((Codec::MsgPack, b)),
        _ => None,
    }
}

/// An encoded client frame as a WebSocket message of its encoding.
pub(crate) fn to_message(codec: Codec, bytes: Bytes) -> Result<WsMessage, Error> {
    match codec {
        Codec::Json => Utf8Bytes::try_from(bytes)
            .map(WsMessage::Text)
            .map_err(|e| Error::Protocol(format!("a JSON frame that is not UTF-8: {e}"))),
        Codec::MsgPack => Ok(WsMessage::Binary(bytes)),
    }
}

/// The body of a refusal (PROTOCOL.md: `{"code": .., "message": ..}`).
#[derive(Deserialize)]
struct RefusalBody {
    code: String,
    #[serde(default)]
    message: String,
}

fn connect_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            match serde_json::from_slice::<RefusalBody>(body) {
                Ok(b) => Error::Refused {
                    status,
                    code: Code::parse(&b.code),
                    message: b.message,
                },
                Err(_) => Error::Refused {
                    status,
                    code: Code::Unknown("".into()),
                    message: String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned(),
                },
            }
        }
        tungstenite::Error::Url(e) => Error::Config(e.to_string()),
        other => Error::Connect(other.to_string()),
    }
}
