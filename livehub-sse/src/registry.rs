//! The live streams of one service, by session id, for the command endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use livehub_core::{Session, SessionId};
use livehub_http::seq::Sequencer;

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
