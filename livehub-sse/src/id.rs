//! SSE event ids: the stream's position in every topic it has seen, so that a reconnecting
//! browser's `Last-Event-ID` resumes all of them.
//!
//! Format: `topic=epoch:offset` entries joined by `&`, sorted by topic, with every byte of
//! topic and epoch outside `A-Z a-z 0-9 - _ . / @` percent-encoded (so `=`, `:`, `&` and `%` in
//! a name never clash with the separators). Example: `metrics/api=9f1c2a7d3b4e5f60:41&x=77ab:3`.

use std::collections::BTreeMap;

use bytes::BufMut;

/// At most this many topics in one `Last-Event-ID`; more is treated as malformed.
pub(crate) const MAX_ID_TOPICS: usize = 1024;

/// The last position seen per topic.
///
/// Kept ready to write: each topic's `topic=epoch:` is percent-encoded once (when the topic or
/// its epoch changes), so writing an event id is copying those prefixes and the offsets'
/// digits, whatever the names hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Sorted by topic (byte order, as `str`'s `Ord`), one per topic.
    positions: Vec<Position>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    topic: String,
    epoch: String,
    offset: u64,
    /// `topic=epoch:`, percent-encoded: this topic's part of the id, less the offset.
    prefix: String,
}

impl Position {
    fn new(topic: String, epoch: String, offset: u64) -> Position {
        let mut p = Position {
            topic,
            epoch,
            offset,
            prefix: String::new(),
        };
        p.render_prefix();
        p
    }

    fn render_prefix(&mut self) {
        self.prefix.clear();
        escape_into(&mut self.prefix, &self.topic);
        self.prefix.push('=');
        escape_into(&mut self.prefix, &self.epoch);
        self.prefix.push(':');
    }
}

/// The longest decimal `u64`.
const MAX_DIGITS: usize = 20;

/// Writes `n` in decimal.
pub(crate) fn put_decimal(out: &mut impl BufMut, mut n: u64) {
    let mut digits = [0u8; MAX_DIGITS];
    let mut start = MAX_DIGITS;
    loop {
        start -= 1;
        // `n % 10` is below 10: the cast cannot truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

impl Cursor {
    fn find(&self, topic: &[u8]) -> Result<usize, usize> {
        self.positions
            .binary_search_by(|p| p.topic.as_bytes().cmp(topic))
    }

    /// Records that `offset` of `epoch` of `topic` was delivered.
    pub(crate) fn set(&mut self, topic: &str, epoch: &str, offset: u64) {
        self.set_bytes(topic.as_bytes(), epoch.as_bytes(), offset);
    }

    /// [`Cursor::set`] from a frame's bytes: a known topic whose epoch did not change costs a
    /// search and a comparison, no UTF-8 check, no allocation. Returns `false`, changing
    /// nothing, if a name it would have to store is not UTF-8.
    pub(crate) fn set_bytes(&mut self, topic: &[u8], epoch: &[u8], offset: u64) -> bool {
        match self.find(topic) {
            Ok(i) => {
                let p = &mut self.positions[i];
                if p.epoch.as_bytes() != epoch {
                    let Ok(epoch) = std::str::from_utf8(epoch) else {
                        return false;
                    };
                    epoch.clone_into(&mut p.epoch);
                    p.render_prefix();
                }
                p.offset = offset;
            }
            Err(i) => {
                let (Ok(topic), Ok(epoch)) =
                    (std::str::from_utf8(topic), std::str::from_utf8(epoch))
                else {
                    return false;
                };
                if self.positions.capacity() == 0 {
                    // Most streams follow one topic.
                    self.positions.reserve_exact(1);
                }
                self.positions
                    .insert(i, Position::new(topic.to_owned(), epoch.to_owned(), offset));
            }
        }
        true
    }

    /// Forgets a topic (the client unsubscribed).
    pub(crate) fn remove(&mut self, topic: &str) {
        if let Ok(i) = self.find(topic.as_bytes()) {
            self.positions.remove(i);
        }
    }

    /// The position of `topic`, if one was seen.
    pub(crate) fn get(&self, topic: &str) -> Option<(&str, u64)> {
        let i = self.find(topic.as_bytes()).ok()?;
        let p = &self.positions[i];
        Some((p.epoch.as_str(), p.offset))
    }

    /// The topics with a position, in order.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &str> {
        self.positions.iter().map(|p| p.topic.as_str())
    }

    /// At least the length of [`Cursor::write_id`]'s output.
    pub(crate) fn id_len(&self) -> usize {
        self.positions
            .iter()
            .map(|p| p.prefix.len() + MAX_DIGITS + 1)
            .sum()
    }

    /// Writes the event id for the current positions (nothing if there are none).
    pub(crate) fn write_id(&self, out: &mut impl BufMut) {
        for (i, p) in self.positions.iter().enumerate() {
            if i > 0 {
                out.put_u8(b'&');
            }
            out.put_slice(p.prefix.as_bytes());
            put_decimal(out, p.offset);
        }
    }

    /// The event id for the current positions.
    pub(crate) fn event_id(&self) -> String {
        let mut out = Vec::with_capacity(self.id_len());
        self.write_id(&mut out);
        // Prefixes are percent-encoded ASCII, offsets digits.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Parses an event id made by [`Cursor::event_id`]. `Err` says what is wrong with it.
    pub(crate) fn parse(id: &str) -> Result<Cursor, &'static str> {
        let mut positions = BTreeMap::new();
        if id.is_empty() {
            return Err("empty");
        }
        for entry in id.split('&') {
            if positions.len() >= MAX_ID_TOPICS {
                return Err("too many topics");
            }
            let (topic, pos) = entry.split_once('=').ok_or("an entry has no `=`")?;
            let (epoch, offset) = pos.rsplit_once(':').ok_or("a position has no `:`")?;
            let topic = unescape(topic).ok_or("bad percent-encoding")?;
            let epoch = unescape(epoch).ok_or("bad percent-encoding")?;
            if topic.is_empty() || epoch.is_empty() {
                return Err("empty topic or epoch");
            }
            if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
                return Err("offset is not a number");
            }
            let offset: u64 = offset.parse().map_err(|_| "offset out of range")?;
            if positions.insert(topic, (epoch, offset)).is_some() {
                return Err("a topic appears twice");
            }
        }
        // In order already.
        let positions = positions
            .into_iter()
            .map(|(topic, (epoch, offset))| Position::new(topic, epoch, offset))
            .collect();
        Ok(Cursor { positions })
    }
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_./@".contains(&b)
}

fn escape_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            // Exactly two hex digits: from_str_radix alone would accept a sign (`%+0`).
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if plain(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_names() {
        let mut c = Cursor::default();
        c.set("metrics/api", "9f1c2a7d3b4e5f60", 41);
        c.set("a=b:c&d%e", "ep:och", 7);
        let id = c.event_id();
        assert!(!id.contains('\n') && !id.contains('\r'));
        assert_eq!(Cursor::parse(&id), Ok(c.clone()));
        assert_eq!(c.get("a=b:c&d%e"), Some(("ep:och", 7)));
    }

    #[test]
    fn updates_in_place_and_forgets() {
        let mut c = Cursor::default();
        c.set("t", "e1", 1);
        c.set("t", "e2", 5);
        assert_eq!(c.event_id(), "t=e2:5");
        c.remove("t");
        assert_eq!(c.event_id(), "");
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "",
            "garbage",
            "t=e",
            "t=e:x",
            "t=e:-1",
            "%+0=5:7",
            "t%+1=e:1",
            "t=e:99999999999999999999999",
            "=e:1",
            "t=:1",
            "t=e:1&t=e:2",
            "t%zz=e:1",
            "t\u{e9}=e:1",
            "t=e:1&",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn writes_ids_from_frame_bytes_and_keeps_prefixes_current() {
        let mut c = Cursor::default();
        assert!(c.set_bytes(b"b", b"e1", 5));
        assert!(c.set_bytes(b"a:x", b"e=1", 0));
        assert_eq!(c.event_id(), "a%3Ax=e%3D1:0&b=e1:5");
        // A new epoch re-renders the topic's prefix; the offset follows.
        assert!(c.set_bytes(b"b", b"e2", u64::MAX));
        assert_eq!(c.event_id(), format!("a%3Ax=e%3D1:0&b=e2:{}", u64::MAX));
        assert!(c.event_id().len() <= c.id_len());
        // Names that are not UTF-8 change nothing.
        assert!(!c.set_bytes(b"\xff", b"e", 1));
        assert!(!c.set_bytes(b"b", b"\xff", 1));
        assert_eq!(c.get("b"), Some(("e2", u64::MAX)));
        assert_eq!(c.topics().collect::<Vec<_>>(), ["a:x", "b"]);
        // A parsed id has the same prefixes as one built by `set`.
        assert_eq!(Cursor::parse(&c.event_id()), Ok(c.clone()));
        c.remove("a:x");
        assert_eq!(c.event_id(), format!("b=e2:{}", u64::MAX));
        let mut digits = Vec::new();
        for n in [0, 7, 10, 99, 1_000_000] {
            digits.clear();
            put_decimal(&mut digits, n);
            assert_eq!(digits, n.to_string().as_bytes());
        }
    }
}
