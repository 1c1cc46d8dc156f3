//! The key and channel layout (written down in the crate docs, `# Key layout`).
//!
//! Every key of one topic or room shares one hash tag, `{<prefix>:t:<topic>}` or
//! `{<prefix>:r:<room>}`, so each script touches one Redis Cluster slot only.

use livehub_core::broker::{Channel, NodeId, Route};
use livehub_core::presence::{Scope, ScopeName};

/// The names of every key and channel, under one prefix.
#[derive(Debug)]
pub(crate) struct Keys {
    /// `{<prefix>:`: what every per-topic, per-room and per-node name starts with.
    open: String,
    /// `{<prefix>}:all`: the all-nodes channel.
    all: String,
    /// `{<prefix>}:presence`: the index of presence scopes.
    presence_index: String,
}

/// What a channel name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelName<'a> {
    Topic(&'a str),
    Room(&'a str),
    Node,
    All,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            open: format!("{{{prefix}:"),
            all: format!("{{{prefix}}}:all"),
            presence_index: format!("{{{prefix}}}:presence"),
        }
    }

    fn tagged(&self, kind: &str, name: &str, suffix: &str) -> String {
        let mut s = String::with_capacity(self.open.len() + kind.len() + name.len() + 10);
        s.push_str(&self.open);
        s.push_str(kind);
        s.push(':');
        s.push_str(name);
        s.push('}');
        s.push_str(suffix);
        s
    }

    /// The topic's meta hash: epoch, last offset, payload bytes held.
    pub(crate) fn topic_meta(&self, topic: &str) -> String {
        self.tagged("t", topic, ":meta")
    }

    /// The topic's stream (its history).
    pub(crate) fn topic_stream(&self, topic: &str) -> String {
        self.tagged("t", topic, ":stream")
    }

    pub(crate) fn topic_channel(&self, topic: &str) -> String {
        self.tagged("t", topic, ":ch")
    }

    pub(crate) fn room_channel(&self, room: &str) -> String {
        self.tagged("r", room, ":ch")
    }

    pub(crate) fn node_channel(&self, node: NodeId) -> String {
        self.tagged("n", &node.to_string(), ":ch")
    }

    pub(crate) fn all_channel(&self) -> &str {
        &self.all
    }

    pub(crate) fn channel(&self, channel: Channel<'_>) -> String {
        match channel {
            Channel::Topic(t) => self.topic_channel(t),
            Channel::Room(r) => self.room_channel(r),
            Channel::Pattern(p) => self.pattern_channel(p),
        }
    }

    /// The `PSUBSCRIBE` glob for a hub pattern: its topics' channel names with each wildcard
    /// as Redis's `*`. Redis's `*` also crosses `/`, so the glob matches a superset (`scores/*`
    /// also hears `scores/a/b`): the node keeps only what the pattern matches. The prefix is
    /// escaped, so that a prefix with glob characters matches only itself.
    pub(crate) fn pattern_channel(&self, pattern: &str) -> String {
        let mut glob = String::with_capacity(self.open.len() + pattern.len() + 8);
        for c in self.open.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                glob.push('\\');
            }
            glob.push(c);
        }
        glob.push_str("t:");
        // Topic names hold no glob characters: only the wildcards need rewriting.
        let segments: Vec<&str> = pattern
            .split('/')
            .map(|s| if s == "**" { "*" } else { s })
            .collect();
        glob.push_str(&segments.join("/"));
        glob.push_str("}:ch");
        glob
    }

    pub(crate) fn route(&self, route: Route<'_>) -> String {
        match route {
            Route::Topic(t) => self.topic_channel(t),
            Route::Room(r) => self.room_channel(r),
            Route::Node(n) => self.node_channel(n),
            Route::All => self.all.clone(),
        }
    }

    /// What a received channel name names; `None` for a name outside this layout.
    pub(crate) fn parse_channel<'a>(&self, name: &'a [u8]) -> Option<ChannelName<'a>> {
        let name = std::str::from_utf8(name).ok()?;
        if name == self.all {
            return Some(ChannelName::All);
        }
        let inner = name.strip_prefix(&*self.open)?.strip_suffix("}:ch")?;
        if let Some(topic) = inner.strip_prefix("t:") {
            Some(ChannelName::Topic(topic))
        } else if let Some(room) = inner.strip_prefix("r:") {
            Some(ChannelName::Room(room))
        } else if inner.starts_with("n:") {
            Some(ChannelName::Node)
        } else {
            None
        }
    }

    /// A presence scope's id in the index: `t:<topic>` or `r:<room>`.
    pub(crate) fn scope_id(scope: Scope<'_>) -> String {
        match scope {
            Scope::Topic(t) => format!("t:{t}"),
            Scope::Room(r) => format!("r:{r}"),
        }
    }

    pub(crate) fn parse_scope_id(id: &str) -> Option<ScopeName> {
        if let Some(t) = id.strip_prefix("t:") {
            Some(ScopeName::Topic(t.to_owned()))
        } else {
            id.strip_prefix("r:").map(|r| ScopeName::Room(r.to_owned()))
        }
    }

    /// A scope's members hash (session -> member JSON), by scope id.
    pub(crate) fn presence_members(&self, scope_id: &str) -> String {
        self.presence_key(scope_id, "}:pm")
    }

    /// A scope's expiry set (session -> expiry in ms), by scope id.
    pub(crate) fn presence_expiry(&self, scope_id: &str) -> String {
        self.presence_key(scope_id, "}:px")
    }

    /// A scope's order set (session ids, every score 0: pages by lexical order), by scope id.
    pub(crate) fn presence_order(&self, scope_id: &str) -> String {
        self.presence_key(scope_id, "}:pl")
    }

    /// A scope's users hash (user key -> sessions of that user), by scope id.
    pub(crate) fn presence_users(&self, scope_id: &str) -> String {
        self.presence_key(scope_id, "}:pu")
    }

    fn presence_key(&self, scope_id: &str, suffix: &str) -> String {
        let mut s = String::with_capacity(self.open.len() + scope_id.len() + suffix.len());
        s.push_str(&self.open);
        s.push_str(scope_id);
        s.push_str(suffix);
        s
    }

    /// The index of scopes with presence (scope id -> next expiry, a lower bound).
    pub(crate) fn presence_index(&self) -> &str {
        &self.presence_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let k = Keys::new("hub");
        assert_eq!(k.topic_meta("scores/all"), "{hub:t:scores/all}:meta");
        assert_eq!(k.topic_stream("scores/all"), "{hub:t:scores/all}:stream");
        assert_eq!(k.topic_channel("scores/all"), "{hub:t:scores/all}:ch");
        assert_eq!(k.room_channel("chat:42"), "{hub:r:chat:42}:ch");
        assert_eq!(k.node_channel(NodeId(0xab)), "{hub:n:000000ab}:ch");
        assert_eq!(k.all_channel(), "{hub}:all");
        let id = Keys::scope_id(Scope::Room("chat:42"));
        assert_eq!(k.presence_members(&id), "{hub:r:chat:42}:pm");
        assert_eq!(k.presence_expiry(&id), "{hub:r:chat:42}:px");
        assert_eq!(k.presence_order(&id), "{hub:r:chat:42}:pl");
        assert_eq!(k.presence_users(&id), "{hub:r:chat:42}:pu");
        assert_eq!(k.presence_index(), "{hub}:presence");
        // A topic's presence shares the slot (hash tag) of its stream.
        assert_eq!(
            k.presence_members(&Keys::scope_id(Scope::Topic("a"))),
            "{hub:t:a}:pm"
        );
    }

    #[test]
    fn channels_parse_back() {
        let k = Keys::new("hub");
        for (name, want) in [
            (k.topic_channel("a}:ch"), ChannelName::Topic("a}:ch")),
            (k.topic_channel(""), ChannelName::Topic("")),
            (k.room_channel("r"), ChannelName::Room("r")),
            (k.node_channel(NodeId(7)), ChannelName::Node),
            (k.all_channel().to_owned(), ChannelName::All),
        ] {
            assert_eq!(k.parse_channel(name.as_bytes()), Some(want), "{name}");
        }
        for bad in [
            &b"{other:t:a}:ch"[..],
            b"{hub:x:a}:ch",
            b"{hub:t:a}:meta",
            b"\xff",
        ] {
            assert_eq!(k.parse_channel(bad), None);
        }
    }

    #[test]
    fn scope_ids_parse_back() {
        assert_eq!(
            Keys::parse_scope_id(&Keys::scope_id(Scope::Topic("t:x"))),
            Some(ScopeName::Topic("t:x".into()))
        );
        assert_eq!(
            Keys::parse_scope_id("r:room"),
            Some(ScopeName::Room("room".into()))
        );
        assert_eq!(Keys::parse_scope_id("zz"), None);
    }
}
