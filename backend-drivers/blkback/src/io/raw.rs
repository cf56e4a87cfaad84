//! Raw disk images: positioned vectored I/O on the image file.
//!
//! The image is opened twice: with `O_DIRECT` when the filesystem accepts it
//! (so guest data bypasses Dom0's page cache, as Linux blkback's `phy`
//! devices do), and buffered as a fallback for requests `O_DIRECT` refuses
//! with `EINVAL` (alignment rules of the filesystem). Reads and writes go
//! straight between the file and the mapped guest pages with
//! `preadv`/`pwritev` (zero copy); flush is `fdatasync`; discard is
//! `fallocate(PUNCH_HOLE | KEEP_SIZE)`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors of the raw engine.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image's size could not be read.
    #[error("cannot read the size of disk image {path}")]
    Size {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A read or write failed.
    #[error("{op} of {len} bytes at offset {offset} failed")]
    Io {
        /// `"read"`, `"write"`.
        op: &'static str,
        /// Bytes.
        len: u64,
        /// Byte offset.
        offset: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file ended before a read was complete, or a write made no progress.
    #[error("{op} at offset {offset} stopped after {done} of {len} bytes")]
    Short {
        /// `"read"`, `"write"`.
        op: &'static str,
        /// Byte offset.
        offset: u64,
        /// Bytes transferred.
        done: u64,
        /// Bytes asked.
        len: u64,
    },
    /// `fdatasync` failed.
    #[error("flushing the image failed")]
    Flush(#[source] std::io::Error),
    /// The filesystem does not support punching holes.
    #[error("the image's filesystem does not support discard")]
    DiscardUnsupported,
    /// `fallocate` failed.
    #[error("discard of {len} bytes at offset {offset} failed")]
    Discard {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// One buffer of a vectored transfer: `len` bytes at `ptr`, which must stay
/// valid (mapped, and writable for reads) for the call.
#[derive(Debug, Clone, Copy)]
pub struct IoVec {
    /// Start of the buffer.
    pub ptr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

/// Largest iovec count of one `preadv`/`pwritev` (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;
/// Iovec arrays up to this length live on the stack.
const STACK_IOVS: usize = 32;

/// A raw image file.
#[derive(Debug)]
pub struct RawImage {
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    size: u64,
    block_size: u64,
    readonly: bool,
}

impl RawImage {
    /// Opens `path` (read-only if `readonly`), with an `O_DIRECT` handle when
    /// `direct` and the filesystem accepts it.
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<Self, RawError> {
        let mut o = OpenOptions::new();
        o.read(true).write(!readonly);
        let buffered = o.open(path).map_err(|source| RawError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let direct = if direct {
            let mut d = OpenOptions::new();
            d.read(true).write(!readonly).custom_flags(libc::O_DIRECT);
            d.open(path).ok()
        } else {
            None
        };
        let meta = buffered.metadata().map_err(|source| RawError::Size {
            path: path.to_path_buf(),
            source,
        })?;
        let size = if meta.file_type().is_block_device() {
            block_device_size(&buffered).map_err(|source| RawError::Size {
                path: path.to_path_buf(),
                source,
            })?
        } else {
            meta.len()
        };
        use std::os::unix::fs::MetadataExt;
        let block_size = meta.blksize().max(512);
        Ok(Self {
            path: path.to_path_buf(),
            buffered,
            direct,
            size,
            block_size,
            readonly,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether an `O_DIRECT` handle is open.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The filesystem's preferred block size (the discard granularity).
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Reads `offset..` into the buffers, completely.
    ///
    /// # Safety
    ///
    /// Every `iov` must point to `len` bytes that stay mapped and writable
    /// for the duration of the call; nothing in this process may hold a
    /// Rust reference to them.
    pub unsafe fn readv(&self, iov: &[IoVec], offset: u64) -> Result<(), RawError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.transfer(iov, offset, false) }
    }

    /// Writes the buffers at `offset..`, completely.
    ///
    /// # Safety
    ///
    /// Every `iov` must point to `len` readable bytes that stay mapped for
    /// the duration of the call.
    pub unsafe fn writev(&self, iov: &[IoVec], offset: u64) -> Result<(), RawError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.transfer(iov, offset, true) }
    }

    /// # Safety
    ///
    /// As [`RawImage::readv`] / [`RawImage::writev`].
    unsafe fn transfer(&self, iov: &[IoVec], offset: u64, write: bool) -> Result<(), RawError> {
        let op = if write { "write" } else { "read" };
        // Up to STACK_IOVS buffers (a request of 32 segments, Linux
        // blkfront's default) need no allocation.
        let to_c = |v: &IoVec| libc::iovec {
            iov_base: v.ptr.cast(),
            iov_len: v.len,
        };
        let mut stack = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; STACK_IOVS];
        let mut heap: Vec<libc::iovec> = Vec::new();
        let vecs: &mut [libc::iovec] = match stack.get_mut(..iov.len()) {
            Some(s) => {
                for (d, v) in s.iter_mut().zip(iov) {
                    *d = to_c(v);
                }
                s
            }
            None => {
                heap.extend(iov.iter().map(to_c));
                &mut heap
            }
        };
        let total: u64 = iov.iter().map(|v| v.len as u64).sum();
        let mut fd = self
            .direct
            .as_ref()
            .map_or(self.buffered.as_raw_fd(), |f| f.as_raw_fd());
        let mut done: u64 = 0;
        let mut first = 0usize;
        // Each round transfers at least one byte or ends; bounded by `total`
        // plus one fallback round.
        while first < vecs.len() {
            let pos = offset.checked_add(done).ok_or(RawError::Short {
                op,
                offset,
                done,
                len: total,
            })?;
            let cnt = (vecs.len() - first).min(IOV_MAX);
            let off = libc::off_t::try_from(pos).map_err(|_| RawError::Short {
                op,
                offset,
                done,
                len: total,
            })?;
            // SAFETY: `vecs[first..first + cnt]` describe buffers the caller
            // guarantees valid (and writable for reads) during this call;
            // `cnt` <= IOV_MAX fits in c_int.
            let r = unsafe {
                if write {
                    libc::pwritev(fd, vecs.as_ptr().add(first), cnt as libc::c_int, off)
                } else {
                    libc::preadv(fd, vecs.as_ptr().add(first), cnt as libc::c_int, off)
                }
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EINVAL) if fd != self.buffered.as_raw_fd() => {
                        // O_DIRECT alignment refused: use the buffered handle.
                        fd = self.buffered.as_raw_fd();
                        continue;
                    }
                    _ => {
                        return Err(RawError::Io {
                            op,
                            len: total,
                            offset,
                            source: e,
                        })
                    }
                }
            }
            let mut n = r as u64;
            if n == 0 {
                return Err(RawError::Short {
                    op,
                    offset,
                    done,
                    len: total,
                });
            }
            done += n;
            // Skip the buffers that are complete, trim the partial one.
            while n > 0 && first < vecs.len() {
                let l = vecs[first].iov_len as u64;
                if n >= l {
                    n -= l;
                    first += 1;
                } else {
                    // SAFETY: `n < iov_len`, so the new base stays inside
                    // the same buffer.
                    vecs[first].iov_base =
                        unsafe { vecs[first].iov_base.cast::<u8>().add(n as usize) }.cast();
                    vecs[first].iov_len -= n as usize;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Makes every completed write durable (`fdatasync`).
    pub fn flush(&self) -> Result<(), RawError> {
        self.buffered.sync_data().map_err(RawError::Flush)
    }

    /// Punches a hole over `offset..offset + len` (the size stays).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), RawError> {
        let (o, l) = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            (Ok(o), Ok(l)) => (o, l),
            _ => {
                return Err(RawError::Discard {
                    offset,
                    len,
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                })
            }
        };
        // SAFETY: fallocate on an fd this value owns; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.buffered.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Err(RawError::DiscardUnsupported),
            _ => Err(RawError::Discard {
                offset,
                len,
                source: e,
            }),
        }
    }
}

use std::os::unix::fs::FileTypeExt;

/// `BLKGETSIZE64` of a block device.
fn block_device_size(f: &File) -> std::io::Result<u64> {
    // _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which is valid.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new_in(std::env::temp_dir()).expect("temp file");
        f.as_file().set_len(len).expect("size");
        f
    }

    #[test]
    fn test_raw_write_then_read_roundtrips() {
        let f = image(1 << 20);
        let img = RawImage::open(f.path(), false, true).expect("open");
        let mut a = Box::new(Page([0xab; 4096]));
        let mut b = Box::new(Page([0; 4096]));
        let w = [IoVec {
            ptr: a.0.as_mut_ptr(),
            len: 4096,
        }];
        // SAFETY: the boxes outlive the calls and are not borrowed meanwhile.
        unsafe { img.writev(&w, 8192) }.expect("write");
        let r = [
            IoVec {
                ptr: b.0.as_mut_ptr(),
                len: 512,
            },
            IoVec {
                // SAFETY: 512 is inside the page.
                ptr: unsafe { b.0.as_mut_ptr().add(512) },
                len: 3584,
            },
        ];
        // SAFETY: as above.
        unsafe { img.readv(&r, 8192) }.expect("read");
        assert!(b.0.iter().all(|&x| x == 0xab));
        img.flush().expect("flush");
    }

    #[test]
    fn test_raw_read_past_end_is_short() {
        let f = image(4096);
        let img = RawImage::open(f.path(), false, false).expect("open");
        let mut b = Box::new(Page([0; 4096]));
        let r = [IoVec {
            ptr: b.0.as_mut_ptr(),
            len: 4096,
        }];
        // SAFETY: the box outlives the call.
        let e = unsafe { img.readv(&r, 2048) };
        assert!(
            matches!(e, Err(RawError::Short { done: 2048, .. })),
            "{e:?}"
        );
    }

    #[test]
    fn test_raw_readonly_open_refuses_write() {
        let f = image(4096);
        let img = RawImage::open(f.path(), true, false).expect("open");
        let mut a = Box::new(Page([1; 4096]));
        let w = [IoVec {
            ptr: a.0.as_mut_ptr(),
            len: 4096,
        }];
        // SAFETY: the box outlives the call.
        let r = unsafe { img.writev(&w, 0) };
        assert!(matches!(r, Err(RawError::Io { .. })), "{r:?}");
    }
}
