//! Pure parsing and validation of blkif requests (no I/O, no grant maps).
//!
//! A ring slot is copied out once by the ring (`RING_COPY_REQUEST`); this
//! module turns the copy into a [`Request`] or a [`RequestError`], which the
//! worker answers with `BLKIF_RSP_ERROR` (or `BLKIF_RSP_EOPNOTSUPP`).
//! Indirect requests are parsed in two steps: [`Request::parse`] checks the
//! header, the worker copies the segments out of the indirect pages, and
//! [`validate_segments`] checks them with the same rules as direct ones.
//!
//! Checks (Linux `xen-blkback/blkback.c` `dispatch_rw_block_io` and
//! `dispatch_discard_io`): the operation is known and negotiated; a
//! read/write has 1..=11 direct segments or 1..=`max_indirect_segments`
//! indirect ones, each with `first_sect <= last_sect <= 7`; the whole sector
//! range, computed with checked arithmetic, lies inside the disk; a discard
//! range lies inside the disk; writes and discards to a read-only disk are
//! refused.

use xen_abi::grant_table::grant_ref_t;
use xen_abi::io::blkif::*;
use zerocopy::FromBytes;

/// Bytes of a sector (the protocol's unit; `sector-size` is 512).
pub const SECTOR_SIZE: u64 = 512;
/// Sectors per 4096-byte page.
pub const SECTORS_PER_PAGE: u8 = 8;
/// The largest indirect segment count the ABI allows
/// (`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST` pages of 512 segments).
pub const MAX_INDIRECT_SEGMENTS_ABI: u32 =
    (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME) as u32;
/// The largest indirect segment count this backend advertises (as Linux's
/// `MAX_INDIRECT_SEGMENTS`).
pub const MAX_INDIRECT_SEGMENTS: u32 = 256;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The operation code is not one this backend knows or negotiated.
    #[error("operation {0} is not supported")]
    UnsupportedOperation(u8),
    /// A direct request has no segment or more than 11.
    #[error("{0} segments is not within 1..=11 for a direct request")]
    BadSegmentCount(u8),
    /// An indirect request has no segment or more than negotiated.
    #[error("{count} segments is not within 1..={max} for an indirect request")]
    BadIndirectSegmentCount {
        /// Segments asked for.
        count: u16,
        /// The negotiated maximum.
        max: u32,
    },
    /// The operation inside an indirect request is not read or write.
    #[error("indirect operation {0} is not read or write")]
    BadIndirectOperation(u8),
    /// A segment's sector range within its page is not `first <= last <= 7`.
    #[error("segment {index} covers sectors {first}..={last} of its page")]
    BadSegment {
        /// Segment index.
        index: usize,
        /// `first_sect`.
        first: u8,
        /// `last_sect`.
        last: u8,
    },
    /// The sector range is not inside the disk (or overflows).
    #[error("sectors {start} + {count} are not inside the disk of {disk} sectors")]
    OutOfRange {
        /// First sector.
        start: u64,
        /// Number of sectors.
        count: u64,
        /// Disk size in sectors.
        disk: u64,
    },
    /// A write or discard to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A discard of zero sectors.
    #[error("a discard of zero sectors")]
    EmptyDiscard,
}

impl RequestError {
    /// The `BLKIF_RSP_*` status that answers this error.
    #[must_use]
    pub fn status(&self) -> i16 {
        match self {
            RequestError::UnsupportedOperation(_) => BLKIF_RSP_EOPNOTSUPP,
            _ => BLKIF_RSP_ERROR,
        }
    }
}

/// What the parser needs to know about the device and the negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in 512-byte sectors.
    pub disk_sectors: u64,
    /// The disk refuses writes and discards.
    pub readonly: bool,
    /// `feature-flush-cache` (and `feature-barrier`) offered.
    pub flush: bool,
    /// `feature-discard` offered.
    pub discard: bool,
    /// `feature-max-indirect-segments` offered (0: no indirect requests).
    pub max_indirect_segments: u32,
}

/// Direction of a data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Disk to guest pages (the backend maps the pages writable).
    Read,
    /// Guest pages to disk (the backend maps the pages read-only).
    Write,
}

/// One validated segment: bytes `offset..offset + len` of granted page
/// `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Grant reference of the page.
    pub gref: grant_ref_t,
    /// Byte offset in the page (`first_sect * 512`).
    pub offset: u32,
    /// Byte length (`(last_sect - first_sect + 1) * 512`).
    pub len: u32,
}

/// Where a data request's segments are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segments {
    /// In the ring slot, validated.
    Direct(Vec<Segment>),
    /// In granted indirect pages, not read yet: copy out `count` raw segments
    /// from `pages` and pass them to [`validate_segments`].
    Indirect {
        /// Grant references of the indirect pages (only the used ones).
        pages: Vec<grant_ref_t>,
        /// Number of segments.
        count: u16,
    },
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A read or write (direct or indirect); `barrier` for
    /// `BLKIF_OP_WRITE_BARRIER` (the write is made durable before the answer).
    Data {
        /// Frontend's id.
        id: u64,
        /// Operation code to echo (`BLKIF_OP_READ`, `_WRITE`,
        /// `_WRITE_BARRIER` or `_INDIRECT`).
        operation: u8,
        /// Direction.
        dir: Direction,
        /// Make the write durable before answering.
        barrier: bool,
        /// First disk sector.
        sector: u64,
        /// Segments.
        segments: Segments,
    },
    /// `BLKIF_OP_FLUSH_DISKCACHE`.
    Flush {
        /// Frontend's id.
        id: u64,
    },
    /// `BLKIF_OP_DISCARD`.
    Discard {
        /// Frontend's id.
        id: u64,
        /// First sector.
        sector: u64,
        /// Number of sectors.
        nr_sectors: u64,
        /// `BLKIF_DISCARD_SECURE` asked.
        secure: bool,
    },
}

/// The id and operation of any slot, read without validation (to answer an
/// invalid request).
#[must_use]
pub fn slot_id_op(slot: &[u8; BLKIF_SRING_ENTRY_SIZE]) -> (u64, u8) {
    let mut id = [0u8; 8];
    id.copy_from_slice(&slot[8..16]);
    (u64::from_ne_bytes(id), slot[0])
}

/// Checks that `start + count` sectors lie inside the disk.
pub fn check_range(start: u64, count: u64, disk: u64) -> Result<(), RequestError> {
    match start.checked_add(count) {
        Some(end) if end <= disk => Ok(()),
        _ => Err(RequestError::OutOfRange { start, count, disk }),
    }
}

/// Validates raw segments (from the slot or from indirect pages) and the
/// sector range they cover from `sector`; returns them and the total sector
/// count.
pub fn validate_segments(
    raw: &[blkif_request_segment],
    sector: u64,
    disk_sectors: u64,
) -> Result<(Vec<Segment>, u64), RequestError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut total: u64 = 0;
    for (index, s) in raw.iter().enumerate() {
        let (first, last) = (s.first_sect, s.last_sect);
        if first > last || last >= SECTORS_PER_PAGE {
            return Err(RequestError::BadSegment { index, first, last });
        }
        let n = u64::from(last - first) + 1;
        // At most 256 * 8 sectors: cannot overflow, checked all the same.
        total = total.checked_add(n).ok_or(RequestError::OutOfRange {
            start: sector,
            count: u64::MAX,
            disk: disk_sectors,
        })?;
        out.push(Segment {
            gref: s.gref,
            offset: u32::from(first) * SECTOR_SIZE as u32,
            len: (u32::from(last - first) + 1) * SECTOR_SIZE as u32,
        });
    }
    check_range(sector, total, disk_sectors)?;
    Ok((out, total))
}

impl Request {
    /// Parses one copied ring slot.
    pub fn parse(
        slot: &[u8; BLKIF_SRING_ENTRY_SIZE],
        limits: &Limits,
    ) -> Result<Request, RequestError> {
        let operation = slot[0];
        match operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER => {
                let (req, _) = blkif_request::read_from_prefix(slot.as_slice())
                    .map_err(|_| RequestError::UnsupportedOperation(operation))?;
                let dir = if operation == BLKIF_OP_READ {
                    Direction::Read
                } else {
                    Direction::Write
                };
                let barrier = operation == BLKIF_OP_WRITE_BARRIER;
                if barrier && !limits.flush {
                    return Err(RequestError::UnsupportedOperation(operation));
                }
                if dir == Direction::Write && limits.readonly {
                    return Err(RequestError::ReadOnly);
                }
                let n = usize::from(req.nr_segments);
                if n == 0 || n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    return Err(RequestError::BadSegmentCount(req.nr_segments));
                }
                let (segs, _) =
                    validate_segments(&req.seg[..n], req.sector_number, limits.disk_sectors)?;
                Ok(Request::Data {
                    id: req.id,
                    operation,
                    dir,
                    barrier,
                    sector: req.sector_number,
                    segments: Segments::Direct(segs),
                })
            }
            BLKIF_OP_INDIRECT => {
                let (req, _) = blkif_request_indirect::read_from_prefix(slot.as_slice())
                    .map_err(|_| RequestError::UnsupportedOperation(operation))?;
                if limits.max_indirect_segments == 0 {
                    return Err(RequestError::UnsupportedOperation(operation));
                }
                let dir = match req.indirect_op {
                    BLKIF_OP_READ => Direction::Read,
                    BLKIF_OP_WRITE => Direction::Write,
                    other => return Err(RequestError::BadIndirectOperation(other)),
                };
                if dir == Direction::Write && limits.readonly {
                    return Err(RequestError::ReadOnly);
                }
                let max = limits.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS_ABI);
                let count = req.nr_segments;
                if count == 0 || u32::from(count) > max {
                    return Err(RequestError::BadIndirectSegmentCount { count, max });
                }
                let pages = usize::from(count).div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME);
                // `pages` <= 8 because `count` <= 4096.
                let pages = req
                    .indirect_grefs
                    .get(..pages)
                    .ok_or(RequestError::BadIndirectSegmentCount { count, max })?
                    .to_vec();
                Ok(Request::Data {
                    id: req.id,
                    operation,
                    dir,
                    barrier: false,
                    sector: req.sector_number,
                    segments: Segments::Indirect { pages, count },
                })
            }
            BLKIF_OP_FLUSH_DISKCACHE => {
                if !limits.flush {
                    return Err(RequestError::UnsupportedOperation(operation));
                }
                let (id, _) = slot_id_op(slot);
                Ok(Request::Flush { id })
            }
            BLKIF_OP_DISCARD => {
                let (req, _) = blkif_request_discard::read_from_prefix(slot.as_slice())
                    .map_err(|_| RequestError::UnsupportedOperation(operation))?;
                if !limits.discard {
                    return Err(RequestError::UnsupportedOperation(operation));
                }
                if limits.readonly {
                    return Err(RequestError::ReadOnly);
                }
                if req.nr_sectors == 0 {
                    return Err(RequestError::EmptyDiscard);
                }
                check_range(req.sector_number, req.nr_sectors, limits.disk_sectors)?;
                Ok(Request::Discard {
                    id: req.id,
                    sector: req.sector_number,
                    nr_sectors: req.nr_sectors,
                    secure: req.flag & BLKIF_DISCARD_SECURE != 0,
                })
            }
            other => Err(RequestError::UnsupportedOperation(other)),
        }
    }

    /// The frontend's id.
    #[must_use]
    pub fn id(&self) -> u64 {
        match self {
            Request::Data { id, .. } | Request::Flush { id } | Request::Discard { id, .. } => *id,
        }
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::IntoBytes;

    use super::*;

    const LIMITS: Limits = Limits {
        disk_sectors: 1000,
        readonly: false,
        flush: true,
        discard: true,
        max_indirect_segments: 256,
    };

    fn slot_of<T: IntoBytes + zerocopy::Immutable>(v: &T) -> [u8; BLKIF_SRING_ENTRY_SIZE] {
        let mut s = [0u8; BLKIF_SRING_ENTRY_SIZE];
        let b = v.as_bytes();
        s[..b.len()].copy_from_slice(b);
        s
    }

    fn seg(gref: u32, first: u8, last: u8) -> blkif_request_segment {
        blkif_request_segment {
            gref,
            first_sect: first,
            last_sect: last,
            _pad0: 0,
        }
    }

    fn rw(op: u8, sector: u64, segs: &[blkif_request_segment]) -> [u8; BLKIF_SRING_ENTRY_SIZE] {
        let mut r = blkif_request {
            operation: op,
            nr_segments: segs.len() as u8,
            id: 0xfeed,
            sector_number: sector,
            ..Default::default()
        };
        r.seg[..segs.len()].copy_from_slice(segs);
        slot_of(&r)
    }

    #[test]
    fn test_parse_read_one_full_page_gives_segment() {
        let r = Request::parse(&rw(BLKIF_OP_READ, 8, &[seg(9, 0, 7)]), &LIMITS);
        assert_eq!(
            r,
            Ok(Request::Data {
                id: 0xfeed,
                operation: BLKIF_OP_READ,
                dir: Direction::Read,
                barrier: false,
                sector: 8,
                segments: Segments::Direct(vec![Segment {
                    gref: 9,
                    offset: 0,
                    len: 4096
                }]),
            })
        );
    }

    #[test]
    fn test_parse_write_partial_segments_gives_offsets() {
        let r = Request::parse(
            &rw(BLKIF_OP_WRITE, 0, &[seg(1, 3, 3), seg(2, 1, 6)]),
            &LIMITS,
        )
        .expect("valid");
        let Request::Data {
            dir,
            segments: Segments::Direct(s),
            ..
        } = r
        else {
            panic!("not a direct data request: {r:?}");
        };
        assert_eq!(dir, Direction::Write);
        assert_eq!(
            s[0],
            Segment {
                gref: 1,
                offset: 1536,
                len: 512
            }
        );
        assert_eq!(
            s[1],
            Segment {
                gref: 2,
                offset: 512,
                len: 3072
            }
        );
    }

    #[test]
    fn test_parse_eleven_segments_is_accepted() {
        let segs = [seg(1, 0, 7); 11];
        assert!(Request::parse(&rw(BLKIF_OP_READ, 0, &segs), &LIMITS).is_ok());
    }

    #[test]
    fn test_parse_zero_segments_is_refused() {
        assert_eq!(
            Request::parse(&rw(BLKIF_OP_READ, 0, &[]), &LIMITS),
            Err(RequestError::BadSegmentCount(0))
        );
    }

    #[test]
    fn test_parse_twelve_segments_is_refused() {
        let mut s = rw(BLKIF_OP_READ, 0, &[seg(1, 0, 7)]);
        s[1] = 12;
        assert_eq!(
            Request::parse(&s, &LIMITS),
            Err(RequestError::BadSegmentCount(12))
        );
        s[1] = 255;
        assert_eq!(
            Request::parse(&s, &LIMITS),
            Err(RequestError::BadSegmentCount(255))
        );
    }

    #[test]
    fn test_parse_first_after_last_is_refused() {
        assert_eq!(
            Request::parse(
                &rw(BLKIF_OP_READ, 0, &[seg(1, 0, 7), seg(1, 5, 4)]),
                &LIMITS
            ),
            Err(RequestError::BadSegment {
                index: 1,
                first: 5,
                last: 4
            })
        );
    }

    #[test]
    fn test_parse_last_sector_past_page_is_refused() {
        assert_eq!(
            Request::parse(&rw(BLKIF_OP_WRITE, 0, &[seg(1, 0, 8)]), &LIMITS),
            Err(RequestError::BadSegment {
                index: 0,
                first: 0,
                last: 8
            })
        );
        assert!(matches!(
            Request::parse(&rw(BLKIF_OP_WRITE, 0, &[seg(1, 255, 255)]), &LIMITS),
            Err(RequestError::BadSegment { .. })
        ));
    }

    #[test]
    fn test_parse_range_ending_at_disk_end_is_accepted() {
        assert!(Request::parse(&rw(BLKIF_OP_READ, 992, &[seg(1, 0, 7)]), &LIMITS).is_ok());
    }

    #[test]
    fn test_parse_range_past_disk_end_is_refused() {
        assert_eq!(
            Request::parse(&rw(BLKIF_OP_READ, 993, &[seg(1, 0, 7)]), &LIMITS),
            Err(RequestError::OutOfRange {
                start: 993,
                count: 8,
                disk: 1000
            })
        );
    }

    #[test]
    fn test_parse_sector_overflowing_u64_is_refused() {
        assert!(matches!(
            Request::parse(&rw(BLKIF_OP_READ, u64::MAX - 2, &[seg(1, 0, 7)]), &LIMITS),
            Err(RequestError::OutOfRange { .. })
        ));
    }

    #[test]
    fn test_parse_write_on_readonly_is_refused() {
        let l = Limits {
            readonly: true,
            ..LIMITS
        };
        assert_eq!(
            Request::parse(&rw(BLKIF_OP_WRITE, 0, &[seg(1, 0, 7)]), &l),
            Err(RequestError::ReadOnly)
        );
        assert!(Request::parse(&rw(BLKIF_OP_READ, 0, &[seg(1, 0, 7)]), &l).is_ok());
    }

    #[test]
    fn test_parse_barrier_gives_durable_write() {
        let r = Request::parse(&rw(BLKIF_OP_WRITE_BARRIER, 0, &[seg(1, 0, 7)]), &LIMITS);
        assert!(matches!(
            r,
            Ok(Request::Data {
                barrier: true,
                dir: Direction::Write,
                ..
            })
        ));
    }

    #[test]
    fn test_parse_unknown_operations_are_unsupported() {
        for op in [BLKIF_OP_RESERVED_1, 7, 0x80, 0xff] {
            let r = Request::parse(&rw(op, 0, &[seg(1, 0, 7)]), &LIMITS);
            assert_eq!(r, Err(RequestError::UnsupportedOperation(op)));
            assert_eq!(r.unwrap_err().status(), BLKIF_RSP_EOPNOTSUPP);
        }
    }

    #[test]
    fn test_parse_flush_without_feature_is_unsupported() {
        let f = blkif_request_other {
            operation: BLKIF_OP_FLUSH_DISKCACHE,
            id: 5,
            ..Default::default()
        };
        assert_eq!(
            Request::parse(&slot_of(&f), &LIMITS),
            Ok(Request::Flush { id: 5 })
        );
        let l = Limits {
            flush: false,
            ..LIMITS
        };
        assert_eq!(
            Request::parse(&slot_of(&f), &l),
            Err(RequestError::UnsupportedOperation(BLKIF_OP_FLUSH_DISKCACHE))
        );
    }

    fn discard(sector: u64, n: u64, flag: u8) -> [u8; BLKIF_SRING_ENTRY_SIZE] {
        slot_of(&blkif_request_discard {
            operation: BLKIF_OP_DISCARD,
            flag,
            id: 3,
            sector_number: sector,
            nr_sectors: n,
            ..Default::default()
        })
    }

    #[test]
    fn test_parse_discard_inside_disk_is_accepted() {
        assert_eq!(
            Request::parse(&discard(10, 990, BLKIF_DISCARD_SECURE), &LIMITS),
            Ok(Request::Discard {
                id: 3,
                sector: 10,
                nr_sectors: 990,
                secure: true
            })
        );
    }

    #[test]
    fn test_parse_discard_bad_ranges_are_refused() {
        assert!(matches!(
            Request::parse(&discard(10, 991, 0), &LIMITS),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            Request::parse(&discard(1, u64::MAX, 0), &LIMITS),
            Err(RequestError::OutOfRange { .. })
        ));
        assert_eq!(
            Request::parse(&discard(1, 0, 0), &LIMITS),
            Err(RequestError::EmptyDiscard)
        );
    }

    #[test]
    fn test_parse_discard_readonly_or_unnegotiated_is_refused() {
        let ro = Limits {
            readonly: true,
            ..LIMITS
        };
        assert_eq!(
            Request::parse(&discard(0, 8, 0), &ro),
            Err(RequestError::ReadOnly)
        );
        let off = Limits {
            discard: false,
            ..LIMITS
        };
        assert_eq!(
            Request::parse(&discard(0, 8, 0), &off),
            Err(RequestError::UnsupportedOperation(BLKIF_OP_DISCARD))
        );
    }

    fn indirect(op: u8, count: u16) -> [u8; BLKIF_SRING_ENTRY_SIZE] {
        slot_of(&blkif_request_indirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: op,
            nr_segments: count,
            id: 77,
            sector_number: 16,
            indirect_grefs: [10, 11, 12, 13, 14, 15, 16, 17],
            ..Default::default()
        })
    }

    #[test]
    fn test_parse_indirect_256_segments_uses_one_page() {
        assert_eq!(
            Request::parse(&indirect(BLKIF_OP_WRITE, 256), &LIMITS),
            Ok(Request::Data {
                id: 77,
                operation: BLKIF_OP_INDIRECT,
                dir: Direction::Write,
                barrier: false,
                sector: 16,
                segments: Segments::Indirect {
                    pages: vec![10],
                    count: 256
                },
            })
        );
    }

    #[test]
    fn test_parse_indirect_abi_maximum_uses_eight_pages() {
        let l = Limits {
            max_indirect_segments: MAX_INDIRECT_SEGMENTS_ABI,
            ..LIMITS
        };
        let r = Request::parse(&indirect(BLKIF_OP_READ, 4096), &l).expect("valid");
        let Request::Data {
            segments: Segments::Indirect { pages, .. },
            ..
        } = r
        else {
            panic!("{r:?}");
        };
        assert_eq!(pages.len(), 8);
    }

    #[test]
    fn test_parse_indirect_bad_counts_and_ops_are_refused() {
        assert_eq!(
            Request::parse(&indirect(BLKIF_OP_READ, 257), &LIMITS),
            Err(RequestError::BadIndirectSegmentCount {
                count: 257,
                max: 256
            })
        );
        assert!(matches!(
            Request::parse(&indirect(BLKIF_OP_READ, 0), &LIMITS),
            Err(RequestError::BadIndirectSegmentCount { .. })
        ));
        let huge = Limits {
            max_indirect_segments: u32::MAX,
            ..LIMITS
        };
        assert!(matches!(
            Request::parse(&indirect(BLKIF_OP_READ, u16::MAX), &huge),
            Err(RequestError::BadIndirectSegmentCount { max: 4096, .. })
        ));
        for op in [
            BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_INDIRECT,
            BLKIF_OP_WRITE_BARRIER,
            99,
        ] {
            assert_eq!(
                Request::parse(&indirect(op, 1), &LIMITS),
                Err(RequestError::BadIndirectOperation(op))
            );
        }
        let none = Limits {
            max_indirect_segments: 0,
            ..LIMITS
        };
        assert_eq!(
            Request::parse(&indirect(BLKIF_OP_READ, 1), &none),
            Err(RequestError::UnsupportedOperation(BLKIF_OP_INDIRECT))
        );
    }

    #[test]
    fn test_parse_indirect_write_on_readonly_is_refused() {
        let ro = Limits {
            readonly: true,
            ..LIMITS
        };
        assert_eq!(
            Request::parse(&indirect(BLKIF_OP_WRITE, 1), &ro),
            Err(RequestError::ReadOnly)
        );
    }

    #[test]
    fn test_validate_segments_indirect_range_checked() {
        let raw = vec![seg(1, 0, 7); 125];
        assert!(validate_segments(&raw, 0, 1000).is_ok());
        assert!(matches!(
            validate_segments(&raw, 1, 1000),
            Err(RequestError::OutOfRange { count: 1000, .. })
        ));
    }

    #[test]
    fn test_slot_id_op_reads_garbage_without_validation() {
        let mut s = [0xffu8; BLKIF_SRING_ENTRY_SIZE];
        s[0] = 42;
        assert_eq!(slot_id_op(&s), (u64::MAX, 42));
    }
}
