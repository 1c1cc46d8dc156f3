//! Session secrets: their text form, and comparing them in constant time.
//!
//! SSE command tokens and long-polling session secrets are random bytes from the OS, sent to
//! the client as lowercase hex. A presented secret is decoded (an attacker learns nothing from
//! how long decoding their own input takes), then compared with the real one by
//! [`subtle`]'s constant-time equality, so the time an answer takes says nothing about how
//! many leading bytes were right.

use subtle::ConstantTimeEq;

/// The secret's text form: lowercase hex, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Decodes exactly `N` bytes of hex (either case); `None` for any other length or a character
/// that is not a hex digit.
pub fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Whether `presented` (hex, as a client sends it) is the secret `expected`, compared in
/// constant time.
pub fn matches<const N: usize>(expected: &[u8; N], presented: &[u8]) -> bool {
    match unhex::<N>(presented) {
        Some(p) => bool::from(expected.ct_eq(&p)),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_through_hex_and_are_compared_exactly() {
        let a = [0xab_u8; 16];
        let mut b = a;
        b[15] ^= 1;
        let text = hex(&a);
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(unhex::<16>(text.as_bytes()), Some(a));
        assert!(matches(&a, text.as_bytes()));
        assert!(matches(&a, text.to_uppercase().as_bytes()));
        assert!(!matches(&a, hex(&b).as_bytes()));
        assert!(!matches(&a, &text.as_bytes()[..31]));
        assert!(!matches(&a, b""));
        assert!(!matches(&a, "g".repeat(32).as_bytes()));
        // A sign or a space is not a digit (from_str_radix would take a leading `+`).
        let mut plus = text.clone().into_bytes();
        plus[0] = b'+';
        assert!(!matches(&a, &plus));
    }
}
