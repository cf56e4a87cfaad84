//! Kernel globals: set once at boot, then used by the one vCPU that runs
//! the kernel (no interrupts, no other thread), so plain cells suffice.

use core::cell::UnsafeCell;

/// A value set once and then read for the rest of the kernel's life.
pub struct Global<T>(UnsafeCell<Option<T>>);

// SAFETY: one vCPU runs the kernel and no interrupt handler touches a
// Global (the exception handlers never return), so there are no concurrent
// accesses.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// An unset global.
    pub const fn new() -> Self {
        Self(UnsafeCell::new(None))
    }

    /// Sets the value (once, at boot, before any `get`).
    pub fn set(&self, v: T) {
        // SAFETY: single-threaded (see the Sync impl); set is called at boot
        // before any reference from `get` exists.
        unsafe { *self.0.get() = Some(v) };
    }

    /// The value, if set.
    pub fn get(&self) -> Option<&T> {
        // SAFETY: single-threaded; after `set` the value is never replaced
        // while borrowed (set is only called once at boot).
        unsafe { (*self.0.get()).as_ref() }
    }
}
