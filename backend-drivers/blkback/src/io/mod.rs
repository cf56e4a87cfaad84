//! I/O engines: where the disk's bytes live.
//!
//! [`DiskImage`] is what a device needs of a disk: its size, vectored reads
//! and writes at a byte offset, flush (durable before it returns), discard
//! where the format can, and whether it is read-only. Four engines
//! implement it: [`raw::RawImage`] (a file or block device),
//! [`qcow2::Qcow2Image`] (QEMU's qcow2, versions 2 and 3),
//! [`nbd::NbdImage`] (a client of an NBD export, over TCP or a Unix socket)
//! and [`rbd::RbdImage`] (a Ceph RBD image, through librbd).
//! [`pool::IoPool`] runs the transfers of a batch in parallel; every engine
//! is `Sync` and serves concurrent calls.

pub mod iov;
pub mod nbd;
pub mod pool;
pub mod qcow2;
pub mod raw;
pub mod rbd;

pub use nbd::{NbdError, NbdImage, NbdTarget};
pub use pool::{IoPool, PoolError};
pub use qcow2::{Qcow2Error, Qcow2Image};
pub use raw::{IoVec, RawError, RawImage};
pub use rbd::{RbdError, RbdImage, RbdTarget};

/// Errors of a disk engine.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The raw engine failed.
    #[error("raw image I/O failed")]
    Raw(#[source] RawError),
    /// The qcow2 engine failed.
    #[error("qcow2 image I/O failed")]
    Qcow2(#[from] Qcow2Error),
    /// The NBD engine failed.
    #[error("NBD I/O failed")]
    Nbd(#[from] NbdError),
    /// The RBD engine failed.
    #[error("RBD I/O failed")]
    Rbd(#[from] RbdError),
    /// The disk cannot discard (the answer is `BLKIF_RSP_EOPNOTSUPP`).
    #[error("the disk does not support discard")]
    DiscardUnsupported,
}

impl From<RawError> for ImageError {
    fn from(e: RawError) -> Self {
        match e {
            RawError::DiscardUnsupported => ImageError::DiscardUnsupported,
            e => ImageError::Raw(e),
        }
    }
}

impl ImageError {
    /// Whether the disk itself is broken (a corrupt qcow2 table, an NBD
    /// server that broke the protocol): the device should fail rather than
    /// answer this request alone with an error.
    pub fn is_fatal(&self) -> bool {
        match self {
            ImageError::Qcow2(e) => e.is_fatal(),
            ImageError::Nbd(e) => e.is_fatal(),
            _ => false,
        }
    }
}

/// What runs when an asynchronous transfer ([`DiskImage::submit`]) ends.
pub type AioDone = Box<dyn FnOnce(Result<(), ImageError>) + Send>;

/// A disk as a device sees it. Implementations serve concurrent calls
/// from several threads.
pub trait DiskImage: Send + Sync + std::fmt::Debug {
    /// What the disk is (a path or an NBD URI), for messages.
    fn describe(&self) -> String;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// Whether writes and discards are refused.
    fn readonly(&self) -> bool;

    /// The discard granularity in bytes, or `None` if the disk cannot
    /// discard.
    fn discard_granularity(&self) -> Option<u64>;

    /// Whether data bypasses Dom0's page cache (`O_DIRECT`).
    fn is_direct(&self) -> bool {
        false
    }

    /// Whether the engine completes transfers on its own threads
    /// ([`Self::submit`]): the device then starts every transfer with it,
    /// many in flight, rather than calling [`Self::readv`]/[`Self::writev`]
    /// in its worker or I/O threads.
    fn is_async(&self) -> bool {
        false
    }

    /// Starts a read (`write` false) or write of `iov` at `offset`;
    /// `done` runs once with the result, on any thread (the caller's, if
    /// the transfer could not be started). Engines that are not
    /// [`Self::is_async`] run it to completion here.
    ///
    /// # Safety
    ///
    /// As [`Self::readv`]/[`Self::writev`], until `done` has run.
    unsafe fn submit(&self, write: bool, iov: &[IoVec], offset: u64, done: AioDone) {
        // SAFETY: forwarded from the caller; the transfer completes here.
        let r = unsafe {
            if write {
                self.writev(iov, offset)
            } else {
                self.readv(iov, offset)
            }
        };
        done(r);
    }

    /// Reads `offset..` into the buffers, completely.
    ///
    /// # Safety
    ///
    /// Every `iov` must point to `len` bytes that stay mapped and writable
    /// for the duration of the call; nothing in this process may hold a
    /// Rust reference to them.
    unsafe fn readv(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError>;

    /// Writes the buffers at `offset..`, completely.
    ///
    /// # Safety
    ///
    /// Every `iov` must point to `len` readable bytes that stay mapped for
    /// the duration of the call.
    unsafe fn writev(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), ImageError>;

    /// Discards `offset..offset + len` (advisory: parts the format cannot
    /// drop are left as they are).
    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError>;
}

impl DiskImage for RawImage {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn size(&self) -> u64 {
        RawImage::size(self)
    }

    fn readonly(&self) -> bool {
        RawImage::readonly(self)
    }

    fn discard_granularity(&self) -> Option<u64> {
        Some(self.block_size())
    }

    fn is_direct(&self) -> bool {
        RawImage::is_direct(self)
    }

    unsafe fn readv(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { RawImage::readv(self, iov, offset) }?)
    }

    unsafe fn writev(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { RawImage::writev(self, iov, offset) }?)
    }

    fn flush(&self) -> Result<(), ImageError> {
        Ok(RawImage::flush(self)?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        Ok(RawImage::discard(self, offset, len)?)
    }
}

impl DiskImage for RbdImage {
    fn describe(&self) -> String {
        self.target().uri()
    }

    fn size(&self) -> u64 {
        RbdImage::size(self)
    }

    fn readonly(&self) -> bool {
        RbdImage::readonly(self)
    }

    fn discard_granularity(&self) -> Option<u64> {
        // librbd takes any byte range (it zeroes or skips partial objects).
        Some(4096)
    }

    fn is_async(&self) -> bool {
        true
    }

    unsafe fn submit(&self, write: bool, iov: &[IoVec], offset: u64, done: AioDone) {
        // SAFETY: forwarded from the caller.
        unsafe {
            RbdImage::submit_rw(
                self,
                write,
                iov,
                offset,
                Box::new(move |r| done(r.map_err(ImageError::from))),
            )
        }
    }

    unsafe fn readv(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { RbdImage::readv(self, iov, offset) }?)
    }

    unsafe fn writev(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { RbdImage::writev(self, iov, offset) }?)
    }

    fn flush(&self) -> Result<(), ImageError> {
        Ok(RbdImage::flush(self)?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        Ok(RbdImage::discard(self, offset, len)?)
    }
}
