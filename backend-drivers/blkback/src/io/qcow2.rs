//! qcow2 images (QEMU's `docs/interop/qcow2.txt`), versions 2 and 3, as
//! `qemu-img create -f qcow2` makes them.
//!
//! A guest offset maps through the L1 table (kept in memory) and an L2
//! table (read on demand into a small cache) to a host cluster; reads of
//! unallocated clusters (and v3 zero clusters) return zeros. A write to an
//! unallocated cluster allocates one at the end of the file: the file is
//! extended (sparse, so the new cluster reads as zeros), its refcount set
//! to 1 (a new refcount block is made when needed, itself counted), and
//! only then the L2 entry written, with the COPIED flag; a new L2 table is
//! allocated the same way before its L1 entry is written. Metadata writes
//! go to the file at once (no write-back cache), so `flush` is one
//! `fdatasync` and `qemu-img check` finds the image clean after any
//! completed write. Data moves between guest pages and the file with
//! `preadv`/`pwritev` ([`RawImage`], `O_DIRECT` when the filesystem takes
//! it) outside the metadata lock, so transfers run in parallel.
//!
//! Discard drops whole clusters: the L2 entry is cleared, the refcount set
//! to 0 and the host cluster's blocks punched out of the file. Clusters
//! with refcount 0 inside the file (found at open, or freed by discard) are
//! allocated again before the file grows, so discarding and rewriting
//! does not grow the file.
//!
//! Backing files (overlays made by `qemu-img create -b base -F fmt`): a
//! cluster the overlay has not allocated reads from the backing image at
//! the same guest offset (zeros past its end), a v3 zero cluster reads as
//! zeros. The backing image is found by the header's name (relative to the
//! overlay's directory, as QEMU does), opened read-only with the format
//! named by the `backing_fmt` header extension (`raw` or `qcow2`, itself
//! possibly with a backing file; an overlay without one is refused rather
//! than probed, as a guest-written raw image could pose as qcow2). The chain
//! is at most [`MAX_CHAIN`] images deep; a loop or a missing file is an
//! error at open. A write to a cluster not yet in the overlay allocates it
//! there, first copying the backing data of the cluster when the write does
//! not cover it all (copy-on-write); a discard on an image with a backing
//! file leaves a zero cluster (v3) rather than uncovering the backing data.
//!
//! Refused with a clear error at open: encryption, internal
//! snapshots (on writable disks), external data files, extended L2
//! entries, dirty or corrupt images, refcounts narrower than 8 bits, unknown
//! incompatible features. Compressed clusters are refused when read or
//! written. Offsets that lead outside the file or are misaligned mark the
//! image corrupt ([`Qcow2Error::is_fatal`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::iov;
use super::{DiskImage, ImageError, IoVec, RawError, RawImage};

const MAGIC: u32 = 0x5146_49fb;
/// Offset bits of L1, L2 and refcount-table entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// v3: the cluster reads as zeros.
const ZERO: u64 = 1;
/// L2 tables kept in memory (each one cluster).
const L2_CACHE: usize = 64;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension: the backing file's format name.
const EXT_BACKING_FMT: u32 = 0xe279_2aca;
/// Images in a backing chain at most (the overlay included).
pub const MAX_CHAIN: usize = 16;
/// Longest backing file name (QEMU's limit).
const MAX_BACKING_NAME: u32 = 1023;

/// Errors of the qcow2 engine.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// The image file could not be opened.
    #[error("cannot open qcow2 image {path}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a qcow2 image.
    #[error("{path} is not a qcow2 image (bad magic or header)")]
    NotQcow2 {
        /// Image path.
        path: PathBuf,
    },
    /// The image uses something this engine does not serve.
    #[error("qcow2 image {path}: {what}")]
    Unsupported {
        /// Image path.
        path: PathBuf,
        /// What, as a sentence.
        what: String,
    },
    /// The image's metadata is inconsistent.
    #[error("qcow2 image {path} is corrupt: {what}")]
    Corrupt {
        /// Image path.
        path: PathBuf,
        /// What, as a sentence.
        what: String,
    },
    /// Reading or writing metadata failed.
    #[error("qcow2 metadata {what} at offset {offset} failed")]
    Meta {
        /// `"read"`, `"write"`, ...
        what: &'static str,
        /// Host offset.
        offset: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A data transfer failed.
    #[error("qcow2 data transfer failed")]
    Data(#[source] RawError),
    /// A compressed cluster was read or written.
    #[error("guest offset {0} is in a compressed cluster, which is not supported")]
    Compressed(u64),
    /// A write hit a cluster shared with a snapshot.
    #[error("guest offset {0} is in a cluster shared with a snapshot, which is not supported")]
    Shared(u64),
    /// The refcount table is full (it is not grown).
    #[error("the refcount table is full (growing it is not supported)")]
    RefcountTableFull,
    /// The guest offset is past the image.
    #[error("guest range {offset}+{len} is outside the {size}-byte image")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Image size.
        size: u64,
    },
    /// A write or discard on a read-only image.
    #[error("the image is read-only")]
    ReadOnly,
    /// The metadata lock was poisoned by a panic.
    #[error("the metadata lock is poisoned")]
    Poisoned,
    /// The backing file of an overlay could not be opened.
    #[error("qcow2 image {path}: cannot open its backing file {backing}")]
    Backing {
        /// The overlay.
        path: PathBuf,
        /// The backing file, as resolved.
        backing: PathBuf,
        /// Cause.
        #[source]
        source: Box<ImageError>,
    },
    /// The backing chain is too deep or loops.
    #[error("qcow2 image {path}: backing chain {what}")]
    Chain {
        /// The image whose backing file closes the loop or is too deep.
        path: PathBuf,
        /// What, as a sentence.
        what: String,
    },
    /// Reading the backing image failed.
    #[error("reading the backing image failed")]
    BackingIo(#[source] Box<ImageError>),
}

impl Qcow2Error {
    /// Whether the image is unusable (corrupt metadata).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Qcow2Error::Corrupt { .. } | Qcow2Error::Poisoned)
    }
}

/// The parsed header.
#[derive(Debug, Clone)]
struct Header {
    version: u32,
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    refcount_order: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Where a piece of a request lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    Host(u64),
    Zero,
    /// Not in this image: in the backing image at the same guest offset.
    Backing,
}

/// `len` bytes of the request from byte `at`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    at: usize,
    len: usize,
    ext: Ext,
}

/// Metadata behind the lock.
#[derive(Debug)]
struct Meta {
    l1: Vec<u64>,
    /// Refcount table (offsets of refcount blocks).
    rt: Vec<u64>,
    /// L2 tables by host offset.
    l2: HashMap<u64, Vec<u64>>,
    /// Length of the host file (allocation happens here).
    file_len: u64,
    /// Host clusters inside the file with refcount 0 (found at open, or
    /// freed by discard), reused before the file grows.
    free: Vec<u64>,
}

/// Free clusters remembered at most (more are simply not reused).
const MAX_FREE: usize = 1 << 16;

/// A qcow2 image.
#[derive(Debug)]
pub struct Qcow2Image {
    path: PathBuf,
    /// Metadata reads and writes (buffered).
    file: File,
    /// Data transfers.
    data: RawImage,
    hdr: Header,
    cluster_size: u64,
    readonly: bool,
    /// The backing image (read-only), for overlays.
    backing: Option<Box<dyn DiskImage>>,
    meta: Mutex<Meta>,
}

impl Qcow2Image {
    /// Opens the qcow2 image at `path` (read-only if `readonly`); data
    /// transfers use `O_DIRECT` when `direct` and the filesystem accepts it.
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<Self, Qcow2Error> {
        Self::open_chain(path, readonly, direct, &mut Vec::new())
    }

    /// Opens `path` as one link of a backing chain; `seen` holds the
    /// (device, inode) of the images above it.
    fn open_chain(
        path: &Path,
        readonly: bool,
        direct: bool,
        seen: &mut Vec<(u64, u64)>,
    ) -> Result<Self, Qcow2Error> {
        let open_err = |source| Qcow2Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(open_err)?;
        let fmeta = file.metadata().map_err(open_err)?;
        let file_len = fmeta.len();
        enter_chain(path, &fmeta, seen)?;
        let not = || Qcow2Error::NotQcow2 {
            path: path.to_path_buf(),
        };
        let unsup = |what: String| Qcow2Error::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let corrupt = |what: String| Qcow2Error::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let mut h = [0u8; 112];
        let n = read_up_to(&file, &mut h, 0).map_err(open_err)?;
        if n < 72 || be32(&h, 0) != MAGIC {
            return Err(not());
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(unsup(format!("version {version} is not 2 or 3")));
        }
        if version == 3 && n < 104 {
            return Err(not());
        }
        let backing_file_offset = be64(&h, 8);
        let backing_file_size = be32(&h, 16);
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} is not 9..=21"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let hdr = Header {
            version,
            size: be64(&h, 24),
            l1_size: be32(&h, 36),
            l1_table_offset: be64(&h, 40),
            refcount_table_offset: be64(&h, 48),
            refcount_table_clusters: be32(&h, 56),
            refcount_order: if version == 3 { be32(&h, 96) } else { 4 },
        };
        let backing_name = if backing_file_offset != 0 {
            if backing_file_size == 0 || backing_file_size > MAX_BACKING_NAME {
                return Err(corrupt(format!(
                    "its backing file name is {backing_file_size} bytes long (1 to \
                     {MAX_BACKING_NAME})"
                )));
            }
            let mut name = vec![0u8; backing_file_size as usize];
            let got = read_up_to(&file, &mut name, backing_file_offset).map_err(open_err)?;
            if got != name.len() {
                return Err(corrupt(format!(
                    "its backing file name at {backing_file_offset} is past the end of the file"
                )));
            }
            Some(name)
        } else {
            None
        };
        if be32(&h, 32) != 0 {
            return Err(unsup("it is encrypted, which is not supported".into()));
        }
        let nb_snapshots = be32(&h, 60);
        if nb_snapshots != 0 && !readonly {
            return Err(unsup(format!(
                "it has {nb_snapshots} internal snapshots; writing to such images is not \
                 supported (attach it read-only)"
            )));
        }
        if version == 3 {
            let incompat = be64(&h, 72);
            if incompat & INCOMPAT_DIRTY != 0 {
                return Err(unsup(
                    "it is marked dirty (lazy refcounts); repair it with `qemu-img check -r all`"
                        .into(),
                ));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(corrupt("its header has the corrupt bit set".into()));
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(unsup("external data files are not supported".into()));
            }
            if incompat & INCOMPAT_EXTL2 != 0 {
                return Err(unsup("extended L2 entries are not supported".into()));
            }
            let unknown = incompat
                & !(INCOMPAT_DIRTY
                    | INCOMPAT_CORRUPT
                    | INCOMPAT_DATA_FILE
                    | INCOMPAT_COMPRESSION
                    | INCOMPAT_EXTL2);
            if unknown != 0 {
                return Err(unsup(format!("unknown incompatible features {unknown:#x}")));
            }
            if !(3..=6).contains(&hdr.refcount_order) {
                return Err(unsup(format!(
                    "refcounts of {} bits are not supported (8 to 64)",
                    1u64 << hdr.refcount_order.min(63)
                )));
            }
        }
        let aligned = |o: u64| o % cluster_size == 0 && o != 0;
        let l1_bytes = u64::from(hdr.l1_size) * 8;
        let l2_entries = cluster_size / 8;
        let needed_l1 = hdr.size.div_ceil(cluster_size).div_ceil(l2_entries);
        if u64::from(hdr.l1_size) < needed_l1 {
            return Err(corrupt(format!(
                "the L1 table has {} entries, {needed_l1} needed for {} bytes",
                hdr.l1_size, hdr.size
            )));
        }
        if hdr.l1_size > 0
            && (!aligned(hdr.l1_table_offset)
                || hdr
                    .l1_table_offset
                    .checked_add(l1_bytes)
                    .is_none_or(|e| e > file_len))
        {
            return Err(corrupt(format!(
                "the L1 table at {} ({} entries) is outside the {file_len}-byte file",
                hdr.l1_table_offset, hdr.l1_size
            )));
        }
        let rt_bytes = u64::from(hdr.refcount_table_clusters) * cluster_size;
        if !aligned(hdr.refcount_table_offset)
            || hdr.refcount_table_clusters == 0
            || rt_bytes > 64 << 20
            || hdr
                .refcount_table_offset
                .checked_add(rt_bytes)
                .is_none_or(|e| e > file_len)
        {
            return Err(corrupt(format!(
                "the refcount table at {} ({} clusters) is outside the {file_len}-byte file",
                hdr.refcount_table_offset, hdr.refcount_table_clusters
            )));
        }
        let meta_err = |what, offset| {
            move |source| Qcow2Error::Meta {
                what,
                offset,
                source,
            }
        };
        let mut l1 = vec![0u8; l1_bytes as usize];
        file.read_exact_at(&mut l1, hdr.l1_table_offset)
            .map_err(meta_err("read of the L1 table", hdr.l1_table_offset))?;
        let l1: Vec<u64> = l1.chunks_exact(8).map(|c| be64(c, 0)).collect();
        for (i, e) in l1.iter().enumerate() {
            let o = e & OFFSET_MASK;
            if o != 0 && (o % cluster_size != 0 || o + cluster_size > file_len) {
                return Err(corrupt(format!(
                    "L1 entry {i} points to {o}, outside the {file_len}-byte file or misaligned"
                )));
            }
        }
        let mut rt = vec![0u8; rt_bytes as usize];
        file.read_exact_at(&mut rt, hdr.refcount_table_offset)
            .map_err(meta_err(
                "read of the refcount table",
                hdr.refcount_table_offset,
            ))?;
        let rt: Vec<u64> = rt.chunks_exact(8).map(|c| be64(c, 0)).collect();
        for (i, e) in rt.iter().enumerate() {
            let o = e & !0x1ff;
            if o != 0 && (o % cluster_size != 0 || o + cluster_size > file_len) {
                return Err(corrupt(format!(
                    "refcount table entry {i} points to {o}, outside the file or misaligned"
                )));
            }
        }
        if version == 3 && !readonly {
            let autoclear = be64(&h, 88);
            if autoclear != 0 {
                // Features we do not keep up to date (bitmaps) must be
                // dropped before the first write, as QEMU does.
                file.write_all_at(&0u64.to_be_bytes(), 88)
                    .map_err(meta_err("write of the autoclear features", 88))?;
            }
        }
        let backing = match backing_name {
            None => None,
            Some(name) => {
                let header_len = if version == 3 { be32(&h, 100) } else { 72 };
                let fmt =
                    backing_format(&file, header_len, cluster_size, file_len).map_err(corrupt)?;
                Some(open_backing(path, &name, fmt.as_deref(), seen)?)
            }
        };
        let data = RawImage::open(path, readonly, direct).map_err(|e| match e {
            RawError::Open { path, source } => Qcow2Error::Open { path, source },
            e => Qcow2Error::Data(e),
        })?;
        let img = Self {
            path: path.to_path_buf(),
            file,
            data,
            hdr,
            cluster_size,
            readonly,
            backing,
            meta: Mutex::new(Meta {
                l1,
                rt,
                l2: HashMap::new(),
                file_len,
                free: Vec::new(),
            }),
        };
        if !readonly {
            let mut m = img.lock()?;
            img.scan_free(&mut m)?;
        }
        Ok(img)
    }

    /// Collects the clusters inside the file whose refcount is 0.
    fn scan_free(&self, m: &mut Meta) -> Result<(), Qcow2Error> {
        let w = self.refcount_bytes() as usize;
        let per_block = self.cluster_size / w as u64;
        let inside = m.file_len / self.cluster_size;
        let mut buf = vec![0u8; self.cluster_size as usize];
        let mut free = Vec::new();
        for (rti, &rte) in m.rt.iter().enumerate() {
            let first = rti as u64 * per_block;
            if first >= inside || free.len() >= MAX_FREE {
                break;
            }
            let block = rte & !0x1ff;
            if block == 0 {
                // No refcount block: every cluster it would cover is free.
                free.extend((first..inside.min(first + per_block)).map(|c| c * self.cluster_size));
                continue;
            }
            self.file
                .read_exact_at(&mut buf, block)
                .map_err(|source| Qcow2Error::Meta {
                    what: "read of a refcount block",
                    offset: block,
                    source,
                })?;
            for (i, e) in buf.chunks_exact(w).enumerate() {
                let c = first + i as u64;
                if c >= inside {
                    break;
                }
                if c > 0 && e.iter().all(|&b| b == 0) {
                    free.push(c * self.cluster_size);
                }
            }
        }
        free.truncate(MAX_FREE);
        // Popped from the end: lowest offsets first.
        free.reverse();
        m.free = free;
        Ok(())
    }

    /// Clusters known free (refcount 0 inside the file).
    pub fn free_clusters(&self) -> usize {
        self.meta.lock().map_or(0, |m| m.free.len())
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// qcow2 version (2 or 3).
    pub fn version(&self) -> u32 {
        self.hdr.version
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.hdr.size
    }

    fn corrupt(&self, what: String) -> Qcow2Error {
        Qcow2Error::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size / 8
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        if offset.checked_add(len).is_none_or(|e| e > self.hdr.size) {
            return Err(Qcow2Error::OutOfRange {
                offset,
                len,
                size: self.hdr.size,
            });
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Meta>, Qcow2Error> {
        self.meta.lock().map_err(|_| Qcow2Error::Poisoned)
    }

    /// Loads the L2 table at `off` into the cache.
    fn load_l2<'m>(&self, m: &'m mut Meta, off: u64) -> Result<&'m mut Vec<u64>, Qcow2Error> {
        if !m.l2.contains_key(&off) {
            if m.l2.len() >= L2_CACHE {
                if let Some(k) = m.l2.keys().next().copied() {
                    m.l2.remove(&k);
                }
            }
            let mut b = vec![0u8; self.cluster_size as usize];
            self.file
                .read_exact_at(&mut b, off)
                .map_err(|source| Qcow2Error::Meta {
                    what: "read of an L2 table",
                    offset: off,
                    source,
                })?;
            let t: Vec<u64> = b.chunks_exact(8).map(|c| be64(c, 0)).collect();
            m.l2.insert(off, t);
        }
        m.l2.get_mut(&off)
            .ok_or_else(|| self.corrupt("an L2 table vanished from the cache".into()))
    }

    fn write_meta(&self, off: u64, bytes: &[u8], what: &'static str) -> Result<(), Qcow2Error> {
        self.file
            .write_all_at(bytes, off)
            .map_err(|source| Qcow2Error::Meta {
                what,
                offset: off,
                source,
            })
    }

    /// The L2 entry of guest cluster `gcl` (0 when unallocated).
    fn l2_entry(&self, m: &mut Meta, gcl: u64) -> Result<u64, Qcow2Error> {
        let l1i = (gcl / self.l2_entries()) as usize;
        let l1e = *m
            .l1
            .get(l1i)
            .ok_or_else(|| self.corrupt(format!("guest cluster {gcl} is past the L1 table")))?;
        let l2off = l1e & OFFSET_MASK;
        if l2off == 0 {
            return Ok(0);
        }
        let i = (gcl % self.l2_entries()) as usize;
        Ok(self.load_l2(m, l2off)?[i])
    }

    /// Where a standard L2 entry's data lives, validated.
    fn classify(&self, m: &Meta, gcl: u64, e: u64) -> Result<Ext, Qcow2Error> {
        if e & COMPRESSED != 0 {
            return Err(Qcow2Error::Compressed(gcl * self.cluster_size));
        }
        let off = e & OFFSET_MASK;
        if self.hdr.version == 3 && e & ZERO != 0 {
            return Ok(Ext::Zero);
        }
        if off == 0 {
            return Ok(if self.backing.is_some() {
                Ext::Backing
            } else {
                Ext::Zero
            });
        }
        if off % self.cluster_size != 0 || off.saturating_add(self.cluster_size) > m.file_len {
            return Err(self.corrupt(format!(
                "L2 entry of guest cluster {gcl} points to {off}, outside the {}-byte file or \
                 misaligned",
                m.file_len
            )));
        }
        Ok(Ext::Host(off))
    }

    /// Splits `offset..offset + len` into cluster pieces, merging pieces
    /// that are contiguous on the host.
    fn for_clusters(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64) -> Result<Ext, Qcow2Error>,
    ) -> Result<Vec<Piece>, Qcow2Error> {
        let mut out: Vec<Piece> = Vec::new();
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let gcl = pos / self.cluster_size;
            let in_cl = pos % self.cluster_size;
            let n = (self.cluster_size - in_cl).min(len - done);
            let ext = match f(gcl, in_cl, n)? {
                Ext::Host(h) => Ext::Host(h + in_cl),
                e => e,
            };
            let merged = match (out.last_mut(), ext) {
                (Some(p), Ext::Zero | Ext::Backing) if p.ext == ext => {
                    p.len += n as usize;
                    true
                }
                (Some(p), Ext::Host(h)) => match p.ext {
                    Ext::Host(ph) if ph + p.len as u64 == h => {
                        p.len += n as usize;
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            if !merged {
                out.push(Piece {
                    at: done as usize,
                    len: n as usize,
                    ext,
                });
            }
            done += n;
        }
        Ok(out)
    }

    /// Appends one cluster to the file (reads as zeros) and counts it.
    fn alloc_cluster(&self, m: &mut Meta) -> Result<u64, Qcow2Error> {
        // A free cluster inside the file first (its old contents dropped,
        // so it reads as zeros like a new one).
        while let Some(off) = m.free.pop() {
            if self.refcount(m, off)? != 0 {
                continue;
            }
            if !punch_hole(&self.file, off, self.cluster_size) {
                let z = vec![0u8; self.cluster_size as usize];
                self.write_meta(off, &z, "zeroing of a reused cluster")?;
            }
            self.set_refcount(m, off, 1, 0)?;
            return Ok(off);
        }
        // Anything past the end of the file is unreferenced; skip clusters
        // a refcount block already counts (bounded by the table's reach).
        for _ in 0..1024 {
            let off = m.file_len.div_ceil(self.cluster_size) * self.cluster_size;
            let end = off + self.cluster_size;
            self.file.set_len(end).map_err(|source| Qcow2Error::Meta {
                what: "extension of the file",
                offset: end,
                source,
            })?;
            m.file_len = end;
            if self.refcount(m, off)? == 0 {
                self.set_refcount(m, off, 1, 0)?;
                return Ok(off);
            }
        }
        Err(self.corrupt("the clusters past the end of the file are all in use".into()))
    }

    fn refcount_bytes(&self) -> u64 {
        (1u64 << self.hdr.refcount_order) / 8
    }

    /// Where the refcount of host cluster `off` is stored (`None`: no
    /// refcount block yet).
    fn refcount_slot(&self, m: &Meta, off: u64) -> Result<(usize, Option<u64>), Qcow2Error> {
        let entries = self.cluster_size / self.refcount_bytes();
        let idx = off / self.cluster_size;
        let rti = (idx / entries) as usize;
        let Some(&rte) = m.rt.get(rti) else {
            return Err(Qcow2Error::RefcountTableFull);
        };
        let block = rte & !0x1ff;
        if block == 0 {
            return Ok((rti, None));
        }
        Ok((rti, Some(block + (idx % entries) * self.refcount_bytes())))
    }

    fn refcount(&self, m: &Meta, off: u64) -> Result<u64, Qcow2Error> {
        let (_, slot) = match self.refcount_slot(m, off) {
            Err(Qcow2Error::RefcountTableFull) => return Ok(0),
            r => r?,
        };
        let Some(at) = slot else { return Ok(0) };
        let w = self.refcount_bytes() as usize;
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b[8 - w..], at)
            .map_err(|source| Qcow2Error::Meta {
                what: "read of a refcount",
                offset: at,
                source,
            })?;
        Ok(u64::from_be_bytes(b))
    }

    fn set_refcount(&self, m: &mut Meta, off: u64, v: u64, depth: u32) -> Result<(), Qcow2Error> {
        if depth > 4 {
            return Err(self.corrupt("refcount block allocation does not converge".into()));
        }
        let (rti, slot) = self.refcount_slot(m, off)?;
        let at = match slot {
            Some(at) => at,
            None => {
                // A new, zeroed refcount block at the end of the file; the
                // table points to it, then it is counted (possibly in itself).
                let b = m.file_len.div_ceil(self.cluster_size) * self.cluster_size;
                let end = b + self.cluster_size;
                self.file.set_len(end).map_err(|source| Qcow2Error::Meta {
                    what: "extension of the file",
                    offset: end,
                    source,
                })?;
                m.file_len = end;
                self.write_meta(
                    self.hdr.refcount_table_offset + rti as u64 * 8,
                    &b.to_be_bytes(),
                    "write of a refcount table entry",
                )?;
                m.rt[rti] = b;
                self.set_refcount(m, b, 1, depth + 1)?;
                self.refcount_slot(m, off)?
                    .1
                    .ok_or_else(|| self.corrupt("a new refcount block is missing".into()))?
            }
        };
        let w = self.refcount_bytes() as usize;
        let b = v.to_be_bytes();
        self.write_meta(at, &b[8 - w..], "write of a refcount")
    }

    /// Writes L2 entry `i` of the table at `l2off` (cache and file).
    fn set_l2(&self, m: &mut Meta, l2off: u64, i: usize, e: u64) -> Result<(), Qcow2Error> {
        self.load_l2(m, l2off)?[i] = e;
        self.write_meta(
            l2off + i as u64 * 8,
            &e.to_be_bytes(),
            "write of an L2 entry",
        )
    }

    /// The L2 table of guest cluster `gcl`, allocated if missing.
    fn l2_table_for_write(&self, m: &mut Meta, gcl: u64) -> Result<u64, Qcow2Error> {
        let l1i = (gcl / self.l2_entries()) as usize;
        let l1e = *m
            .l1
            .get(l1i)
            .ok_or_else(|| self.corrupt(format!("guest cluster {gcl} is past the L1 table")))?;
        let off = l1e & OFFSET_MASK;
        if off != 0 {
            if l1e & COPIED == 0 {
                return Err(Qcow2Error::Shared(gcl * self.cluster_size));
            }
            return Ok(off);
        }
        let t = self.alloc_cluster(m)?;
        let e = t | COPIED;
        self.write_meta(
            self.hdr.l1_table_offset + l1i as u64 * 8,
            &e.to_be_bytes(),
            "write of an L1 entry",
        )?;
        m.l1[l1i] = e;
        if m.l2.len() >= L2_CACHE {
            if let Some(k) = m.l2.keys().next().copied() {
                m.l2.remove(&k);
            }
        }
        m.l2.insert(t, vec![0; self.l2_entries() as usize]);
        Ok(t)
    }

    /// The host cluster for a write of `n` bytes at `in_cl` of guest
    /// cluster `gcl`, allocated (or zeroed, for a v3 zero cluster) as
    /// needed; a cluster of the backing file is copied into the new one
    /// first unless the write covers it all.
    fn cluster_for_write(
        &self,
        m: &mut Meta,
        gcl: u64,
        in_cl: u64,
        n: u64,
    ) -> Result<u64, Qcow2Error> {
        let l2off = self.l2_table_for_write(m, gcl)?;
        let i = (gcl % self.l2_entries()) as usize;
        let e = self.load_l2(m, l2off)?[i];
        match self.classify(m, gcl, e)? {
            Ext::Backing => {
                let h = self.alloc_cluster(m)?;
                if let Some(b) = &self.backing {
                    let start = gcl * self.cluster_size;
                    if !(in_cl == 0 && n == self.cluster_size) && start < b.size() {
                        self.copy_up(b.as_ref(), start, h)?;
                    }
                }
                // The L2 entry only once the cluster holds the backing data.
                self.set_l2(m, l2off, i, h | COPIED)?;
                Ok(h)
            }
            Ext::Host(h) => {
                if e & COPIED == 0 {
                    return Err(Qcow2Error::Shared(gcl * self.cluster_size));
                }
                Ok(h)
            }
            Ext::Zero => {
                let h = e & OFFSET_MASK;
                if h != 0 && e & COPIED != 0 {
                    // A preallocated zero cluster: zero it, then drop the flag.
                    let z = vec![0u8; self.cluster_size as usize];
                    self.write_meta(h, &z, "zeroing of a cluster")?;
                    self.set_l2(m, l2off, i, h | COPIED)?;
                    return Ok(h);
                }
                if h != 0 {
                    return Err(Qcow2Error::Shared(gcl * self.cluster_size));
                }
                let h = self.alloc_cluster(m)?;
                self.set_l2(m, l2off, i, h | COPIED)?;
                Ok(h)
            }
        }
    }

    /// Copies the backing data of the guest cluster at `start` to host
    /// cluster `h`.
    fn copy_up(&self, backing: &dyn DiskImage, start: u64, h: u64) -> Result<(), Qcow2Error> {
        let mut buf = vec![0u8; self.cluster_size as usize];
        let v = [IoVec {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }];
        // SAFETY: `buf` is owned here and not otherwise borrowed during the call.
        unsafe { read_backing(backing, &v, start) }?;
        self.write_meta(h, &buf, "copy-on-write of a backing cluster")
    }

    /// Runs `pieces` over `iov`: host pieces through the data file, zero
    /// pieces zero-filled (reads) or skipped (never for writes).
    ///
    /// # Safety
    ///
    /// As [`DiskImage::readv`] / [`DiskImage::writev`].
    unsafe fn run(
        &self,
        iov: &[IoVec],
        offset: u64,
        pieces: &[Piece],
        write: bool,
    ) -> Result<(), Qcow2Error> {
        for p in pieces {
            let sub = iov::slice(iov, p.at, p.len);
            match p.ext {
                // SAFETY: `sub` lies inside the caller's buffers.
                Ext::Host(h) if write => unsafe { self.data.writev(&sub, h) },
                // SAFETY: as above.
                Ext::Host(h) => unsafe { self.data.readv(&sub, h) },
                Ext::Zero => {
                    // SAFETY: as above (writable for reads; writes never
                    // produce zero pieces).
                    unsafe { iov::zero(&sub) };
                    Ok(())
                }
                Ext::Backing => {
                    // Writes never produce backing pieces.
                    let b = self.backing.as_deref().ok_or_else(|| {
                        self.corrupt("a backing piece without a backing file".into())
                    })?;
                    // SAFETY: as above.
                    unsafe { read_backing(b, &sub, offset + p.at as u64) }?;
                    Ok(())
                }
            }
            .map_err(Qcow2Error::Data)?;
        }
        Ok(())
    }

    /// Reads `offset..` into the buffers.
    ///
    /// # Safety
    ///
    /// As [`DiskImage::readv`].
    pub unsafe fn read_iov(&self, iov: &[IoVec], offset: u64) -> Result<(), Qcow2Error> {
        let len = iov::total(iov) as u64;
        self.check_range(offset, len)?;
        let pieces = {
            let mut m = self.lock()?;
            self.for_clusters(offset, len, |gcl, _, _| {
                let e = self.l2_entry(&mut m, gcl)?;
                self.classify(&m, gcl, e)
            })?
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.run(iov, offset, &pieces, false) }
    }

    /// Writes the buffers at `offset..`, allocating clusters.
    ///
    /// # Safety
    ///
    /// As [`DiskImage::writev`].
    pub unsafe fn write_iov(&self, iov: &[IoVec], offset: u64) -> Result<(), Qcow2Error> {
        if self.readonly {
            return Err(Qcow2Error::ReadOnly);
        }
        let len = iov::total(iov) as u64;
        self.check_range(offset, len)?;
        let pieces = {
            let mut m = self.lock()?;
            self.for_clusters(offset, len, |gcl, in_cl, n| {
                Ok(Ext::Host(self.cluster_for_write(&mut m, gcl, in_cl, n)?))
            })?
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.run(iov, offset, &pieces, true) }
    }

    /// `fdatasync`: data and metadata are durable.
    pub fn sync(&self) -> Result<(), Qcow2Error> {
        self.file.sync_data().map_err(|source| Qcow2Error::Meta {
            what: "flush",
            offset: 0,
            source,
        })
    }

    /// Drops the clusters wholly inside `offset..offset + len`.
    pub fn discard_clusters(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        if self.readonly {
            return Err(Qcow2Error::ReadOnly);
        }
        self.check_range(offset, len)?;
        let first = offset.div_ceil(self.cluster_size);
        let end = (offset + len) / self.cluster_size;
        let mut m = self.lock()?;
        for gcl in first..end {
            let l1i = (gcl / self.l2_entries()) as usize;
            let l1e = m.l1.get(l1i).copied().unwrap_or(0);
            let l2off = l1e & OFFSET_MASK;
            if l2off == 0 || l1e & COPIED == 0 {
                continue;
            }
            let i = (gcl % self.l2_entries()) as usize;
            let e = self.load_l2(&mut m, l2off)?[i];
            let h = e & OFFSET_MASK;
            if e & COMPRESSED != 0 || e & COPIED == 0 || h == 0 {
                continue;
            }
            self.classify(&m, gcl, e & !ZERO)?;
            // With a backing file, an empty entry would uncover the
            // backing data: v3 marks the cluster zero, v2 keeps it.
            let empty = match (&self.backing, self.hdr.version) {
                (None, _) => 0,
                (Some(_), 3) => ZERO,
                (Some(_), _) => continue,
            };
            self.set_l2(&mut m, l2off, i, empty)?;
            self.set_refcount(&mut m, h, 0, 0)?;
            punch_hole(&self.file, h, self.cluster_size);
            if m.free.len() < MAX_FREE {
                m.free.push(h);
            }
        }
        Ok(())
    }
}

/// The `backing_fmt` header extension, if any: the extensions run from
/// `header_len` to the end of the first cluster.
fn backing_format(
    file: &File,
    header_len: u32,
    cluster_size: u64,
    file_len: u64,
) -> Result<Option<String>, String> {
    let end = cluster_size.min(file_len);
    let mut at = u64::from(header_len);
    if at < 72 || at > end {
        return Err(format!(
            "its header length {header_len} is outside the first cluster"
        ));
    }
    let mut buf = vec![0u8; (end - at) as usize];
    read_up_to(file, &mut buf, at).map_err(|e| format!("its header extensions: {e}"))?;
    let base = at;
    while at + 8 <= end {
        let i = (at - base) as usize;
        let (ty, len) = (be32(&buf, i), u64::from(be32(&buf, i + 4)));
        if ty == 0 {
            return Ok(None);
        }
        let data = at + 8;
        if data + len > end {
            return Err(format!(
                "header extension {ty:#x} of {len} bytes at {at} runs past the first cluster"
            ));
        }
        if ty == EXT_BACKING_FMT {
            let d = &buf[(data - base) as usize..(data - base + len) as usize];
            return Ok(Some(String::from_utf8_lossy(d).into_owned()));
        }
        at = data + len.div_ceil(8) * 8;
    }
    Ok(None)
}

/// Adds the image at `path` to the chain `seen` (the images above it):
/// a loop or a chain longer than [`MAX_CHAIN`] is an error.
fn enter_chain(
    path: &Path,
    meta: &std::fs::Metadata,
    seen: &mut Vec<(u64, u64)>,
) -> Result<(), Qcow2Error> {
    use std::os::unix::fs::MetadataExt;
    let id = (meta.dev(), meta.ino());
    if seen.contains(&id) {
        return Err(Qcow2Error::Chain {
            path: path.to_path_buf(),
            what: "loops: this image is its own backing file (directly or through others)".into(),
        });
    }
    if seen.len() >= MAX_CHAIN {
        return Err(Qcow2Error::Chain {
            path: path.to_path_buf(),
            what: format!("is deeper than {MAX_CHAIN} images"),
        });
    }
    seen.push(id);
    Ok(())
}

/// Opens the backing file `name` of the overlay at `overlay` (relative
/// names are relative to the overlay's directory), read-only, as `fmt`.
fn open_backing(
    overlay: &Path,
    name: &[u8],
    fmt: Option<&str>,
    seen: &mut Vec<(u64, u64)>,
) -> Result<Box<dyn DiskImage>, Qcow2Error> {
    use std::os::unix::ffi::OsStrExt;
    let unsup = |what: String| Qcow2Error::Unsupported {
        path: overlay.to_path_buf(),
        what,
    };
    let shown = String::from_utf8_lossy(name).into_owned();
    if name.contains(&0) || name.starts_with(b"json:") {
        return Err(unsup(format!(
            "its backing file name {shown:?} is not a file name (json: and NUL are not supported)"
        )));
    }
    let rel = Path::new(std::ffi::OsStr::from_bytes(name));
    let backing = if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        overlay.parent().unwrap_or(Path::new(".")).join(rel)
    };
    let wrap = |e: ImageError| Qcow2Error::Backing {
        path: overlay.to_path_buf(),
        backing: backing.clone(),
        source: Box::new(e),
    };
    match fmt {
        Some("raw") => {
            let img = RawImage::open(&backing, true, false).map_err(|e| wrap(e.into()))?;
            let meta = std::fs::metadata(&backing).map_err(|e| {
                wrap(
                    RawError::Open {
                        path: backing.clone(),
                        source: e,
                    }
                    .into(),
                )
            })?;
            enter_chain(&backing, &meta, seen)?;
            Ok(Box::new(img))
        }
        Some("qcow2") => match Qcow2Image::open_chain(&backing, true, false, seen) {
            Ok(img) => Ok(Box::new(img)),
            // Chain errors name the image where the chain breaks already.
            Err(e @ Qcow2Error::Chain { .. }) => Err(e),
            Err(e) => Err(wrap(e.into())),
        },
        Some(other) => Err(unsup(format!(
            "its backing file {shown:?} has format {other:?}; only raw and qcow2 are supported"
        ))),
        None => Err(unsup(format!(
            "its backing file {shown:?} has no recorded format (the backing_fmt header \
             extension), and probing is unsafe; record it with `qemu-img rebase -u -F raw|qcow2 \
             -b {shown} OVERLAY`"
        ))),
    }
}

/// Reads `len` bytes at guest `offset` of `backing` into `iov`, zeros past
/// its end.
///
/// # Safety
///
/// As [`DiskImage::readv`].
unsafe fn read_backing(
    backing: &dyn DiskImage,
    iov: &[IoVec],
    offset: u64,
) -> Result<(), Qcow2Error> {
    let len = iov::total(iov);
    let inside = backing.size().saturating_sub(offset).min(len as u64) as usize;
    if inside > 0 {
        let sub = iov::slice(iov, 0, inside);
        // SAFETY: `sub` lies inside the caller's buffers.
        unsafe { backing.readv(&sub, offset) }.map_err(|e| Qcow2Error::BackingIo(Box::new(e)))?;
    }
    if inside < len {
        // SAFETY: as above.
        unsafe { iov::zero(&iov::slice(iov, inside, len - inside)) };
    }
    Ok(())
}

/// `fallocate(PUNCH_HOLE)`; whether the range now reads as zeros.
fn punch_hole(f: &File, off: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(o), Ok(l)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            o,
            l,
        )
    };
    r == 0
}

/// Reads as much of `buf` as the file has at `off`.
fn read_up_to(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl DiskImage for Qcow2Image {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.hdr.size
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn discard_granularity(&self) -> Option<u64> {
        Some(self.cluster_size)
    }

    fn is_direct(&self) -> bool {
        self.data.is_direct()
    }

    unsafe fn readv(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { self.read_iov(iov, offset) }?)
    }

    unsafe fn writev(&self, iov: &[IoVec], offset: u64) -> Result<(), ImageError> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { self.write_iov(iov, offset) }?)
    }

    fn flush(&self) -> Result<(), ImageError> {
        Ok(self.sync()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        Ok(self.discard_clusters(offset, len)?)
    }
}
