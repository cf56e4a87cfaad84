//! Byte-stream rings: `xenstore_domain_interface` (`io/xs_wire.h`) and
//! `xencons_interface` (`io/console.h`).
//!
//! A byte ring is a power-of-two data area with a free-running producer and
//! consumer index (`MASK_XENSTORE_IDX`: position = `idx & (size - 1)`). Each
//! operation reads the peer's index once, before anything else, and verifies
//! it (`prod - cons <= size`, as xenstored's "Must read indexes once, and
//! before anything else, and verified"); its own index is kept privately and
//! only written.

use core::fmt;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::{RingError, SharedRing};

/// `XENSTORE_RING_SIZE`.
pub const XENSTORE_RING_SIZE: u32 = 1024;
/// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_CONNECTED`: the steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`: reconnect in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `XENSTORE_ERROR_NONE`.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `XENSTORE_ERROR_COMM`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `XENSTORE_ERROR_RINGIDX`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// Byte offsets in `struct xenstore_domain_interface`.
pub mod xs_offsets {
    /// `char req[XENSTORE_RING_SIZE]`.
    pub const REQ: usize = 0;
    /// `char rsp[XENSTORE_RING_SIZE]`.
    pub const RSP: usize = 1024;
    /// `XENSTORE_RING_IDX req_cons`.
    pub const REQ_CONS: usize = 2048;
    /// `XENSTORE_RING_IDX req_prod`.
    pub const REQ_PROD: usize = 2052;
    /// `XENSTORE_RING_IDX rsp_cons`.
    pub const RSP_CONS: usize = 2056;
    /// `XENSTORE_RING_IDX rsp_prod`.
    pub const RSP_PROD: usize = 2060;
    /// `uint32_t server_features`.
    pub const SERVER_FEATURES: usize = 2064;
    /// `uint32_t connection`.
    pub const CONNECTION: usize = 2068;
    /// `uint32_t error`.
    pub const ERROR: usize = 2072;
    /// `sizeof(struct xenstore_domain_interface)`.
    pub const SIZE: usize = 2076;
}

/// Byte offsets in `struct xencons_interface`.
pub mod cons_offsets {
    /// `char in[1024]`.
    pub const IN: usize = 0;
    /// `char out[2048]`.
    pub const OUT: usize = 1024;
    /// `XENCONS_RING_IDX in_cons`.
    pub const IN_CONS: usize = 3072;
    /// `XENCONS_RING_IDX in_prod`.
    pub const IN_PROD: usize = 3076;
    /// `XENCONS_RING_IDX out_cons`.
    pub const OUT_CONS: usize = 3080;
    /// `XENCONS_RING_IDX out_prod`.
    pub const OUT_PROD: usize = 3084;
    /// `sizeof(struct xencons_interface)`.
    pub const SIZE: usize = 3088;
}

/// Where one direction of a byte ring lives in its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRingLayout {
    /// Byte offset of the data area.
    pub data_offset: usize,
    /// Size of the data area in bytes, a power of two.
    pub size: u32,
    /// Byte offset of the producer index (4-aligned).
    pub prod_offset: usize,
    /// Byte offset of the consumer index (4-aligned).
    pub cons_offset: usize,
}

impl ByteRingLayout {
    /// xenstore requests: guest produces, xenstored consumes.
    pub const XENSTORE_REQ: ByteRingLayout = ByteRingLayout {
        data_offset: xs_offsets::REQ,
        size: XENSTORE_RING_SIZE,
        prod_offset: xs_offsets::REQ_PROD,
        cons_offset: xs_offsets::REQ_CONS,
    };
    /// xenstore replies and watch events: xenstored produces, guest consumes.
    pub const XENSTORE_RSP: ByteRingLayout = ByteRingLayout {
        data_offset: xs_offsets::RSP,
        size: XENSTORE_RING_SIZE,
        prod_offset: xs_offsets::RSP_PROD,
        cons_offset: xs_offsets::RSP_CONS,
    };
    /// Console input: backend produces, guest consumes.
    pub const CONSOLE_IN: ByteRingLayout = ByteRingLayout {
        data_offset: cons_offsets::IN,
        size: 1024,
        prod_offset: cons_offsets::IN_PROD,
        cons_offset: cons_offsets::IN_CONS,
    };
    /// Console output: guest produces, backend consumes.
    pub const CONSOLE_OUT: ByteRingLayout = ByteRingLayout {
        data_offset: cons_offsets::OUT,
        size: 2048,
        prod_offset: cons_offsets::OUT_PROD,
        cons_offset: cons_offsets::OUT_CONS,
    };

    /// Checks the layout against a memory length.
    fn validate(&self, len: usize) -> Result<(), RingError> {
        let size = self.size as usize;
        let fits = |off: usize, n: usize| off.checked_add(n).is_some_and(|end| end <= len);
        let ok = self.size.is_power_of_two()
            && fits(self.data_offset, size)
            && fits(self.prod_offset, 4)
            && fits(self.cons_offset, 4)
            && self.prod_offset % 4 == 0
            && self.cons_offset % 4 == 0
            && !overlaps(self.prod_offset, 4, self.cons_offset, 4)
            && !overlaps(self.prod_offset, 4, self.data_offset, size)
            && !overlaps(self.cons_offset, 4, self.data_offset, size);
        if ok {
            Ok(())
        } else {
            Err(RingError::BadLayout)
        }
    }

    /// Whether two layouts share any byte (they must not, to be used by two
    /// endpoints of the same process at once).
    fn overlaps(&self, other: &ByteRingLayout) -> bool {
        let a = [
            (self.data_offset, self.size as usize),
            (self.prod_offset, 4),
            (self.cons_offset, 4),
        ];
        let b = [
            (other.data_offset, other.size as usize),
            (other.prod_offset, 4),
            (other.cons_offset, 4),
        ];
        a.iter()
            .any(|&(x, xn)| b.iter().any(|&(y, yn)| overlaps(x, xn, y, yn)))
    }
}

fn overlaps(a: usize, an: usize, b: usize, bn: usize) -> bool {
    a < b.saturating_add(bn) && b < a.saturating_add(an)
}

/// The state both ends of one direction share: the memory and the layout.
struct Ring {
    mem: SharedRing,
    layout: ByteRingLayout,
}

impl Ring {
    fn new(mem: SharedRing, layout: ByteRingLayout) -> Result<Ring, RingError> {
        layout.validate(mem.len())?;
        Ok(Ring { mem, layout })
    }

    #[inline]
    fn prod(&self) -> &AtomicU32 {
        self.mem.word(self.layout.prod_offset)
    }

    #[inline]
    fn cons(&self) -> &AtomicU32 {
        self.mem.word(self.layout.cons_offset)
    }

    #[inline]
    fn mask(&self, idx: u32) -> usize {
        (idx & (self.layout.size - 1)) as usize
    }

    /// Verifies `prod - cons <= size`.
    #[inline]
    fn check(&self, prod: u32, cons: u32) -> Result<u32, RingError> {
        let used = prod.wrapping_sub(cons);
        if used > self.layout.size {
            return Err(RingError::ProducerOverflow {
                prod,
                cons,
                limit: self.layout.size,
            });
        }
        Ok(used)
    }

    /// Copies `src` into the data area starting at free-running index `idx`,
    /// wrapping around the end.
    fn copy_in(&self, idx: u32, src: &[u8]) {
        debug_assert!(src.len() <= self.layout.size as usize);
        let start = self.mask(idx);
        for (i, &b) in src.iter().enumerate() {
            let pos = (start + i) & (self.layout.size as usize - 1);
            let p = self.mem.ptr_at(self.layout.data_offset + pos);
            // SAFETY: pos < size and data_offset + size <= len (validated
            // layout), so p is inside the shared memory, valid for writes
            // (contract of SharedRing::new); bytes need no alignment.
            unsafe { ptr::write_volatile(p, b) };
        }
    }

    /// Copies bytes from the data area starting at `idx` into `dst`.
    fn copy_out(&self, idx: u32, dst: &mut [u8]) {
        debug_assert!(dst.len() <= self.layout.size as usize);
        let start = self.mask(idx);
        for (i, b) in dst.iter_mut().enumerate() {
            let pos = (start + i) & (self.layout.size as usize - 1);
            let p = self.mem.ptr_at(self.layout.data_offset + pos);
            // SAFETY: as in copy_in, for reads.
            *b = unsafe { ptr::read_volatile(p) };
        }
    }
}

/// The writing end of one byte-ring direction.
pub struct ByteRingProducer {
    ring: Ring,
    /// Our producer index; only we write it. Range: `prod - cons <= size`.
    prod: u32,
}

impl fmt::Debug for ByteRingProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteRingProducer")
            .field("layout", &self.ring.layout)
            .field("prod", &self.prod)
            .finish()
    }
}

impl ByteRingProducer {
    /// Attaches a producer to `layout` in `mem`, taking the current indices
    /// from the page (read once and verified, so re-attaching works).
    pub fn new(mem: SharedRing, layout: ByteRingLayout) -> Result<Self, RingError> {
        let ring = Ring::new(mem, layout)?;
        let prod = ring.prod().load(Ordering::Acquire);
        let cons = ring.cons().load(Ordering::Acquire);
        ring.check(prod, cons)?;
        Ok(ByteRingProducer { ring, prod })
    }

    /// The layout this producer writes.
    pub fn layout(&self) -> ByteRingLayout {
        self.ring.layout
    }

    /// Our producer index.
    pub fn prod(&self) -> u32 {
        self.prod
    }

    /// The data area size.
    pub fn size(&self) -> u32 {
        self.ring.layout.size
    }

    /// Bytes that can be written now; reads the consumer index once.
    pub fn free_space(&self) -> Result<u32, RingError> {
        let cons = self.ring.cons().load(Ordering::Acquire);
        let used = self.ring.check(self.prod, cons)?;
        Ok(self.ring.layout.size - used)
    }

    /// Writes as much of `data` as fits and publishes it; returns how many
    /// bytes were written. Reads the consumer index once, before writing any
    /// byte, and verifies it.
    pub fn try_write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        // Acquire: our data writes stay after the read of the consumer index
        // (Linux xb_write's "Must write data /after/ reading the consumer
        // index").
        let free = self.free_space()?;
        let n = (free as usize).min(data.len());
        if n == 0 {
            return Ok(0);
        }
        self.ring.copy_in(self.prod, &data[..n]);
        // n <= size <= 2^31, so this fits in u32.
        self.prod = self.prod.wrapping_add(n as u32);
        // Release: the peer sees the data before the new index.
        self.ring.prod().store(self.prod, Ordering::Release);
        Ok(n)
    }

    /// [`ByteRingProducer::try_write`] that returns 0 when the consumer index
    /// is corrupt (the error is reported by `try_write` and
    /// [`ByteRingProducer::free_space`]).
    pub fn write(&mut self, data: &[u8]) -> usize {
        self.try_write(data).unwrap_or(0)
    }
}

/// The reading end of one byte-ring direction.
pub struct ByteRingConsumer {
    ring: Ring,
    /// Our consumer index; only we write it. Range: `prod - cons <= size`.
    cons: u32,
}

impl fmt::Debug for ByteRingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteRingConsumer")
            .field("layout", &self.ring.layout)
            .field("cons", &self.cons)
            .finish()
    }
}

impl ByteRingConsumer {
    /// Attaches a consumer to `layout` in `mem`, taking the current indices
    /// from the page (read once and verified).
    pub fn new(mem: SharedRing, layout: ByteRingLayout) -> Result<Self, RingError> {
        let ring = Ring::new(mem, layout)?;
        let prod = ring.prod().load(Ordering::Acquire);
        let cons = ring.cons().load(Ordering::Acquire);
        ring.check(prod, cons)?;
        Ok(ByteRingConsumer { ring, cons })
    }

    /// The layout this consumer reads.
    pub fn layout(&self) -> ByteRingLayout {
        self.ring.layout
    }

    /// Our consumer index.
    pub fn cons(&self) -> u32 {
        self.cons
    }

    /// The data area size.
    pub fn size(&self) -> u32 {
        self.ring.layout.size
    }

    /// Bytes available to read; reads the producer index once and verifies it.
    pub fn available(&self) -> Result<u32, RingError> {
        // Acquire: data reads that follow see the producer's writes.
        let prod = self.ring.prod().load(Ordering::Acquire);
        self.ring.check(prod, self.cons)
    }

    /// Copies up to `buf.len()` available bytes into `buf` without consuming
    /// them; returns how many.
    pub fn peek(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        let n = (self.available()? as usize).min(buf.len());
        self.ring.copy_out(self.cons, &mut buf[..n]);
        Ok(n)
    }

    /// Consumes `n` bytes (after a [`ByteRingConsumer::peek`]); fails with
    /// [`RingError::AdvanceOverrun`] if fewer are available.
    pub fn advance(&mut self, n: usize) -> Result<(), RingError> {
        let available = self.available()?;
        if n > available as usize {
            return Err(RingError::AdvanceOverrun {
                requested: n,
                available,
            });
        }
        self.publish(n);
        Ok(())
    }

    /// Copies up to `buf.len()` bytes out and consumes them; returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        let n = self.peek(buf)?;
        self.publish(n);
        Ok(n)
    }

    fn publish(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        // n <= size, checked by the callers.
        self.cons = self.cons.wrapping_add(n as u32);
        // Release: our reads of the data complete before the peer sees the
        // space as free.
        self.ring.cons().store(self.cons, Ordering::Release);
    }
}

/// Builds a producer on `tx` and a consumer on `rx` of the same memory; the
/// two layouts must not overlap.
pub fn split(
    mem: SharedRing,
    tx: ByteRingLayout,
    rx: ByteRingLayout,
) -> Result<(ByteRingProducer, ByteRingConsumer), RingError> {
    if tx.overlaps(&rx) {
        return Err(RingError::BadLayout);
    }
    let consumer = ByteRingConsumer::new(mem.dup(), rx)?;
    let producer = ByteRingProducer::new(mem, tx)?;
    Ok((producer, consumer))
}

/// One end of a xenstore page (`struct xenstore_domain_interface`).
///
/// The guest writes `req` and reads `rsp`; the server (xenstored) the reverse.
pub struct XsRing {
    tx: ByteRingProducer,
    rx: ByteRingConsumer,
    fields: SharedRing,
}

impl fmt::Debug for XsRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsRing")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl XsRing {
    /// The guest end: writes requests, reads responses.
    pub fn guest(mem: SharedRing) -> Result<Self, RingError> {
        Self::build(
            mem,
            ByteRingLayout::XENSTORE_REQ,
            ByteRingLayout::XENSTORE_RSP,
        )
    }

    /// The server end: reads requests, writes responses.
    pub fn server(mem: SharedRing) -> Result<Self, RingError> {
        Self::build(
            mem,
            ByteRingLayout::XENSTORE_RSP,
            ByteRingLayout::XENSTORE_REQ,
        )
    }

    fn build(mem: SharedRing, tx: ByteRingLayout, rx: ByteRingLayout) -> Result<Self, RingError> {
        let fields = mem.dup();
        let (tx, rx) = split(mem, tx, rx)?;
        Ok(XsRing { tx, rx, fields })
    }

    /// The outgoing direction.
    pub fn tx(&mut self) -> &mut ByteRingProducer {
        &mut self.tx
    }

    /// The incoming direction.
    pub fn rx(&mut self) -> &mut ByteRingConsumer {
        &mut self.rx
    }

    /// Splits into the two directions (the status words stay reachable only
    /// through another handle).
    pub fn into_parts(self) -> (ByteRingProducer, ByteRingConsumer) {
        (self.tx, self.rx)
    }

    /// See [`ByteRingProducer::write`].
    pub fn write(&mut self, data: &[u8]) -> usize {
        self.tx.write(data)
    }

    /// See [`ByteRingProducer::try_write`].
    pub fn try_write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        self.tx.try_write(data)
    }

    /// See [`ByteRingConsumer::read`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.rx.read(buf)
    }

    /// See [`ByteRingConsumer::peek`].
    pub fn peek(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.rx.peek(buf)
    }

    /// See [`ByteRingConsumer::advance`].
    pub fn advance(&mut self, n: usize) -> Result<(), RingError> {
        self.rx.advance(n)
    }

    /// See [`ByteRingConsumer::available`].
    pub fn available(&self) -> Result<u32, RingError> {
        self.rx.available()
    }

    /// See [`ByteRingProducer::free_space`].
    pub fn free_space(&self) -> Result<u32, RingError> {
        self.tx.free_space()
    }

    fn field(&self, off: usize) -> &AtomicU32 {
        self.fields.word(off)
    }

    /// `server_features` (Acquire).
    pub fn server_features(&self) -> u32 {
        self.field(xs_offsets::SERVER_FEATURES)
            .load(Ordering::Acquire)
    }

    /// Sets `server_features` (Release; the server's job).
    pub fn set_server_features(&self, v: u32) {
        self.field(xs_offsets::SERVER_FEATURES)
            .store(v, Ordering::Release)
    }

    /// `connection` (Acquire): [`XENSTORE_CONNECTED`] or [`XENSTORE_RECONNECT`].
    pub fn connection(&self) -> u32 {
        self.field(xs_offsets::CONNECTION).load(Ordering::Acquire)
    }

    /// Sets `connection` (SeqCst, as it is a handshake word both sides poll).
    pub fn set_connection(&self, v: u32) {
        self.field(xs_offsets::CONNECTION)
            .store(v, Ordering::SeqCst)
    }

    /// `error` (Acquire): one of the `XENSTORE_ERROR_*` values.
    pub fn error(&self) -> u32 {
        self.field(xs_offsets::ERROR).load(Ordering::Acquire)
    }

    /// Sets `error` (Release; the server's job).
    pub fn set_error(&self, v: u32) {
        self.field(xs_offsets::ERROR).store(v, Ordering::Release)
    }
}

/// One end of a console page (`struct xencons_interface`).
///
/// The guest writes `out` and reads `in`; the backend the reverse.
pub struct ConsRing {
    tx: ByteRingProducer,
    rx: ByteRingConsumer,
}

impl fmt::Debug for ConsRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsRing")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl ConsRing {
    /// The guest end: writes `out`, reads `in`.
    pub fn guest(mem: SharedRing) -> Result<Self, RingError> {
        let (tx, rx) = split(mem, ByteRingLayout::CONSOLE_OUT, ByteRingLayout::CONSOLE_IN)?;
        Ok(ConsRing { tx, rx })
    }

    /// The backend end: writes `in`, reads `out`.
    pub fn backend(mem: SharedRing) -> Result<Self, RingError> {
        let (tx, rx) = split(mem, ByteRingLayout::CONSOLE_IN, ByteRingLayout::CONSOLE_OUT)?;
        Ok(ConsRing { tx, rx })
    }

    /// The outgoing direction.
    pub fn tx(&mut self) -> &mut ByteRingProducer {
        &mut self.tx
    }

    /// The incoming direction.
    pub fn rx(&mut self) -> &mut ByteRingConsumer {
        &mut self.rx
    }

    /// Splits into the two directions.
    pub fn into_parts(self) -> (ByteRingProducer, ByteRingConsumer) {
        (self.tx, self.rx)
    }

    /// See [`ByteRingProducer::write`].
    pub fn write(&mut self, data: &[u8]) -> usize {
        self.tx.write(data)
    }

    /// See [`ByteRingProducer::try_write`].
    pub fn try_write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        self.tx.try_write(data)
    }

    /// See [`ByteRingConsumer::read`].
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.rx.read(buf)
    }

    /// See [`ByteRingConsumer::peek`].
    pub fn peek(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.rx.peek(buf)
    }

    /// See [`ByteRingConsumer::advance`].
    pub fn advance(&mut self, n: usize) -> Result<(), RingError> {
        self.rx.advance(n)
    }

    /// See [`ByteRingConsumer::available`].
    pub fn available(&self) -> Result<u32, RingError> {
        self.rx.available()
    }

    /// See [`ByteRingProducer::free_space`].
    pub fn free_space(&self) -> Result<u32, RingError> {
        self.tx.free_space()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_standard_layouts_match_xen_headers() {
        assert_eq!(xs_offsets::SIZE, 2076);
        assert_eq!(cons_offsets::SIZE, 3088);
        for l in [
            ByteRingLayout::XENSTORE_REQ,
            ByteRingLayout::XENSTORE_RSP,
            ByteRingLayout::CONSOLE_IN,
            ByteRingLayout::CONSOLE_OUT,
        ] {
            assert_eq!(l.validate(4096), Ok(()));
        }
        assert!(!ByteRingLayout::XENSTORE_REQ.overlaps(&ByteRingLayout::XENSTORE_RSP));
        assert!(!ByteRingLayout::CONSOLE_IN.overlaps(&ByteRingLayout::CONSOLE_OUT));
        assert!(ByteRingLayout::XENSTORE_REQ.overlaps(&ByteRingLayout::XENSTORE_REQ));
        // Both fit inside the structures they mirror.
        assert_eq!(xs_offsets::ERROR + 4, xs_offsets::SIZE);
        assert_eq!(cons_offsets::OUT_PROD + 4, cons_offsets::SIZE);
    }

    #[test]
    fn test_overlaps_is_half_open() {
        assert!(!overlaps(0, 4, 4, 4));
        assert!(overlaps(0, 5, 4, 4));
        assert!(!overlaps(8, 0, 8, 4));
        assert!(!overlaps(usize::MAX - 1, 4, 0, 4));
    }
}
