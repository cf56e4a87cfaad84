//! Helpers over lists of [`IoVec`]s: cutting a byte range out of a list,
//! filling with zeros, copying to and from a byte buffer.

use super::IoVec;

/// The buffers covering bytes `start..start + len` of `iov` (the list's
/// bytes taken in order). Stops early if the list is shorter.
pub fn slice(iov: &[IoVec], start: usize, len: usize) -> Vec<IoVec> {
    let mut out = Vec::new();
    let mut skip = start;
    let mut want = len;
    for v in iov {
        if want == 0 {
            break;
        }
        if skip >= v.len {
            skip -= v.len;
            continue;
        }
        let n = (v.len - skip).min(want);
        out.push(IoVec {
            // `skip < v.len`, so the pointer stays inside the buffer; no
            // memory is reached here.
            ptr: v.ptr.wrapping_add(skip),
            len: n,
        });
        want -= n;
        skip = 0;
    }
    out
}

/// Total bytes of the list.
pub fn total(iov: &[IoVec]) -> usize {
    iov.iter().map(|v| v.len).sum()
}

/// Writes zeros into every buffer.
///
/// # Safety
///
/// Every buffer must be valid and writable for its length, with no Rust
/// reference to it alive.
pub unsafe fn zero(iov: &[IoVec]) {
    for v in iov {
        // SAFETY: the caller guarantees `v.len` writable bytes at `v.ptr`.
        unsafe { std::ptr::write_bytes(v.ptr, 0, v.len) };
    }
}

/// Copies `src` into the buffers, in order (as much as fits).
///
/// # Safety
///
/// As [`zero`]; `src` must not overlap the buffers.
pub unsafe fn copy_in(iov: &[IoVec], src: &[u8]) {
    let mut at = 0;
    for v in iov {
        let n = v.len.min(src.len() - at);
        // SAFETY: `n` bytes of `src` from `at` exist; the caller guarantees
        // `v.len >= n` writable bytes at `v.ptr`, not overlapping `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(at), v.ptr, n) };
        at += n;
        if at == src.len() {
            break;
        }
    }
}

/// Copies the buffers, in order, into `dst` (as much as fits).
///
/// # Safety
///
/// Every buffer must be valid and readable for its length; none may
/// overlap `dst`.
pub unsafe fn copy_out(iov: &[IoVec], dst: &mut [u8]) {
    let mut at = 0;
    for v in iov {
        let n = v.len.min(dst.len() - at);
        // SAFETY: the caller guarantees `v.len >= n` readable bytes at
        // `v.ptr`; `dst[at..at + n]` exists and does not overlap.
        unsafe { std::ptr::copy_nonoverlapping(v.ptr, dst.as_mut_ptr().add(at), n) };
        at += n;
        if at == dst.len() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_slice_crosses_buffers_and_trims() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 6];
        let l = [
            IoVec {
                ptr: a.as_mut_ptr(),
                len: 10,
            },
            IoVec {
                ptr: b.as_mut_ptr(),
                len: 6,
            },
        ];
        let s = slice(&l, 8, 5);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].len, s[1].len), (2, 3));
        assert_eq!(s[0].ptr, a.as_mut_ptr().wrapping_add(8));
        assert_eq!(s[1].ptr, b.as_mut_ptr());
        // SAFETY: the arrays outlive the call and are not borrowed.
        unsafe { copy_in(&s, &[1, 2, 3, 4, 5]) };
        assert_eq!(&a[8..], &[1, 2]);
        assert_eq!(&b[..4], &[3, 4, 5, 0]);
        assert_eq!(total(&l), 16);
        assert!(slice(&l, 16, 4).is_empty());
    }
}
