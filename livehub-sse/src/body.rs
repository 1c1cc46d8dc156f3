//! The response body, and the writer that turns a session's outbox into SSE text.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use hyper::body::{Frame, SizeHint};
use livehub_core::{FrameKind, Outbox, Outgoing, Session};

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

/// Frames at least this long go to hyper as they are, in a body chunk of their own (the one
/// allocation every subscriber shares); shorter ones are copied into the stream's chunk.
///
/// An extra chunk costs more than a short copy: hyper queues at most 16 chunks per write, each
/// with its chunked-encoding frame. Measured (fan-out to 1,000 streams, deliveries per server
/// CPU-second, copied vs shared): 180-byte frames 2.6 M vs 0.6 M; 2 KB 0.9 M vs 0.4 M; 4 KB
/// 0.39 M vs 0.40 M; 8 KB 0.17 M vs 0.21 M. From about 4 KB sharing costs no more, and it
/// keeps a backlog from holding a copy per stream (4 KB frames: 39 MB vs 351 MB peak RSS).
pub(crate) const SHARE_MIN: usize = 4096;

/// How many frames [`TailCache`] can remember (a power of two).
const TAIL_SLOTS: usize = 256;

/// At most this many bytes (frames and their renderings) are held by a [`TailCache`].
const TAIL_BYTES: usize = 8 << 20;

/// The `data:` part of recent frames that are long or hold raw line breaks, worked out once
/// and shared by every stream that sends the frame. One per service.
///
/// A frame's `data:` part is `data: ` + the frame + a blank line, unless its JSON holds raw
/// line breaks (JSON whitespace from a client's published payload): then each line becomes a
/// `data:` line, rendered here once. Short frames are scanned for line breaks by each stream
/// (a few vector compares) and come here only if they have some; long frames always come here,
/// so that no stream scans them again.
///
/// Keyed by the frame's identity (address and length of its bytes): every subscriber of a
/// message gets the same [`Bytes`] from the hub, and a slot holds on to its frame, so the
/// address cannot be reused by another frame while the slot lives. One slot per address hash
/// (a newer frame takes the slot), [`TAIL_SLOTS`] slots, at most [`TAIL_BYTES`] held (the
/// recent frames of a topic are mostly held by its history anyway); a frame that finds no room
/// is simply worked out again by the next stream.
#[derive(Default)]
pub(crate) struct TailCache {
    slots: Mutex<TailSlots>,
}

#[derive(Default)]
struct TailSlots {
    /// `TAIL_SLOTS` slots once the first frame comes: (frame, its rendered `data:` part if it
    /// has line breaks).
    slots: Vec<Option<(Bytes, Option<Bytes>)>>,
    /// Bytes held in `slots`.
    held: usize,
}

impl TailCache {
    /// `None` if `frame` has no line breaks (its `data:` part is `data: ` + `frame` + `\n\n`),
    /// else its `data:` lines and the blank line after them.
    fn data_lines(&self, frame: &Bytes) -> Option<Bytes> {
        // Fibonacci hashing of the address: its top bits pick the slot.
        let addr = frame.as_ptr() as usize as u64;
        let slot = (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TAIL_SLOTS.trailing_zeros()))
            as usize;
        let same = |f: &Bytes| f.as_ptr() == frame.as_ptr() && f.len() == frame.len();
        if let Some(Some((f, lines))) = lock(&self.slots).slots.get(slot) {
            if same(f) {
                return lines.clone();
            }
        }
        let lines = has_line_break(frame).then(|| {
            let mut out = BytesMut::with_capacity(frame.len() + frame.len() / 8 + 16);
            write_data(&mut out, frame);
            out.freeze()
        });
        let size = |f: &Bytes, l: &Option<Bytes>| f.len() + l.as_ref().map_or(0, Bytes::len);
        let mut st = lock(&self.slots);
        if st.slots.is_empty() {
            st.slots.resize(TAIL_SLOTS, None);
        }
        if let Some((f, l)) = st.slots[slot].take() {
            st.held -= size(&f, &l);
        }
        let new = size(frame, &lines);
        if st.held + new <= TAIL_BYTES {
            st.held += new;
            st.slots[slot] = Some((frame.clone(), lines.clone()));
        }
        lines
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
    /// Rendered chunks not yet handed to hyper (only when a batch held a long frame).
    pub(crate) ready: VecDeque<Bytes>,
    pub(crate) tails: Arc<TailCache>,
    pub(crate) done: bool,
    pub(crate) _registered: Registered,
}

/// A batch being rendered: text goes into `buf`; a long shared part ends `buf`'s chunk and
/// goes into `ready` as a chunk of its own.
struct Out<'a> {
    buf: Vec<u8>,
    ready: &'a mut VecDeque<Bytes>,
}

impl Out<'_> {
    fn put(&mut self, s: &[u8]) {
        self.buf.extend_from_slice(s);
    }

    /// Bytes shared with other streams: copied if short, else queued as they are.
    fn shared(&mut self, b: &Bytes) {
        if b.len() < SHARE_MIN {
            self.buf.extend_from_slice(b);
        } else {
            if !self.buf.is_empty() {
                // A few lines of text, copied out: the chunk holds no more than it needs (the
                // buffer itself has room for the whole batch's text).
                self.ready.push_back(Bytes::copy_from_slice(&self.buf));
                self.buf.clear();
            }
            self.ready.push_back(b.clone());
        }
    }

    /// The event's `data:` lines and the blank line that ends it.
    fn data(&mut self, frame: &Bytes, tails: &TailCache) {
        let lines = if frame.len() >= SHARE_MIN || has_line_break(frame) {
            tails.data_lines(frame)
        } else {
            None
        };
        match lines {
            Some(lines) => self.shared(&lines),
            None => {
                self.put(b"data: ");
                self.shared(frame);
                self.put(b"\n\n");
            }
        }
    }

    /// `id:` (if the cursor has any position) and `event:`.
    fn head(&mut self, id: Option<&Cursor>, event: &str) {
        if let Some(cursor) = id {
            self.put(b"id: ");
            cursor.write_id(&mut self.buf);
            self.put(b"\n");
        }
        self.put(b"event: ");
        self.put(event.as_bytes());
        self.put(b"\n");
    }
}

impl Writer {
    /// The next chunk of the body: everything the outbox had, as SSE text (in several chunks
    /// if it holds long frames). `None` at the end.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                if self.ready.is_empty() {
                    // Idle streams keep no queue.
                    self.ready = VecDeque::new();
                }
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            self.batch.clear();
            if !self.outbox.next_batch(&mut self.batch).await {
                self.done = true;
                return None;
            }
            if let Some(chunk) = self.render() {
                return Some(chunk);
            }
        }
    }

    /// Renders the batch: the first chunk, the rest (if any) in `ready`.
    fn render(&mut self) -> Option<Bytes> {
        let cursor = lock(&self.cursor);
        // Room for each event's text around its data: its id and `event:` line.
        let per_event = cursor.id_len() + 48;
        drop(cursor);
        let size: usize = self
            .batch
            .iter()
            .map(|o| match o {
                Outgoing::Frame(f) if f.bytes().len() < SHARE_MIN => f.bytes().len() + per_event,
                Outgoing::Frame(_) => per_event,
                _ => 16,
            })
            .sum();
        let head_len = self.head.as_ref().map_or(0, Bytes::len);
        let mut out = Out {
            buf: Vec::with_capacity(size + head_len),
            ready: &mut self.ready,
        };
        if let Some(head) = self.head.take() {
            out.put(&head);
        }
        let mut cursor = lock(&self.cursor);
        // A subscription began: the next event carries the id with its position.
        let mut id_due = false;
        for item in self.batch.drain(..) {
            match item {
                Outgoing::Frame(f) => {
                    // What the hub says of the frame: no parsing of its bytes.
                    let kind = f.kind();
                    let moved = match f.stream() {
                        Some((topic, epoch, offset)) => {
                            cursor.set(topic, epoch, offset);
                            true
                        }
                        None => false,
                    };
                    let with_id = moved || std::mem::take(&mut id_due);
                    out.head(with_id.then_some(&*cursor), kind.as_str());
                    out.data(f.bytes(), &self.tails);
                    if kind == FrameKind::Welcome {
                        if let Some(extra) = self.after_welcome.take() {
                            out.put(&extra);
                        }
                    }
                }
                Outgoing::Subscribed(at) => {
                    let (topic, position) = (at.topic(), at.position());
                    cursor.set(topic, &position.epoch, position.offset);
                    id_due = true;
                }
                Outgoing::Ping => out.put(b": ping\n\n"),
                Outgoing::Close(reason) => {
                    let frame = self.outbox.close_frame(reason);
                    if let Some(hint) = self.outbox.retry_hint() {
                        // A browser's EventSource reconnects after `retry`: make it the hub's
                        // hint, so that it comes back when the hub asked.
                        out.put(format!("retry: {}\n", hint.as_millis()).as_bytes());
                    }
                    out.head(None, "close");
                    out.data(&frame, &self.tails);
                    self.done = true;
                }
            }
        }
        if id_due && !self.done {
            // No event followed: an `id:` alone still sets the browser's last event id.
            out.put(b"id: ");
            cursor.write_id(&mut out.buf);
            out.put(b"\n\n");
        }
        drop(cursor);
        // Never happens (the welcome is always the first frame), but never lose the token.
        if let Some(extra) = self.after_welcome.take() {
            out.put(&extra);
        }
        // A burst leaves no large batch behind on an idle stream.
        if self.batch.capacity() > 64 {
            self.batch = Vec::new();
        }
        let Out { buf, ready } = out;
        if !buf.is_empty() {
            // The buffer was sized for the batch: if most of its text went out earlier (before
            // long frames), copy the rest rather than keep the whole buffer alive.
            let last = if buf.capacity() > 2 * buf.len() + 256 {
                Bytes::copy_from_slice(&buf)
            } else {
                Bytes::from(buf)
            };
            if ready.is_empty() {
                return Some(last);
            }
            ready.push_back(last);
        }
        ready.pop_front()
    }
}

/// Whether `data` holds a `\n` or `\r`. Blocks of 32 bytes without an early exit inside, so
/// that the compiler turns each block into a few vector compares.
fn has_line_break(data: &[u8]) -> bool {
    fn block(b: &[u8]) -> bool {
        let mut hits = 0u8;
        for &b in b {
            hits |= u8::from(b == b'\n') | u8::from(b == b'\r');
        }
        hits != 0
    }
    if data.len() < 32 {
        return data.iter().any(|&b| b == b'\n' || b == b'\r');
    }
    let mut blocks = data.chunks_exact(32);
    if blocks.any(block) {
        return true;
    }
    // The last 32 bytes again, rather than the few left over one by one.
    !blocks.remainder().is_empty() && block(&data[data.len() - 32..])
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
    write_data(out, data);
}

/// The `data:` lines of `data` (split at `\r\n`, `\r` and `\n`) and the blank line after them.
fn write_data(out: &mut BytesMut, data: &[u8]) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    fn finds_line_breaks_anywhere() {
        for len in 0..100 {
            let plain = vec![b'a'; len];
            assert!(!has_line_break(&plain), "{len}");
            for at in 0..len {
                for brk in [b'\n', b'\r'] {
                    let mut d = plain.clone();
                    d[at] = brk;
                    assert!(has_line_break(&d), "{len} {at} {brk}");
                }
            }
        }
        // Bytes that differ from a break by one bit, or have the high bit set.
        let near: Vec<u8> = (0..=255u8).filter(|b| *b != b'\n' && *b != b'\r').collect();
        assert!(!has_line_break(&near));
    }

    #[test]
    fn renders_a_frames_data_lines_once_and_shares_them() {
        let cache = TailCache::default();
        let frame = Bytes::from_static(b"{\"a\":\r\n1,\n\"b\":\r2}");
        let tail = cache.data_lines(&frame).unwrap();
        assert_eq!(
            &tail[..],
            b"data: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        // The same frame (a clone, as every subscriber gets): the same rendering, not a new one.
        let again = cache.data_lines(&frame.clone()).unwrap();
        assert_eq!(again.as_ptr(), tail.as_ptr());
        // Equal bytes in another allocation: rendered again, just as right.
        let copy = Bytes::copy_from_slice(&frame);
        let other = cache.data_lines(&copy).unwrap();
        assert_eq!(other, tail);
        assert_ne!(other.as_ptr(), tail.as_ptr());
        // No line breaks: nothing to render, and that is remembered too.
        let plain = Bytes::from(vec![b'x'; SHARE_MIN]);
        assert_eq!(cache.data_lines(&plain), None);
        assert_eq!(cache.data_lines(&plain), None);
        // Many frames: each is right, whichever slot it takes or loses.
        let frames: Vec<Bytes> = (0..TAIL_SLOTS * 2)
            .map(|i| Bytes::from(format!("{i}\n")))
            .collect();
        for _ in 0..2 {
            for (i, f) in frames.iter().enumerate() {
                let lines = cache.data_lines(f).unwrap();
                assert_eq!(&lines[..], format!("data: {i}\ndata: \n\n").as_bytes());
            }
        }
        assert_eq!(cache.data_lines(&frame), Some(tail));
        // What it holds stays within its budget, and is counted right.
        let big: Vec<Bytes> = (0..4)
            .map(|_| Bytes::from(vec![b'x'; TAIL_BYTES / 3]))
            .collect();
        for f in &big {
            assert_eq!(cache.data_lines(f), None);
        }
        let st = lock(&cache.slots);
        let held: usize = st
            .slots
            .iter()
            .flatten()
            .map(|(f, l)| f.len() + l.as_ref().map_or(0, Bytes::len))
            .sum();
        assert_eq!(held, st.held);
        assert!(held <= TAIL_BYTES);
    }
}
