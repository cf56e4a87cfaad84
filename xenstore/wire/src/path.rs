//! Node names: validation, canonicalization and the tree helpers.
//!
//! Rules (Xen's `is_valid_nodename`): a name is absolute (starts with `/`)
//! or, where allowed, special (starts with `@`, for watches); it does not
//! end in `/` unless it is `/`, has no `//`, and uses only
//! `[A-Za-z0-9-/_@]`. An absolute name is at most [`XENSTORE_ABS_PATH_MAX`]
//! bytes and its part after a `/local/domain/<domid>/` prefix (the whole name
//! when there is no such prefix) at most [`XENSTORE_REL_PATH_MAX`] bytes.
//! A relative name is relative to the connection's home
//! (`/local/domain/<domid>`) and is checked once made absolute
//! ([`canonicalize`]).

use alloc::string::String;
use core::fmt::Write;

use crate::{DomId, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};

/// The special path watched for domain introductions.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special path watched for domain releases.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Why a node name is invalid (every case is `EINVAL` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The name is empty.
    #[error("the node name is empty")]
    Empty,
    /// The name starts with neither `/` nor (where allowed) `@`.
    #[error("the node name is not absolute")]
    NotAbsolute,
    /// The name ends in `/`.
    #[error("the node name ends in '/'")]
    TrailingSlash,
    /// The name contains `//`.
    #[error("the node name contains '//'")]
    DoubleSlash,
    /// The name contains a byte outside `[A-Za-z0-9-/_@]`.
    #[error("the node name contains the invalid byte {0:#04x}")]
    BadChar(u8),
    /// The name is too long.
    #[error("the node name is {len} bytes long, more than {max}")]
    TooLong {
        /// The offending length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The kind of a valid node name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Starts with `/`.
    Absolute,
    /// Starts with `@` (watches only).
    Special,
}

/// Whether `b` may appear in a node name.
#[inline]
#[must_use]
pub fn is_valid_char(b: u8) -> bool {
    VALID_CHARS[usize::from(b)]
}

/// [`is_valid_char`] as a table: path validation runs on every request.
const VALID_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@');
        i += 1;
    }
    t
};

/// The length of a `/local/domain/<domid>/` prefix of `path` (0 if none).
#[must_use]
pub fn local_domain_prefix_len(path: &str) -> usize {
    const P: &str = "/local/domain/";
    let Some(rest) = path.strip_prefix(P) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    // sscanf("%5u/") semantics: 1 to 5 digits, then a slash.
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    P.len() + digits + 1
}

/// Validates an absolute or special name with the default length limits.
pub fn validate(path: &str, allow_special: bool) -> Result<PathKind, PathError> {
    validate_with_limit(path, allow_special, XENSTORE_REL_PATH_MAX)
}

/// Validates an absolute or special name, with `rel_max` as the limit of
/// the part after `/local/domain/<domid>/` (the `path-max` quota).
pub fn validate_with_limit(
    path: &str,
    allow_special: bool,
    rel_max: usize,
) -> Result<PathKind, PathError> {
    let b = path.as_bytes();
    let kind = match b.first() {
        None => return Err(PathError::Empty),
        Some(b'/') => PathKind::Absolute,
        Some(b'@') if allow_special => PathKind::Special,
        Some(_) => return Err(PathError::NotAbsolute),
    };
    if b.len() > 1 && b[b.len() - 1] == b'/' {
        return Err(PathError::TrailingSlash);
    }
    if b.len() > XENSTORE_ABS_PATH_MAX {
        return Err(PathError::TooLong {
            len: b.len(),
            max: XENSTORE_ABS_PATH_MAX,
        });
    }
    let rel = b.len() - local_domain_prefix_len(path);
    if rel > rel_max {
        return Err(PathError::TooLong {
            len: rel,
            max: rel_max,
        });
    }
    let mut prev_slash = false;
    for &c in b {
        if !is_valid_char(c) {
            return Err(PathError::BadChar(c));
        }
        let slash = c == b'/';
        if slash && prev_slash {
            return Err(PathError::DoubleSlash);
        }
        prev_slash = slash;
    }
    Ok(kind)
}

/// Whether `path` is relative (neither `/...` nor `@...`).
#[must_use]
pub fn is_relative(path: &str) -> bool {
    !(path.starts_with('/') || path.starts_with('@'))
}

/// The home path of a domain: `/local/domain/<domid>`.
#[must_use]
pub fn domain_path(domid: DomId) -> String {
    let mut s = String::with_capacity(20);
    // Writing to a String cannot fail.
    let _ = write!(s, "/local/domain/{domid}");
    s
}

/// Writes into `out` the absolute form of `path`: unchanged when absolute or
/// special, else `home/path`. Does not validate.
pub fn canonicalize(home: &str, path: &str, out: &mut String) {
    out.clear();
    if is_relative(path) {
        out.reserve(home.len() + 1 + path.len());
        out.push_str(home);
        out.push('/');
    }
    out.push_str(path);
}

/// The parent of an absolute name (`None` for `/` and special names).
#[must_use]
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" || !path.starts_with('/') {
        return None;
    }
    let i = path.rfind('/')?;
    Some(if i == 0 { "/" } else { &path[..i] })
}

/// The last component of an absolute name (`""` for `/`).
#[must_use]
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Whether `path` is `ancestor` or below it (`/a/b` is below `/a`, `/ab`
/// is not; everything absolute is below `/`).
#[must_use]
pub fn is_child_or_self(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(ancestor) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// The number of components of an absolute name (`/` has 0, `/a/b` has 2).
#[must_use]
pub fn depth(path: &str) -> usize {
    if path == "/" {
        0
    } else {
        path.bytes().filter(|&b| b == b'/').count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn test_validate_good_paths_ok() {
        for p in ["/", "/a", "/local/domain/0/x-y_z@1", "/A9"] {
            assert_eq!(validate(p, false), Ok(PathKind::Absolute), "{p}");
        }
        assert_eq!(validate("@introduceDomain", true), Ok(PathKind::Special));
    }

    #[test]
    fn test_validate_bad_paths_fail() {
        assert_eq!(validate("", false), Err(PathError::Empty));
        assert_eq!(validate("a", false), Err(PathError::NotAbsolute));
        assert_eq!(validate("@x", false), Err(PathError::NotAbsolute));
        assert_eq!(validate("/a/", false), Err(PathError::TrailingSlash));
        assert_eq!(validate("/a//b", false), Err(PathError::DoubleSlash));
        assert_eq!(validate("/a b", false), Err(PathError::BadChar(b' ')));
        assert_eq!(validate("/a.b", false), Err(PathError::BadChar(b'.')));
    }

    #[test]
    fn test_validate_lengths_abs_3072_rel_2048() {
        let long = "/".to_string() + &"a".repeat(2047);
        assert!(validate(&long, false).is_ok());
        let longer = "/".to_string() + &"a".repeat(2048);
        assert!(matches!(
            validate(&longer, false),
            Err(PathError::TooLong { .. })
        ));
        let local = "/local/domain/7/".to_string() + &"a".repeat(2048);
        assert!(validate(&local, false).is_ok());
        let huge = "/local/domain/7/".to_string() + &"a/".repeat(1600) + "a";
        assert!(matches!(
            validate(&huge, false),
            Err(PathError::TooLong { max: 3072, .. })
        ));
    }

    #[test]
    fn test_local_domain_prefix_len_parses_domid() {
        assert_eq!(local_domain_prefix_len("/local/domain/12/x"), 17);
        assert_eq!(local_domain_prefix_len("/local/domain/12"), 0);
        assert_eq!(local_domain_prefix_len("/local/domain/x/y"), 0);
        assert_eq!(local_domain_prefix_len("/local/domain/123456/y"), 0);
    }

    #[test]
    fn test_canonicalize_relative_prefixes_home() {
        let mut s = String::new();
        canonicalize("/local/domain/3", "device/vif", &mut s);
        assert_eq!(s, "/local/domain/3/device/vif");
        canonicalize("/local/domain/3", "/abs", &mut s);
        assert_eq!(s, "/abs");
        canonicalize("/local/domain/3", "@releaseDomain", &mut s);
        assert_eq!(s, "@releaseDomain");
    }

    #[test]
    fn test_tree_helpers_parent_basename_child_depth() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert!(is_child_or_self("/a/b", "/a"));
        assert!(is_child_or_self("/a", "/a"));
        assert!(!is_child_or_self("/ab", "/a"));
        assert!(is_child_or_self("/ab", "/"));
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/a/b"), 2);
        assert_eq!(domain_path(5), "/local/domain/5");
    }
}
