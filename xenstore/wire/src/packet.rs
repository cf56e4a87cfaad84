//! Framing: the incremental [`Decoder`] and the in-place [`PacketWriter`].

use alloc::vec::Vec;

use crate::msg::{Header, MsgType};
use crate::{XsError, XENSTORE_PAYLOAD_MAX};

/// Why the byte stream cannot be decoded any further (the connection must be
/// dropped: Xen's `bad_client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces a payload above the limit.
    #[error("the packet announces a {len}-byte payload, more than the {max}-byte limit")]
    Oversized {
        /// The announced length.
        len: u32,
        /// The limit.
        max: usize,
    },
}

/// Accumulates bytes in chunks and yields complete packets.
///
/// Feed it with [`Decoder::push`], or read straight into
/// [`Decoder::read_buf`] and [`Decoder::commit`]; take packets with
/// [`Decoder::next_packet`]. The buffer is reused: decoding allocates only
/// when a packet is larger than any seen before.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// First unconsumed byte.
    start: usize,
    /// End of the received bytes.
    end: usize,
    /// Size of the packet last returned, consumed on the next call.
    pending: usize,
    max_payload: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with Xen's limit ([`XENSTORE_PAYLOAD_MAX`]).
    #[must_use]
    pub fn new() -> Decoder {
        Self::with_max_payload(XENSTORE_PAYLOAD_MAX)
    }

    /// A decoder that rejects payloads above `max_payload`.
    #[must_use]
    pub fn with_max_payload(max_payload: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            pending: 0,
            max_payload,
        }
    }

    fn consume_pending(&mut self) {
        self.start += self.pending;
        self.pending = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for at least `min` more bytes: read into it, then call
    /// [`Decoder::commit`] with how many bytes were read.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.consume_pending();
        if self.start > 0 && self.buf.len() - self.end < min {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < min {
            self.buf.resize(self.end + min, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into the last [`Decoder::read_buf`].
    pub fn commit(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Appends `data`.
    pub fn push(&mut self, data: &[u8]) {
        let b = self.read_buf(data.len());
        b[..data.len()].copy_from_slice(data);
        self.commit(data.len());
    }

    /// Bytes received and not yet returned in a packet.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.end - self.start - self.pending
    }

    /// The next complete packet, `None` if more bytes are needed, or an
    /// error if the next header announces an oversized payload (checked as
    /// soon as the header is complete, before the payload arrives).
    pub fn next_packet(&mut self) -> Result<Option<(Header, &[u8])>, DecodeError> {
        self.consume_pending();
        let avail = &self.buf[self.start..self.end];
        if avail.len() < Header::SIZE {
            return Ok(None);
        }
        let hdr = Header::decode(avail).expect("at least Header::SIZE bytes are available");
        let len = hdr.len as usize;
        if len > self.max_payload {
            return Err(DecodeError::Oversized {
                len: hdr.len,
                max: self.max_payload,
            });
        }
        let total = Header::SIZE + len;
        if avail.len() < total {
            return Ok(None);
        }
        self.pending = total;
        Ok(Some((hdr, &avail[Header::SIZE..total])))
    }
}

/// Why a packet could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriterError {
    /// The payload exceeds the limit (a server replies `E2BIG` instead).
    #[error("the payload of {len} bytes exceeds the {max}-byte limit")]
    TooBig {
        /// The payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Builds one packet at the end of an output buffer: the header is written
/// first with a zero length, the payload appended, and the length patched by
/// [`PacketWriter::finish`]. Dropping the writer without finishing removes
/// the partial packet.
#[derive(Debug)]
pub struct PacketWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    done: bool,
}

impl<'a> PacketWriter<'a> {
    /// Starts a packet of type `ty`.
    pub fn begin(out: &'a mut Vec<u8>, ty: MsgType, req_id: u32, tx_id: u32) -> PacketWriter<'a> {
        Self::begin_raw(out, ty.as_u32(), req_id, tx_id)
    }

    /// Starts a packet with a raw type value.
    pub fn begin_raw(out: &'a mut Vec<u8>, ty: u32, req_id: u32, tx_id: u32) -> PacketWriter<'a> {
        let start = out.len();
        let h = Header {
            ty,
            req_id,
            tx_id,
            len: 0,
        };
        out.extend_from_slice(&h.encode());
        PacketWriter {
            out,
            start,
            done: false,
        }
    }

    /// Appends bytes to the payload.
    pub fn push(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Appends bytes and a NUL.
    pub fn push_str0(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
        self.out.push(0);
    }

    /// Appends a decimal number and a NUL.
    pub fn push_u64_0(&mut self, v: u64) {
        crate::perms::push_decimal(self.out, v);
        self.out.push(0);
    }

    /// The payload length so far.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        self.out.len() - self.start - Header::SIZE
    }

    /// Patches the length; returns it, or removes the packet and fails if
    /// it exceeds [`XENSTORE_PAYLOAD_MAX`].
    pub fn finish(self) -> Result<usize, WriterError> {
        self.finish_with_limit(XENSTORE_PAYLOAD_MAX)
    }

    /// [`PacketWriter::finish`] with another limit.
    pub fn finish_with_limit(mut self, max: usize) -> Result<usize, WriterError> {
        let len = self.payload_len();
        if len > max {
            return Err(WriterError::TooBig { len, max });
        }
        let l = u32::try_from(len).expect("len <= max fits in u32");
        self.out[self.start + 12..self.start + 16].copy_from_slice(&l.to_le_bytes());
        self.done = true;
        Ok(len)
    }

    /// Appends a whole `XS_ERROR` packet.
    pub fn error(out: &mut Vec<u8>, req_id: u32, tx_id: u32, err: XsError) {
        let mut w = PacketWriter::begin(out, MsgType::Error, req_id, tx_id);
        w.push(err.as_payload());
        w.finish().expect("error names are short");
    }

    /// Appends a whole packet with `payload`; fails if it is too big.
    pub fn whole(
        out: &mut Vec<u8>,
        ty: MsgType,
        req_id: u32,
        tx_id: u32,
        payload: &[u8],
    ) -> Result<(), WriterError> {
        let mut w = PacketWriter::begin(out, ty, req_id, tx_id);
        w.push(payload);
        w.finish().map(|_| ())
    }

    /// Appends a `XS_WATCH_EVENT` packet (`<path>|<token>|`, ids 0).
    pub fn watch_event(out: &mut Vec<u8>, path: &[u8], token: &[u8]) -> Result<(), WriterError> {
        let mut w = PacketWriter::begin(out, MsgType::WatchEvent, 0, 0);
        w.push_str0(path);
        w.push_str0(token);
        w.finish().map(|_| ())
    }
}

impl Drop for PacketWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.out.truncate(self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn test_decoder_byte_by_byte_yields_packet() {
        let mut out = Vec::new();
        PacketWriter::whole(&mut out, MsgType::Read, 3, 0, b"/a\0").unwrap();
        PacketWriter::whole(&mut out, MsgType::Rm, 4, 0, b"/b\0").unwrap();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &out {
            d.push(&[*b]);
            while let Some((h, p)) = d.next_packet().unwrap() {
                got.push((h.req_id, p.to_vec()));
            }
        }
        assert_eq!(got, vec![(3, b"/a\0".to_vec()), (4, b"/b\0".to_vec())]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn test_decoder_oversized_header_fails_before_payload() {
        let h = Header::new(MsgType::Write, 0, 0, 4097);
        let mut d = Decoder::new();
        d.push(&h.encode());
        assert_eq!(
            d.next_packet(),
            Err(DecodeError::Oversized {
                len: 4097,
                max: 4096
            })
        );
    }

    #[test]
    fn test_decoder_max_payload_accepted() {
        let mut out = Vec::new();
        PacketWriter::whole(&mut out, MsgType::Write, 0, 0, &[b'a'; 4096]).unwrap();
        let mut d = Decoder::new();
        d.push(&out);
        assert_eq!(d.next_packet().unwrap().unwrap().1.len(), 4096);
    }

    #[test]
    fn test_decoder_read_buf_commit_reuses_buffer() {
        let mut out = Vec::new();
        PacketWriter::whole(&mut out, MsgType::Read, 1, 0, b"/x\0").unwrap();
        let mut d = Decoder::new();
        for _ in 0..3 {
            let b = d.read_buf(out.len());
            b[..out.len()].copy_from_slice(&out);
            d.commit(out.len());
            assert!(d.next_packet().unwrap().is_some());
            assert!(d.next_packet().unwrap().is_none());
        }
    }

    #[test]
    fn test_packet_writer_too_big_removes_packet() {
        let mut out = vec![1, 2];
        let mut w = PacketWriter::begin(&mut out, MsgType::Read, 0, 0);
        w.push(&[0; 5000]);
        assert_eq!(
            w.finish(),
            Err(WriterError::TooBig {
                len: 5000,
                max: 4096
            })
        );
        assert_eq!(out, vec![1, 2]);
    }

    /// The writer's bound is exact: 4096 bytes of payload (Xen's
    /// `XENSTORE_PAYLOAD_MAX`) make a packet, 4097 do not and leave the
    /// buffer as it was (issue 18 item 5d).
    #[test]
    fn test_packet_writer_4096_accepted_4097_refused() {
        assert_eq!(XENSTORE_PAYLOAD_MAX, 4096);
        let mut out = vec![7];
        let mut w = PacketWriter::begin(&mut out, MsgType::Read, 5, 1);
        w.push(&[b'x'; 4096]);
        assert_eq!(w.finish(), Ok(4096));
        assert_eq!(out.len(), 1 + Header::SIZE + 4096);
        assert_eq!(
            Header::decode(&out[1..]).unwrap(),
            Header::new(MsgType::Read, 5, 1, 4096)
        );

        let mut out = vec![7];
        let mut w = PacketWriter::begin(&mut out, MsgType::Read, 5, 1);
        w.push(&[b'x'; 4097]);
        assert_eq!(
            w.finish(),
            Err(WriterError::TooBig {
                len: 4097,
                max: 4096
            })
        );
        assert_eq!(out, vec![7]);

        // The same edge through the helpers: a watch event of exactly 4096
        // bytes (`path\0token\0`) and one a byte longer.
        let mut out = Vec::new();
        PacketWriter::watch_event(&mut out, &[b'p'; 4091], b"tok").unwrap();
        assert_eq!(Header::decode(&out).unwrap().len, 4096);
        assert_eq!(
            PacketWriter::watch_event(&mut out, &[b'p'; 4092], b"tok"),
            Err(WriterError::TooBig {
                len: 4097,
                max: 4096
            })
        );
        assert_eq!(out.len(), Header::SIZE + 4096);
        let mut out = Vec::new();
        assert!(PacketWriter::whole(&mut out, MsgType::Write, 0, 0, &[0; 4097]).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn test_packet_writer_error_packet_layout() {
        let mut out = Vec::new();
        PacketWriter::error(&mut out, 9, 2, XsError::Enoent);
        let h = Header::decode(&out).unwrap();
        assert_eq!(h, Header::new(MsgType::Error, 9, 2, 7));
        assert_eq!(&out[16..], b"ENOENT\0");
    }
}
