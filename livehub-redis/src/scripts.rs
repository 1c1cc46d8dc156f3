//! The Lua scripts. Each touches the keys of one hash tag (one Redis Cluster slot) only.
//!
//! They are loaded (`SCRIPT LOAD`) on every connect, and called by hash (`EVALSHA`); a
//! `NOSCRIPT` answer (a Redis restarted or flushed since) loads them again and retries once.

use std::sync::LazyLock;

use redis::Script;

/// Publish: epoch, offset, bounded stream and channel message in one step.
pub(crate) static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/publish.lua")));

/// History and top of a topic (creating an empty stream if it has none).
pub(crate) static HISTORY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/history.lua")));

/// Adds or refreshes members of a presence scope.
pub(crate) static PRESENCE_ADD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_add.lua")));

/// Removes a member of a presence scope.
pub(crate) static PRESENCE_REMOVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_remove.lua")));

/// Removes and returns the expired members of a presence scope.
pub(crate) static PRESENCE_EXPIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_expire.lua")));

/// The presence scopes due for an expiry check.
pub(crate) static PRESENCE_DUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_due.lua")));

/// One page of a presence scope's members.
pub(crate) static PRESENCE_PAGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/presence_page.lua")));

/// Every script, to load them on connect.
pub(crate) fn all() -> [&'static Script; 7] {
    [
        &PUBLISH,
        &HISTORY,
        &PRESENCE_ADD,
        &PRESENCE_REMOVE,
        &PRESENCE_EXPIRE,
        &PRESENCE_DUE,
        &PRESENCE_PAGE,
    ]
}

/// An `EVALSHA` of `script` with `keys`, for a pipeline (arguments are added by the caller).
pub(crate) fn evalsha(script: &Script, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}
