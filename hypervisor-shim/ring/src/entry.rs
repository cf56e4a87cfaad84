//! Plain-old-data ring entries.

/// A type that can be stored in and copied out of shared ring slots.
///
/// Slots are copied word by word with volatile accesses; the peer may write
/// any bytes into them at any time, so every value copied out may be garbage.
///
/// # Safety
///
/// Implementors must be plain old data:
/// - every bit pattern of `size_of::<Self>()` bytes is a valid value (no
///   `bool`, `char`, enums, references, pointers with invariants, `NonZero*`);
/// - the type has no padding bytes (every byte of a value is initialized, so it
///   can be read as words when it is pushed);
/// - no invariant depends on padding or on the value having been produced by
///   this program.
///
/// `#[repr(C)]` structs of integers laid out without holes qualify.
pub unsafe trait RingEntry: Copy + 'static {}

macro_rules! impl_ring_entry {
    ($($t:ty),*) => {
        $(
            // SAFETY: primitive integers have no padding and every bit pattern is valid.
            unsafe impl RingEntry for $t {}
        )*
    };
}

impl_ring_entry!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128);

// SAFETY: an array has no padding between elements (an element's size is a
// multiple of its alignment) and no padding at the end; each element is POD by
// the bound, so every bit pattern of the array is valid.
unsafe impl<T: RingEntry, const N: usize> RingEntry for [T; N] {}
