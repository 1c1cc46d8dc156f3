//! Reading a client's WebSocket frames (RFC 6455, section 5), with no buffer while idle.
//!
//! An idle connection is most of a hub's connections, and a reader that keeps a buffer
//! allocated for the next frame pays for it on every one of them (tungstenite keeps its read
//! buffer for the connection's life). [`FrameReader`] reads into a buffer on the stack of the
//! poll, and keeps bytes on the heap only while a frame is incomplete or more frames of one
//! read wait their turn; once they are taken, the memory is given back.
//!
//! What a server must refuse, it refuses with the reason the hub closes with: an unmasked
//! frame, reserved bits or opcodes, a fragmented or oversized control frame, a continuation
//! with no message to continue, a new message inside a fragmented one, a malformed close frame:
//! [`DisconnectReason::ProtocolError`] (1002); a frame or a message over the hub's limit:
//! [`DisconnectReason::FrameTooLarge`] (1009, refused from the frame's header, before its
//! payload is read); a text message or a close reason that is not UTF-8:
//! [`DisconnectReason::BadData`] (1007).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use livehub_core::DisconnectReason;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bytes read per system call, into a buffer on the poll's stack.
const READ_CHUNK: usize = 4096;

/// The longest frame header: 2 bytes, a 64-bit length, the mask.
const MAX_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One thing the client said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A whole message (a text message is valid UTF-8): a frame for the hub.
    Message(Bytes),
    /// A ping, with its payload (to be sent back in a pong).
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The client's close frame: its code and reason, if it gave them (both valid).
    Close(Option<(u16, Bytes)>),
    /// The stream ended, or failed (a peer that vanished has no one to tell).
    End,
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Fragments {
    text: bool,
    payload: BytesMut,
}

/// Reads a client's frames from a stream, one [`Event`] at a time.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Bytes read and not yet taken: empty, with no allocation, while the client is idle.
    buf: BytesMut,
    /// The message whose fragments are arriving (boxed: rare, and one pointer while idle).
    partial: Option<Box<Fragments>>,
    /// Most bytes in one frame's payload, and in one message's.
    max_size: usize,
}

impl FrameReader {
    /// A reader that refuses frames and messages over `max_size` bytes.
    pub(crate) fn new(max_size: usize) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            partial: None,
            max_size,
        }
    }

    /// The next event, reading from `io` as needed. An error is the reason to close with.
    pub(crate) fn poll_next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Event, DisconnectReason>> {
        loop {
            if let Some(event) = self.parse()? {
                if self.buf.is_empty() {
                    // Everything read is taken: give the memory back.
                    self.buf = BytesMut::new();
                }
                return Poll::Ready(Ok(event));
            }
            // Not zeroed: this runs at every turn of the session's loop (once per batch
            // written), and the socket only writes into it.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            match ready!(Pin::new(&mut *io).poll_read(cx, &mut read)) {
                Ok(()) if read.filled().is_empty() => return Poll::Ready(Ok(Event::End)),
                Ok(()) => self.buf.extend_from_slice(read.filled()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::trace!(error = %e, "read failed");
                    return Poll::Ready(Ok(Event::End));
                }
            }
        }
    }

    /// Takes the next event out of what has been read, if it is all there.
    fn parse(&mut self) -> Result<Option<Event>, DisconnectReason> {
        loop {
            let Some((header, fin, opcode, len, mask)) = self.header()? else {
                return Ok(None);
            };
            if self.buf.len() < header + len {
                // The payload is still coming (at most `max_size` bytes of it are kept).
                return Ok(None);
            }
            self.buf.advance(header);
            let mut payload = self.buf.split_to(len);
            unmask(&mut payload, mask);
            // The payload goes on alone: what the hub keeps (history) must not hold on to
            // the rest of a read's bytes.
            let payload = Bytes::copy_from_slice(&payload);
            match opcode {
                OP_PING => return Ok(Some(Event::Ping(payload))),
                OP_PONG => return Ok(Some(Event::Pong)),
                OP_CLOSE => return close_frame(payload).map(|c| Some(Event::Close(c))),
                OP_CONTINUATION => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(DisconnectReason::ProtocolError);
                    };
                    partial.payload.extend_from_slice(&payload);
                    if fin {
                        let Some(done) = self.partial.take() else {
                            return Err(DisconnectReason::ProtocolError);
                        };
                        return message(done.text, done.payload.freeze()).map(Some);
                    }
                }
                _ => {
                    if self.partial.is_some() {
                        return Err(DisconnectReason::ProtocolError);
                    }
                    let text = opcode == OP_TEXT;
                    if fin {
                        return message(text, payload).map(Some);
                    }
                    self.partial = Some(Box::new(Fragments {
                        text,
                        payload: BytesMut::from(&payload[..]),
                    }));
                }
            }
        }
    }

    /// The next frame's header, checked, if it is all there: its length, FIN, the opcode, the
    /// payload's length and the mask.
    #[allow(clippy::type_complexity)]
    fn header(&self) -> Result<Option<(usize, bool, u8, usize, [u8; 4])>, DisconnectReason> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0F;
        if b[0] & 0x70 != 0 || b[1] & 0x80 == 0 {
            // Reserved bits (no extension is negotiated), or a client frame not masked.
            return Err(DisconnectReason::ProtocolError);
        }
        let control = opcode >= OP_CLOSE;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(DisconnectReason::ProtocolError),
        }
        let (len, at): (u64, usize) = match b[1] & 0x7F {
            126 => match b.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => return Ok(None),
            },
            127 => match b.get(2..10) {
                Some(l) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(l);
                    (u64::from_be_bytes(be), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(DisconnectReason::ProtocolError);
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.payload.len() as u64);
        let limit = self.max_size as u64;
        if len > limit || (opcode == OP_CONTINUATION && so_far + len > limit) {
            return Err(DisconnectReason::FrameTooLarge);
        }
        let Some(m) = b.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [m[0], m[1], m[2], m[3]];
        debug_assert!(at + 4 <= MAX_HEADER);
        // `len <= max_size`, a usize.
        Ok(Some((at + 4, fin, opcode, len as usize, mask)))
    }
}

/// Removes the client's mask (RFC 6455, 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A whole message: text must be UTF-8.
fn message(text: bool, payload: Bytes) -> Result<Event, DisconnectReason> {
    if text && std::str::from_utf8(&payload).is_err() {
        return Err(DisconnectReason::BadData);
    }
    Ok(Event::Message(payload))
}

/// A close frame's code and reason (RFC 6455, 5.5.1): none, or a code a client may send and
/// a UTF-8 reason.
fn close_frame(payload: Bytes) -> Result<Option<(u16, Bytes)>, DisconnectReason> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(DisconnectReason::ProtocolError),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() {
                return Err(DisconnectReason::ProtocolError);
            }
            let reason = payload.slice(2..);
            if std::str::from_utf8(&reason).is_err() {
                return Err(DisconnectReason::BadData);
            }
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A client frame: FIN, the opcode, masked with a fixed mask.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0xa1, 0x07, 0x5c, 0xe3];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `bytes` to a reader one at a time (every frame arrives in pieces) and collects
    /// the events, up to the end or the first error.
    fn events(bytes: &[u8], max: usize) -> (Vec<Event>, Option<DisconnectReason>) {
        let mut r = FrameReader::new(max);
        let mut out = Vec::new();
        for &b in bytes {
            r.buf.extend_from_slice(&[b]);
            loop {
                match r.parse() {
                    Ok(Some(e)) => out.push(e),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        assert!(r.buf.is_empty(), "bytes left over");
        (out, None)
    }

    fn msg(s: &[u8]) -> Event {
        Event::Message(Bytes::copy_from_slice(s))
    }

    #[test]
    fn messages_of_every_length_class_fragments_and_controls_come_out_in_order() {
        let long = vec![b'x'; 70_000];
        let mid = vec![b'y'; 300];
        let mut input = Vec::new();
        input.extend(frame(true, OP_TEXT, b"hello"));
        input.extend(frame(true, OP_BINARY, &mid));
        input.extend(frame(true, OP_BINARY, &long));
        // A fragmented text message with a ping between its fragments.
        input.extend(frame(false, OP_TEXT, b"ab"));
        input.extend(frame(true, OP_PING, b"p"));
        input.extend(frame(false, OP_CONTINUATION, b"cd"));
        input.extend(frame(true, OP_CONTINUATION, b"ef"));
        input.extend(frame(true, OP_PONG, b""));
        input.extend(frame(true, OP_TEXT, b""));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        input.extend(frame(true, OP_CLOSE, &close));
        input.extend(frame(true, OP_CLOSE, b""));
        let (got, err) = events(&input, 100_000);
        assert_eq!(err, None);
        assert_eq!(
            got,
            vec![
                msg(b"hello"),
                msg(&mid),
                msg(&long),
                Event::Ping(Bytes::from_static(b"p")),
                msg(b"abcdef"),
                Event::Pong,
                msg(b""),
                Event::Close(Some((1000, Bytes::from_static(b"bye")))),
                Event::Close(None),
            ]
        );
    }

    #[test]
    fn protocol_violations_are_refused_with_1002() {
        let mut unmasked = frame(true, OP_TEXT, b"hi");
        unmasked[1] &= 0x7F;
        let mut rsv = frame(true, OP_TEXT, b"hi");
        rsv[0] |= 0x40;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("reserved bit", rsv),
            ("reserved opcode 3", frame(true, 0x3, b"")),
            ("reserved opcode 0xB", frame(true, 0xB, b"")),
            ("fragmented ping", frame(false, OP_PING, b"")),
            ("ping of 126 bytes", frame(true, OP_PING, &[0; 126])),
            (
                "continuation of nothing",
                frame(true, OP_CONTINUATION, b"x"),
            ),
            ("close of 1 byte", frame(true, OP_CLOSE, &[3])),
            (
                "close code 1005",
                frame(true, OP_CLOSE, &1005u16.to_be_bytes()),
            ),
            (
                "close code 999",
                frame(true, OP_CLOSE, &999u16.to_be_bytes()),
            ),
            (
                "a message inside a fragmented one",
                [frame(false, OP_TEXT, b"a"), frame(true, OP_TEXT, b"b")].concat(),
            ),
        ];
        for (what, input) in cases {
            let (_, err) = events(&input, 1000);
            assert_eq!(err, Some(DisconnectReason::ProtocolError), "{what}");
        }
    }

    #[test]
    fn bad_utf8_is_refused_with_1007_and_sizes_over_the_limit_with_1009_from_the_header() {
        let (_, err) = events(&frame(true, OP_TEXT, &[0xff, 0xfe]), 1000);
        assert_eq!(err, Some(DisconnectReason::BadData));
        // UTF-8 is checked on the whole message: a character split across fragments is fine.
        let euro = "€".as_bytes();
        let split = [
            frame(false, OP_TEXT, &euro[..1]),
            frame(true, OP_CONTINUATION, &euro[1..]),
        ]
        .concat();
        assert_eq!(events(&split, 1000), (vec![msg(euro)], None));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.push(0xff);
        assert_eq!(
            events(&frame(true, OP_CLOSE, &close), 1000).1,
            Some(DisconnectReason::BadData)
        );
        // Binary is not text: any bytes.
        assert_eq!(
            events(&frame(true, OP_BINARY, &[0xff]), 1000),
            (vec![msg(&[0xff])], None)
        );
        // At the limit: fine; one byte over: refused once the header is in, the payload unread.
        assert_eq!(events(&frame(true, OP_BINARY, &[7; 100]), 100).1, None);
        let over = frame(true, OP_BINARY, &[7; 101]);
        let mut r = FrameReader::new(100);
        r.buf.extend_from_slice(&over[..6]);
        assert_eq!(r.parse(), Err(DisconnectReason::FrameTooLarge));
        // A message whose fragments add up to more than the limit.
        let frags = [
            frame(false, OP_TEXT, &[b'a'; 60]),
            frame(true, OP_CONTINUATION, &[b'a'; 60]),
        ]
        .concat();
        assert_eq!(events(&frags, 100).1, Some(DisconnectReason::FrameTooLarge));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_every_outcome_is_an_event_or_a_reason() {
        // A fixed pseudo-random sequence (xorshift), cut into inputs of every length, with
        // valid frames spliced in so that parsing gets past the first header.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2_000 {
            let mut input = Vec::new();
            while input.len() < round % 300 {
                match rand() % 4 {
                    0 => input.extend(frame(rand() % 2 == 0, (rand() % 16) as u8, &[b'a'; 7])),
                    _ => input.push(rand() as u8),
                }
            }
            let mut r = FrameReader::new(64);
            for piece in input.chunks(1 + (rand() % 17) as usize) {
                r.buf.extend_from_slice(piece);
                let mut failed = false;
                loop {
                    match r.parse() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(reason) => {
                            assert!(matches!(
                                reason,
                                DisconnectReason::ProtocolError
                                    | DisconnectReason::FrameTooLarge
                                    | DisconnectReason::BadData
                            ));
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    break;
                }
                // Never more than one frame's worth held (limit + header) plus one piece.
                assert!(r.buf.len() <= 64 + MAX_HEADER + 17, "{}", r.buf.len());
            }
        }
    }

    /// The reader's next event from `io`.
    async fn next(
        r: &mut FrameReader,
        io: &mut tokio::io::DuplexStream,
    ) -> Result<Event, DisconnectReason> {
        std::future::poll_fn(|cx| r.poll_next(io, cx)).await
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer_and_frames_of_one_read_come_one_by_one() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(1 << 20);
        // Pending with nothing to read: nothing kept.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(r.poll_next(&mut server, &mut cx).is_pending());
        assert_eq!(r.buf.capacity(), 0);
        let mut both = frame(true, OP_TEXT, b"one");
        both.extend(frame(true, OP_TEXT, b"two"));
        tokio::io::AsyncWriteExt::write_all(&mut client, &both)
            .await
            .unwrap();
        assert_eq!(next(&mut r, &mut server).await, Ok(msg(b"one")));
        assert!(!r.buf.is_empty(), "the second frame waits in the buffer");
        assert_eq!(next(&mut r, &mut server).await, Ok(msg(b"two")));
        assert_eq!(r.buf.capacity(), 0, "all taken: the memory is given back");
        drop(client);
        assert_eq!(next(&mut r, &mut server).await, Ok(Event::End));
    }
}
