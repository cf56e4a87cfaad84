//! The runtime pieces a freestanding kernel needs: the heap allocator, the
//! `mem*` symbols `core` calls, the panic handler and the unwinder stand-ins.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// Smallest block (bytes, log2).
const MIN_SHIFT: usize = 4;
/// Largest block (bytes, log2): 64 MiB.
const MAX_SHIFT: usize = 26;
const CLASSES: usize = MAX_SHIFT - MIN_SHIFT + 1;

struct HeapState {
    /// Next never-used byte and the end of the heap region.
    next: usize,
    end: usize,
    /// Free list heads per power-of-two class (intrusive: the first word of
    /// a free block links to the next).
    free: [usize; CLASSES],
}

/// A power-of-two size-class allocator: blocks are carved from the heap
/// region (set by [`init_heap`]) and recycled per class. One vCPU, no
/// interrupts: the spin lock is never contended, it only makes `Sync` true.
struct Heap {
    lock: AtomicBool,
    state: UnsafeCell<HeapState>,
}

// SAFETY: `state` is only touched with `lock` held.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap {
    lock: AtomicBool::new(false),
    state: UnsafeCell::new(HeapState {
        next: 0,
        end: 0,
        free: [0; CLASSES],
    }),
};

/// Hands `[start, end)` (identity-mapped RAM nobody else uses) to the heap.
///
/// # Safety
/// The range must be valid, unused memory for the rest of the kernel's life.
pub unsafe fn init_heap(start: usize, end: usize) {
    HEAP.with(|s| {
        s.next = start;
        s.end = end;
    });
}

impl Heap {
    fn with<R>(&self, f: impl FnOnce(&mut HeapState) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held; nothing else references the state.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }
}

fn class(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = size.next_power_of_two().trailing_zeros() as usize;
    (shift <= MAX_SHIFT).then(|| shift - MIN_SHIFT)
}

// SAFETY: a block of class c is 2^(c + MIN_SHIFT) bytes aligned to its size
// (the region start is page-aligned and carving rounds `next` up to the
// block size), so it satisfies the layout; free lists hold only blocks
// returned by dealloc with the same class, never handed out twice.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(&layout) else {
            return core::ptr::null_mut();
        };
        let size = 1usize << (c + MIN_SHIFT);
        let reuse = layout.align() <= 4096;
        self.with(|s| {
            let head = s.free[c];
            if reuse && head != 0 {
                // SAFETY: `head` is a free block of this class whose first
                // word is the next link (written by dealloc).
                s.free[c] = unsafe { (head as *const usize).read() };
                return head as *mut u8;
            }
            let start = s.next.next_multiple_of(size.min(4096));
            let start = start.next_multiple_of(layout.align().max(16));
            match start.checked_add(size) {
                Some(end) if end <= s.end => {
                    s.next = end;
                    start as *mut u8
                }
                _ => core::ptr::null_mut(),
            }
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(&layout) else { return };
        if layout.align() > 4096 {
            return; // carved with a special alignment: not recycled
        }
        self.with(|s| {
            // SAFETY: `ptr` is a block of class c we handed out, now
            // unused: its first word becomes the free-list link.
            unsafe { (ptr as *mut usize).write(s.free[c]) };
            s.free[c] = ptr as usize;
        });
    }
}

/// The precompiled `alloc` of the std toolchain is built with `panic=unwind`,
/// so a few of its functions name the unwinder even though this kernel
/// aborts on panic and never unwinds: these stand-ins satisfy the linker.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::hypercall::console_write(b"pvhvm-kernel: unwinding is not supported\n");
    crate::hypercall::shutdown(xen_abi::xen::SHUTDOWN_crash)
}

/// See [`_Unwind_Resume`]: never called, since nothing unwinds.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::console::print_fmt(format_args!("pvhvm-kernel: panic: {info}\n"));
    crate::hypercall::shutdown(xen_abi::xen::SHUTDOWN_crash)
}

// memcpy, memmove, memset, memcmp, bcmp: xen-front-platform's `freestanding`
// feature.
