//! The hub's metrics for Prometheus: a collector for a `prometheus-client` registry and a
//! ready scrape endpoint.
//!
//! Everything is read from [`Hub::stats`] at scrape time (the hub counts with relaxed atomics
//! on its own hot paths; nothing here adds work to them). The format is written by
//! [`prometheus_client`], the Prometheus project's Rust client: the Prometheus text format
//! (0.0.4) by default, OpenMetrics text when the scraper asks for it (`Accept:
//! application/openmetrics-text`).
//!
//! - [`MetricsService`]: a service answering `GET` with the metrics; mount it at `/metrics` of
//!   an axum `Router` (`route_service`) or serve it from bare hyper, like the transports.
//! - [`HubCollector`]: the same series for a registry of the host's own
//!   (`registry.register_collector(Box::new(HubCollector::new(hub)))`), beside its other
//!   metrics.
//! - [`render`]: the text, for anything else.
//!
//! # Series
//!
//! | series | type | what |
//! | --- | --- | --- |
//! | `hub_sessions{transport}` | gauge | sessions open now, by transport (`ws`, `sse`, `poll` always present) |
//! | `hub_sessions_opened_total` | counter | sessions opened since the hub started |
//! | `hub_subscriptions` | gauge | topic subscriptions open now |
//! | `hub_topics` | gauge | topics held now |
//! | `hub_rooms` | gauge | rooms that exist now |
//! | `hub_frames_in_total` | counter | frames (messages) received from clients |
//! | `hub_bytes_in_total` | counter | bytes of those frames |
//! | `hub_deliveries_total` | counter | frames (messages) queued for sessions, one per receiving session |
//! | `hub_bytes_out_total` | counter | bytes of encoded frames handed to the transports (without their framing) |
//! | `hub_messages_published_total` | counter | messages published to topics, by clients and by the server |
//! | `hub_publish_duration_seconds` | histogram | how long a publish took to get its position from the engine |
//! | `hub_queued_frames` | gauge | frames waiting in session queues now, all sessions together |
//! | `hub_queue_max_frames` | gauge | the longest session queue now (the slow-consumer policy applies at the hub's `queue_capacity`) |
//! | `hub_dropped_total` | counter | frames dropped: slow sessions under the `drop` policy, or queued frames of sessions that ended |
//! | `hub_errors_sent_total` | counter | `error` frames sent to clients |
//! | `hub_encodes_total{encoding}` | counter | frames encoded, by encoding (at most once per frame, however many sessions get it) |
//! | `hub_disconnects_total{reason}` | counter | sessions ended, by reason (every reason always present) |
//! | `hub_refusals_total{code}` | counter | requests the transports refused, by code (`origin_not_allowed`, `unauthorized`, `too_many_connections`, ...; the protocol's refusal codes always present) |
//! | `hub_engine_connected` | gauge | 1 while the engine (the broker between nodes) is reachable |
//! | `hub_engine_reconnects_total` | counter | times the engine's connection was lost and regained |
//!
//! Series that are always present start at 0, so that `rate()` sees their first increment.
//!
//! # Example
//!
//! ```
//! use livehub_core::Hub;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let hub = Hub::builder().build();
//! hub.publish("scores", &1).await.unwrap();
//!
//! let text = livehub_metrics::render(&hub);
//! assert!(text.contains("# TYPE hub_messages_published_total counter\n"));
//! assert!(text.contains("\nhub_messages_published_total 1\n"));
//! assert!(text.contains("\nhub_sessions{transport=\"ws\"} 0\n"));
//! assert!(text.contains("\nhub_publish_duration_seconds_count 1\n"));
//!
//! // In axum: Router::new().route_service("/metrics", livehub_metrics::MetricsService::new(hub))
//! let _service = livehub_metrics::MetricsService::new(hub);
//! # }
//! ```

#![warn(missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use livehub_core::{DisconnectReason, Hub};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of the Prometheus text format (0.0.4), what [`MetricsService`] answers
/// by default.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `Content-Type` of OpenMetrics text, what [`MetricsService`] answers a scraper that asks
/// for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The transports whose session gauge is always present.
const TRANSPORTS: [&str; 3] = ["ws", "sse", "poll"];

/// The refusal codes of the protocol (PROTOCOL.md), always present in `hub_refusals_total`.
const REFUSAL_CODES: [&str; 16] = [
    "bad_request",
    "bad_encoding",
    "bad_topic",
    "bad_cursor",
    "bad_frame",
    "bad_field",
    "bad_seq",
    "frame_too_large",
    "unauthorized",
    "forbidden",
    "origin_not_allowed",
    "unknown_session",
    "method_not_allowed",
    "too_many_connections",
    "peer_unknown",
    "shutting_down",
];

/// The hub's series, for a `prometheus-client` registry (see the crate docs for the list).
#[derive(Debug, Clone)]
pub struct HubCollector {
    hub: Hub,
}

impl HubCollector {
    /// A collector reading `hub`'s stats at every scrape.
    pub fn new(hub: Hub) -> HubCollector {
        HubCollector { hub }
    }
}

/// One family of samples, each with an optional `(label, value)`.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    kind: MetricType,
}

impl Family<'_> {
    fn encode(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        samples: &[(Option<(&str, &str)>, u64)],
    ) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind)?;
        if let [(None, value)] = samples {
            // A family of one sample without labels.
            return self.encode_value(family, *value);
        }
        for (label, value) in samples {
            // Only the single sample of a family may go without labels.
            let Some(label) = label else { continue };
            let labels = [*label];
            self.encode_value(family.encode_family(&labels)?, *value)?;
        }
        Ok(())
    }

    fn encode_value(
        &self,
        metric: prometheus_client::encoding::MetricEncoder<'_>,
        value: u64,
    ) -> Result<(), std::fmt::Error> {
        match self.kind {
            MetricType::Counter => ConstCounter::new(value).encode(metric),
            _ => ConstGauge::new(value).encode(metric),
        }
    }
}

fn counter<'a>(name: &'a str, help: &'a str) -> Family<'a> {
    Family {
        name,
        help,
        unit: None,
        kind: MetricType::Counter,
    }
}

fn gauge<'a>(name: &'a str, help: &'a str) -> Family<'a> {
    Family {
        name,
        help,
        unit: None,
        kind: MetricType::Gauge,
    }
}

/// `known` labels first (0 until seen), then any others seen, with their counts.
fn labelled<'a>(
    key: &'a str,
    known: &[&'a str],
    seen: &'a std::collections::BTreeMap<&'static str, u64>,
) -> Vec<(Option<(&'a str, &'a str)>, u64)> {
    let mut out: Vec<(Option<(&str, &str)>, u64)> = known
        .iter()
        .map(|k| (Some((key, *k)), seen.get(k).copied().unwrap_or(0)))
        .collect();
    out.extend(
        seen.iter()
            .filter(|(k, _)| !known.contains(k))
            .map(|(k, n)| (Some((key, *k)), *n)),
    );
    out
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.hub.stats();
        let e = &mut encoder;
        let one = |v: u64| [(None, v)];

        gauge("hub_sessions", "Sessions open now, by transport.")
            .encode(e, &labelled("transport", &TRANSPORTS, &s.sessions))?;
        counter(
            "hub_sessions_opened",
            "Sessions opened since the hub started.",
        )
        .encode(e, &one(s.sessions_opened))?;
        gauge("hub_subscriptions", "Topic subscriptions open now.")
            .encode(e, &one(s.subscriptions))?;
        gauge("hub_topics", "Topics held now.").encode(e, &one(s.topics))?;
        gauge(
            "hub_rooms",
            "Rooms that exist now (a room exists while it has members).",
        )
        .encode(e, &one(s.rooms))?;
        counter("hub_frames_in", "Frames received from clients.").encode(e, &one(s.frames_in))?;
        counter("hub_bytes_in", "Bytes of frames received from clients.")
            .encode(e, &one(s.bytes_in))?;
        counter(
            "hub_deliveries",
            "Frames queued for sessions, one per receiving session.",
        )
        .encode(e, &one(s.deliveries))?;
        counter(
            "hub_bytes_out",
            "Bytes of encoded frames handed to the transports (without their framing).",
        )
        .encode(e, &one(s.bytes_out))?;
        counter(
            "hub_messages_published",
            "Messages published to topics, by clients and by the server.",
        )
        .encode(e, &one(s.published))?;

        // The hub's buckets are cumulative; the encoder adds them up itself.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = s
            .publish_latency
            .buckets
            .iter()
            .map(|(bound, n)| {
                let in_bucket = n - below;
                below = *n;
                (bound.as_secs_f64(), in_bucket)
            })
            .collect();
        let histogram = encoder.encode_descriptor(
            "hub_publish_duration",
            "How long a publish took to get its position from the engine.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        histogram_value(
            histogram,
            s.publish_latency.sum.as_secs_f64(),
            s.publish_latency.count,
            &buckets,
        )?;
        let e = &mut encoder;

        gauge(
            "hub_queued_frames",
            "Frames waiting in session queues now, all sessions together.",
        )
        .encode(e, &one(s.queued_frames))?;
        gauge("hub_queue_max_frames", "The longest session queue now.")
            .encode(e, &one(s.max_queue))?;
        counter(
            "hub_dropped",
            "Frames dropped for slow sessions (drop policy) or for sessions that ended.",
        )
        .encode(e, &one(s.dropped))?;
        counter("hub_errors_sent", "Error frames sent to clients.")
            .encode(e, &one(s.errors_sent))?;
        counter(
            "hub_encodes",
            "Frames encoded, by encoding (each frame at most once per encoding).",
        )
        .encode(
            e,
            &[
                (Some(("encoding", "json")), s.encodes_json),
                (Some(("encoding", "msgpack")), s.encodes_msgpack),
            ],
        )?;
        let reasons: Vec<&str> = DisconnectReason::all().iter().map(|r| r.as_str()).collect();
        counter("hub_disconnects", "Sessions ended, by reason.")
            .encode(e, &labelled("reason", &reasons, &s.disconnects))?;
        counter(
            "hub_refusals",
            "Requests the transports refused with an HTTP error answer, by code.",
        )
        .encode(e, &labelled("code", &REFUSAL_CODES, &s.refusals))?;
        gauge(
            "hub_engine_connected",
            "1 while the engine (the broker between nodes) is reachable.",
        )
        .encode(e, &one(u64::from(s.engine.connected)))?;
        counter(
            "hub_engine_reconnects",
            "Times the engine's connection was lost and regained.",
        )
        .encode(e, &one(s.engine.reconnects))?;
        Ok(())
    }
}

fn histogram_value(
    mut family: prometheus_client::encoding::MetricEncoder<'_>,
    sum: f64,
    count: u64,
    buckets: &[(f64, u64)],
) -> Result<(), std::fmt::Error> {
    family.encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}

/// A registry holding just the hub's collector.
fn registry(hub: &Hub) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HubCollector::new(hub.clone())));
    registry
}

/// The hub's metrics in the Prometheus text format (0.0.4).
pub fn render(hub: &Hub) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail, and the collector only fails when its writer does.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry(hub));
    out
}

/// The hub's metrics as OpenMetrics text (ending with `# EOF`).
pub fn render_openmetrics(hub: &Hub) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry(hub));
    out
}

/// The response body of [`MetricsService`].
pub type Body = Full<Bytes>;

/// A service that answers `GET` (and `HEAD`) with the hub's metrics: the Prometheus text
/// format, or OpenMetrics text if the request's `Accept` names `application/openmetrics-text`.
/// Other methods get `405`.
///
/// It implements both `hyper::service::Service` and `tower::Service` (for axum). Cheap to
/// clone. The endpoint tells anyone who can reach it how busy the service is: mount it where
/// only the scraper can (a separate port, or behind the host's own authentication).
#[derive(Debug, Clone)]
pub struct MetricsService {
    registry: Arc<Registry>,
}

impl MetricsService {
    /// A service for `hub`'s metrics.
    pub fn new(hub: Hub) -> MetricsService {
        MetricsService {
            registry: Arc::new(registry(&hub)),
        }
    }

    /// A service for the metrics of a registry of the host's own (with a [`HubCollector`] in
    /// it, and anything else the host counts).
    pub fn with_registry(registry: Registry) -> MetricsService {
        MetricsService {
            registry: Arc::new(registry),
        }
    }

    fn answer<B>(&self, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                br#"{"code":"method_not_allowed","message":"use GET"}"#,
            )));
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let openmetrics = req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        let mut text = String::with_capacity(8 * 1024);
        let (written, content_type) = if openmetrics {
            (
                prometheus_client::encoding::text::encode(&mut text, &self.registry),
                OPENMETRICS_CONTENT_TYPE,
            )
        } else {
            (
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry),
                CONTENT_TYPE,
            )
        };
        if written.is_err() {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                br#"{"code":"internal","message":"the metrics could not be written"}"#,
            )));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
        let body = if req.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(text)
        };
        let mut resp = Response::new(Full::new(body));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl<B> tower_service::Service<Request<B>> for MetricsService {
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

impl<B> hyper::service::Service<Request<B>> for MetricsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(&req)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_hub_has_every_always_present_series_at_zero() {
        let text = render(&Hub::builder().build());
        for line in [
            "hub_sessions{transport=\"ws\"} 0",
            "hub_sessions{transport=\"poll\"} 0",
            "hub_disconnects_total{reason=\"slow_consumer\"} 0",
            "hub_refusals_total{code=\"origin_not_allowed\"} 0",
            "hub_publish_duration_seconds_bucket{le=\"0.0001\"} 0",
            "hub_publish_duration_seconds_bucket{le=\"+Inf\"} 0",
            "hub_publish_duration_seconds_count 0",
            "hub_engine_connected 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.contains("# TYPE hub_publish_duration_seconds histogram\n"));
    }

    #[test]
    fn the_service_answers_get_in_either_format_and_refuses_other_methods() {
        let svc = MetricsService::new(Hub::builder().build());
        let get = Request::get("/metrics").body(()).unwrap();
        let resp = svc.answer(&get);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let om = Request::get("/metrics")
            .header("accept", "application/openmetrics-text;version=1.0.0")
            .body(())
            .unwrap();
        assert_eq!(
            svc.answer(&om).headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(svc.answer(&post).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
