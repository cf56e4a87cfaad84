//! A synchronous block device over [`BlkFront`]: byte-offset reads and
//! writes, flush, for code that wants a disk rather than a request queue
//! (the FUSE block file of [`crate::blockfile`]).
//!
//! - [`BlockDevice`] is the small interface the block file serves; [`Vbd`]
//!   implements it over a connected [`BlkFront`], [`RamDisk`] over memory
//!   (for tests of the block file);
//! - a transfer larger than one request ([`BlkFront::max_request_bytes`])
//!   is split, with up to [`VbdConfig::max_in_flight`] requests on the ring
//!   at once; unaligned byte ranges are widened to the disk's sector size
//!   (read-modify-write for the partial head and tail sectors of a write);
//! - waiting is a [`VbdWaiter`]: [`EventWaiter`] sleeps on the device's
//!   event channels and hands fired xenstore watches to the device (a
//!   backend that restarts is followed); tests plug in a waiter that plays
//!   the backend;
//! - [`open`] runs the xenbus handshake of `device/vbd/<devid>` to
//!   Connected.
//!
//! Every wait is bounded by [`VbdConfig::io_timeout`] on the platform's
//! clock, so a backend that stops answering costs an error, not a hang.

use std::collections::HashMap;
use std::time::Duration;

use xen_blkfront::{
    BlkFront, BlkStatus, BlkfrontConfig, BlkfrontError, DiskInfo, FrontState, RequestTag,
};
use xen_front_platform::Platform;

/// The 512-byte unit of blkif sector numbers.
const SECTOR: u64 = 512;

/// Why a block device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VbdError {
    /// The frontend refused or failed the operation.
    #[error("the block frontend failed")]
    Front(#[from] BlkfrontError),
    /// The backend answered a request with an error status.
    #[error("the backend failed a {what} at byte {offset}")]
    Io {
        /// What the request was.
        what: &'static str,
        /// Its byte offset.
        offset: u64,
    },
    /// No answer within the I/O timeout.
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The range is outside the disk.
    #[error("{len} bytes at offset {offset} are outside the disk of {size} bytes")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Disk size.
        size: u64,
    },
    /// The disk is read-only.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The handshake did not reach Connected.
    #[error("device/vbd/{devid} did not connect within {timeout:?} (frontend state {state:?})")]
    NotConnected {
        /// The device id.
        devid: u32,
        /// How long we waited.
        timeout: Duration,
        /// Where the handshake stopped.
        state: FrontState,
    },
    /// A platform call (xenstore watch) failed.
    #[error("platform operation failed")]
    Platform(#[from] xen_front_platform::PlatformError),
}

impl VbdError {
    /// The errno a file system answer should carry.
    pub fn errno(&self) -> i32 {
        match self {
            VbdError::OutOfRange { .. } => libc::EINVAL,
            VbdError::ReadOnly => libc::EROFS,
            VbdError::Timeout(_) => libc::ETIMEDOUT,
            VbdError::Front(BlkfrontError::ReadOnly) => libc::EROFS,
            _ => libc::EIO,
        }
    }
}

/// A disk addressed in bytes.
pub trait BlockDevice {
    /// The size in bytes.
    fn size_bytes(&self) -> u64;
    /// The logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset` (any alignment).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VbdError>;
    /// Writes `data` at `offset` (any alignment).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), VbdError>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> Result<(), VbdError>;
}

fn check_range(offset: u64, len: usize, size: u64) -> Result<u64, VbdError> {
    let end = u64::try_from(len)
        .ok()
        .and_then(|l| offset.checked_add(l))
        .filter(|&e| e <= size);
    end.ok_or(VbdError::OutOfRange { offset, len, size })
}

/// A disk in memory (tests of the block file; a scratch disk).
#[derive(Debug, Clone)]
pub struct RamDisk {
    data: Vec<u8>,
    /// Flushes seen.
    pub flushes: u64,
}

impl RamDisk {
    /// A zeroed disk of `size` bytes.
    pub fn new(size: usize) -> Self {
        RamDisk {
            data: vec![0; size],
            flushes: 0,
        }
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}

impl BlockDevice for RamDisk {
    fn size_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    fn block_size(&self) -> u32 {
        SECTOR as u32
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VbdError> {
        let end = check_range(offset, buf.len(), self.size_bytes())?;
        // In range (checked), so the casts do not truncate.
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), VbdError> {
        let end = check_range(offset, data.len(), self.size_bytes())?;
        self.data[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), VbdError> {
        self.flushes = self.flushes.saturating_add(1);
        Ok(())
    }
}

/// How a [`Vbd`] waits for its backend.
pub trait VbdWaiter<P: Platform + ?Sized> {
    /// Waits (a bounded while) until the device may have progressed.
    fn wait(&mut self, dev: &mut BlkFront<'_, P>) -> Result<(), VbdError>;
}

/// Sleeps on the device's event channels (`SCHEDOP_poll`) for up to
/// `slice`, then hands every fired xenstore watch to the device.
#[derive(Debug)]
pub struct EventWaiter<'p, P: Platform + ?Sized> {
    p: &'p P,
    slice: Duration,
}

impl<'p, P: Platform + ?Sized> EventWaiter<'p, P> {
    /// A waiter on platform `p` sleeping at most `slice` per wait.
    pub fn new(p: &'p P, slice: Duration) -> Self {
        EventWaiter { p, slice }
    }
}

/// Watch events handled per wait (bounds the loop).
const WATCHES_PER_WAIT: usize = 64;

/// Hands fired watches to the device (without waiting).
fn pump_watches<P: Platform + ?Sized>(p: &P, dev: &mut BlkFront<'_, P>) -> Result<(), VbdError> {
    for _ in 0..WATCHES_PER_WAIT {
        match p.xs_read_watch(Some(Duration::ZERO))? {
            Some(ev) => {
                dev.handle_watch(&ev)?;
            }
            None => break,
        }
    }
    Ok(())
}

impl<P: Platform + ?Sized> VbdWaiter<P> for EventWaiter<'_, P> {
    fn wait(&mut self, dev: &mut BlkFront<'_, P>) -> Result<(), VbdError> {
        if dev.state() == FrontState::Connected {
            dev.wait(Some(self.slice))?;
        } else if let Some(ev) = self.p.xs_read_watch(Some(self.slice))? {
            dev.handle_watch(&ev)?;
        }
        pump_watches(self.p, dev)
    }
}

/// How long requests may go unanswered before [`Vbd`] reads the backend's
/// state itself rather than waiting for its watch (2 s: a request normally
/// takes well under that; a restarting backend a second or two).
const RECHECK_NS: u64 = 2_000_000_000;

/// The adapter's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VbdConfig {
    /// Most requests on the ring at once for one transfer.
    pub max_in_flight: usize,
    /// How long one transfer may wait for the backend in all.
    pub io_timeout: Duration,
}

impl Default for VbdConfig {
    fn default() -> Self {
        VbdConfig {
            max_in_flight: 32,
            io_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VbdStats {
    /// Ring requests submitted (reads and writes).
    pub requests: u64,
    /// Most requests in flight at once.
    pub max_in_flight_seen: usize,
    /// Read-modify-write cycles for unaligned writes.
    pub rmw: u64,
    /// Flushes sent to the backend.
    pub flushes: u64,
    /// Times the backend's state was read because requests went
    /// unanswered for [`RECHECK_NS`].
    pub rechecks: u64,
}

enum Xfer<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
}

impl Xfer<'_> {
    fn len(&self) -> usize {
        match self {
            Xfer::Read(b) => b.len(),
            Xfer::Write(d) => d.len(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Xfer::Read(_) => "read",
            Xfer::Write(_) => "write",
        }
    }
}

/// A connected [`BlkFront`] as a [`BlockDevice`]; see the
/// [module docs](self).
#[derive(Debug)]
pub struct Vbd<'p, P: Platform + ?Sized, W: VbdWaiter<P>> {
    p: &'p P,
    dev: BlkFront<'p, P>,
    waiter: W,
    cfg: VbdConfig,
    disk: DiskInfo,
    stats: VbdStats,
}

impl<'p, P: Platform + ?Sized, W: VbdWaiter<P>> Vbd<'p, P, W> {
    /// Wraps a connected device.
    pub fn new(
        p: &'p P,
        dev: BlkFront<'p, P>,
        waiter: W,
        cfg: VbdConfig,
    ) -> Result<Self, VbdError> {
        let disk = *dev.disk().ok_or(BlkfrontError::NotConnected)?;
        let cfg = VbdConfig {
            max_in_flight: cfg.max_in_flight.max(1),
            ..cfg
        };
        Ok(Vbd {
            p,
            dev,
            waiter,
            cfg,
            disk,
            stats: VbdStats::default(),
        })
    }

    /// The device.
    pub fn device(&self) -> &BlkFront<'p, P> {
        &self.dev
    }

    /// The device, to drive it directly.
    pub fn device_mut(&mut self) -> &mut BlkFront<'p, P> {
        &mut self.dev
    }

    /// The waiter (a test's backend).
    pub fn waiter_mut(&mut self) -> &mut W {
        &mut self.waiter
    }

    /// The disk as the backend described it.
    pub fn disk(&self) -> &DiskInfo {
        &self.disk
    }

    /// Counters.
    pub fn stats(&self) -> VbdStats {
        self.stats
    }

    fn deadline(&self) -> u64 {
        let t = u64::try_from(self.cfg.io_timeout.as_nanos()).unwrap_or(u64::MAX);
        self.p.monotonic_ns().saturating_add(t)
    }

    /// Waits for the next completions (at least one), bounded by
    /// `deadline`.
    fn next_completions(
        &mut self,
        deadline: u64,
    ) -> Result<Vec<xen_blkfront::Completion>, VbdError> {
        let mut recheck = self.p.monotonic_ns().saturating_add(RECHECK_NS);
        loop {
            let done = self.dev.poll_completions()?;
            if !done.is_empty() {
                return Ok(done);
            }
            let now = self.p.monotonic_ns();
            if now >= deadline {
                return Err(VbdError::Timeout(self.cfg.io_timeout));
            }
            // No answer for a while: look at the backend's state ourselves
            // (level-triggered), in case the watch event of its restart
            // never reached this device (a xenstored restart in between, or
            // another device's waiter on this thread took it): a backend
            // back in InitWait is then reconnected to, and the requests
            // waiting on the dead ring go to the new one.
            if now >= recheck {
                self.stats.rechecks = self.stats.rechecks.saturating_add(1);
                self.dev.backend_changed()?;
                recheck = now.saturating_add(RECHECK_NS);
            }
            self.waiter.wait(&mut self.dev)?;
        }
    }

    /// A sector-aligned transfer, split into requests of at most
    /// `max_request_bytes`, up to `max_in_flight` at once. Returns after
    /// every submitted request completed (or the timeout).
    fn xfer(&mut self, offset: u64, mut x: Xfer<'_>) -> Result<(), VbdError> {
        let len = x.len();
        if len == 0 {
            return Ok(());
        }
        let chunk = self
            .dev
            .max_request_bytes()
            .max(self.disk.sector_size as usize);
        let nchunks = len.div_ceil(chunk);
        let what = x.what();
        let deadline = self.deadline();
        let mut next = 0usize;
        let mut inflight: HashMap<RequestTag, usize> = HashMap::new();
        let mut failed: Option<VbdError> = None;
        loop {
            while failed.is_none() && next < nchunks && inflight.len() < self.cfg.max_in_flight {
                let off = next * chunk;
                let l = chunk.min(len - off);
                let sector = (offset + off as u64) / SECTOR;
                let r = match &x {
                    Xfer::Read(_) => self.dev.submit_read(sector, l),
                    Xfer::Write(d) => self.dev.submit_write(sector, &d[off..off + l]),
                };
                match r {
                    Ok(tag) => {
                        inflight.insert(tag, next);
                        next += 1;
                        self.stats.requests = self.stats.requests.saturating_add(1);
                        self.stats.max_in_flight_seen =
                            self.stats.max_in_flight_seen.max(inflight.len());
                    }
                    Err(BlkfrontError::Busy) if !inflight.is_empty() => break,
                    Err(e) => failed = Some(e.into()),
                }
            }
            if inflight.is_empty() && (failed.is_some() || next == nchunks) {
                break;
            }
            for c in self.next_completions(deadline)? {
                let Some(i) = inflight.remove(&c.tag) else {
                    continue;
                };
                if c.status != BlkStatus::Okay {
                    failed.get_or_insert(VbdError::Io {
                        what,
                        offset: offset + (i * chunk) as u64,
                    });
                    continue;
                }
                if let Xfer::Read(buf) = &mut x {
                    let off = i * chunk;
                    let l = chunk.min(len - off);
                    match c.data.get(..l) {
                        Some(d) => buf[off..off + l].copy_from_slice(d),
                        None => {
                            failed.get_or_insert(VbdError::Io {
                                what,
                                offset: offset + off as u64,
                            });
                        }
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn align_down(&self, v: u64) -> u64 {
        let ss = u64::from(self.disk.sector_size);
        v - v % ss
    }

    fn align_up(&self, v: u64) -> Option<u64> {
        let ss = u64::from(self.disk.sector_size);
        v.checked_add(ss - 1).map(|x| x - x % ss)
    }
}

impl<P: Platform + ?Sized, W: VbdWaiter<P>> BlockDevice for Vbd<'_, P, W> {
    fn size_bytes(&self) -> u64 {
        self.disk.size_bytes()
    }

    fn block_size(&self) -> u32 {
        self.disk.sector_size
    }

    fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VbdError> {
        let end = check_range(offset, buf.len(), self.size_bytes())?;
        let a0 = self.align_down(offset);
        let a1 = self.align_up(end).ok_or(VbdError::OutOfRange {
            offset,
            len: buf.len(),
            size: self.size_bytes(),
        })?;
        if a0 == offset && a1 == end {
            return self.xfer(offset, Xfer::Read(buf));
        }
        let mut tmp = vec![0u8; (a1 - a0) as usize];
        self.xfer(a0, Xfer::Read(&mut tmp))?;
        let s = (offset - a0) as usize;
        buf.copy_from_slice(&tmp[s..s + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), VbdError> {
        if self.read_only() {
            return Err(VbdError::ReadOnly);
        }
        let end = check_range(offset, data.len(), self.size_bytes())?;
        let a0 = self.align_down(offset);
        let a1 = self.align_up(end).ok_or(VbdError::OutOfRange {
            offset,
            len: data.len(),
            size: self.size_bytes(),
        })?;
        if a0 == offset && a1 == end {
            return self.xfer(offset, Xfer::Write(data));
        }
        // Read-modify-write of the partial head and tail sectors.
        self.stats.rmw = self.stats.rmw.saturating_add(1);
        let ss = self.disk.sector_size as usize;
        let total = (a1 - a0) as usize;
        let mut tmp = vec![0u8; total];
        if a0 != offset {
            self.xfer(a0, Xfer::Read(&mut tmp[..ss]))?;
        }
        if a1 != end && (total > ss || a0 == offset) {
            let t = total - ss;
            self.xfer(a0 + t as u64, Xfer::Read(&mut tmp[t..]))?;
        }
        let s = (offset - a0) as usize;
        tmp[s..s + data.len()].copy_from_slice(data);
        self.xfer(a0, Xfer::Write(&tmp))
    }

    fn flush(&mut self) -> Result<(), VbdError> {
        let tag = match self.dev.flush() {
            Ok(t) => t,
            // No cache to flush: writes complete durably.
            Err(BlkfrontError::Unsupported { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.stats.flushes = self.stats.flushes.saturating_add(1);
        let deadline = self.deadline();
        // Bounded: each pass takes at least one completion or the deadline
        // ends it.
        loop {
            for c in self.next_completions(deadline)? {
                if c.tag == tag {
                    return match c.status {
                        // EOPNOTSUPP: the backend has no cache (blkfront
                        // stops offering flushes, as Linux does).
                        BlkStatus::Okay | BlkStatus::NotSupported => Ok(()),
                        BlkStatus::Error => Err(VbdError::Io {
                            what: "flush",
                            offset: 0,
                        }),
                    };
                }
            }
        }
    }
}

/// The blkfront settings of the runtime's own disks (the block file under
/// the guest's filesystems, and disks hot-plugged into it): 32 segments a
/// request (128 KiB), as Linux's blkfront, not blkfront's default of 256.
/// The runtime serves these disks inside the guest's memory budget with up
/// to [`VbdConfig::max_in_flight`] requests in flight: 4 MiB of buffers at
/// 128 KiB, 32 MiB at 1 MiB, half of a 64 MiB guest. (CI once saw a 64 MiB
/// guest whose tmpfs had filled its memory never finish shutting down with
/// 1 MiB requests; not reproduced since.)
pub fn runtime_blkfront_config() -> BlkfrontConfig {
    BlkfrontConfig {
        max_indirect_segments: 32,
        ..BlkfrontConfig::default()
    }
}

/// Opens `device/vbd/<devid>` and runs the xenbus handshake until the
/// device is Connected (or `timeout`), handing watch events to it.
pub fn open<P: Platform + ?Sized>(
    p: &P,
    devid: u32,
    cfg: BlkfrontConfig,
    timeout: Duration,
) -> Result<BlkFront<'_, P>, VbdError> {
    let mut dev = BlkFront::new(p, devid, cfg)?;
    let t = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let deadline = p.monotonic_ns().saturating_add(t);
    let slice = Duration::from_millis(100).min(timeout);
    while dev.state() != FrontState::Connected {
        if let Some(f) = dev.failure() {
            return Err(BlkfrontError::Failed(f.clone()).into());
        }
        if p.monotonic_ns() >= deadline {
            return Err(VbdError::NotConnected {
                devid,
                timeout,
                state: dev.state(),
            });
        }
        if let Some(ev) = p.xs_read_watch(Some(slice))? {
            dev.handle_watch(&ev)?;
        }
    }
    Ok(dev)
}

/// The Linux name of a vbd device id (`xen-blkfront`'s encoding): 202:N
/// `xvd[a-p]` for `(202 << 8) | (disk << 4) | part`, the extended
/// `(1 << 28) | (disk << 8) | part` for more disks; a partition gets its
/// number appended. `None` for ids of other majors.
pub fn vdev_name(devid: u32) -> Option<String> {
    let (disk, part) = if devid & (1 << 28) != 0 {
        ((devid >> 8) & 0xfffff, devid & 0xff)
    } else if devid >> 8 == 202 {
        ((devid >> 4) & 0xf, devid & 0xf)
    } else {
        return None;
    };
    let mut name = String::from("xvd");
    // Base-26 letters as Linux: a..z, aa..zz, ...
    let mut n = disk;
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    letters.reverse();
    name.push_str(std::str::from_utf8(&letters).ok()?);
    if part != 0 {
        name.push_str(&part.to_string());
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vdev_name_xvda_and_partitions_match_linux() {
        assert_eq!(vdev_name(51712).as_deref(), Some("xvda"));
        assert_eq!(vdev_name(51713).as_deref(), Some("xvda1"));
        assert_eq!(vdev_name(51728).as_deref(), Some("xvdb"));
        assert_eq!(vdev_name((1 << 28) | (26 << 8)).as_deref(), Some("xvdaa"));
        assert_eq!(vdev_name(2048), None);
    }

    #[test]
    fn test_ram_disk_out_of_range_is_refused() {
        let mut d = RamDisk::new(4096);
        let mut buf = [0u8; 8];
        assert!(matches!(
            d.read_at(4090, &mut buf),
            Err(VbdError::OutOfRange { .. })
        ));
        assert!(d.write_at(u64::MAX, &buf).is_err());
        d.write_at(4088, &[7; 8]).expect("in range");
        d.read_at(4088, &mut buf).expect("in range");
        assert_eq!(buf, [7; 8]);
    }
}
