//! The response body, and the writer that turns a session's outbox into SSE text.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use hub_core::{Outbox, Outgoing, Session};
use hyper::body::{Frame, SizeHint};

use crate::id::Cursor;
use crate::registry::Registered;

/// The response body of [`crate::SseService`]: the event stream, or a short JSON/empty body for
/// refusals, preflights and command answers.
///
/// Dropping it (the client went away, or the server dropped the connection) ends the stream's
/// session: its presence leaves exactly once.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(Pin<Box<dyn Stream<Item = Bytes> + Send>>),
}

impl Body {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    pub(crate) fn empty() -> Body {
        Body {
            kind: Kind::Full(None),
        }
    }

    pub(crate) fn stream(s: impl Stream<Item = Bytes> + Send + 'static) -> Body {
        Body {
            kind: Kind::Stream(Box::pin(s)),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_struct("Body")
                .field("len", &b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream(_) => f.debug_struct("Body").field("stream", &true).finish(),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a stream's session alive until the stream's body is dropped or the hub aborts the
/// session, whichever comes first; then lets go of it (the last holder's drop ends the session
/// and tells the hub the transport is done with it).
///
/// Aborts matter when a client stops reading: hyper then stops polling the body (its buffers
/// are full), so nothing inside the body could notice. A small task waits for either event.
pub(crate) struct Held {
    _release: tokio::sync::oneshot::Sender<Infallible>,
}

impl Held {
    /// Hands `session` to the keeper task. The command endpoint holds it only weakly (and
    /// strongly only while it runs a command).
    pub(crate) fn new(session: Arc<Session>) -> Held {
        let (release, released) = tokio::sync::oneshot::channel::<Infallible>();
        tokio::spawn(async move {
            tokio::select! {
                () = session.aborted() => {}
                _ = released => {}
            }
            drop(session);
        });
        Held { _release: release }
    }
}

/// Renders one stream's outbox as SSE, while its body lives.
pub(crate) struct Writer {
    /// The session, kept until the body is dropped (or the session aborted).
    pub(crate) _held: Held,
    pub(crate) outbox: Outbox,
    pub(crate) cursor: Arc<Mutex<Cursor>>,
    /// `retry:` and anything to say before the first frame.
    pub(crate) head: Option<Bytes>,
    /// SSE-specific events (`session`, `resume`) written right after `welcome`.
    pub(crate) after_welcome: Option<Bytes>,
    pub(crate) batch: Vec<Outgoing>,
    pub(crate) done: bool,
    pub(crate) _registered: Registered,
}

impl Writer {
    /// The next chunk of the body: everything the outbox had, as SSE text. `None` at the end.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            self.batch.clear();
            if !self.outbox.next_batch(&mut self.batch).await {
                self.done = true;
                return None;
            }
            let chunk = self.render();
            if !chunk.is_empty() {
                return Some(chunk);
            }
        }
    }

    fn render(&mut self) -> Bytes {
        let size: usize = self
            .batch
            .iter()
            .map(|o| match o {
                Outgoing::Frame(b) => b.len() + 64,
                _ => 16,
            })
            .sum();
        let mut out = BytesMut::with_capacity(size + self.head.as_ref().map_or(0, Bytes::len));
        if let Some(head) = self.head.take() {
            out.put_slice(&head);
        }
        let mut cursor = lock(&self.cursor);
        for item in self.batch.drain(..) {
            match item {
                Outgoing::Frame(bytes) => {
                    let kind = frame_type(&bytes);
                    let mut id = None;
                    if kind == "message" {
                        if let Some((topic, epoch, offset)) = message_position(&bytes) {
                            cursor.set(&topic, &epoch, offset);
                            id = Some(cursor.event_id());
                        }
                    } else if kind == "gap" {
                        if let Some((topic, epoch, to)) = history_gap(&bytes) {
                            cursor.set(&topic, &epoch, to);
                            id = Some(cursor.event_id());
                        }
                    } else if (kind == "reply" || kind == "error") && cursor.awaits_replies() {
                        if let Some((topic, epoch, offset)) = subscribed(&bytes, &mut cursor) {
                            cursor.set(&topic, &epoch, offset);
                            id = Some(cursor.event_id());
                        }
                    }
                    write_event(&mut out, id.as_deref(), kind, &bytes);
                    if kind == "welcome" {
                        if let Some(extra) = self.after_welcome.take() {
                            out.put_slice(&extra);
                        }
                    }
                }
                Outgoing::Ping => out.put_slice(b": ping\n\n"),
                Outgoing::Close(reason) => {
                    let frame = self.outbox.close_frame(reason);
                    write_event(&mut out, None, "close", &frame);
                    self.done = true;
                }
            }
        }
        drop(cursor);
        // Never happens (the welcome is always the first frame), but never lose the token.
        if let Some(extra) = self.after_welcome.take() {
            out.put_slice(&extra);
        }
        out.freeze()
    }
}

/// Writes one event. `data` may hold raw line breaks (only as JSON whitespace, from a client's
/// published payload): each line becomes one `data:` line, which the browser joins back with
/// `\n`, so the JSON stays the same.
pub(crate) fn write_event(out: &mut BytesMut, id: Option<&str>, event: &str, data: &[u8]) {
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        out.put_slice(b"data: ");
        out.put_slice(&rest[..end]);
        out.put_u8(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.put_u8(b'\n');
}

/// The frame's `type`: always its first field in the hub's JSON (`{"type":"..."`).
fn frame_type(bytes: &[u8]) -> &str {
    const PREFIX: &[u8] = br#"{"type":""#;
    bytes
        .strip_prefix(PREFIX)
        .and_then(|rest| {
            let end = rest.iter().position(|&b| b == b'"')?;
            let name = std::str::from_utf8(&rest[..end]).ok()?;
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                .then_some(name)
        })
        .unwrap_or("unknown")
}

#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    offset: Option<u64>,
    to: Option<u64>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
}

/// Topic, epoch and offset of a `message` frame. The hub writes them before `data`, so the fast
/// path reads them without scanning the payload; anything unexpected falls back to a parse.
fn message_position(bytes: &[u8]) -> Option<(Cow<'_, str>, Cow<'_, str>, u64)> {
    fast_message_position(bytes).or_else(|| {
        let h: Head<'_> = serde_json::from_slice(bytes).ok()?;
        Some((h.topic?, h.epoch?, h.offset?))
    })
}

fn fast_message_position(bytes: &[u8]) -> Option<(Cow<'_, str>, Cow<'_, str>, u64)> {
    fn string<'a>(rest: &'a [u8], key: &[u8]) -> Option<(&'a str, &'a [u8])> {
        let rest = rest.strip_prefix(key)?;
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[end] != b'"' {
            return None;
        }
        Some((std::str::from_utf8(&rest[..end]).ok()?, &rest[end + 1..]))
    }
    let rest = bytes.strip_prefix(br#"{"type":"message","#)?;
    let (topic, rest) = string(rest, br#""topic":""#)?;
    let (epoch, rest) = string(rest, br#","epoch":""#)?;
    let rest = rest.strip_prefix(br#","offset":"#)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    let offset = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    Some((Cow::Borrowed(topic), Cow::Borrowed(epoch), offset))
}

/// Topic, epoch and last lost offset of a `gap` with reason `history`: the client has been told
/// of those, so a later resume starts after them. Other gaps (`epoch`, `lagged`) move nothing.
fn history_gap(bytes: &[u8]) -> Option<(Cow<'_, str>, Cow<'_, str>, u64)> {
    let h: Head<'_> = serde_json::from_slice(bytes).ok()?;
    if h.reason.as_deref() != Some("history") {
        return None;
    }
    Some((h.topic?, h.epoch?, h.to?))
}

/// For the reply (or error) to an awaited `subscribe` command: the topic and where to resume it
/// from: the command's `since` if it gave one (what it recovers follows the reply), else the
/// topic's position when the subscription began (`{"topic", "epoch", "offset"}`, the reply's
/// data). Errors just end the wait.
fn subscribed(bytes: &[u8], cursor: &mut Cursor) -> Option<(String, String, u64)> {
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(rename = "type")]
        kind: String,
        id: Option<u64>,
        data: Option<serde_json::Value>,
    }
    let r: Reply = serde_json::from_slice(bytes).ok()?;
    let (topic, since) = cursor.take_pending(r.id?)?;
    if r.kind != "reply" {
        return None;
    }
    let data = r.data?;
    if data.get("topic")?.as_str()? != topic {
        return None;
    }
    if let Some((epoch, offset)) = since {
        return Some((topic, epoch, offset));
    }
    let epoch = data.get("epoch")?.as_str()?.to_owned();
    let offset = data.get("offset")?.as_u64()?;
    Some((topic, epoch, offset))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_message_positions_fast_and_slow() {
        let m = br#"{"type":"message","topic":"a/b","epoch":"9f","offset":42,"data":{"x":"\"topic\""}}"#;
        assert_eq!(frame_type(m), "message");
        let (t, e, o) = fast_message_position(m).unwrap();
        assert_eq!((&*t, &*e, o), ("a/b", "9f", 42));
        let reordered = br#"{"type":"message","data":1,"offset":7,"epoch":"e","topic":"t"}"#;
        assert!(fast_message_position(reordered).is_none());
        let (t, e, o) = message_position(reordered).unwrap();
        assert_eq!((&*t, &*e, o), ("t", "e", 7));
    }

    #[test]
    fn only_history_gaps_move_the_cursor() {
        let g = br#"{"type":"gap","topic":"t","epoch":"e","from":2,"to":4,"reason":"history"}"#;
        assert_eq!(frame_type(g), "gap");
        let (t, e, to) = history_gap(g).unwrap();
        assert_eq!((&*t, &*e, to), ("t", "e", 4));
        let l = br#"{"type":"gap","topic":"t","epoch":"e","from":2,"to":4,"reason":"lagged"}"#;
        assert!(history_gap(l).is_none());
    }

    #[test]
    fn splits_raw_line_breaks_into_data_lines() {
        let mut out = BytesMut::new();
        write_event(
            &mut out,
            Some("t=e:1"),
            "message",
            b"{\"a\":\r\n1,\n\"b\":\r2}",
        );
        assert_eq!(
            &out[..],
            b"id: t=e:1\nevent: message\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
    }

    #[test]
    fn unknown_shapes_are_named_unknown() {
        assert_eq!(frame_type(b"[1,2]"), "unknown");
        assert_eq!(frame_type(br#"{"type":"a b"}"#), "unknown");
        assert_eq!(frame_type(br#"{"type":"leave","topic":"t"}"#), "leave");
    }
}
