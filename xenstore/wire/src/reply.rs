//! Client side: what came back from the server.

use crate::msg::{Header, MsgType};
use crate::{strings, XsError};

/// Why a server packet is not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The type is not a valid message type.
    #[error("reply type {0} is not a xenstore message type")]
    UnknownType(u32),
    /// An `XS_ERROR` names no known error.
    #[error("the error reply names no known error")]
    UnknownError,
    /// A watch event lacks its path or token, or the path is not UTF-8.
    #[error("the watch event is malformed")]
    BadWatchEvent,
}

/// A packet from the server, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `XS_ERROR`.
    Error(XsError),
    /// `XS_WATCH_EVENT`: `<path>|<token>|`.
    WatchEvent {
        /// The path that changed (relative if the watch was).
        path: &'a str,
        /// The watch's token.
        token: &'a [u8],
    },
    /// Any other reply: the request's type and the raw payload (`OK\0` for
    /// acknowledgements; see [`Reply::is_ok`]).
    Data(MsgType, &'a [u8]),
}

impl<'a> Reply<'a> {
    /// Classifies a server packet.
    pub fn parse(hdr: &Header, payload: &'a [u8]) -> Result<Reply<'a>, ReplyError> {
        match hdr.msg_type() {
            None => Err(ReplyError::UnknownType(hdr.ty)),
            Some(MsgType::Error) => {
                let name = payload.split(|&b| b == 0).next().unwrap_or(&[]);
                let name = core::str::from_utf8(name).map_err(|_| ReplyError::UnknownError)?;
                XsError::from_name(name)
                    .map(Reply::Error)
                    .ok_or(ReplyError::UnknownError)
            }
            Some(MsgType::WatchEvent) => {
                let mut it = strings(payload);
                let (Some(path), Some(token)) = (it.next(), it.next()) else {
                    return Err(ReplyError::BadWatchEvent);
                };
                let path = core::str::from_utf8(path).map_err(|_| ReplyError::BadWatchEvent)?;
                Ok(Reply::WatchEvent { path, token })
            }
            Some(t) => Ok(Reply::Data(t, payload)),
        }
    }

    /// Whether this is an `OK\0` acknowledgement.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Data(_, p) if *p == crate::OK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reply_parse_error_watch_data() {
        let h = Header::new(MsgType::Error, 1, 0, 7);
        assert_eq!(
            Reply::parse(&h, b"EAGAIN\0"),
            Ok(Reply::Error(XsError::Eagain))
        );
        let h = Header::new(MsgType::WatchEvent, 0, 0, 5);
        assert_eq!(
            Reply::parse(&h, b"/a\0t\0"),
            Ok(Reply::WatchEvent {
                path: "/a",
                token: b"t"
            })
        );
        let h = Header::new(MsgType::Write, 0, 0, 3);
        assert!(Reply::parse(&h, b"OK\0").unwrap().is_ok());
    }

    #[test]
    fn test_reply_parse_bad_error_name_fails() {
        let h = Header::new(MsgType::Error, 1, 0, 4);
        assert_eq!(Reply::parse(&h, b"EXX\0"), Err(ReplyError::UnknownError));
    }
}
