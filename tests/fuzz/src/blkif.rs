//! `blkif`: blkback's request parsing (`xen_blkback::request`) on ring
//! slots, indirect pages included, with a hostile grant table behind the
//! segments. The input: the negotiated limits, the grant table, the guest
//! pages the grants point at, then ring slots of `BLKIF_SRING_ENTRY_SIZE`
//! bytes. What a request is allowed to touch is checked: its segments stay
//! in their page and its sectors in the disk, and no read-only grant is
//! mapped writable.

use xen_abi::io::blkif::{
    blkif_request_segment, BLKIF_SEGS_PER_INDIRECT_FRAME, BLKIF_SRING_ENTRY_SIZE,
};
use xen_blkback::request::{
    validate_segments, Direction, Limits, Request, Segment, Segments, MAX_INDIRECT_SEGMENTS_ABI,
};
use xen_shim_dom0::grant::fake::FakeTable;
use xen_shim_dom0::grant::{clear_status, read_target, set_status};
use zerocopy::FromBytes;

use crate::grants::{self, MAPPER};
use crate::Input;

/// Most slots per input.
const MAX_SLOTS: usize = 64;
/// Guest pages behind the grants (indirect segment pages).
const GUEST_PAGES: usize = 2;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let limits = Limits {
        disk_sectors: u64::from(input.u32()) >> (flags >> 5),
        readonly: flags & 1 != 0,
        flush: flags & 2 != 0,
        discard: flags & 4 != 0,
        max_indirect_segments: if flags & 8 != 0 {
            u32::from(input.u16()) % (MAX_INDIRECT_SEGMENTS_ABI + 1)
        } else {
            0
        },
    };
    let table = grants::table(&mut input);
    // The guest's pages: a short prefix from the input, the rest repeats it
    // (indirect pages full of segments cost little input).
    let seed_len = usize::from(input.u8()) * 8;
    let seed = input.bytes(seed_len);
    let mut guest = vec![0u8; GUEST_PAGES * 4096];
    if !seed.is_empty() {
        for (i, b) in guest.iter_mut().enumerate() {
            *b = seed[i % seed.len()];
        }
    }
    for _ in 0..MAX_SLOTS {
        if input.is_empty() {
            break;
        }
        let slot: [u8; BLKIF_SRING_ENTRY_SIZE] = input.array();
        serve(&slot, &limits, &table, &guest);
    }
}

/// One request as blkback's worker handles it: parse, resolve indirect
/// segments, map every segment.
fn serve(slot: &[u8; BLKIF_SRING_ENTRY_SIZE], limits: &Limits, table: &FakeTable, guest: &[u8]) {
    let Ok(req) = Request::parse(slot, limits) else {
        return;
    };
    match req {
        Request::Data {
            dir,
            sector,
            segments,
            ..
        } => {
            if dir == Direction::Write {
                assert!(!limits.readonly, "a write to a read-only disk parsed");
            }
            let segs = match segments {
                Segments::Direct(s) => {
                    assert!((1..=11).contains(&s.len()), "{} direct segments", s.len());
                    s
                }
                Segments::Indirect { pages, count } => {
                    assert!(count > 0 && u32::from(count) <= limits.max_indirect_segments);
                    assert_eq!(
                        pages.len(),
                        usize::from(count).div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME)
                    );
                    let Some(raw) = read_indirect(table, guest, &pages, count) else {
                        return;
                    };
                    match validate_segments(&raw, sector, limits.disk_sectors) {
                        Ok((s, _)) => s,
                        Err(_) => return,
                    }
                }
            };
            check_segments(&segs, sector, limits);
            for s in &segs {
                let readonly = dir == Direction::Write;
                let ok = grants::map_unmap(table, s.gref, readonly);
                grants::assert_no_writable_map_of_readonly(table, s.gref, ok && !readonly);
            }
        }
        Request::Flush { .. } => assert!(limits.flush, "a flush parsed without the feature"),
        Request::Discard {
            sector, nr_sectors, ..
        } => {
            assert!(limits.discard && !limits.readonly);
            assert!(nr_sectors > 0);
            let end = sector
                .checked_add(nr_sectors)
                .expect("discard range overflows");
            assert!(end <= limits.disk_sectors, "discard beyond the disk");
        }
    }
}

/// Segments stay inside their page; the sectors inside the disk.
fn check_segments(segs: &[Segment], sector: u64, limits: &Limits) {
    let mut total = 0u64;
    for s in segs {
        assert!(
            s.len > 0 && s.offset + s.len <= 4096,
            "segment {s:?} leaves its page"
        );
        assert_eq!(s.offset % 512, 0);
        assert_eq!(s.len % 512, 0);
        total += u64::from(s.len / 512);
    }
    let end = sector.checked_add(total).expect("sector range overflows");
    assert!(end <= limits.disk_sectors, "request beyond the disk");
}

/// blkback's `read_indirect`: each indirect page mapped read-only through
/// its grant, `count` segments copied out.
fn read_indirect(
    table: &FakeTable,
    guest: &[u8],
    pages: &[u32],
    count: u16,
) -> Option<Vec<blkif_request_segment>> {
    let mut out = Vec::with_capacity(usize::from(count));
    let mut left = usize::from(count);
    for &gref in pages {
        if gref >= xen_shim_proto::grant::GrantTableView::nr_entries(table) {
            return None;
        }
        set_status(table, gref, MAPPER, true, false, true).ok()?;
        let target = read_target(table, gref);
        clear_status(table, gref, xen_abi::grant_table::GTF_reading);
        let frame = usize::try_from(target.ok()?.frame % GUEST_PAGES as u64).ok()?;
        let page = guest.get(frame * 4096..(frame + 1) * 4096)?;
        let n = left.min(BLKIF_SEGS_PER_INDIRECT_FRAME);
        let bytes = n * core::mem::size_of::<blkif_request_segment>();
        for c in page[..bytes].chunks_exact(core::mem::size_of::<blkif_request_segment>()) {
            out.push(blkif_request_segment::read_from_bytes(c).ok()?);
        }
        left -= n;
    }
    assert_eq!(left, 0, "indirect pages hold fewer segments than the count");
    Some(out)
}
