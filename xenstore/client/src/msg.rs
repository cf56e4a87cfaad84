//! Owned messages over the `xenstore-wire` codec: the client keeps replies
//! and watch events past the decoder's buffer, so it copies them out.

use xenstore_wire::{Decoder as WireDecoder, MsgType, Reply};

use crate::error::{Result, XsClientError};

/// A whole message from xenstored (reply, error or watch event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Raw `XS_*` type.
    pub ty: u32,
    /// Request id (echoed by replies; 0 in watch events).
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// The payload, exactly `len` bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// True for an `XS_WATCH_EVENT`.
    #[must_use]
    pub fn is_watch_event(&self) -> bool {
        self.ty == MsgType::WatchEvent.as_u32()
    }

    /// Turns an `XS_ERROR` reply into its error, any other reply into its payload.
    ///
    /// # Errors
    /// [`XsClientError::Xenstore`] for an error reply,
    /// [`XsClientError::Protocol`] for an unknown type or error name.
    pub fn into_result(self) -> Result<Vec<u8>> {
        let hdr = xenstore_wire::Header {
            ty: self.ty,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
        };
        match Reply::parse(&hdr, &self.payload) {
            Ok(Reply::Error(e)) => Err(XsClientError::Xenstore(e)),
            Ok(_) => Ok(self.payload),
            Err(e) => Err(XsClientError::Protocol(e.to_string())),
        }
    }
}

/// Incremental decoder: feed it bytes as they arrive, take owned messages out.
#[derive(Debug, Default)]
pub struct Decoder {
    inner: WireDecoder,
}

impl Decoder {
    /// An empty decoder with Xen's payload limit.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for at least `min` more bytes: read into it, then [`Decoder::commit`].
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.inner.read_buf(min)
    }

    /// Records `n` bytes written into the last [`Decoder::read_buf`].
    pub fn commit(&mut self, n: usize) {
        self.inner.commit(n);
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.inner.push(bytes);
    }

    /// Bytes received but not yet returned as messages.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.inner.buffered()
    }

    /// The next whole message, if one has arrived.
    ///
    /// # Errors
    /// [`XsClientError::Protocol`] if a header announces an oversized
    /// payload; the stream cannot be resynchronised.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        match self.inner.next_packet() {
            Ok(Some((h, p))) => Ok(Some(Message {
                ty: h.ty,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload: p.to_vec(),
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(XsClientError::Protocol(e.to_string())),
        }
    }
}

/// The bytes before the first NUL (or all of them).
#[must_use]
pub fn first_string(payload: &[u8]) -> &[u8] {
    payload.split(|b| *b == 0).next().unwrap_or(payload)
}

/// Splits a list of NUL-terminated strings; a final unterminated string is
/// kept, a trailing terminator adds no empty entry.
#[must_use]
pub fn split_strings(payload: &[u8]) -> Vec<&[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|b| *b == 0).collect()
}

#[cfg(test)]
mod tests {
    use xenstore_wire::{Request, XsError};

    use super::*;

    fn packet(ty: MsgType, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small");
        let mut v = xenstore_wire::Header::new(ty, req_id, 0, len)
            .encode()
            .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn test_decoder_split_feed_yields_whole_messages() {
        let mut all = packet(MsgType::Read, 1, b"hello");
        all.extend(packet(MsgType::WatchEvent, 0, b"/p\0tok\0"));
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in all.chunks(5) {
            d.feed(chunk);
            while let Some(m) = d.next_message().expect("valid") {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload, b"hello");
        assert!(got[1].is_watch_event());
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn test_decoder_oversized_header_is_protocol_error() {
        let mut hdr = Vec::new();
        Request::Read { path: "/a" }
            .encode(1, 0, &mut hdr)
            .expect("small");
        hdr[12..16].copy_from_slice(&5000u32.to_le_bytes());
        let mut d = Decoder::new();
        d.feed(&hdr);
        assert!(matches!(d.next_message(), Err(XsClientError::Protocol(_))));
    }

    #[test]
    fn test_into_result_error_reply_gives_error() {
        let m = Message {
            ty: MsgType::Error.as_u32(),
            req_id: 0,
            tx_id: 0,
            payload: b"EACCES\0".to_vec(),
        };
        assert!(m.into_result().expect_err("error").is(XsError::Eacces));
    }

    #[test]
    fn test_into_result_unknown_error_name_is_protocol_error() {
        let m = Message {
            ty: MsgType::Error.as_u32(),
            req_id: 0,
            tx_id: 0,
            payload: b"EWHAT\0".to_vec(),
        };
        assert!(matches!(m.into_result(), Err(XsClientError::Protocol(_))));
    }

    #[test]
    fn test_split_strings_edge_cases() {
        assert!(split_strings(b"").is_empty());
        assert!(split_strings(b"\0").is_empty());
        assert_eq!(split_strings(b"a\0b\0"), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(split_strings(b"a\0b"), vec![&b"a"[..], &b"b"[..]]);
    }
}
