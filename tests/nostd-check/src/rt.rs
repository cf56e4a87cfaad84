//! The few runtime pieces a freestanding x86_64 Linux binary needs: raw
//! `write`/`exit` system calls, the `mem*` symbols `core` calls, and a panic
//! handler.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Size of the bump allocator's arena.
const HEAP_SIZE: usize = 8 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the arena is only handed out in disjoint pieces by `Bump::alloc`
// (an atomic bump of `next`), so no two users ever share bytes.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));

/// A bump allocator over a static array: `alloc` carves, `dealloc` never
/// reuses. Enough for the short exercise of the `alloc`-using crates.
struct Bump {
    next: AtomicUsize,
}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    next: AtomicUsize::new(0),
};

// SAFETY: `alloc` returns either null or a block of `layout.size()` bytes
// aligned to `layout.align()` inside ARENA that no other allocation overlaps
// (the compare-exchange reserves [start, end) for this caller alone).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = ARENA.0.get().cast::<u8>() as usize;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let Some(start) = (base + cur).checked_next_multiple_of(layout.align()) else {
                return core::ptr::null_mut();
            };
            let Some(end) = (start - base).checked_add(layout.size()) else {
                return core::ptr::null_mut();
            };
            if end > HEAP_SIZE {
                return core::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return start as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

/// `write(2)` through a raw system call.
pub fn write(fd: i32, buf: &[u8]) {
    let ret: isize;
    // SAFETY: SYS_write (1) reads `buf.len()` bytes from a valid slice; the
    // syscall clobbers rcx and r11 only, which are declared.
    unsafe {
        asm!("syscall", inlateout("rax") 1isize => ret, in("rdi") fd as isize,
             in("rsi") buf.as_ptr(), in("rdx") buf.len(),
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    let _ = ret;
}

/// `exit_group(2)` through a raw system call.
pub fn exit(code: i32) -> ! {
    // SAFETY: SYS_exit_group (231) does not return.
    unsafe {
        asm!("syscall", in("rax") 231isize, in("rdi") code as isize, options(noreturn, nostack));
    }
}

/// The precompiled `alloc` of the std toolchain is built with `panic=unwind`,
/// so a few of its functions name the unwinder even though this binary
/// aborts on panic and never unwinds: these stand-ins satisfy the linker and
/// abort if ever reached.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    write(2, b"nostd-check: unwinding is not supported\n");
    exit(134)
}

/// See [`_Unwind_Resume`]: never called, since nothing unwinds.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    write(2, b"nostd-check: panic\n");
    exit(101)
}

// memcpy, memmove, memset, memcmp, bcmp: xen-front-platform's `freestanding`
// feature.
