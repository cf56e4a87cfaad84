//! Quoting of possibly-binary values, byte for byte as Xen's `xenstore`
//! client prints (`sanitise_value`) and parses (`unsanitise_value`) them.

use std::fmt::Write as _;

/// Printable ASCII except backslash stays; `\t \n \r \\` get their escapes;
/// bytes below 8 become three-digit octal (`\001`), other bytes `\xNN`.
#[must_use]
pub fn sanitise(val: &[u8]) -> String {
    let mut out = String::with_capacity(val.len());
    for &c in val {
        match c {
            b' '..=b'~' if c != b'\\' => out.push(char::from(c)),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\\' => out.push_str("\\\\"),
            0..=7 => {
                let _ = write!(out, "\\{c:03o}");
            }
            _ => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
    out
}

/// The inverse of [`sanitise`], with Xen's leniency: an unknown escape keeps
/// the letter, `\x` takes up to two hex digits, a digit 0-7 starts up to
/// three octal digits, and a lone trailing backslash gives a NUL byte.
#[must_use]
pub fn unsanitise(spec: &str) -> Vec<u8> {
    let b = spec.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = b.get(i) else {
            out.push(0);
            break;
        };
        i += 1;
        match e {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let digits = take_digits(&b[i..], 2, 16);
                if digits.0 == 0 {
                    out.push(b'x');
                } else {
                    out.push(truncate_to_byte(digits.1));
                    i += digits.0;
                }
            }
            b'0'..=b'7' => {
                i -= 1;
                let (n, v) = take_digits(&b[i..], 3, 8);
                out.push(truncate_to_byte(v));
                i += n;
            }
            other => out.push(other),
        }
    }
    out
}

/// Reads at most `max` digits of `radix`; returns how many and their value.
fn take_digits(b: &[u8], max: usize, radix: u32) -> (usize, u32) {
    let mut n = 0;
    let mut v: u32 = 0;
    for &c in b.iter().take(max) {
        let Some(d) = char::from(c).to_digit(radix) else {
            break;
        };
        v = v * radix + d;
        n += 1;
    }
    (n, v)
}

fn truncate_to_byte(v: u32) -> u8 {
    v.to_le_bytes()[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sanitise_control_and_high_bytes_escaped() {
        assert_eq!(sanitise(b"a b\t\n\r\\"), "a b\\t\\n\\r\\\\");
        assert_eq!(
            sanitise(&[0, 7, 8, 0x7f, 0xff]),
            "\\000\\007\\x08\\x7f\\xff"
        );
        assert_eq!(sanitise(b"x\"y"), "x\"y");
    }

    #[test]
    fn test_unsanitise_inverts_sanitise() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unsanitise(&sanitise(&all)), all);
    }

    #[test]
    fn test_unsanitise_lenient_forms() {
        assert_eq!(unsanitise("\\q"), b"q");
        assert_eq!(unsanitise("\\xzz"), b"xzz");
        assert_eq!(unsanitise("\\1x"), b"\x01x");
        assert_eq!(unsanitise("ab\\"), b"ab\0");
        assert_eq!(unsanitise("\\777"), b"\xff");
    }
}
