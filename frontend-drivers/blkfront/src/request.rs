//! Pure request building and response decoding (no I/O): the segment layout
//! of a data buffer, the encodings of direct, indirect, discard and flush
//! requests into a ring slot, the bytes of indirect pages, and the decoding
//! of a response slot.
//!
//! Data always sits in whole 4 KiB pages owned by the frontend (the buffer is
//! copied in or out), so segment `i` covers bytes `i * 4096 ..` of the
//! buffer, starts at sector 0 of its page and ends at the last 512-byte
//! sector of the buffer in that page.

use alloc::vec::Vec;

use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::blkif::{
    blkif_request, blkif_request_discard, blkif_request_indirect, blkif_request_other,
    blkif_request_segment, blkif_response, blkif_vdev_t, BLKIF_DISCARD_SECURE,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_SEGS_PER_INDIRECT_FRAME,
    BLKIF_SRING_ENTRY_SIZE,
};
use xen_front_platform::PAGE_SIZE;
use zerocopy::{FromBytes, IntoBytes};

/// The unit of `sector_number`, `first_sect` and `last_sect` (always 512
/// bytes: this frontend does not offer `feature-large-sector-size`).
pub const SECTOR_BYTES: usize = 512;
/// 512-byte sectors per page.
pub const SECTORS_PER_PAGE: usize = PAGE_SIZE / SECTOR_BYTES;
/// The most segments of an indirect request this frontend builds (Linux's
/// cap, `xen_blkif_max_segments` upper bound): one indirect page.
pub const MAX_INDIRECT_SEGMENTS: usize = 256;

/// A request ring slot (`union blkif_sring_entry`, 112 bytes, 8-aligned).
pub type ReqSlot = [u64; 14];
/// A response as read from a ring slot (`blkif_response`, 16 bytes).
pub type RspSlot = [u64; 2];

const _: () = assert!(core::mem::size_of::<ReqSlot>() == BLKIF_SRING_ENTRY_SIZE);
const _: () = assert!(core::mem::size_of::<RspSlot>() == 16);

/// Why a request could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The length is zero or not a multiple of 512 bytes.
    #[error("a transfer of {len} bytes is empty or not a whole number of 512-byte sectors")]
    BadLength {
        /// The length in bytes.
        len: usize,
    },
    /// More segments than the request kind can carry.
    #[error("{segments} segments do not fit in one request (at most {max})")]
    TooManySegments {
        /// Segments needed.
        segments: usize,
        /// Segments allowed.
        max: usize,
    },
    /// The indirect page list does not match the number of segments.
    #[error("{given} indirect pages given where {needed} are needed")]
    IndirectPages {
        /// Pages given.
        given: usize,
        /// Pages needed.
        needed: usize,
    },
}

/// The segments (page-relative sector ranges) of a transfer of `len` bytes
/// laid out from the start of consecutive pages; the grant reference is left
/// 0 for the caller to fill in.
pub fn data_segments(len: usize) -> Result<Vec<blkif_request_segment>, RequestError> {
    if len == 0 || len % SECTOR_BYTES != 0 {
        return Err(RequestError::BadLength { len });
    }
    let sectors = len / SECTOR_BYTES;
    let pages = sectors.div_ceil(SECTORS_PER_PAGE);
    Ok((0..pages)
        .map(|i| {
            let in_page = (sectors - i * SECTORS_PER_PAGE).min(SECTORS_PER_PAGE);
            blkif_request_segment {
                gref: 0,
                first_sect: 0,
                // in_page is 1..=8, so this is 0..=7.
                last_sect: (in_page - 1) as u8,
                _pad0: 0,
            }
        })
        .collect())
}

/// The number of indirect pages holding `segments` segment descriptors.
pub fn indirect_pages_needed(segments: usize) -> usize {
    segments.div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME)
}

fn to_slot(bytes: &[u8]) -> ReqSlot {
    let mut slot: ReqSlot = [0; 14];
    let dst = slot.as_mut_bytes();
    let n = bytes.len().min(dst.len());
    dst[..n].copy_from_slice(&bytes[..n]);
    slot
}

/// A direct read or write (`BLKIF_OP_READ`/`BLKIF_OP_WRITE`) of up to 11
/// segments.
pub fn encode_rw(
    operation: u8,
    handle: blkif_vdev_t,
    id: u64,
    sector_number: u64,
    segs: &[blkif_request_segment],
) -> Result<ReqSlot, RequestError> {
    if segs.len() > BLKIF_MAX_SEGMENTS_PER_REQUEST {
        return Err(RequestError::TooManySegments {
            segments: segs.len(),
            max: BLKIF_MAX_SEGMENTS_PER_REQUEST,
        });
    }
    let mut req = blkif_request {
        operation,
        // segs.len() <= 11.
        nr_segments: segs.len() as u8,
        handle,
        id,
        sector_number,
        ..Default::default()
    };
    req.seg[..segs.len()].copy_from_slice(segs);
    Ok(to_slot(req.as_bytes()))
}

/// An indirect request (`BLKIF_OP_INDIRECT`) of `nr_segments` segments whose
/// descriptors sit in the pages `indirect_grefs`.
pub fn encode_indirect(
    indirect_op: u8,
    handle: blkif_vdev_t,
    id: u64,
    sector_number: u64,
    nr_segments: usize,
    indirect_grefs: &[grant_ref_t],
) -> Result<ReqSlot, RequestError> {
    let max = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME;
    if nr_segments == 0 || nr_segments > max.min(usize::from(u16::MAX)) {
        return Err(RequestError::TooManySegments {
            segments: nr_segments,
            max,
        });
    }
    let needed = indirect_pages_needed(nr_segments);
    if indirect_grefs.len() != needed {
        return Err(RequestError::IndirectPages {
            given: indirect_grefs.len(),
            needed,
        });
    }
    let mut req = blkif_request_indirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op,
        // nr_segments <= 4096 (checked).
        nr_segments: nr_segments as u16,
        id,
        sector_number,
        handle,
        ..Default::default()
    };
    req.indirect_grefs[..needed].copy_from_slice(indirect_grefs);
    Ok(to_slot(req.as_bytes()))
}

/// The bytes of indirect page `page` for `segs`: descriptors
/// `page * 512 ..` packed from offset 0, the rest of the page zero.
pub fn indirect_page_bytes(segs: &[blkif_request_segment], page: usize) -> Vec<u8> {
    let mut out = alloc::vec![0u8; PAGE_SIZE];
    let start = page.saturating_mul(BLKIF_SEGS_PER_INDIRECT_FRAME);
    let chunk = segs
        .get(start..)
        .unwrap_or(&[])
        .iter()
        .take(BLKIF_SEGS_PER_INDIRECT_FRAME);
    for (i, s) in chunk.enumerate() {
        let off = i * core::mem::size_of::<blkif_request_segment>();
        out[off..off + 8].copy_from_slice(s.as_bytes());
    }
    out
}

/// A discard (`BLKIF_OP_DISCARD`) of `nr_sectors` 512-byte sectors.
pub fn encode_discard(
    handle: blkif_vdev_t,
    id: u64,
    sector_number: u64,
    nr_sectors: u64,
    secure: bool,
) -> ReqSlot {
    let req = blkif_request_discard {
        operation: BLKIF_OP_DISCARD,
        flag: if secure { BLKIF_DISCARD_SECURE } else { 0 },
        handle,
        id,
        sector_number,
        nr_sectors,
        ..Default::default()
    };
    to_slot(req.as_bytes())
}

/// A request without payload (`BLKIF_OP_FLUSH_DISKCACHE` or
/// `BLKIF_OP_WRITE_BARRIER` with no segments), encoded as a `blkif_request`
/// with `nr_segments = 0` as Linux sends it.
pub fn encode_no_data(operation: u8, handle: blkif_vdev_t, id: u64) -> ReqSlot {
    let req = blkif_request {
        operation,
        nr_segments: 0,
        handle,
        id,
        ..Default::default()
    };
    debug_assert_eq!(
        core::mem::offset_of!(blkif_request_other, id),
        core::mem::offset_of!(blkif_request, id)
    );
    to_slot(req.as_bytes())
}

/// Decodes a response slot (every bit pattern is a response; the values are
/// the backend's and are checked by the caller).
pub fn decode_response(slot: &RspSlot) -> blkif_response {
    blkif_response::read_from_bytes(slot.as_bytes()).unwrap_or_default()
}

/// Decodes a request slot as a `blkif_request` (for tests and backends
/// written against this crate).
pub fn decode_request(slot: &ReqSlot) -> blkif_request {
    blkif_request::read_from_bytes(slot.as_bytes()).unwrap_or_default()
}

/// The operation a response to a request sent as `sent_op` may carry: the
/// operation itself, or for an indirect request its `indirect_op` (Linux's
/// blkback answers with the inner operation).
pub fn response_op_matches(sent_op: u8, inner_op: u8, rsp_op: u8) -> bool {
    rsp_op == sent_op || (sent_op == BLKIF_OP_INDIRECT && rsp_op == inner_op)
}

/// `true` for the two data operations.
pub fn is_data_op(op: u8) -> bool {
    op == BLKIF_OP_READ || op == BLKIF_OP_WRITE
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::io::blkif::{BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_ERROR};
    use zerocopy::FromBytes;

    #[test]
    fn test_data_segments_partial_last_page_sets_last_sect() {
        let segs = data_segments(3 * 4096 + 1024).expect("valid");
        let ranges: Vec<(u8, u8)> = segs.iter().map(|s| (s.first_sect, s.last_sect)).collect();
        assert_eq!(ranges, [(0, 7), (0, 7), (0, 7), (0, 1)]);
    }

    #[test]
    fn test_data_segments_one_sector_is_0_0() {
        let segs = data_segments(512).expect("valid");
        assert_eq!(segs.len(), 1);
        assert_eq!((segs[0].first_sect, segs[0].last_sect), (0, 0));
    }

    #[test]
    fn test_data_segments_unaligned_or_empty_length_is_refused() {
        assert_eq!(data_segments(0), Err(RequestError::BadLength { len: 0 }));
        assert_eq!(
            data_segments(513),
            Err(RequestError::BadLength { len: 513 })
        );
    }

    #[test]
    fn test_encode_rw_layout_matches_blkif_request_offsets() {
        // Arrange
        let mut segs = data_segments(11 * 4096).expect("valid");
        for (i, s) in segs.iter_mut().enumerate() {
            s.gref = 100 + i as u32;
        }

        // Act
        let slot = encode_rw(BLKIF_OP_WRITE, 0x1234, 0xdead_beef_0000_0007, 42, &segs)
            .expect("11 segments fit");
        let b = slot.as_bytes();

        // Assert: offsets from blkif.h (id 8, sector 16, seg 24, 8 bytes each).
        assert_eq!(b[0], BLKIF_OP_WRITE);
        assert_eq!(b[1], 11);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0x1234);
        assert_eq!(u64::read_from_bytes(&b[8..16]), Ok(0xdead_beef_0000_0007));
        assert_eq!(u64::read_from_bytes(&b[16..24]), Ok(42));
        for i in 0..11 {
            let o = 24 + i * 8;
            assert_eq!(u32::read_from_bytes(&b[o..o + 4]), Ok(100 + i as u32));
            assert_eq!((b[o + 4], b[o + 5]), (0, 7));
        }
    }

    #[test]
    fn test_encode_rw_twelve_segments_is_refused() {
        let segs = data_segments(12 * 4096).expect("valid");
        assert_eq!(
            encode_rw(BLKIF_OP_READ, 0, 1, 0, &segs),
            Err(RequestError::TooManySegments {
                segments: 12,
                max: 11
            })
        );
    }

    #[test]
    fn test_encode_indirect_layout_matches_blkif_request_indirect() {
        let slot = encode_indirect(BLKIF_OP_READ, 7, 99, 4096, 40, &[555]).expect("valid");
        let b = slot.as_bytes();
        assert_eq!(b[0], BLKIF_OP_INDIRECT);
        assert_eq!(b[1], BLKIF_OP_READ);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 40);
        assert_eq!(u64::read_from_bytes(&b[8..16]), Ok(99));
        assert_eq!(u64::read_from_bytes(&b[16..24]), Ok(4096));
        assert_eq!(u16::from_le_bytes([b[24], b[25]]), 7);
        assert_eq!(u32::read_from_bytes(&b[28..32]), Ok(555));
        assert!(b[32..].iter().all(|&x| x == 0));
    }

    #[test]
    fn test_encode_indirect_wrong_page_count_is_refused() {
        assert_eq!(
            encode_indirect(BLKIF_OP_READ, 0, 1, 0, 513, &[1]),
            Err(RequestError::IndirectPages {
                given: 1,
                needed: 2
            })
        );
        assert!(encode_indirect(BLKIF_OP_READ, 0, 1, 0, 0, &[]).is_err());
    }

    #[test]
    fn test_indirect_page_bytes_packs_descriptors_by_page() {
        // Arrange: 514 segments span two indirect pages.
        let segs: Vec<blkif_request_segment> = (0..514u32)
            .map(|i| blkif_request_segment {
                gref: i,
                first_sect: 0,
                last_sect: 7,
                _pad0: 0,
            })
            .collect();

        // Act
        let p0 = indirect_page_bytes(&segs, 0);
        let p1 = indirect_page_bytes(&segs, 1);

        // Assert
        assert_eq!(indirect_pages_needed(514), 2);
        assert_eq!(u32::read_from_bytes(&p0[511 * 8..511 * 8 + 4]), Ok(511));
        assert_eq!(p0[511 * 8 + 5], 7);
        assert_eq!(u32::read_from_bytes(&p1[0..4]), Ok(512));
        assert_eq!(u32::read_from_bytes(&p1[8..12]), Ok(513));
        assert!(p1[16..].iter().all(|&x| x == 0));
    }

    #[test]
    fn test_encode_discard_and_flush_layouts() {
        let d = encode_discard(3, 5, 1000, 64, true);
        let b = d.as_bytes();
        assert_eq!((b[0], b[1]), (BLKIF_OP_DISCARD, BLKIF_DISCARD_SECURE));
        assert_eq!(u64::read_from_bytes(&b[8..16]), Ok(5));
        assert_eq!(u64::read_from_bytes(&b[16..24]), Ok(1000));
        assert_eq!(u64::read_from_bytes(&b[24..32]), Ok(64));
        let f = decode_request(&encode_no_data(BLKIF_OP_FLUSH_DISKCACHE, 3, 77));
        assert_eq!(
            (f.operation, f.nr_segments, f.handle, f.id),
            (BLKIF_OP_FLUSH_DISKCACHE, 0, 3, 77)
        );
    }

    #[test]
    fn test_decode_response_reads_id_op_status() {
        let rsp = blkif_response {
            id: 0x1_0000_0002,
            operation: BLKIF_OP_WRITE,
            status: BLKIF_RSP_ERROR,
            ..Default::default()
        };
        let slot = RspSlot::read_from_bytes(rsp.as_bytes()).expect("16 bytes");
        assert_eq!(decode_response(&slot), rsp);
    }

    #[test]
    fn test_response_op_matches_indirect_inner_op() {
        assert!(response_op_matches(
            BLKIF_OP_READ,
            BLKIF_OP_READ,
            BLKIF_OP_READ
        ));
        assert!(response_op_matches(
            BLKIF_OP_INDIRECT,
            BLKIF_OP_WRITE,
            BLKIF_OP_WRITE
        ));
        assert!(response_op_matches(
            BLKIF_OP_INDIRECT,
            BLKIF_OP_WRITE,
            BLKIF_OP_INDIRECT
        ));
        assert!(!response_op_matches(
            BLKIF_OP_INDIRECT,
            BLKIF_OP_WRITE,
            BLKIF_OP_READ
        ));
        assert!(!response_op_matches(
            BLKIF_OP_WRITE,
            BLKIF_OP_WRITE,
            BLKIF_OP_READ
        ));
    }
}
