//! blkback: the PV block backend, as a library for `backendd`.
//!
//! ```text
//!   BlkBackend::new(DiskConfig)      open the disk (raw, qcow2, NBD, RBD), size it
//!     .features()                    xenstore keys to write in the backend dir
//!   FrontendParams::from_keys(..)    read the frontend's ring-ref(s), event
//!                                    channel(s), protocol, feature-persistent,
//!                                    multi-queue-num-queues
//!     .connect(handles, domid, &p)   map rings, bind ports, one worker per queue
//!   Device::{status, metrics, wait_failure, disconnect}
//! ```
//!
//! Modules: [`request`] (pure parsing and validation of ring slots),
//! [`io`] (the disk engines: raw, qcow2, NBD, RBD), [`device`] (the connected device and its
//! queue workers), [`metrics`].
//!
//! What the backend offers: read, write, write barrier, flush
//! (`feature-flush-cache`, `fdatasync`), discard (`feature-discard`, hole
//! punching), indirect segments (up to 256), persistent grants, multi-page
//! rings (order up to 4), multi-queue. Only the native x86_64 ring ABI and
//! 512-byte sectors. Disks: raw files or block devices, qcow2 images
//! (versions 2 and 3, no backing files), NBD exports (TCP or Unix socket),
//! Ceph RBD images (librbd; `rbd:POOL/IMAGE[@SNAP][:conf=..][:id=..]`).

pub mod device;
pub mod io;
pub mod metrics;
mod persistent;
pub mod request;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xen_abi::io::blkif::{keys, VDISK_READONLY, XEN_IO_PROTO_ABI_NATIVE};
use xen_abi::xen::domid_t;
use xen_backend_common::{check_queue_count, parse_num, FrontendKeys, KeyError};

pub use xen_backend_common::Dom0Handles;

pub use device::{
    Device, DeviceError, DeviceFailure, DeviceStatus, FailureHook, FailureReason, QueueParams,
};
pub use io::{
    DiskImage, ImageError, NbdError, NbdImage, NbdTarget, Qcow2Error, Qcow2Image, RawError,
    RawImage, RbdError, RbdImage, RbdTarget,
};
pub use metrics::MetricsSnapshot;
pub use request::{Limits, Request, RequestError};

use request::{MAX_INDIRECT_SEGMENTS, SECTOR_SIZE};

/// Largest `max-ring-page-order` (16 pages, `xen_ring`'s limit).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Largest number of queues offered.
pub const MAX_QUEUES: u32 = 16;
/// Default cache of persistent grants per queue: 32768 pages (128 MiB of
/// the guest's memory), a full 128-slot ring (order 2) of 256-segment
/// requests, or four times the 8192 pages of 32 registered 1 MiB buffers
/// (queue depth 32 of 1 MiB I/Os). Linux blkback caps its cache at 1056
/// (`xen_blkif_max_pgrants`) because each persistent grant holds a kernel
/// mapping of a guest page; here a cached grant is a pin and a pointer into
/// the guest memory that backendd maps whole anyway, about 100 bytes of
/// backendd memory (at most ~3.5 MiB per queue, allocated as the frontend
/// uses grants). Beyond the cap the least recently used grants are
/// unmapped, a twentieth of the cache at a time (see `persistent.rs`).
pub const DEFAULT_MAX_PERSISTENT_GRANTS: usize = 32768;

/// Default I/O threads per device.
pub const DEFAULT_IO_THREADS: usize = 4;
/// Default largest transfer a queue worker serves itself although the
/// device has I/O threads (see [`DiskConfig::inline_max_bytes`]).
pub const DEFAULT_INLINE_MAX_BYTES: u64 = 64 << 10;
/// Default largest transfer that adjacent requests of a batch merge into
/// (see [`DiskConfig::merge_max_bytes`]): 1 MiB, 256 pages, the largest
/// request of 256 indirect segments.
pub const DEFAULT_MERGE_MAX_BYTES: u64 = 1 << 20;
/// Default bounded busy-poll of an idle queue worker on its ring before it
/// arms `req_event` and sleeps (see [`DiskConfig::poll_budget`]).
pub const DEFAULT_POLL_BUDGET: Duration = Duration::from_micros(50);

/// Errors of the block backend's API.
#[derive(Debug, thiserror::Error)]
pub enum BlkbackError {
    /// The raw image could not be opened.
    #[error("cannot open the raw disk image")]
    Image(#[from] RawError),
    /// The qcow2 image could not be opened.
    #[error("cannot open the qcow2 disk image")]
    Qcow2(#[from] Qcow2Error),
    /// The NBD export could not be reached or refused.
    #[error("cannot attach the NBD export")]
    Nbd(#[from] NbdError),
    /// The RBD image could not be reached or opened.
    #[error("cannot attach the RBD image")]
    Rbd(#[from] RbdError),
    /// The format cannot be served from this source.
    #[error("disk format {0:?} is not supported over NBD or RBD (only raw)")]
    UnsupportedFormat(DiskFormat),
    /// A frontend key is missing.
    #[error("frontend key {0} is missing")]
    MissingKey(String),
    /// A frontend key has a value this backend refuses.
    #[error("frontend key {key} has an invalid value {value:?}")]
    BadKey {
        /// Key.
        key: String,
        /// Value read.
        value: String,
    },
    /// The frontend asked for a ring ABI this backend does not serve.
    #[error("ring protocol {0:?} is not supported (only {XEN_IO_PROTO_ABI_NATIVE})")]
    UnsupportedProtocol(String),
    /// Connecting failed.
    #[error("cannot connect the device")]
    Device(#[from] DeviceError),
}

/// Disk image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image file or block device.
    Raw,
    /// QEMU's qcow2 (versions 2 and 3).
    Qcow2,
}

impl DiskFormat {
    /// Parses `raw`/`aio` (QEMU's and libxl's name for raw) or `qcow2`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" | "aio" | "" => Some(DiskFormat::Raw),
            "qcow2" => Some(DiskFormat::Qcow2),
            _ => None,
        }
    }
}

/// Where a disk's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A file or block device.
    Path(PathBuf),
    /// An NBD export.
    Nbd(NbdTarget),
    /// A Ceph RBD image.
    Rbd(RbdTarget),
}

impl std::fmt::Display for DiskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSource::Path(p) => write!(f, "{}", p.display()),
            DiskSource::Nbd(t) => f.write_str(&t.uri()),
            DiskSource::Rbd(t) => f.write_str(&t.uri()),
        }
    }
}

/// How to serve one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Where the disk is (a file or block device, an NBD export or an RBD image).
    pub source: DiskSource,
    /// Image format.
    pub format: DiskFormat,
    /// Refuse writes and discards (the frontend sees `info` = `VDISK_READONLY`).
    pub readonly: bool,
    /// Try `O_DIRECT` (falls back to buffered I/O when refused).
    pub direct_io: bool,
    /// Offer `feature-discard`.
    pub discard: bool,
    /// `feature-max-indirect-segments` (0: none; at most 256).
    pub max_indirect_segments: u32,
    /// Offer `feature-persistent`.
    pub persistent_grants: bool,
    /// Persistent grants cached per queue (the least recently used are
    /// unmapped beyond it; 0: none cached, every page mapped per request).
    pub max_persistent_grants: usize,
    /// `max-ring-page-order` (at most 4).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues` (1 to 16).
    pub max_queues: u32,
    /// Invalid requests in a row that fail the device.
    pub max_consecutive_invalid: u32,
    /// I/O threads per connected device, shared by its queues (0: each
    /// queue worker does its transfers itself, one at a time).
    pub io_threads: usize,
    /// Transfers of at most this many bytes are served by the queue worker
    /// itself, in ring order, even when the device has I/O threads: handing
    /// a page-cache hit to another thread and waking it costs more than the
    /// copy. Larger ones go to the I/O threads, several at once.
    pub inline_max_bytes: u64,
    /// The longest an idle queue worker keeps polling its ring (no
    /// syscall) before it arms `req_event` (`RING_FINAL_CHECK_FOR_REQUESTS`)
    /// and sleeps on the event channel. While it polls, the frontend sees
    /// no armed event index and sends no notification. The window adapts
    /// between zero and this (`xen_ring::PollWindow`, as KVM's halt
    /// polling): a poll that finds nothing (the frontend shares our CPU, or
    /// is idle) stops polling until a quick wake-up says it pays again.
    /// Zero: never poll.
    pub poll_budget: Duration,
    /// Reads (or writes) of one batch that continue each other on the disk
    /// are served as one transfer of up to this many bytes: one
    /// `preadv`/`pwritev`, one hand-off to an I/O thread, one hold of the
    /// file's lock (tmpfs and most filesystems serialise the writers of a
    /// file), as the block layer merges adjacent requests. Each request is
    /// still answered on its own (all with an error if the transfer fails).
    /// A frontend splitting 1 MiB into 128 KiB requests (Linux's default of
    /// 32 indirect segments) gets 1 MiB transfers. 0: no merging.
    pub merge_max_bytes: u64,
}

impl DiskConfig {
    /// A raw image with every feature on.
    pub fn raw(path: impl Into<PathBuf>, readonly: bool) -> Self {
        Self::new(DiskSource::Path(path.into()), DiskFormat::Raw, readonly)
    }

    /// A qcow2 image with every feature on.
    pub fn qcow2(path: impl Into<PathBuf>, readonly: bool) -> Self {
        Self::new(DiskSource::Path(path.into()), DiskFormat::Qcow2, readonly)
    }

    /// An NBD export (raw) with every feature on.
    pub fn nbd(target: NbdTarget, readonly: bool) -> Self {
        Self::new(DiskSource::Nbd(target), DiskFormat::Raw, readonly)
    }

    /// A Ceph RBD image (raw) with every feature on.
    pub fn rbd(target: RbdTarget, readonly: bool) -> Self {
        Self::new(DiskSource::Rbd(target), DiskFormat::Raw, readonly)
    }

    /// A disk with every feature on.
    pub fn new(source: DiskSource, format: DiskFormat, readonly: bool) -> Self {
        Self {
            source,
            format,
            readonly,
            direct_io: true,
            discard: true,
            max_indirect_segments: MAX_INDIRECT_SEGMENTS,
            persistent_grants: true,
            max_persistent_grants: DEFAULT_MAX_PERSISTENT_GRANTS,
            max_ring_page_order: MAX_RING_PAGE_ORDER,
            max_queues: 4,
            max_consecutive_invalid: 1024,
            io_threads: DEFAULT_IO_THREADS,
            inline_max_bytes: DEFAULT_INLINE_MAX_BYTES,
            poll_budget: DEFAULT_POLL_BUDGET,
            merge_max_bytes: DEFAULT_MERGE_MAX_BYTES,
        }
    }
}

/// The frontend's transport parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendParams {
    /// One entry per queue.
    pub queues: Vec<QueueParams>,
    /// The frontend offered `feature-persistent`.
    pub persistent: bool,
}

impl From<KeyError> for BlkbackError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Missing(key) => BlkbackError::MissingKey(key),
            KeyError::Bad { key, value } => BlkbackError::BadKey { key, value },
        }
    }
}

impl FrontendParams {
    /// Reads the parameters through `read` (a key relative to the frontend's
    /// directory, e.g. `"ring-ref"` or `"queue-1/event-channel"`, to its
    /// value), as Linux blkback's `connect_ring` does: `protocol` (default
    /// native), `feature-persistent`, `multi-queue-num-queues` (default 1;
    /// above 1 the rings are under `queue-N/`), and per queue
    /// `ring-page-order` (absent: one page at `ring-ref`, else
    /// `ring-ref0..`) and `event-channel`.
    pub fn from_keys(
        read: impl Fn(&str) -> Option<String>,
        max_ring_page_order: u32,
        max_queues: u32,
    ) -> Result<Self, BlkbackError> {
        let fe = FrontendKeys::new(read);
        if let Some(p) = fe.get(keys::PROTOCOL) {
            if p != XEN_IO_PROTO_ABI_NATIVE {
                return Err(BlkbackError::UnsupportedProtocol(p));
            }
        }
        let persistent = fe.flag(keys::FEATURE_PERSISTENT, false)?;
        let dirs = fe.queue_dirs(max_queues.max(1))?;
        let mut queues = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let event_channel = fe.num(&format!("{dir}{}", keys::EVENT_CHANNEL))?;
            // Linux's blkfront writes one `ring-page-order` for all queues,
            // at the top (blkback's `connect_ring` reads it there); a
            // per-queue one is accepted too.
            let mut order_key = format!("{dir}{}", keys::RING_PAGE_ORDER);
            let mut order = fe.get(&order_key);
            if order.is_none() && !dir.is_empty() {
                order_key = keys::RING_PAGE_ORDER.to_string();
                order = fe.get(&order_key);
            }
            let ring_refs = match order {
                None => vec![fe.num(&format!("{dir}{}", keys::RING_REF))?],
                Some(v) => {
                    let order: u32 = parse_num(&order_key, &v)?;
                    if order > max_ring_page_order.min(MAX_RING_PAGE_ORDER) {
                        return Err(KeyError::bad(order_key, v).into());
                    }
                    (0..(1u32 << order))
                        .map(|i| fe.num(&format!("{dir}{}{i}", keys::RING_REF)))
                        .collect::<Result<Vec<_>, _>>()?
                }
            };
            queues.push(QueueParams {
                ring_refs,
                event_channel,
            });
        }
        Ok(Self { queues, persistent })
    }
}

/// One disk, ready to serve frontends.
#[derive(Debug)]
pub struct BlkBackend {
    config: DiskConfig,
    image: Arc<dyn DiskImage>,
    sectors: u64,
}

impl BlkBackend {
    /// Opens the disk.
    pub fn new(config: DiskConfig) -> Result<Self, BlkbackError> {
        let image: Arc<dyn DiskImage> = match (&config.source, config.format) {
            (DiskSource::Path(p), DiskFormat::Raw) => {
                Arc::new(RawImage::open(p, config.readonly, config.direct_io)?)
            }
            (DiskSource::Path(p), DiskFormat::Qcow2) => {
                Arc::new(Qcow2Image::open(p, config.readonly, config.direct_io)?)
            }
            (DiskSource::Nbd(t), DiskFormat::Raw) => {
                Arc::new(NbdImage::open(t.clone(), config.readonly)?)
            }
            (DiskSource::Rbd(t), DiskFormat::Raw) => {
                Arc::new(RbdImage::open(t.clone(), config.readonly)?)
            }
            (DiskSource::Nbd(_) | DiskSource::Rbd(_), f) => {
                return Err(BlkbackError::UnsupportedFormat(f))
            }
        };
        let sectors = image.size() / SECTOR_SIZE;
        Ok(Self {
            config: DiskConfig {
                max_indirect_segments: config.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS),
                max_ring_page_order: config.max_ring_page_order.min(MAX_RING_PAGE_ORDER),
                max_queues: config.max_queues.clamp(1, MAX_QUEUES),
                max_consecutive_invalid: config.max_consecutive_invalid.max(1),
                ..config
            },
            image,
            sectors,
        })
    }

    /// The configuration (limits clamped).
    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// Where the disk is.
    pub fn source(&self) -> &DiskSource {
        &self.config.source
    }

    /// The disk engine.
    pub fn image(&self) -> &Arc<dyn DiskImage> {
        &self.image
    }

    /// Disk size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether `O_DIRECT` is in use.
    pub fn is_direct(&self) -> bool {
        self.image.is_direct()
    }

    /// The keys and values to write in the backend's xenstore directory
    /// before switching to Connected (`sectors`, `sector-size`, `info`,
    /// features and transport limits).
    pub fn features(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let info = if c.readonly { VDISK_READONLY } else { 0 };
        let granularity = self.image.discard_granularity();
        let discard = c.discard && !c.readonly && granularity.is_some();
        let mut v = vec![
            (keys::SECTORS, self.sectors.to_string()),
            (keys::SECTOR_SIZE, SECTOR_SIZE.to_string()),
            (keys::PHYSICAL_SECTOR_SIZE, SECTOR_SIZE.to_string()),
            (keys::INFO, info.to_string()),
            (keys::FEATURE_FLUSH_CACHE, "1".to_string()),
            (keys::FEATURE_BARRIER, "1".to_string()),
            (keys::FEATURE_DISCARD, u8::from(discard).to_string()),
        ];
        if discard {
            v.push((
                keys::DISCARD_GRANULARITY,
                granularity.unwrap_or(512).to_string(),
            ));
            v.push((keys::DISCARD_ALIGNMENT, "0".to_string()));
            v.push((keys::DISCARD_SECURE, "0".to_string()));
        }
        v.extend([
            (
                keys::FEATURE_MAX_INDIRECT_SEGMENTS,
                c.max_indirect_segments.to_string(),
            ),
            (
                keys::FEATURE_PERSISTENT,
                u8::from(c.persistent_grants).to_string(),
            ),
            (keys::MAX_RING_PAGE_ORDER, c.max_ring_page_order.to_string()),
            (keys::MULTI_QUEUE_MAX_QUEUES, c.max_queues.to_string()),
        ]);
        v
    }

    /// The limits the parser applies for this disk.
    pub fn limits(&self) -> Limits {
        Limits {
            disk_sectors: self.sectors,
            readonly: self.config.readonly,
            flush: true,
            discard: self.config.discard
                && !self.config.readonly
                && self.image.discard_granularity().is_some(),
            max_indirect_segments: self.config.max_indirect_segments,
        }
    }

    /// Connects to frontend `domid`: maps each queue's ring, binds its event
    /// channel and starts its worker.
    pub fn connect(
        &self,
        handles: &Dom0Handles,
        domid: domid_t,
        params: &FrontendParams,
    ) -> Result<Device, BlkbackError> {
        self.connect_with_hook(handles, domid, params, None)
    }

    /// [`BlkBackend::connect`], calling `on_failure` once if the device
    /// fails (see [`FailureHook`]).
    pub fn connect_with_hook(
        &self,
        handles: &Dom0Handles,
        domid: domid_t,
        params: &FrontendParams,
        on_failure: Option<FailureHook>,
    ) -> Result<Device, BlkbackError> {
        check_queue_count(params.queues.len(), self.config.max_queues)?;
        let cfg = device::WorkerConfig {
            limits: self.limits(),
            persistent: params.persistent && self.config.persistent_grants,
            max_persistent_grants: self.config.max_persistent_grants,
            max_consecutive_invalid: self.config.max_consecutive_invalid,
            io_threads: self.config.io_threads.min(64),
            inline_max_bytes: self.config.inline_max_bytes,
            poll_budget: self.config.poll_budget.min(Duration::from_millis(10)),
            merge_max_bytes: self.config.merge_max_bytes,
        };
        Ok(Device::start(
            &handles.gntdev,
            &handles.socket,
            domid,
            &params.queues,
            &self.image,
            cfg,
            on_failure,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn reader(kv: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn test_frontend_params_single_page_ring_parses() {
        let p = FrontendParams::from_keys(
            reader(&[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("protocol", "x86_64-abi"),
            ]),
            4,
            4,
        )
        .expect("valid");
        assert_eq!(
            p,
            FrontendParams {
                queues: vec![QueueParams {
                    ring_refs: vec![8],
                    event_channel: 5
                }],
                persistent: false
            }
        );
    }

    #[test]
    fn test_frontend_params_multi_queue_multi_page_parses() {
        let p = FrontendParams::from_keys(
            reader(&[
                ("multi-queue-num-queues", "2"),
                ("feature-persistent", "1"),
                ("queue-0/ring-page-order", "1"),
                ("queue-0/ring-ref0", "10"),
                ("queue-0/ring-ref1", "11"),
                ("queue-0/event-channel", "3"),
                ("queue-1/ring-ref", "12"),
                ("queue-1/event-channel", "4"),
            ]),
            4,
            4,
        )
        .expect("valid");
        assert!(p.persistent);
        assert_eq!(p.queues[0].ring_refs, vec![10, 11]);
        assert_eq!(p.queues[1].ring_refs, vec![12]);
        assert_eq!(p.queues[1].event_channel, 4);
    }

    #[test]
    fn test_frontend_params_multi_queue_top_level_order_as_linux_writes_it() {
        let p = FrontendParams::from_keys(
            reader(&[
                ("multi-queue-num-queues", "2"),
                ("ring-page-order", "1"),
                ("queue-0/ring-ref0", "10"),
                ("queue-0/ring-ref1", "11"),
                ("queue-0/event-channel", "3"),
                ("queue-1/ring-ref0", "12"),
                ("queue-1/ring-ref1", "13"),
                ("queue-1/event-channel", "4"),
            ]),
            4,
            4,
        )
        .expect("valid");
        assert_eq!(p.queues[0].ring_refs, vec![10, 11]);
        assert_eq!(p.queues[1].ring_refs, vec![12, 13]);
    }

    #[test]
    fn test_frontend_params_bad_values_are_refused() {
        let base = [("ring-ref", "8"), ("event-channel", "5")];
        let with = |extra: (&'static str, &'static str)| {
            let mut v = base.to_vec();
            v.push(extra);
            FrontendParams::from_keys(reader(&v), 4, 4)
        };
        assert!(matches!(
            with(("protocol", "x86_32-abi")),
            Err(BlkbackError::UnsupportedProtocol(_))
        ));
        assert!(matches!(
            with(("ring-page-order", "5")),
            Err(BlkbackError::BadKey { .. })
        ));
        assert!(matches!(
            with(("multi-queue-num-queues", "0")),
            Err(BlkbackError::BadKey { .. })
        ));
        assert!(matches!(
            with(("multi-queue-num-queues", "5")),
            Err(BlkbackError::BadKey { .. })
        ));
        assert!(matches!(
            FrontendParams::from_keys(reader(&[("ring-ref", "x"), ("event-channel", "5")]), 4, 4),
            Err(BlkbackError::BadKey { .. })
        ));
        assert!(matches!(
            FrontendParams::from_keys(reader(&[("ring-ref", "1")]), 4, 4),
            Err(BlkbackError::MissingKey(k)) if k == "event-channel"
        ));
        assert!(matches!(
            with(("ring-page-order", "1")),
            Err(BlkbackError::MissingKey(k)) if k == "ring-ref0"
        ));
    }

    #[test]
    fn test_features_readonly_disk_advertises_readonly_without_discard() {
        let f = tempfile::NamedTempFile::new().expect("temp");
        f.as_file().set_len(1 << 20).expect("size");
        let b = BlkBackend::new(DiskConfig::raw(f.path(), true)).expect("open");
        let feats: HashMap<_, _> = b.features().into_iter().collect();
        assert_eq!(feats["sectors"], "2048");
        assert_eq!(feats["sector-size"], "512");
        assert_eq!(feats["info"], VDISK_READONLY.to_string());
        assert_eq!(feats["feature-discard"], "0");
        assert_eq!(feats["feature-max-indirect-segments"], "256");
        assert_eq!(feats["max-ring-page-order"], "4");
        assert_eq!(feats["feature-flush-cache"], "1");
        assert!(!feats.contains_key("discard-granularity"));
    }

    #[test]
    fn test_backend_qcow2_over_nbd_is_refused() {
        let mut c = DiskConfig::nbd(
            NbdTarget::parse("nbd+unix:///x?socket=/nonexistent").expect("uri"),
            false,
        );
        c.format = DiskFormat::Qcow2;
        assert!(matches!(
            BlkBackend::new(c),
            Err(BlkbackError::UnsupportedFormat(DiskFormat::Qcow2))
        ));
    }

    #[test]
    fn test_backend_unreachable_nbd_server_names_the_uri() {
        let c = DiskConfig::nbd(
            NbdTarget::parse("nbd+unix:///x?socket=/nonexistent/nbd.sock").expect("uri"),
            false,
        );
        let e = BlkBackend::new(c).expect_err("no server");
        let chain = format!("{e}: {}", std::error::Error::source(&e).expect("source"));
        assert!(
            chain.contains("nbd+unix:///x?socket=/nonexistent/nbd.sock"),
            "{chain}"
        );
    }
}
