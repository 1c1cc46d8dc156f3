//! Who a client is, by address, when the hub is served by axum: the per-address limit
//! (`max_connections_per_ip`) and the address the hooks see, on all three transports, with
//! real clients over loopback sockets.
//!
//! - served with `into_make_service_with_connect_info::<SocketAddr>()`, the transports find
//!   the peer (axum's `ConnectInfo`), the hook sees it and the limit holds;
//! - served without it, a per-address limit cannot be enforced: connections are refused with
//!   503 `peer_unknown` rather than let in uncounted;
//! - behind a trusted proxy the client is the one `X-Forwarded-For` / `Forwarded` names; from
//!   any other peer those headers are ignored (a client cannot spoof its address).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http, send_request, HttpBody, Kind, KINDS};
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{async_trait, ConnectRequest, Hooks, Hub, HubBuilder, Identity, Rejection};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Safety net for every wait (the machine may be busy: never a timing assertion).
const WAIT: Duration = Duration::from_secs(15);

/// Hooks that let everyone in and remember the address each request came from.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<Vec<Option<SocketAddr>>>>);

impl Peers {
    /// The address the last authenticated request came from.
    fn last(&self) -> Option<SocketAddr> {
        *self.0.lock().unwrap().last().expect("the hook was asked")
    }
}

#[async_trait]
impl Hooks for Peers {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        self.0.lock().unwrap().push(req.peer);
        Ok(Identity::user("u"))
    }
}

/// The three transports in an axum router, served on a free port, with or without connect
/// info.
async fn serve(hub: &Hub, connect_info: bool) -> SocketAddr {
    let app = axum::Router::new()
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            let make = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, make).await;
        } else {
            let _ = axum::serve(listener, app).await;
        }
    });
    addr
}

fn hub_with(builder: HubBuilder) -> (Hub, Peers) {
    let peers = Peers::default();
    (builder.hooks(peers.clone()).build(), peers)
}

/// An open session, as its client holds it.
enum Open {
    Ws(Box<common::Ws>),
    Sse(HttpBody),
    Poll(String),
}

/// A refusal: status and code.
type Refused = (u16, String);

/// Opens a session on `kind` with extra request `headers`.
async fn open(addr: SocketAddr, kind: Kind, headers: &[(&str, &str)]) -> Result<Open, Refused> {
    let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
    match kind {
        Kind::Ws => {
            let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
            for (k, v) in &headers {
                let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
                req.headers_mut().insert(name, v.parse().unwrap());
            }
            match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
                .await
                .expect("timed out connecting")
            {
                Ok((ws, _)) => Ok(Open::Ws(Box::new(ws))),
                Err(tungstenite::Error::Http(resp)) => {
                    let body: serde_json::Value =
                        serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
                    let code = body["code"].as_str().unwrap_or_default().to_owned();
                    Err((resp.status().as_u16(), code))
                }
                Err(e) => panic!("WebSocket connect failed: {e}"),
            }
        }
        Kind::Sse => {
            let (status, _, body) =
                send_request(addr, "GET", "/sse?topic=t", &headers, b"", WAIT).await;
            if status.as_u16() == 200 {
                return Ok(Open::Sse(body));
            }
            let body: serde_json::Value = serde_json::from_slice(&body.collect().await).unwrap();
            Err((status.as_u16(), body["code"].as_str().unwrap().to_owned()))
        }
        Kind::Poll => {
            let r = http(addr, "POST", "/poll", &headers, "", WAIT).await;
            let body = r.json();
            if r.status.as_u16() == 200 {
                return Ok(Open::Poll(body["session"].as_str().unwrap().to_owned()));
            }
            Err((r.status.as_u16(), body["code"].as_str().unwrap().to_owned()))
        }
    }
}

/// Ends a session from its client's side, and waits until the hub has let it go.
async fn close(hub: &Hub, addr: SocketAddr, open: Open, headers: &[(&str, &str)]) {
    let before = hub.session_count();
    match open {
        Open::Ws(ws) => drop(ws),
        Open::Sse(body) => drop(body),
        Open::Poll(session) => {
            let headers: Vec<(&str, String)> =
                headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
            let uri = format!("/poll?session={session}");
            let r = http(addr, "DELETE", &uri, &headers, "", WAIT).await;
            assert_eq!(r.status.as_u16(), 204);
        }
    }
    // A session's end has no event a client could wait on: poll the hub's count, bounded.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.session_count() >= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session lingered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// Regression: under axum (which stores the peer as `ConnectInfo<SocketAddr>`) the transports
// looked for a bare `SocketAddr`, saw no peer, and skipped the per-address limit: two sockets
// from one address both got in, and the hook saw `peer = None`.
#[tokio::test]
async fn under_axum_the_peer_is_found_and_the_per_address_limit_holds_on_every_transport() {
    let (hub, peers) = hub_with(Hub::builder().max_connections_per_ip(1));
    let addr = serve(&hub, true).await;
    for kind in KINDS {
        let first = open(addr, kind, &[])
            .await
            .unwrap_or_else(|r| panic!("{kind:?}: {r:?}"));
        let seen = peers.last().unwrap_or_else(|| panic!("{kind:?}: no peer"));
        assert_eq!(seen.ip(), loopback().ip(), "{kind:?}");
        // A second session from the same address, on any transport, is one too many.
        for other in KINDS {
            let r = open(addr, other, &[]).await;
            assert_eq!(
                r.err(),
                Some((503, "too_many_connections".to_owned())),
                "{kind:?} then {other:?}"
            );
        }
        close(&hub, addr, first, &[]).await;
    }
    // Each refusal was counted under its code.
    assert_eq!(hub.stats().refusals.get("too_many_connections"), Some(&9));

    // Another address is another client: a WebSocket from 127.0.0.2 gets in beside one from
    // 127.0.0.1.
    let first = open(addr, Kind::Ws, &[]).await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (second, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    assert_eq!(peers.last().unwrap().ip().to_string(), "127.0.0.2");
    assert_eq!(hub.session_count(), 2);
    drop(second);
    close(&hub, addr, first, &[]).await;
}

#[tokio::test]
async fn without_connect_info_a_per_address_limit_refuses_rather_than_letting_everyone_in() {
    let (hub, peers) = hub_with(Hub::builder().max_connections_per_ip(5));
    let addr = serve(&hub, false).await;
    for kind in KINDS {
        let r = open(addr, kind, &[]).await;
        assert_eq!(r.err(), Some((503, "peer_unknown".to_owned())), "{kind:?}");
    }
    assert_eq!(hub.stats().sessions_opened, 0);
    assert_eq!(hub.stats().refusals.get("peer_unknown"), Some(&3));
    assert!(
        peers.0.lock().unwrap().is_empty(),
        "refused before the hook"
    );

    // Without a per-address limit nothing needs the address: the same server lets them in.
    let (hub, peers) = hub_with(Hub::builder());
    let addr = serve(&hub, false).await;
    for kind in KINDS {
        let s = open(addr, kind, &[]).await.unwrap();
        assert_eq!(
            peers.last(),
            None,
            "{kind:?}: axum without connect info tells no peer"
        );
        close(&hub, addr, s, &[]).await;
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_name_the_client_on_every_transport() {
    let proxy: livehub::IpNet = "127.0.0.1/32".parse().unwrap();
    let (hub, peers) = hub_with(
        Hub::builder()
            .max_connections_per_ip(1)
            .trusted_proxies([proxy]),
    );
    let addr = serve(&hub, true).await;
    // The client wrote a made-up first hop; the proxy appended the address it saw.
    let ana = [("x-forwarded-for", "198.51.100.1, 203.0.113.7")];
    // Another client: a `Forwarded` header it wrote itself is passed on by the proxy and must
    // not be believed (only X-Forwarded-For is read by default).
    let bo = [
        ("forwarded", "for=198.51.100.1"),
        ("x-forwarded-for", "2001:db8::b0"),
    ];
    for kind in KINDS {
        let first = open(addr, kind, &ana).await.unwrap();
        assert_eq!(
            peers.last(),
            Some("203.0.113.7:0".parse().unwrap()),
            "{kind:?}"
        );
        // The same client again (through the same proxy socket address or not) is over the
        // limit; another client behind the proxy is not.
        assert_eq!(
            open(addr, kind, &ana).await.err(),
            Some((503, "too_many_connections".to_owned())),
            "{kind:?}"
        );
        let second = open(addr, kind, &bo).await.unwrap();
        assert_eq!(
            peers.last(),
            Some("[2001:db8::b0]:0".parse().unwrap()),
            "{kind:?}"
        );
        close(&hub, addr, second, &bo).await;
        close(&hub, addr, first, &ana).await;
    }
}

#[tokio::test]
async fn a_hub_told_to_read_forwarded_reads_it_and_ignores_x_forwarded_for() {
    let proxy: livehub::IpNet = "127.0.0.1/32".parse().unwrap();
    let (hub, peers) = hub_with(
        Hub::builder()
            .max_connections_per_ip(1)
            .trusted_proxies([proxy])
            .forwarded_header(livehub::ForwardedHeader::Forwarded),
    );
    let addr = serve(&hub, true).await;
    let ana = [
        ("forwarded", "for=\"[2001:db8::b0]:4711\";proto=https"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    // The same made-up X-Forwarded-For, another Forwarded: another client.
    let bo = [
        ("forwarded", "for=198.51.100.2"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    for kind in KINDS {
        let first = open(addr, kind, &ana).await.unwrap();
        assert_eq!(
            peers.last(),
            Some("[2001:db8::b0]:4711".parse().unwrap()),
            "{kind:?}"
        );
        let second = open(addr, kind, &bo).await.unwrap();
        assert_eq!(
            peers.last(),
            Some("198.51.100.2:0".parse().unwrap()),
            "{kind:?}"
        );
        assert_eq!(
            open(addr, kind, &ana).await.err(),
            Some((503, "too_many_connections".to_owned())),
            "{kind:?}"
        );
        close(&hub, addr, second, &bo).await;
        close(&hub, addr, first, &ana).await;
    }
}

#[tokio::test]
async fn a_spoofed_forwarding_header_from_an_untrusted_peer_is_ignored_on_every_transport() {
    // Only 10.0.0.0/8 is trusted: the loopback clients are not proxies.
    let proxy: livehub::IpNet = "10.0.0.0/8".parse().unwrap();
    let (hub, peers) = hub_with(
        Hub::builder()
            .max_connections_per_ip(1)
            .trusted_proxies([proxy]),
    );
    let addr = serve(&hub, true).await;
    let spoofed = [("x-forwarded-for", "203.0.113.7")];
    let other = [
        ("x-forwarded-for", "203.0.113.8"),
        ("forwarded", "for=203.0.113.9"),
    ];
    for kind in KINDS {
        let first = open(addr, kind, &spoofed).await.unwrap();
        assert_eq!(peers.last().unwrap().ip(), loopback().ip(), "{kind:?}");
        // Claiming to be someone else does not get a second session past the limit.
        assert_eq!(
            open(addr, kind, &other).await.err(),
            Some((503, "too_many_connections".to_owned())),
            "{kind:?}"
        );
        close(&hub, addr, first, &spoofed).await;
    }
}
