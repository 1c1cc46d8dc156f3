//! What a MessagePack value holds that JSON cannot show, found by walking its bytes (no tree,
//! no allocation): ext values, map keys that are not strings, floats that are not finite.

use crate::codec::MAX_DEPTH;

/// What [`scan`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// An ext value (timestamp or application type): no JSON form, and nothing the hub could
    /// pass on unaltered through its conversions.
    pub(crate) ext: bool,
    /// A map key that is not a string (JSON keys are strings).
    pub(crate) non_string_key: bool,
    /// NaN or an infinity (JSON has no such numbers).
    pub(crate) non_finite: bool,
}

impl Shape {
    /// Why a value of this shape cannot be shown as JSON, if it cannot.
    pub(crate) fn json_problem(&self) -> Option<&'static str> {
        if self.ext {
            Some("a MessagePack ext value has no JSON form")
        } else if self.non_string_key {
            Some("a map with a key that is not a string has no JSON form")
        } else if self.non_finite {
            Some("NaN and infinities have no JSON form")
        } else {
            None
        }
    }
}

/// Walks the MessagePack values in `bytes` (one or more, back to back) and says what they
/// hold. `Err` for bytes that are not MessagePack (truncated, a reserved marker, too deep).
pub(crate) fn scan(bytes: &[u8]) -> Result<Shape, ()> {
    let mut shape = Shape::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        value(&mut rest, 0, false, &mut shape)?;
    }
    Ok(shape)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], ()> {
    if rest.len() < n {
        return Err(());
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn uint(rest: &mut &[u8], n: usize) -> Result<usize, ()> {
    let b = take(rest, n)?;
    let mut v: u64 = 0;
    for &x in b {
        v = (v << 8) | u64::from(x);
    }
    usize::try_from(v).map_err(|_| ())
}

fn value(rest: &mut &[u8], depth: usize, key: bool, shape: &mut Shape) -> Result<(), ()> {
    if depth > MAX_DEPTH {
        return Err(());
    }
    let m = take(rest, 1)?[0];
    let is_str = matches!(m, 0xa0..=0xbf | 0xd9..=0xdb);
    if key && !is_str {
        shape.non_string_key = true;
    }
    match m {
        // positive fixint, negative fixint, nil, false, true
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {}
        // fixmap
        0x80..=0x8f => map(rest, usize::from(m & 0x0f), depth, shape)?,
        // fixarray
        0x90..=0x9f => array(rest, usize::from(m & 0x0f), depth, shape)?,
        // fixstr
        0xa0..=0xbf => {
            take(rest, usize::from(m & 0x1f))?;
        }
        0xc1 => return Err(()),
        // bin 8/16/32, str 8/16/32
        0xc4 | 0xd9 => skip_sized(rest, 1)?,
        0xc5 | 0xda => skip_sized(rest, 2)?,
        0xc6 | 0xdb => skip_sized(rest, 4)?,
        // ext 8/16/32: a length, a type byte, the data
        0xc7..=0xc9 => {
            let n = uint(rest, 1 << (m - 0xc7))?;
            take(rest, n + 1)?;
            shape.ext = true;
        }
        // float 32
        0xca => {
            let b = take(rest, 4)?;
            if !f32::from_be_bytes([b[0], b[1], b[2], b[3]]).is_finite() {
                shape.non_finite = true;
            }
        }
        // float 64
        0xcb => {
            let b = take(rest, 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            if !f64::from_be_bytes(a).is_finite() {
                shape.non_finite = true;
            }
        }
        // uint 8/16/32/64, int 8/16/32/64
        0xcc | 0xd0 => {
            take(rest, 1)?;
        }
        0xcd | 0xd1 => {
            take(rest, 2)?;
        }
        0xce | 0xd2 => {
            take(rest, 4)?;
        }
        0xcf | 0xd3 => {
            take(rest, 8)?;
        }
        // fixext 1/2/4/8/16: a type byte and the data
        0xd4..=0xd8 => {
            take(rest, 1 + (1 << (m - 0xd4)))?;
            shape.ext = true;
        }
        // array 16/32
        0xdc => {
            let n = uint(rest, 2)?;
            array(rest, n, depth, shape)?;
        }
        0xdd => {
            let n = uint(rest, 4)?;
            array(rest, n, depth, shape)?;
        }
        // map 16/32
        0xde => {
            let n = uint(rest, 2)?;
            map(rest, n, depth, shape)?;
        }
        0xdf => {
            let n = uint(rest, 4)?;
            map(rest, n, depth, shape)?;
        }
    }
    Ok(())
}

fn skip_sized(rest: &mut &[u8], len_bytes: usize) -> Result<(), ()> {
    let n = uint(rest, len_bytes)?;
    take(rest, n).map(|_| ())
}

fn array(rest: &mut &[u8], n: usize, depth: usize, shape: &mut Shape) -> Result<(), ()> {
    // Each element is at least one byte: a count beyond what is left is a lie.
    if n > rest.len() {
        return Err(());
    }
    for _ in 0..n {
        value(rest, depth + 1, false, shape)?;
    }
    Ok(())
}

fn map(rest: &mut &[u8], n: usize, depth: usize, shape: &mut Shape) -> Result<(), ()> {
    if n > rest.len() / 2 {
        return Err(());
    }
    for _ in 0..n {
        value(rest, depth + 1, true, shape)?;
        value(rest, depth + 1, false, shape)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(v: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn plain_values_have_a_json_form() {
        let v = serde_json::json!({"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": "d"});
        assert_eq!(scan(&mp(&v)).unwrap(), Shape::default());
    }

    #[test]
    fn ext_keys_and_non_finite_floats_are_found() {
        // {1: "a"}
        let s = scan(&[0x81, 0x01, 0xa1, b'a']).unwrap();
        assert!(s.non_string_key && !s.ext && !s.non_finite);
        // [fixext1 type 5 data 7]
        let s = scan(&[0x91, 0xd4, 0x05, 0x07]).unwrap();
        assert!(s.ext);
        // a timestamp-like ext 8
        let s = scan(&[0xc7, 0x02, 0xff, 0x00, 0x00]).unwrap();
        assert!(s.ext);
        // NaN as float 64 and infinity as float 32
        let mut nan = vec![0x92, 0xcb];
        nan.extend(f64::NAN.to_be_bytes());
        nan.push(0xca);
        nan.extend(f32::INFINITY.to_be_bytes());
        assert!(scan(&nan).unwrap().non_finite);
        // bin as a key
        assert!(
            scan(&[0x81, 0xc4, 0x01, 0x00, 0x01])
                .unwrap()
                .non_string_key
        );
    }

    #[test]
    fn truncated_reserved_and_lying_input_is_refused() {
        assert!(scan(&[0xc1]).is_err());
        assert!(scan(&[0xa5, b'a']).is_err());
        assert!(scan(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(scan(&[0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(scan(&[0xcb, 0x00]).is_err());
        let deep = vec![0x91; MAX_DEPTH + 5];
        assert!(scan(&deep).is_err());
    }
}
