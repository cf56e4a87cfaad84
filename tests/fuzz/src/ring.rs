//! `ring`: an `io/ring.h` front and back ring (`xen_ring::FrontRing`,
//! `BackRing`) over one shared page, driven by the input's operations,
//! while the other side's indices and slots are overwritten at random (a
//! hostile peer). Whatever the page says, neither side may hold more than a
//! ring of work: the back end never takes more requests than it can answer,
//! the front end never has more requests out than slots.

use std::sync::atomic::{AtomicU32, Ordering};

use xen_ring::{BackRing, FrontRing, RingEntry, SharedRing};

use crate::page::Pages;
use crate::Input;

/// Most operations per input.
const MAX_OPS: usize = 4096;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let shape = input.u8();
    let pages = if shape & 1 == 0 { 1 } else { 2 };
    if shape & 2 == 0 {
        drive::<[u8; 16]>(&mut input, pages);
    } else {
        // blkif's slot size.
        drive::<[u64; 14]>(&mut input, pages);
    }
}

trait Entry: RingEntry {
    fn from_input(input: &mut Input<'_>) -> Self;
}

impl Entry for [u8; 16] {
    fn from_input(input: &mut Input<'_>) -> Self {
        input.array()
    }
}

impl Entry for [u64; 14] {
    fn from_input(input: &mut Input<'_>) -> Self {
        let mut e = [0u64; 14];
        e[0] = input.u64();
        e
    }
}

fn drive<E: Entry>(input: &mut Input<'_>, pages: usize) {
    let mut mem = Pages::new(pages);
    let len = mem.len();
    let base = mem.base();
    // SAFETY: `mem` is valid for `len` bytes and outlives both rings (they
    // are dropped at the end of this function, before `mem`); the page is
    // only accessed through the rings and the atomic pokes below.
    let (Ok(front_mem), Ok(back_mem)) = (unsafe { SharedRing::new(base.as_ptr(), len) }, {
        // SAFETY: as above: one front and one back end on the page.
        unsafe { SharedRing::new(base.as_ptr(), len) }
    }) else {
        return;
    };
    let Ok(mut front) = FrontRing::<E, E>::init(front_mem) else {
        return;
    };
    let Ok(mut back) = BackRing::<E, E>::attach(back_mem) else {
        return;
    };
    let nr = front.nr_ents();
    assert_eq!(nr, back.nr_ents());
    let word = |off: usize| {
        // SAFETY: off is 4-aligned and inside the page (the header's first
        // 16 bytes or a slot); all accesses to it are atomic or volatile.
        unsafe { AtomicU32::from_ptr(base.as_ptr().add(off).cast()) }
    };
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 11 {
            0 => {
                let e = E::from_input(input);
                let _ = front.push_request(&e);
            }
            1 => {
                let _ = front.push_requests_and_check_notify();
            }
            2 => {
                let _ = back.take_request();
            }
            3 => {
                let e = E::from_input(input);
                let _ = back.push_response(&e);
            }
            4 => {
                let _ = back.push_responses_and_check_notify();
            }
            5 => {
                let _ = front.take_response();
            }
            6 => {
                let _ = back.final_check_for_requests();
            }
            7 => {
                let _ = front.final_check_for_responses();
            }
            8 => {
                // The peer rewrites an index: req_prod, req_event,
                // rsp_prod or rsp_event.
                let which = usize::from(input.u8() & 3) * 4;
                word(which).store(input.u32(), Ordering::SeqCst);
            }
            9 => {
                // The peer scribbles on a slot.
                let off = 64 + (usize::from(input.u16()) % ((len - 64) / 4)) * 4;
                word(off).store(input.u32(), Ordering::SeqCst);
            }
            _ => {
                let mut out = [E::from_input(input); 4];
                let _ = back.take_requests(&mut out);
            }
        }
        assert!(
            back.pending_responses() <= nr,
            "back end took {} unanswered requests on a ring of {nr}",
            back.pending_responses()
        );
        assert!(
            back.unpublished_responses() <= nr,
            "back end holds {} unpublished responses",
            back.unpublished_responses()
        );
        assert!(
            front.req_prod_pvt().wrapping_sub(front.rsp_cons()) <= nr,
            "front end has more requests out than slots"
        );
        assert!(front.free_requests() <= nr);
    }
}
