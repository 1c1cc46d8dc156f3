//! Names clients give: topics, rooms and events.

use crate::error::ErrorCode;
use crate::streams::OpError;

/// Topic and room names: 1..=max bytes of `A-Z a-z 0-9 - _ . : / @ =`.
pub(crate) fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@=".contains(&b))
}

pub(crate) fn check_name(name: &str, max: usize, code: ErrorCode) -> Result<(), OpError> {
    if valid_name(name, max) {
        Ok(())
    } else {
        let what = if code == ErrorCode::BadRoom {
            "room"
        } else {
            "topic"
        };
        Err((
            code,
            format!("{what} name must be 1 to {max} bytes of A-Z a-z 0-9 - _ . : / @ ="),
        ))
    }
}

/// Event names: 1..=max bytes, no control characters.
pub(crate) fn valid_event(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && !name.chars().any(char::is_control)
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Message keys: 1..=max bytes, no control characters.
pub(crate) fn valid_key(key: &str, max: usize) -> bool {
    !key.is_empty() && key.len() <= max && !key.chars().any(char::is_control)
}
