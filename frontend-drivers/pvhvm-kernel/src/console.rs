//! The console: every line goes to the VMM's log through `CONSOLEIO_write`
//! (Xen's hypervisor console: there from the first line on) and, once
//! [`init`] has run, into the Xen console ring (`xencons_interface.out`,
//! dropped when the ring is full: a console backend that does not read must
//! not stall the guest) with a notification on the console channel.

use core::cell::RefCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, Ordering};

use xen_ring::bytes::{ByteRingLayout, ByteRingProducer};
use xen_ring::SharedRing;

use crate::global::Global;
use crate::hypercall;

struct Ring {
    out: RefCell<ByteRingProducer>,
    /// The console port (a resume in a new domain changes it).
    port: AtomicU32,
}

static RING: Global<Ring> = Global::new();

/// Attaches the console ring page (guest-physical `page`) and its port.
///
/// # Safety
/// `page` must be the domain's console ring page, used by nothing else.
pub unsafe fn init(page: u64, port: u32) {
    // SAFETY: the caller guarantees the page; the ring accesses it only
    // atomically and volatilely.
    let Ok(mem) = (unsafe { SharedRing::new(page as *mut u8, 4096) }) else {
        return;
    };
    if let Ok(p) = ByteRingProducer::new(mem, ByteRingLayout::CONSOLE_OUT) {
        RING.set(Ring {
            out: RefCell::new(p),
            port: AtomicU32::new(port),
        });
    }
}

/// The console port of a new domain (a resume after a suspend: the ring
/// page is the same, its indexes carry on).
pub fn set_port(port: u32) {
    if let Some(r) = RING.get() {
        r.port.store(port, Ordering::Relaxed);
    }
}

fn emit(b: &[u8]) {
    hypercall::console_write(b);
    if let Some(r) = RING.get() {
        if let Ok(mut out) = r.out.try_borrow_mut() {
            if out.write(b) > 0 {
                hypercall::doorbell(r.port.load(Ordering::Relaxed));
            }
        }
    }
}

struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl LineBuf {
    fn flush(&mut self) {
        if self.len > 0 {
            emit(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &c in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = c;
            self.len += 1;
            if c == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

/// Prints formatted text (no heap needed).
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut l = LineBuf {
        buf: [0; 512],
        len: 0,
    };
    let _ = l.write_fmt(args);
    l.flush();
}

/// `println!` to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
