//! The live streams of one service, by session id, for the command endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use hub_core::{Session, SessionId};
use hub_http::seq::Sequencer;

use crate::body::lock;
use crate::id::Cursor;

/// Bytes of randomness in a command token.
pub(crate) const TOKEN_BYTES: usize = 32;

/// One open stream. Holds the session weakly: the stream's body owns it, so a gone client ends
/// the session even if this entry were somehow left behind.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) token: [u8; TOKEN_BYTES],
    /// The stream's user id: every command must authenticate as this user.
    pub(crate) user: Arc<str>,
    pub(crate) session: Weak<Session>,
    pub(crate) cursor: Arc<Mutex<Cursor>>,
    /// The stream's command numbering (one entry: the last numbered command and its answer).
    pub(crate) commands: Arc<Sequencer>,
}

/// One entry per open stream (so it is bounded by the hub's session limits), removed when the
/// stream's body is dropped.
#[derive(Default)]
pub(crate) struct Registry {
    streams: Mutex<HashMap<SessionId, Entry>>,
}

impl Registry {
    pub(crate) fn insert(self: &Arc<Self>, id: SessionId, entry: Entry) -> Registered {
        lock(&self.streams).insert(id, entry);
        Registered {
            registry: self.clone(),
            id,
        }
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<Entry> {
        lock(&self.streams).get(&id).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.streams).len()
    }
}

/// Removes its stream's entry when dropped (with the body).
pub(crate) struct Registered {
    registry: Arc<Registry>,
    id: SessionId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry.streams).remove(&self.id);
    }
}

/// A fresh secret from the OS's random source; `None` if it has none.
pub(crate) fn new_token() -> Option<[u8; TOKEN_BYTES]> {
    let mut buf = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut buf).ok()?;
    Some(buf)
}

/// The token's text form (lowercase hex).
pub(crate) fn token_text(token: &[u8; TOKEN_BYTES]) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares a presented token with the real one without an early exit on the first difference.
pub(crate) fn token_matches(token: &[u8; TOKEN_BYTES], presented: &[u8]) -> bool {
    let expected = token_text(token);
    if presented.len() != expected.len() {
        return false;
    }
    expected
        .bytes()
        .zip(presented.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
        == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_exactly() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        let text = token_text(&a);
        assert_eq!(text.len(), 64);
        assert!(token_matches(&a, text.as_bytes()));
        assert!(token_matches(&a, text.to_uppercase().as_bytes()));
        assert!(!token_matches(&a, token_text(&b).as_bytes()));
        assert!(!token_matches(&a, &text.as_bytes()[..63]));
        assert!(!token_matches(&a, b""));
    }
}
