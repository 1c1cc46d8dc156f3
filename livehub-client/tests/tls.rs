//! livehub-client over `wss://`: a real hub served over TLS on a loopback port, with a
//! self-signed certificate for `localhost` made in the test (rcgen). A client that trusts it
//! subscribes, publishes and gets its message; one that trusts only webpki's roots is refused
//! by the TLS handshake; without TLS settings for it a `ws://` client of that port fails too.
//!
//! Built with `cargo test -p livehub-client --features tls-test`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{host, next_message, within};
use hyper_util::rt::{TokioExecutor, TokioIo};
use livehub_client::{Client, Error};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate for `localhost` and its key.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(made.key_pair.serialize_der());
    (made.cert.der().clone(), PrivateKeyDer::Pkcs8(key))
}

/// Serves `hub` over WebSocket over TLS with `cert` on a free loopback port.
async fn serve_tls(
    hub: livehub_core::Hub,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let (acceptor, hub) = (acceptor.clone(), hub.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends its handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = livehub_ws::WsService::new(hub).with_peer(peer);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_client_over_wss_subscribes_publishes_and_gets_its_message() {
    let (hub, _) = common::hub(100);
    let (cert, key) = certificate();
    let addr = serve_tls(hub.clone(), cert.clone(), key).await;
    let url = format!("wss://localhost:{}/", addr.port());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = within(
        "the wss connection",
        Client::builder(&url).tls_config(Arc::new(config)).connect(),
    )
    .await
    .unwrap();
    let mut sub = client.subscribe("t").await.unwrap();
    let pos = client.publish("t", &json!({"over": "tls"})).await.unwrap();
    assert_eq!(pos.offset, 1);
    assert_eq!(next_message(&mut sub).await, (1, json!({"over": "tls"})));
    host::publish(&hub, "t", &json!(2)).await;
    assert_eq!(next_message(&mut sub).await, (2, json!(2)));
    client.close().await;

    // webpki's roots do not know the test's certificate: the handshake fails, and says so.
    let refused = within("the refused handshake", Client::connect(&url))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Connect(m) if m.to_lowercase().contains("certificate")),
        "{refused:?}"
    );
    // A plain ws:// client of the TLS port gets no WebSocket either.
    let plain = within("the plain client", Client::connect(format!("ws://{addr}/"))).await;
    assert!(plain.is_err(), "{plain:?}");
}
