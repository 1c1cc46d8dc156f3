//! SSE event ids: the stream's position in every topic it has seen, so that a reconnecting
//! browser's `Last-Event-ID` resumes all of them.
//!
//! Format: `topic=epoch:offset` entries joined by `&`, sorted by topic, with every byte of
//! topic and epoch outside `A-Z a-z 0-9 - _ . / @` percent-encoded (so `=`, `:`, `&` and `%` in
//! a name never clash with the separators). Example: `metrics/api=9f1c2a7d3b4e5f60:41&x=77ab:3`.

use std::collections::{BTreeMap, HashMap};

/// At most this many topics in one `Last-Event-ID`; more is treated as malformed.
pub(crate) const MAX_ID_TOPICS: usize = 1024;

/// At most this many `subscribe` commands awaiting their reply are tracked.
const MAX_PENDING: usize = 64;

/// The last position seen per topic.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    positions: BTreeMap<String, (String, u64)>,
    /// `subscribe` commands (by request id) awaiting their reply: the topic, and the `since`
    /// the command gave. On success the topic resumes from `since`, or else from its position
    /// when the subscription began (the reply's data), even before its first message.
    pending: HashMap<u64, (String, Option<(String, u64)>)>,
}

impl Cursor {
    /// Records that `offset` of `epoch` of `topic` was delivered.
    pub(crate) fn set(&mut self, topic: &str, epoch: &str, offset: u64) {
        match self.positions.get_mut(topic) {
            Some((e, o)) => {
                if e != epoch {
                    epoch.clone_into(e);
                }
                *o = offset;
            }
            None => {
                self.positions
                    .insert(topic.to_owned(), (epoch.to_owned(), offset));
            }
        }
    }

    /// Forgets a topic (the client unsubscribed).
    pub(crate) fn remove(&mut self, topic: &str) {
        self.positions.remove(topic);
        self.pending.retain(|_, (t, _)| t != topic);
    }

    /// Notes that the reply to request `id` will be a `subscribe` reply for `topic`, which
    /// asked to recover from `since`.
    pub(crate) fn expect_subscribe_reply(
        &mut self,
        id: u64,
        topic: &str,
        since: Option<(String, u64)>,
    ) {
        if self.pending.len() < MAX_PENDING || self.pending.contains_key(&id) {
            self.pending.insert(id, (topic.to_owned(), since));
        }
    }

    /// Whether any `subscribe` reply is awaited.
    pub(crate) fn awaits_replies(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The topic (and `since`) of the awaited `subscribe` reply to request `id`, forgotten once
    /// taken.
    pub(crate) fn take_pending(&mut self, id: u64) -> Option<(String, Option<(String, u64)>)> {
        self.pending.remove(&id)
    }

    /// The position of `topic`, if one was seen.
    pub(crate) fn get(&self, topic: &str) -> Option<(&str, u64)> {
        self.positions.get(topic).map(|(e, o)| (e.as_str(), *o))
    }

    /// The topics with a position, in order.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &str> {
        self.positions.keys().map(String::as_str)
    }

    /// The event id for the current positions.
    pub(crate) fn event_id(&self) -> String {
        let mut out = String::with_capacity(self.positions.len() * 40);
        for (i, (topic, (epoch, offset))) in self.positions.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            escape_into(&mut out, topic);
            out.push('=');
            escape_into(&mut out, epoch);
            out.push(':');
            out.push_str(&offset.to_string());
        }
        out
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
        Ok(Cursor {
            positions,
            pending: HashMap::new(),
        })
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
}
