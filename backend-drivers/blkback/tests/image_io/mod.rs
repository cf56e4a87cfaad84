//! Byte-level helpers of the engine tests (`nbd.rs`, `qcow2.rs`, `rbd.rs`):
//! a write and a read through [`DiskImage`]'s vectored calls, and a seeded
//! pseudo-random pattern.
#![allow(dead_code)]

use xen_blkback::io::{DiskImage, IoVec};
use xen_blkback::ImageError;

/// Writes `data` at `off` (one buffer).
pub fn write(img: &dyn DiskImage, off: u64, data: &mut [u8]) -> Result<(), ImageError> {
    let v = [IoVec {
        ptr: data.as_mut_ptr(),
        len: data.len(),
    }];
    // SAFETY: `data` is borrowed mutably for the call and not touched meanwhile.
    unsafe { img.writev(&v, off) }
}

/// Reads `len` bytes at `off` into two buffers (pieces cross an iovec
/// boundary).
pub fn read(img: &dyn DiskImage, off: u64, len: usize) -> Result<Vec<u8>, ImageError> {
    let mut b = vec![0u8; len];
    let (a, c) = b.split_at_mut(len / 3);
    let v = [
        IoVec {
            ptr: a.as_mut_ptr(),
            len: a.len(),
        },
        IoVec {
            ptr: c.as_mut_ptr(),
            len: c.len(),
        },
    ];
    // SAFETY: `b` outlives the call and is not otherwise borrowed.
    unsafe { img.readv(&v, off) }?;
    Ok(b)
}

/// `len` xorshift bytes of `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
