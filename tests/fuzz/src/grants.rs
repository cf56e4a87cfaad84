//! A grant table of hostile entries behind the backends' requests, checked
//! with the mapper's own code (`xen_shim_dom0::grant`): what a backend maps
//! for a request goes through `set_status` / `read_target` / `clear_status`
//! exactly as through the shim.

use xen_abi::grant_table::{GTF_reading, GTF_writing};
use xen_shim_dom0::grant::fake::FakeTable;
use xen_shim_dom0::grant::{clear_status, read_target, set_status};
use xen_shim_proto::grant::GrantTableView;

use crate::Input;

/// The backend's domain, the only one a correct entry grants to.
pub(crate) const MAPPER: u16 = 0;

/// A table of 1..=16 entries (v1 or v2) filled from the input: each entry
/// is a valid grant to the mapper, read-only or not, or raw garbage.
pub(crate) fn table(input: &mut Input<'_>) -> FakeTable {
    let b = input.u8();
    let version = if b & 1 == 0 { 1 } else { 2 };
    let n = usize::from(b >> 1) % 16 + 1;
    let t = FakeTable::new(version, n);
    for gref in 0..n as u32 {
        let kind = input.u8();
        if kind & 0xc0 == 0xc0 {
            t.poke(gref, 0, input.u64());
            if version == 2 {
                t.poke(gref, 1, input.u64());
            }
        } else {
            let frame = u64::from(input.u16());
            let _ = xen_shim_proto::grant::grant_access(&t, gref, MAPPER, frame, kind & 1 != 0);
        }
    }
    t
}

/// Maps `gref` for reading (and writing unless `readonly`) as a backend
/// does, checks what the mapper promises, and unmaps. Returns whether the
/// map succeeded.
pub(crate) fn map_unmap(t: &FakeTable, gref: u32, readonly: bool) -> bool {
    if gref >= t.nr_entries() {
        return false;
    }
    if set_status(t, gref, MAPPER, readonly, false, true).is_err() {
        return false;
    }
    let ok = read_target(t, gref).is_ok();
    let bits = if readonly {
        GTF_reading
    } else {
        GTF_reading | GTF_writing
    };
    clear_status(t, gref, bits);
    ok
}

/// The grant entry's flags say it is read-only: a writable map of it must
/// have been refused.
pub(crate) fn assert_no_writable_map_of_readonly(t: &FakeTable, gref: u32, mapped_rw: bool) {
    if !mapped_rw || gref >= t.nr_entries() {
        return;
    }
    let (flags, _) = xen_shim_proto::grant::entry_flags(t, gref).unwrap_or((0, 0));
    assert_eq!(
        flags & xen_abi::grant_table::GTF_readonly,
        0,
        "grant {gref} is read-only but was mapped writable"
    );
}
