//! Wildcard subscriptions: patterns over topic names, and the node's index of who holds which.
//!
//! A pattern is a topic name whose segments (split on `/`) may be `*` (exactly one segment)
//! or, as the last segment, `**` (one or more segments): `scores/*` matches `scores/live` but
//! not `scores/live/7`; `scores/**` matches both; neither matches `scores`.
//!
//! A session's pattern does not deliver anything by itself: every topic it matches becomes a
//! subscription of that session (one per topic, however many of its patterns match), with the
//! topic's own positions, checks and recovery. The index is consulted only when a topic starts
//! to be followed on this node (its first local subscriber, or the first message the engine
//! hands the node for a topic nobody here follows yet): a topic that is followed already costs
//! its publishes nothing more.
//!
//! Matching walks a trie of the patterns' segments: at each segment, the literal child and the
//! `*` child, so a topic of `d` segments costs at most `2^d` steps whatever the number of
//! patterns (and patterns have at most [`MAX_SEGMENTS`] segments).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::ErrorCode;
use crate::names::valid_name;
use crate::session::{lock, SessionId, SessionState};
use crate::streams::OpError;

/// The most segments a pattern may have.
pub(crate) const MAX_SEGMENTS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    One,
    Rest,
}

/// A parsed pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub(crate) text: Arc<str>,
    segs: Vec<Seg>,
}

impl Pattern {
    /// Parses `text`: 1..=`max_len` bytes, at most [`MAX_SEGMENTS`] segments, each a topic
    /// name segment, `*`, or (last) `**`; at least one wildcard (a pattern without one is a
    /// topic: subscribe to it).
    pub(crate) fn parse(text: &str, max_len: usize) -> Result<Pattern, OpError> {
        let bad = |why: &str| {
            Err((
                ErrorCode::BadPattern,
                format!("pattern {:?}: {why}", crate::names::truncate(text, 64)),
            ))
        };
        if text.is_empty() || text.len() > max_len {
            return bad(&format!("must be 1 to {max_len} bytes"));
        }
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() > MAX_SEGMENTS {
            return bad(&format!("at most {MAX_SEGMENTS} segments"));
        }
        let mut segs = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segs.push(match *part {
                "*" => Seg::One,
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return bad("`**` only as the last segment"),
                "" => return bad("empty segment"),
                lit if valid_name(lit, max_len) && !lit.contains('/') => Seg::Lit(lit.into()),
                _ => {
                    return bad("segments are `*`, `**` (last) or names of A-Z a-z 0-9 - _ . : @ =")
                }
            });
        }
        if segs.iter().all(|s| matches!(s, Seg::Lit(_))) {
            return bad("no wildcard: subscribe to the topic itself");
        }
        Ok(Pattern {
            text: text.into(),
            segs,
        })
    }

    /// Whether `topic` matches.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let parts: Vec<&str> = topic.split('/').collect();
        let mut i = 0;
        for seg in &self.segs {
            match seg {
                Seg::Rest => return i < parts.len(),
                Seg::One if i < parts.len() => {}
                Seg::Lit(l) if parts.get(i) == Some(&&**l) => {}
                _ => return false,
            }
            i += 1;
        }
        i == parts.len()
    }
}

#[derive(Default)]
struct Trie {
    lit: HashMap<Box<str>, Trie>,
    one: Option<Box<Trie>>,
    /// Patterns that end here.
    end: Vec<Arc<str>>,
    /// Patterns that end with `**` here.
    rest: Vec<Arc<str>>,
}

impl Trie {
    fn insert(&mut self, segs: &[Seg], text: &Arc<str>) {
        match segs.split_first() {
            None => self.end.push(text.clone()),
            Some((Seg::Rest, _)) => self.rest.push(text.clone()),
            Some((Seg::One, more)) => self.one.get_or_insert_with(Box::default).insert(more, text),
            Some((Seg::Lit(l), more)) => self.lit.entry(l.clone()).or_default().insert(more, text),
        }
    }

    /// Removes `text`; returns whether this node is now empty (and can be pruned).
    fn remove(&mut self, segs: &[Seg], text: &str) -> bool {
        match segs.split_first() {
            None => self.end.retain(|t| &**t != text),
            Some((Seg::Rest, _)) => self.rest.retain(|t| &**t != text),
            Some((Seg::One, more)) => {
                if let Some(child) = &mut self.one {
                    if child.remove(more, text) {
                        self.one = None;
                    }
                }
            }
            Some((Seg::Lit(l), more)) => {
                if let Some(child) = self.lit.get_mut(l) {
                    if child.remove(more, text) {
                        self.lit.remove(l);
                    }
                }
            }
        }
        self.lit.is_empty() && self.one.is_none() && self.end.is_empty() && self.rest.is_empty()
    }

    fn walk<'a>(&'a self, parts: &[&str], out: &mut Vec<&'a Arc<str>>) {
        if !parts.is_empty() {
            out.extend(self.rest.iter());
        }
        let Some((first, more)) = parts.split_first() else {
            out.extend(self.end.iter());
            return;
        };
        if let Some(child) = self.lit.get(*first) {
            child.walk(more, out);
        }
        if let Some(child) = &self.one {
            child.walk(more, out);
        }
    }
}

struct Held {
    pattern: Pattern,
    sessions: HashMap<SessionId, Arc<SessionState>>,
}

#[derive(Default)]
struct IndexState {
    trie: Trie,
    held: HashMap<Arc<str>, Held>,
}

/// The node's patterns and the local sessions that hold each.
#[derive(Default)]
pub(crate) struct PatternIndex {
    /// Patterns held (a lock-free check for the common case: none).
    count: AtomicUsize,
    state: Mutex<IndexState>,
}

impl PatternIndex {
    /// Whether no pattern is held on this node.
    pub(crate) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Adds `s` as a holder of `pattern`; returns whether the node holds it for the first time.
    pub(crate) fn add(&self, pattern: &Pattern, s: &Arc<SessionState>) -> bool {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let first = !st.held.contains_key(&pattern.text);
        let held = st.held.entry(pattern.text.clone()).or_insert_with(|| Held {
            pattern: pattern.clone(),
            sessions: HashMap::new(),
        });
        held.sessions.insert(s.id, s.clone());
        if first {
            st.trie.insert(&pattern.segs, &pattern.text);
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        first
    }

    /// Removes `s` from `text`'s holders; returns whether no local session holds it any more.
    pub(crate) fn remove(&self, text: &str, s: SessionId) -> bool {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(held) = st.held.get_mut(text) else {
            return false;
        };
        held.sessions.remove(&s);
        if !held.sessions.is_empty() {
            return false;
        }
        if let Some(held) = st.held.remove(text) {
            st.trie.remove(&held.pattern.segs, text);
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }

    /// Whether a local session holds `text`.
    pub(crate) fn holds(&self, text: &str) -> bool {
        !self.is_empty() && lock(&self.state).held.contains_key(text)
    }

    /// The local sessions holding a pattern that matches `topic`, each once.
    pub(crate) fn sessions_for(&self, topic: &str) -> Vec<Arc<SessionState>> {
        if self.is_empty() {
            return Vec::new();
        }
        let parts: Vec<&str> = topic.split('/').collect();
        let st = lock(&self.state);
        let mut texts = Vec::new();
        st.trie.walk(&parts, &mut texts);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for text in texts {
            if let Some(held) = st.held.get(text) {
                for (id, s) in &held.sessions {
                    if seen.insert(*id) {
                        out.push(s.clone());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text, 128).unwrap()
    }

    #[test]
    fn one_segment_rest_and_literals() {
        assert!(p("scores/*").matches("scores/live"));
        assert!(!p("scores/*").matches("scores/live/7"));
        assert!(!p("scores/*").matches("scores"));
        assert!(p("scores/**").matches("scores/live/7"));
        assert!(p("scores/**").matches("scores/live"));
        assert!(!p("scores/**").matches("scores"));
        assert!(!p("scores/**").matches("news/live"));
        assert!(p("*/live").matches("scores/live"));
        assert!(!p("*/live").matches("scores/dead"));
        assert!(p("**").matches("a"));
        assert!(p("a/*/c/**").matches("a/b/c/d/e"));
        assert!(!p("a/*/c/**").matches("a/b/c"));
    }

    #[test]
    fn malformed_patterns_are_refused_with_bad_pattern() {
        for bad in [
            "",
            "scores",
            "scores//*",
            "**/x",
            "a*/b",
            "a/b*",
            "a/***",
            "a/*/b/c/d/e/f/g/h",
            "a/ /*",
            "a/é/*",
        ] {
            let e = Pattern::parse(bad, 128).unwrap_err();
            assert_eq!(e.0, ErrorCode::BadPattern, "{bad:?}");
        }
        assert_eq!(
            Pattern::parse(&format!("{}/*", "a".repeat(200)), 128)
                .unwrap_err()
                .0,
            ErrorCode::BadPattern
        );
    }

    #[test]
    fn the_trie_finds_what_matches_and_forgets_what_is_removed() {
        let mut trie = Trie::default();
        let texts = ["scores/*", "scores/**", "*/live", "news/*", "a/*/c"];
        for t in texts {
            trie.insert(&p(t).segs, &Arc::from(t));
        }
        let found = |trie: &Trie, topic: &str| {
            let parts: Vec<&str> = topic.split('/').collect();
            let mut out = Vec::new();
            trie.walk(&parts, &mut out);
            let mut v: Vec<String> = out.into_iter().map(|t| t.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(
            found(&trie, "scores/live"),
            ["*/live", "scores/*", "scores/**"]
        );
        assert_eq!(found(&trie, "scores/live/7"), ["scores/**"]);
        assert_eq!(found(&trie, "a/b/c"), ["a/*/c"]);
        assert!(found(&trie, "weather").is_empty());
        // The walk agrees with `matches` for every pattern.
        for topic in [
            "scores/live",
            "scores/live/7",
            "a/b/c",
            "news/x",
            "x/live",
            "a/b",
        ] {
            let want: Vec<String> = texts
                .iter()
                .filter(|t| p(t).matches(topic))
                .map(|t| t.to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(found(&trie, topic), want, "{topic}");
        }
        for t in texts {
            trie.remove(&p(t).segs, t);
        }
        assert!(trie.lit.is_empty() && trie.one.is_none() && trie.end.is_empty());
    }
}
