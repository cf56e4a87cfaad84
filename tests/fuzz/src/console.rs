//! `console`: the backend end of a console page (`xencons_interface`,
//! `xen_ring::bytes::ConsRing::backend`) as backendd's console thread uses
//! it (read the guest's output, write input into the room left), with the
//! guest's end writing and reading, and the indices overwritten at random.
//! While nobody has lied, the backend reads exactly the bytes the guest
//! wrote, in order; whatever the page says, the free space and the bytes
//! available stay within the ring.

use std::sync::atomic::{AtomicU32, Ordering};

use xen_ring::bytes::{cons_offsets, ConsRing};
use xen_ring::SharedRing;

use crate::page::Pages;
use crate::Input;

/// Most operations per input.
const MAX_OPS: usize = 4096;

pub(crate) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut mem = Pages::new(1);
    let base = mem.base();
    // SAFETY: the page is valid for 4096 bytes and outlives both ends
    // (dropped at the end of this function, before `mem`); it is only
    // accessed through the rings and the atomic pokes below.
    let Ok(guest_mem) = (unsafe { SharedRing::new(base.as_ptr(), 4096) }) else {
        return;
    };
    // SAFETY: as above; this handle is the backend end, the other the
    // guest's: one endpoint per role.
    let Ok(back_mem) = (unsafe { SharedRing::new(base.as_ptr(), 4096) }) else {
        return;
    };
    let Ok(mut guest) = ConsRing::guest(guest_mem) else {
        return;
    };
    let Ok(mut back) = ConsRing::backend(back_mem) else {
        return;
    };
    let word = |off: usize| {
        // SAFETY: an index word of the interface, 4-aligned, in the page;
        // every access to it is atomic.
        unsafe { AtomicU32::from_ptr(base.as_ptr().add(off).cast()) }
    };
    // What the guest wrote and the backend has not read yet, while honest.
    let mut expect: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut honest = true;
    let mut buf = [0u8; 2048];
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 6 {
            0 => {
                let n = usize::from(input.u8()) * 8;
                let bytes = input.bytes(n);
                match guest.try_write(bytes) {
                    Ok(w) => expect.extend(&bytes[..w]),
                    Err(_) => honest = false,
                }
            }
            1 => {
                // backendd's round: read until empty (bounded).
                for _ in 0..4 {
                    match back.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            assert!(n <= 2048);
                            if honest {
                                let want: Vec<u8> = expect.drain(..n.min(expect.len())).collect();
                                assert_eq!(&buf[..n], &want[..], "console bytes out of order");
                            }
                        }
                        Err(_) => {
                            honest = false;
                            break;
                        }
                    }
                }
            }
            2 => {
                let n = usize::from(input.u8()) * 4;
                let bytes = input.bytes(n);
                if let Ok(room) = back.free_space() {
                    assert!(room <= 1024, "input room {room} beyond the ring");
                    let w = back.try_write(&bytes[..bytes.len().min(room as usize)]);
                    if let Ok(w) = w {
                        assert!(w <= room as usize);
                    }
                }
            }
            3 => {
                let _ = guest.read(&mut buf[..1024]);
            }
            4 => {
                let off = match input.u8() & 3 {
                    0 => cons_offsets::IN_CONS,
                    1 => cons_offsets::IN_PROD,
                    2 => cons_offsets::OUT_CONS,
                    _ => cons_offsets::OUT_PROD,
                };
                word(off).store(input.u32(), Ordering::SeqCst);
                honest = false;
            }
            _ => {
                if let Ok(a) = back.available() {
                    assert!(a <= 2048, "{a} bytes available in a 2048-byte ring");
                }
            }
        }
        if honest {
            assert_eq!(back.available().ok(), u32::try_from(expect.len()).ok());
        }
    }
}
