//! Encoding of requests (the `xenstore-wire` [`Request`]) and the pure
//! parsers of the replies the client interprets.

pub use xenstore_wire::Request;

use crate::error::{Result, XsClientError};
use crate::msg::{first_string, split_strings};

/// Encodes `req` as a whole packet.
///
/// # Errors
/// [`XsClientError::RequestTooLong`] over the payload limit.
pub fn encode(req: &Request<'_>, req_id: u32, tx_id: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    req.encode(req_id, tx_id, &mut out)
        .map_err(|_| XsClientError::RequestTooLong)?;
    Ok(out)
}

/// Refuses a string argument with an embedded NUL, which would shift every
/// following argument of the request.
///
/// # Errors
/// [`XsClientError::InvalidArgument`].
pub fn check_arg(s: &str) -> Result<&str> {
    if s.as_bytes().contains(&0) {
        return Err(XsClientError::InvalidArgument(format!(
            "{s:?} contains a NUL byte"
        )));
    }
    Ok(s)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Children names of a `DIRECTORY` reply.
#[must_use]
pub fn parse_directory(payload: &[u8]) -> Vec<String> {
    split_strings(payload).into_iter().map(lossy).collect()
}

/// One `DIRECTORY_PART` reply: the node's generation, the children in this
/// chunk and whether it was the last chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryPart {
    /// Generation count of the node (restart when it changes).
    pub generation: String,
    /// Children in this chunk.
    pub children: Vec<String>,
    /// Bytes of child names (with terminators) in this chunk: the next offset
    /// is the current one plus this.
    pub consumed: u32,
    /// True when this chunk ends the list.
    pub last: bool,
}

/// Parses a `DIRECTORY_PART` reply: `gen\0` then NUL-terminated names, the
/// last chunk ending with an extra empty string.
///
/// # Errors
/// [`XsClientError::Protocol`] if the generation is missing.
pub fn parse_directory_part(payload: &[u8]) -> Result<DirectoryPart> {
    let Some(gen_end) = payload.iter().position(|b| *b == 0) else {
        return Err(XsClientError::Protocol(
            "DIRECTORY_PART reply without generation".into(),
        ));
    };
    let generation = lossy(&payload[..gen_end]);
    let body = &payload[gen_end + 1..];
    // The list is complete when the body is just the terminating empty string
    // or ends with two NULs (last name's terminator plus the empty string).
    let last = body.len() <= 1 || body.ends_with(&[0, 0]);
    let names = if last {
        body.strip_suffix(&[0]).unwrap_or(body)
    } else {
        body
    };
    let children = split_strings(names).into_iter().map(lossy).collect();
    let consumed = u32::try_from(names.len())
        .map_err(|_| XsClientError::Protocol("DIRECTORY_PART chunk too long".into()))?;
    Ok(DirectoryPart {
        generation,
        children,
        consumed,
        last,
    })
}

/// The transaction id of a `TRANSACTION_START` reply.
///
/// # Errors
/// [`XsClientError::Protocol`] if it is not a number.
pub fn parse_u32(payload: &[u8]) -> Result<u32> {
    let s = first_string(payload);
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| XsClientError::Protocol(format!("expected a number, got {:?}", lossy(s))))
}

/// The first string of a reply (`GET_DOMAIN_PATH`).
#[must_use]
pub fn parse_string(payload: &[u8]) -> String {
    lossy(first_string(payload))
}

/// `IS_DOMAIN_INTRODUCED`: anything but `F` is true (libxenstore's rule).
#[must_use]
pub fn parse_bool(payload: &[u8]) -> bool {
    first_string(payload) != b"F"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_encode_write_has_no_value_terminator() {
        let m = encode(
            &Request::Write {
                path: "/a",
                value: b"v",
            },
            7,
            3,
        )
        .expect("ok");
        assert_eq!(&m[..16], &[11, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(&m[16..], b"/a\0v");
    }

    #[test]
    fn test_encode_oversized_payload_fails() {
        let big = vec![b'x'; 5000];
        let r = encode(
            &Request::Write {
                path: "/a",
                value: &big,
            },
            1,
            0,
        );
        assert!(matches!(r, Err(XsClientError::RequestTooLong)));
    }

    #[test]
    fn test_check_arg_embedded_nul_fails() {
        assert!(check_arg("a\0b").is_err());
        assert_eq!(check_arg("ab").expect("ok"), "ab");
    }

    #[test]
    fn test_parse_directory_part_middle_and_last_chunks() {
        let mid = parse_directory_part(b"7\0a\0bb\0").expect("ok");
        assert_eq!(mid.children, vec!["a", "bb"]);
        assert_eq!(mid.consumed, 5);
        assert!(!mid.last);
        let last = parse_directory_part(b"7\0c\0\0").expect("ok");
        assert_eq!(last.children, vec!["c"]);
        assert!(last.last);
        let empty = parse_directory_part(b"7\0\0").expect("ok");
        assert!(empty.children.is_empty());
        assert!(empty.last);
    }

    #[test]
    fn test_parse_directory_part_no_generation_fails() {
        assert!(parse_directory_part(b"abc").is_err());
    }

    #[test]
    fn test_parse_u32_garbage_fails() {
        assert_eq!(parse_u32(b"42\0").expect("ok"), 42);
        assert!(parse_u32(b"x\0").is_err());
    }
}
