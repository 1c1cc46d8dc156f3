//! Who a request comes from: the client address the hub's hooks and limits see.
//!
//! **The connection's peer**, first found of:
//! 1. the address the host gave the service (`with_peer`, for a bare hyper server that knows
//!    it per connection);
//! 2. a [`SocketAddr`] in the request's extensions (any framework, or a middleware of the
//!    host's, can put one there);
//! 3. axum's `ConnectInfo<SocketAddr>` (with the `axum` feature, on by default in the `livehub`
//!    facade), which axum stores when the app is served with
//!    `into_make_service_with_connect_info::<SocketAddr>()`.
//!
//! axum's type lives in axum itself (not in axum-core), and request extensions are found by
//! type, so recognising it takes a dependency on axum: behind a feature, so that a host on bare
//! hyper does not compile axum for nothing.
//!
//! **Behind trusted proxies** ([`livehub_core::HubBuilder::trusted_proxies`]; none by default): when
//! the peer is a trusted proxy, the client is read from `X-Forwarded-For`, or from `Forwarded`
//! (RFC 7239, its `for=` parameters) when the hub says so
//! ([`livehub_core::HubBuilder::forwarded_header`]), never from the other one (a proxy passes it on
//! as the client wrote it): walking the hops from the
//! right (the nearest), the client is the first address that is not a trusted proxy (each
//! trusted proxy appends the address it got the request from, so everything left of the first
//! untrusted hop may be made up by the client). A hop that is not an address (`unknown`, an
//! obfuscated `_name`, garbage) ends the walk at the last hop believed. At most
//! [`MAX_HOPS`] hops are looked at. A port is kept when the header gives one, else it is 0.
//! From any other peer the headers are ignored: a client cannot claim another address.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderMap;
use http::Extensions;
use livehub_core::{ForwardedHeader, Hub};

/// The most forwarding hops looked at, from the nearest.
pub const MAX_HOPS: usize = 32;

/// The connection's peer (see the module docs): `configured`, or a `SocketAddr` extension, or
/// axum's `ConnectInfo<SocketAddr>` (feature `axum`).
pub fn socket_peer(extensions: &Extensions, configured: Option<SocketAddr>) -> Option<SocketAddr> {
    configured
        .or_else(|| extensions.get::<SocketAddr>().copied())
        .or_else(|| axum_peer(extensions))
}

#[cfg(feature = "axum")]
fn axum_peer(extensions: &Extensions) -> Option<SocketAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

#[cfg(not(feature = "axum"))]
fn axum_peer(_extensions: &Extensions) -> Option<SocketAddr> {
    None
}

/// The path the client asked for: under axum's `Router::nest` (which strips the prefix before
/// the service sees the request), the original one from axum's `OriginalUri` (feature
/// `axum`); else the request's own. For URLs the hub hands back to the client (SSE's
/// `commands`).
pub fn public_path<'a>(extensions: &'a Extensions, uri: &'a http::Uri) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(original) = extensions.get::<axum::extract::OriginalUri>() {
        return original.0.path();
    }
    let _ = extensions;
    uri.path()
}

/// The client's address: the connection's peer (`peer`), or, when that is one of the hub's
/// trusted proxies, the address its forwarding headers name (see the module docs).
pub fn client_addr(hub: &Hub, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<SocketAddr> {
    let peer = peer?;
    if !hub.is_trusted_proxy(peer.ip()) {
        return Some(peer);
    }
    let mut client = peer;
    let walk = |hop: Option<SocketAddr>, client: &mut SocketAddr| match hop {
        Some(addr) => {
            *client = addr;
            hub.is_trusted_proxy(addr.ip())
        }
        None => false,
    };
    if hub.forwarded_header() == ForwardedHeader::Forwarded {
        let hops = headers
            .get_all("forwarded")
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
            .filter_map(forwarded_for)
            .take(MAX_HOPS);
        for hop in hops {
            if !walk(hop, &mut client) {
                break;
            }
        }
    } else {
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("").rsplit(','))
            .map(|h| parse_node(h.trim()))
            .take(MAX_HOPS);
        for hop in hops {
            if !walk(hop, &mut client) {
                break;
            }
        }
    }
    Some(client)
}

/// One element of a `Forwarded` header: `Some(the for= node)` if it has a `for=` parameter
/// (`None` inside if that is not an address), `None` if it has none (skipped).
fn forwarded_for(element: &str) -> Option<Option<SocketAddr>> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some(parse_node(value))
    })
}

/// A node as forwarding headers write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<SocketAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = node.strip_prefix('[')?.strip_suffix(']')?;
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::builder()
            .trusted_proxies(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
            .build()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_are_believed_from_trusted_proxies_only() {
        let hub = hub();
        let xff = headers(&[("x-forwarded-for", "203.0.113.9")]);
        // From an untrusted peer, the header is ignored.
        let direct = addr("198.51.100.1:5000");
        assert_eq!(client_addr(&hub, &xff, Some(direct)), Some(direct));
        // From a trusted proxy, it names the client.
        let proxy = addr("10.1.2.3:443");
        assert_eq!(
            client_addr(&hub, &xff, Some(proxy)),
            Some(addr("203.0.113.9:0"))
        );
        // Without a header, the proxy is the client.
        assert_eq!(
            client_addr(&hub, &HeaderMap::new(), Some(proxy)),
            Some(proxy)
        );
        // No peer at all: nothing is believed.
        assert_eq!(client_addr(&hub, &xff, None), None);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let hub = hub();
        let proxy = Some(addr("10.0.0.1:80"));
        // The client wrote a made-up address first; the proxies appended the real ones.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.7")]);
        assert_eq!(client_addr(&hub, &h, proxy), Some(addr("203.0.113.9:0")));
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.7"),
        ]);
        assert_eq!(client_addr(&hub, &h, proxy), Some(addr("203.0.113.9:0")));
        // All hops trusted: the leftmost is the client.
        let h = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.7")]);
        assert_eq!(client_addr(&hub, &h, proxy), Some(addr("10.0.0.9:0")));
        // Garbage ends the walk at the last hop believed.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.7")]);
        assert_eq!(client_addr(&hub, &h, proxy), Some(addr("10.0.0.7:0")));
        let h = headers(&[("x-forwarded-for", "")]);
        assert_eq!(client_addr(&hub, &h, proxy), proxy);
    }

    #[test]
    fn a_clients_own_forwarded_header_is_not_believed_by_default() {
        // nginx and Caddy append to X-Forwarded-For and pass the client's own `Forwarded` on:
        // found in a test behind both. Only the configured header counts.
        let hub = hub();
        let proxy = Some(addr("10.0.0.1:8080"));
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client_addr(&hub, &h, proxy), Some(addr("203.0.113.9:0")));
        // With `Forwarded` configured, it is the other way round.
        let forwarded = forwarded_hub();
        let h = headers(&[
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(
            client_addr(&forwarded, &h, proxy),
            Some(addr("198.51.100.1:0"))
        );
    }

    fn forwarded_hub() -> Hub {
        Hub::builder()
            .trusted_proxies(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
            .forwarded_header(ForwardedHeader::Forwarded)
            .build()
    }

    #[test]
    fn forwarded_is_parsed_as_rfc_7239_writes_it() {
        let hub = forwarded_hub();
        let proxy = Some(addr("[::1]:8080"));
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.77"),
            (
                "forwarded",
                "for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\";proto=https, by=10.0.0.1;for=10.0.0.2",
            ),
        ]);
        assert_eq!(
            client_addr(&hub, &h, proxy),
            Some(addr("[2001:db8:cafe::17]:4711"))
        );
        let h = headers(&[("forwarded", "For=\"192.0.2.43:47011\"")]);
        assert_eq!(client_addr(&hub, &h, proxy), Some(addr("192.0.2.43:47011")));
        let h = headers(&[("forwarded", "for=_hidden, for=10.0.0.3")]);
        assert_eq!(client_addr(&hub, &h, proxy), Some(addr("10.0.0.3:0")));
    }

    #[test]
    fn a_long_chain_is_walked_only_so_far() {
        let hub = hub();
        let chain = vec!["10.0.0.5"; 1000].join(", ");
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            format!("203.0.113.1, {chain}").parse().unwrap(),
        );
        // Past MAX_HOPS trusted hops the walk stops, at a trusted hop: never the made-up left end.
        assert_eq!(
            client_addr(&hub, &h, Some(addr("10.0.0.1:1"))),
            Some(addr("10.0.0.5:0"))
        );
    }

    #[test]
    fn the_peer_is_found_in_the_extensions() {
        let mut ext = Extensions::new();
        assert_eq!(socket_peer(&ext, None), None);
        ext.insert(addr("127.0.0.2:9"));
        assert_eq!(socket_peer(&ext, None), Some(addr("127.0.0.2:9")));
        assert_eq!(
            socket_peer(&ext, Some(addr("127.0.0.3:1"))),
            Some(addr("127.0.0.3:1"))
        );
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axums_connect_info_is_found_too() {
        let mut ext = Extensions::new();
        ext.insert(axum::extract::ConnectInfo(addr("127.0.0.4:7")));
        assert_eq!(socket_peer(&ext, None), Some(addr("127.0.0.4:7")));
    }
}
