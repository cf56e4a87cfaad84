//! Watch events.

use crate::error::{Result, XsClientError};
use crate::msg::split_strings;

/// One `XS_WATCH_EVENT`: the path that changed and the token of the watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The node that changed (or `@introduceDomain`/`@releaseDomain`).
    pub path: String,
    /// The token given to `watch`.
    pub token: String,
}

impl WatchEvent {
    /// Parses an event payload: `path\0token\0`.
    ///
    /// # Errors
    /// [`XsClientError::Protocol`] if the token is missing.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        let parts = split_strings(payload);
        match parts.as_slice() {
            [path, token, ..] => Ok(Self {
                path: String::from_utf8_lossy(path).into_owned(),
                token: String::from_utf8_lossy(token).into_owned(),
            }),
            _ => Err(XsClientError::Protocol(
                "watch event without path and token".into(),
            )),
        }
    }
}

/// True when `child` is `parent` or below it (`xs_path_is_subpath`).
#[must_use]
pub fn is_subpath(parent: &str, child: &str) -> bool {
    child
        .strip_prefix(parent)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_watch_event_parse_path_and_token() {
        let e = WatchEvent::parse(b"/a/b\0tok\0").expect("valid");
        assert_eq!(
            e,
            WatchEvent {
                path: "/a/b".into(),
                token: "tok".into()
            }
        );
    }

    #[test]
    fn test_watch_event_parse_missing_token_fails() {
        assert!(WatchEvent::parse(b"/a/b\0").is_err());
    }

    #[test]
    fn test_is_subpath_boundaries() {
        assert!(is_subpath("/a", "/a"));
        assert!(is_subpath("/a", "/a/b"));
        assert!(!is_subpath("/a", "/ab"));
        assert!(!is_subpath("/a/b", "/a"));
    }
}
