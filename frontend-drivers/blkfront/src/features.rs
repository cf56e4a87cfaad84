//! What the backend offers, read from its xenstore directory and checked:
//! the transport parameters it announces before InitWait
//! ([`TransportOffer`]) and the disk and its features, announced before
//! Connected ([`DiskInfo`]). Parsing is pure: the reader is a closure, so the
//! rules are unit-tested without a xenstore.

use alloc::string::String;

use xen_abi::io::blkif::{keys, VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE};

use crate::request::{MAX_INDIRECT_SEGMENTS, SECTOR_BYTES};

/// The largest `ring-page-order` of the protocol (16 pages).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// The most queues this frontend will use, whatever the backend offers.
pub const MAX_QUEUES: u32 = 16;

/// Why the backend's description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeaturesError {
    /// A node the protocol requires is missing.
    #[error("the backend did not write {key}")]
    Missing {
        /// The key.
        key: &'static str,
    },
    /// A node holds something that is not a decimal number in range.
    #[error("the backend's {key} is not a valid value: {value:?}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What was read (truncated).
        value: String,
    },
}

/// Reads a decimal number (surrounding whitespace and a trailing NUL
/// allowed, as some toolstacks write them).
pub fn parse_u64(s: &str) -> Option<u64> {
    s.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0')
        .parse::<u64>()
        .ok()
}

fn invalid(key: &'static str, v: &str) -> FeaturesError {
    FeaturesError::Invalid {
        key,
        value: v.chars().take(32).collect(),
    }
}

/// An optional number; absent means `default`.
fn opt_u64(
    read: &mut dyn FnMut(&'static str) -> Option<String>,
    key: &'static str,
    default: u64,
) -> Result<u64, FeaturesError> {
    match read(key) {
        None => Ok(default),
        Some(v) => parse_u64(&v).ok_or_else(|| invalid(key, &v)),
    }
}

/// A boolean feature node: `"1"` (or any non-zero number) on, absent or
/// `"0"` off, anything else refused.
fn opt_bool(
    read: &mut dyn FnMut(&'static str) -> Option<String>,
    key: &'static str,
) -> Result<bool, FeaturesError> {
    Ok(opt_u64(read, key, 0)? != 0)
}

/// The transport the backend offers (read when it reaches InitWait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOffer {
    /// `max-ring-page-order`, clamped to 4 (absent: 0).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues`, clamped to `1..=16` (absent: 1).
    pub max_queues: u32,
}

impl TransportOffer {
    /// Reads the offer; out-of-range values are clamped, garbage refused.
    pub fn parse(
        read: &mut dyn FnMut(&'static str) -> Option<String>,
    ) -> Result<TransportOffer, FeaturesError> {
        let order = opt_u64(read, keys::MAX_RING_PAGE_ORDER, 0)?;
        let queues = opt_u64(read, keys::MULTI_QUEUE_MAX_QUEUES, 1)?;
        Ok(TransportOffer {
            max_ring_page_order: order.min(u64::from(MAX_RING_PAGE_ORDER)) as u32,
            max_queues: queues.clamp(1, u64::from(MAX_QUEUES)) as u32,
        })
    }
}

/// How flushes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOp {
    /// `BLKIF_OP_FLUSH_DISKCACHE` (`feature-flush-cache`).
    FlushDiskcache,
    /// `BLKIF_OP_WRITE_BARRIER` without data (`feature-barrier`).
    Barrier,
    /// The backend offers neither.
    None,
}

/// Discard parameters (`feature-discard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardInfo {
    /// `discard-granularity` in bytes (absent: the sector size).
    pub granularity: u64,
    /// `discard-alignment` in bytes (absent: 0).
    pub alignment: u64,
    /// `discard-secure`.
    pub secure: bool,
}

/// The disk as the backend describes it when Connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// `sectors`: the size in `sector-size` units.
    pub sectors: u64,
    /// `sector-size` in bytes (a power of two, 512 to 4096; absent: 512).
    pub sector_size: u32,
    /// `info`: `VDISK_*` bits.
    pub info: u32,
    /// How to flush.
    pub flush: FlushOp,
    /// Discard, when offered.
    pub discard: Option<DiscardInfo>,
    /// `feature-max-indirect-segments` (0: none; not clamped here).
    pub max_indirect_segments: u32,
    /// `feature-persistent`.
    pub persistent: bool,
}

impl DiskInfo {
    /// Reads the description; a missing `sectors` or a malformed value is
    /// refused.
    pub fn parse(
        read: &mut dyn FnMut(&'static str) -> Option<String>,
    ) -> Result<DiskInfo, FeaturesError> {
        let sectors = match read(keys::SECTORS) {
            None => return Err(FeaturesError::Missing { key: keys::SECTORS }),
            Some(v) => parse_u64(&v).ok_or_else(|| invalid(keys::SECTORS, &v))?,
        };
        let ss = opt_u64(read, keys::SECTOR_SIZE, SECTOR_BYTES as u64)?;
        if !(512..=4096).contains(&ss) || !ss.is_power_of_two() {
            return Err(FeaturesError::Invalid {
                key: keys::SECTOR_SIZE,
                value: alloc::format!("{ss}"),
            });
        }
        // The disk must be addressable in 512-byte sectors in a u64.
        let bytes = sectors.checked_mul(ss);
        if bytes.is_none() {
            return Err(FeaturesError::Invalid {
                key: keys::SECTORS,
                value: alloc::format!("{sectors}"),
            });
        }
        let info = opt_u64(read, keys::INFO, 0)?;
        let info = u32::try_from(info).map_err(|_| FeaturesError::Invalid {
            key: keys::INFO,
            value: alloc::format!("{info}"),
        })?;
        let flush = if opt_bool(read, keys::FEATURE_FLUSH_CACHE)? {
            FlushOp::FlushDiskcache
        } else if opt_bool(read, keys::FEATURE_BARRIER)? {
            FlushOp::Barrier
        } else {
            FlushOp::None
        };
        let discard = if opt_bool(read, keys::FEATURE_DISCARD)? {
            Some(DiscardInfo {
                granularity: opt_u64(read, keys::DISCARD_GRANULARITY, ss)?,
                alignment: opt_u64(read, keys::DISCARD_ALIGNMENT, 0)?,
                secure: opt_bool(read, keys::DISCARD_SECURE)?,
            })
        } else {
            None
        };
        let indirect = opt_u64(read, keys::FEATURE_MAX_INDIRECT_SEGMENTS, 0)?;
        Ok(DiskInfo {
            sectors,
            sector_size: ss as u32,
            info,
            flush,
            discard,
            max_indirect_segments: indirect.min(u64::from(u32::MAX)) as u32,
            persistent: opt_bool(read, keys::FEATURE_PERSISTENT)?,
        })
    }

    /// The size in bytes.
    pub fn size_bytes(&self) -> u64 {
        // Checked in `parse`.
        self.sectors.saturating_mul(u64::from(self.sector_size))
    }

    /// The size in 512-byte request sectors.
    pub fn sectors_512(&self) -> u64 {
        self.size_bytes() / SECTOR_BYTES as u64
    }

    /// `VDISK_READONLY`.
    pub fn read_only(&self) -> bool {
        self.info & VDISK_READONLY != 0
    }

    /// `VDISK_CDROM`.
    pub fn cdrom(&self) -> bool {
        self.info & VDISK_CDROM != 0
    }

    /// `VDISK_REMOVABLE`.
    pub fn removable(&self) -> bool {
        self.info & VDISK_REMOVABLE != 0
    }

    /// The segments per request this frontend will use given its own cap:
    /// 11 (direct) unless the backend offers more through indirect requests.
    pub fn segments_per_request(&self, own_cap: u32) -> usize {
        let offered = self.max_indirect_segments.min(own_cap) as usize;
        offered.clamp(
            xen_abi::io::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST,
            MAX_INDIRECT_SEGMENTS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn reader(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl FnMut(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn test_disk_info_full_backend_parses_every_feature() {
        let mut r = reader(&[
            ("sectors", "2048"),
            ("sector-size", "512"),
            ("info", "4"),
            ("feature-flush-cache", "1"),
            ("feature-discard", "1"),
            ("discard-granularity", "4096"),
            ("feature-max-indirect-segments", "512"),
            ("feature-persistent", "1\0"),
        ]);
        let d = DiskInfo::parse(&mut |k| r(k)).expect("valid");
        assert_eq!(d.sectors, 2048);
        assert!(d.read_only());
        assert_eq!(d.flush, FlushOp::FlushDiskcache);
        assert_eq!(
            d.discard,
            Some(DiscardInfo {
                granularity: 4096,
                alignment: 0,
                secure: false
            })
        );
        assert!(d.persistent);
        assert_eq!(d.segments_per_request(256), 256);
        assert_eq!(d.segments_per_request(32), 32);
        assert_eq!(d.size_bytes(), 1 << 20);
    }

    #[test]
    fn test_disk_info_minimal_backend_gets_defaults() {
        let mut r = reader(&[("sectors", "8")]);
        let d = DiskInfo::parse(&mut |k| r(k)).expect("valid");
        assert_eq!(d.sector_size, 512);
        assert_eq!(d.flush, FlushOp::None);
        assert_eq!(d.discard, None);
        assert!(!d.persistent);
        assert_eq!(d.segments_per_request(256), 11);
    }

    #[test]
    fn test_disk_info_missing_sectors_is_refused() {
        let mut r = reader(&[("sector-size", "512")]);
        assert_eq!(
            DiskInfo::parse(&mut |k| r(k)),
            Err(FeaturesError::Missing { key: "sectors" })
        );
    }

    #[test]
    fn test_disk_info_garbage_values_are_refused() {
        for bad in [
            &[("sectors", "12x")][..],
            &[("sectors", "8"), ("sector-size", "1000")],
            &[("sectors", "8"), ("sector-size", "8192")],
            &[("sectors", "18446744073709551615"), ("sector-size", "4096")],
            &[("sectors", "8"), ("info", "99999999999")],
            &[("sectors", "8"), ("feature-persistent", "yes")],
        ] {
            let pairs: &'static [(&'static str, &'static str)] = bad;
            let mut r = reader(pairs);
            assert!(DiskInfo::parse(&mut |k| r(k)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_disk_info_barrier_only_backend_flushes_with_barrier() {
        let mut r = reader(&[("sectors", "8"), ("feature-barrier", "1")]);
        assert_eq!(
            DiskInfo::parse(&mut |k| r(k)).expect("valid").flush,
            FlushOp::Barrier
        );
    }

    #[test]
    fn test_transport_offer_clamps_order_and_queues() {
        let mut r = reader(&[
            ("max-ring-page-order", "9"),
            ("multi-queue-max-queues", "99"),
        ]);
        assert_eq!(
            TransportOffer::parse(&mut |k| r(k)),
            Ok(TransportOffer {
                max_ring_page_order: 4,
                max_queues: 16
            })
        );
        let mut none = reader(&[]);
        assert_eq!(
            TransportOffer::parse(&mut |k| none(k)),
            Ok(TransportOffer {
                max_ring_page_order: 0,
                max_queues: 1
            })
        );
        let mut bad = reader(&[("max-ring-page-order", "-1")]);
        assert!(TransportOffer::parse(&mut |k| bad(k)).is_err());
    }
}
